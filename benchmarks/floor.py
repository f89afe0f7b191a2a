"""The floor: raw ONNX Runtime in one process, no server, no HTTP.

Two figures: bare ``session.run`` on a ready tensor, and the whole pipeline a server must do per
request (JPEG decode + letterbox + ``session.run`` + decoding and NMS + result dicts), with this
project's own functions (:class:`~serve_app.tasks.vision_model.VisionModel`). Also what a model
load costs with the bytes already in memory (the floor of any cold start), and the memory one
more loaded session holds (measured in a fresh process: ``python -m benchmarks.floor memory``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks import layout
from benchmarks.stats import median, summarize


def load_manifest(model_id: str):
    from serve_app.registry.catalog import with_file_uris
    from serve_app.registry.manifest import Manifest

    folder = layout.REPOSITORY / model_id
    return with_file_uris(Manifest.from_dict(json.loads((folder / "model.json").read_text())), folder)


def session_options(server_args: dict | None = None):
    """The session options our server would use with these application arguments, on the CPU."""
    from serve_app.settings import Settings

    return Settings.from_args({**(server_args or {}), "providers": ["CPUExecutionProvider"]}).session_options


def load_model(model_id: str, server_args: dict | None = None):
    from serve_app.tasks.vision_model import VisionModel

    manifest = load_manifest(model_id)
    weights = (layout.REPOSITORY / model_id / "weights.onnx").read_bytes()
    return VisionModel.load(manifest, {"weights": weights}, session_options(server_args))


def measure(images: list[bytes], requests: int, warmup: int, *, loads: int = 3, server_args: dict | None = None,
            deadline_s: float = 120.0, progress: bool = True) -> dict:
    from serve_app.pipeline.images import ImageLimits, load_image_bytes
    from serve_app.tasks.params import InferenceParams
    from serve_app.tasks.vision_model import VisionModel

    options = session_options(server_args)
    model = load_model(layout.model_id(0), server_args)
    params = InferenceParams(confidence=0.4, iou_threshold=0.3, max_detections=300)
    limits = ImageLimits()
    tensor, _ = model.prepare([load_image_bytes(images[0], "image/jpeg", limits)], params)

    def timed(label: str, fn, count: int) -> list[float]:
        out = []
        started = time.monotonic()
        for i in range(warmup + count):
            if time.monotonic() - started > deadline_s:
                break
            t0 = time.perf_counter()
            fn(i)
            if i >= warmup:
                out.append(time.perf_counter() - t0)
            if progress and (i % 10 == 0 or i == warmup + count - 1):
                print(f"\r  floor {label}: {i + 1}/{warmup + count}", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr, flush=True)
        return out

    bare = timed("session.run", lambda i: model.session.run(tensor), requests)
    stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "inference": [], "postprocess": []}
    predictions: list[int] = []

    def pipeline(i: int) -> None:
        t0 = time.perf_counter()
        img = load_image_bytes(images[i % len(images)], "image/jpeg", limits)
        t1 = time.perf_counter()
        result = model.predict([img], params)[0]
        predictions.append(len(result["predictions"]))
        stages["decode"].append(t1 - t0)
        for k, v in model.timings.items():
            stages[k].append(v)

    full = timed("decode+letterbox+run+postprocess", pipeline, requests)
    load_s = []
    for k in range(loads):  # distinct copies, bytes already in memory: session creation + warm-up
        mid = layout.model_id(1 + k)
        weights = (layout.REPOSITORY / mid / "weights.onnx").read_bytes()
        manifest = load_manifest(mid)
        t0 = time.perf_counter()
        VisionModel.load(manifest, {"weights": weights}, options)
        load_s.append(time.perf_counter() - t0)
    return {
        "session_run": summarize(bare),
        "pipeline": summarize(full),
        "pipeline_throughput_rps": round(len(full) / sum(full), 3) if full else None,
        "stages_mean_ms": {k: round(float(np.mean(v[warmup:] if len(v) > warmup else v)) * 1e3, 3)
                           for k, v in stages.items() if v},
        "predictions_per_image": {"min": min(predictions), "max": max(predictions)} if predictions else None,
        "load_from_memory_ms": {"samples": [round(s * 1e3, 1) for s in load_s], "median": median([s * 1e3 for s in load_s])},
        "providers": model.providers,
        "session_options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(options).items()},
        "input_dtype": str(tensor.dtype),
    }


BARE_RUN = """
import json, sys, time
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
name = s.get_inputs()[0].name
for _ in range(int(sys.argv[3])):
    s.run(None, {name: x})
out = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter(); s.run(None, {name: x}); out.append(time.perf_counter() - t0)
print(json.dumps({"onnxruntime": ort.__version__, "p50_ms": round(float(np.median(out)) * 1e3, 3),
                  "mean_ms": round(float(np.mean(out)) * 1e3, 3), "n": len(out)}))
"""


def bare_run_by_interpreter(requests: int, warmup: int) -> dict:
    """Bare ``session.run`` (default session options) under each venv's onnxruntime, in a fresh
    process: tells apart a difference of onnxruntime builds from a difference of servers."""
    import subprocess

    out = {}
    weights = str(layout.REPOSITORY / layout.model_id(0) / "weights.onnx")
    for label, python in (("ours", layout.VENV_PYTHON), ("roboflow venv", layout.RF_PYTHON)):
        if not python.exists():
            continue
        done = subprocess.run([str(python), "-c", BARE_RUN, weights, str(requests), str(warmup)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            out[label] = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            out[label] = {"error": done.stderr.strip().splitlines()[-1:] if done.stderr else done.returncode}
    return out


def memory_per_model(models: int) -> dict:
    """RSS/PSS of this process after loading 1..``models`` distinct models (run in a fresh process)."""
    from benchmarks.servers import memory
    import os

    kept = []
    points = [{"models": 0, **(memory(os.getpid()) or {})}]
    for i in range(models):
        kept.append(load_model(layout.model_id(i)))
        points.append({"models": i + 1, **(memory(os.getpid()) or {})})
    return {"points": points}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["latency", "memory"])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--models", type=int, default=8)
    args = parser.parse_args(argv)
    if args.what == "memory":
        print(json.dumps(memory_per_model(args.models)))
    else:
        from benchmarks.models import load_images

        print(json.dumps(measure(load_images(), args.requests, args.warmup), indent=1))


if __name__ == "__main__":
    main()
