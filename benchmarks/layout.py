"""Where the benchmark keeps things: inputs and scratch under ``.cache/bench`` (ignored by git),
results under ``benchmarks/results``.

```
.cache/bench/
  export/yolov8n.onnx           the Ultralytics export (random init), the one model file
  images/img-00.jpg ...         the JPEG images every contender gets
  repo/bench-<i>/1/             our model repository: model.json + weights.onnx (N distinct copies)
  rf-cache/bench-<i>/1/         the same N models in Roboflow Inference's classic cache layout
  origin/                       files served by the throttled origin (cold start, case c)
  runs/<workload>-<time>/       one folder per server start: config, RAY_TMPDIR, state, logs
```
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".cache" / "bench"
EXPORT = BENCH / "export"
BASE_ONNX = EXPORT / "yolov8n.onnx"
IMAGES = BENCH / "images"
REPOSITORY = BENCH / "repo"
RF_CACHE = BENCH / "rf-cache"
ORIGIN = BENCH / "origin"
RUNS = BENCH / "runs"
RESULTS = ROOT / "benchmarks" / "results"
PREPARED = BENCH / "prepared.json"

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
SERVE = ROOT / ".venv" / "bin" / "serve"
# Ultralytics' venv for the export; BENCH_ZOO_PYTHON points elsewhere (e.g. /work/zoo-venv/bin/python)
ZOO_PYTHON = Path(os.environ.get("BENCH_ZOO_PYTHON", ROOT / ".venv-zoo" / "bin" / "python"))
RF_PYTHON = Path(os.environ.get("BENCH_RF_PYTHON", ROOT / ".venv-rf" / "bin" / "python"))
SERVE_CONFIG = ROOT / "serve_config.yaml"

MODEL_PREFIX = "bench"


def model_id(i: int) -> str:
    """The i-th benchmark model id, the same on every server: ``bench-<i>/1``.

    >>> model_id(3)
    'bench-3/1'
    """
    return f"{MODEL_PREFIX}-{i}/1"
