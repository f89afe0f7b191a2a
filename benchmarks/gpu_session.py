"""Where the served session loses time on the GPU: ONNX Runtime alone, in one process, no Ray.

    python -m benchmarks.gpu_session --onnx yolov8n.onnx --out DIR [--iters 40]

The server's replica spent ~40x longer per session call than the raw figure (issue 7 profile).
This script isolates what the server does differently, one change at a time, on one model:
- session options: the server's (uint8 input graph, heuristic cuDNN search, 2 intra-op threads,
  no spinning) against onnxruntime's defaults;
- the sequence of batch sizes a dynamic batcher produces: one fixed size, against sizes that
  change from call to call (1, 2, 4, 8, ...), against one session per batch size;
- I/O binding, and CUDA graphs (fixed shape only) at batch 1.
Each row is the mean wall time per call (and per image) over ``iters`` calls after a warm-up.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from serve_app.pipeline.graph import prepend_uint8_normalization


def _session(data: bytes, server_options: bool, cudnn: str = "HEURISTIC", extra: dict | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if server_options:
        so.intra_op_num_threads = 2
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    cuda = {"cudnn_conv_algo_search": cudnn, **(extra or {})}
    return ort.InferenceSession(data, sess_options=so, providers=[("CUDAExecutionProvider", cuda), "CPUExecutionProvider"])


def _time(fn, sizes: list[int], iters: int, make) -> dict:
    cycle = itertools.cycle(sizes)
    tensors = {b: make(b) for b in set(sizes)}
    for b in sizes * 3:  # warm every shape
        fn(tensors[b])
    per_call, images = [], 0
    for _ in range(iters):
        b = next(cycle)
        t = time.perf_counter()
        fn(tensors[b])
        per_call.append(time.perf_counter() - t)
        images += b
    total = sum(per_call)
    return {"sizes": sizes, "ms_per_call": total / iters * 1e3, "p50_ms": float(np.median(per_call)) * 1e3,
            "max_ms": max(per_call) * 1e3, "img_per_s": images / total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=40)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_session.json"
    raw = args.onnx.read_bytes()
    u8 = prepend_uint8_normalization(raw, 1 / 255)
    rows: list[dict] = []

    def record(name: str, r: dict) -> None:
        r["case"] = name
        rows.append(r)
        print(json.dumps(r), flush=True)
        path.write_text(json.dumps({"rows": rows}, indent=1))

    f32 = lambda b: np.random.rand(b, 3, 640, 640).astype(np.float32)  # noqa: E731
    ui8 = lambda b: np.random.randint(0, 255, (b, 3, 640, 640), np.uint8)  # noqa: E731
    patterns = {"fixed1": [1], "fixed8": [8], "cycle1248": [1, 2, 4, 8], "cycle18": [1, 8], "cycle12": [1, 2]}

    def plain(sess):
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})

    defaults = _session(raw, False, "DEFAULT")
    for pat, sizes in patterns.items():
        record(f"defaults/float/{pat}", _time(plain(defaults), sizes, args.iters, f32))
    served = _session(u8, True)
    for pat, sizes in patterns.items():
        record(f"server/uint8/{pat}", _time(plain(served), sizes, args.iters, ui8))
    exhaustive = _session(u8, True, "EXHAUSTIVE")
    for pat in ("fixed1", "fixed8", "cycle18"):
        record(f"server-exhaustive/uint8/{pat}", _time(plain(exhaustive), patterns[pat], args.iters, ui8))
    # one session per batch size: each session only ever sees one shape
    per_size = {b: _session(u8, True) for b in (1, 2, 4, 8)}
    names = {b: s.get_inputs()[0].name for b, s in per_size.items()}
    record("per-size-sessions/uint8/cycle1248",
           _time(lambda x: per_size[len(x)].run(None, {names[len(x)]: x}), [1, 2, 4, 8], args.iters, ui8))
    # I/O binding with outputs left on the GPU (what a GPU-side decode would need), batch 1 and 8
    import onnxruntime as ort

    for b in (1, 8):
        sess = per_size[b]
        x = ort.OrtValue.ortvalue_from_numpy(ui8(b), "cuda", 0)
        binding = sess.io_binding()
        binding.bind_ortvalue_input(names[b], x)
        for o in sess.get_outputs():
            binding.bind_output(o.name, "cuda", 0)
        record(f"iobinding-gpu-out/uint8/fixed{b}", _time(lambda _x: sess.run_with_iobinding(binding), [b], args.iters, ui8))
    try:
        graph_sess = _session(u8, True, extra={"enable_cuda_graph": "1"})
        x = ort.OrtValue.ortvalue_from_numpy(ui8(1), "cuda", 0)
        binding = graph_sess.io_binding()
        binding.bind_ortvalue_input(graph_sess.get_inputs()[0].name, x)
        for o in graph_sess.get_outputs():
            binding.bind_output(o.name, "cuda", 0)
        record("cuda-graph/uint8/fixed1", _time(lambda _x: graph_sess.run_with_iobinding(binding), [1], args.iters, ui8))
    except Exception as exc:  # CUDA graphs need every node on the GPU
        record("cuda-graph/uint8/fixed1", {"error": str(exc)[:300]})


if __name__ == "__main__":
    main()
