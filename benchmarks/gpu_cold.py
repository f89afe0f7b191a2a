"""Where a cold load's time goes on the GPU, and whether building the bucket sessions side by side helps.

    python -m benchmarks.gpu_cold --onnx yolov8n.onnx --out DIR [--rounds 3]

A replica's first request for a model waits for the whole load: the uint8 input graph, one session
per batch bucket (1 and 8 in configs/serve_gpu.yaml) and a warm-up call of each. This script takes
the server's own session options and times, in one process, interleaved over ``rounds``:
- ``served``: ``VisionModel.load`` as a replica calls it (the figure a cold request waits for);
- ``phases``: the same steps one after another, each timed (graph rewrite, each session's build,
  each warm-up);
- ``threads``: the two sessions built and warmed in two threads at once (whether onnxruntime lets
  go of the GIL while it builds, and the two warm-ups overlap on the card);
- ``sequence`` (``--sequence N``, alone): N distinct models loaded one after another, then again from
  the optimised graphs the first loads kept (``SessionOptions.graph_cache_dir``), each load's
  phases (``VisionModel.load_phases``); run once per process setting (``--label``, e.g. with
  ``CUDA_MODULE_LOADING=EAGER``) and with ``--pause`` between loads (an idle GPU's clocks);
- ``search``: per cuDNN algorithm search (``--search``, the CUDA provider's ``cudnn_conv_algo_search``),
  a batch-1 load with its warm-up, then the steady call at batch 1, the batch-8 session's build and
  warm-up and its steady call (what a faster warm-up would cost every later request).
Every load is of a distinct model (a metadata entry changes), as a replica's loads are.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from benchmarks.gpu import _manifest
from benchmarks.gpu_machine import machine
from benchmarks.gpu_precision import time_calls
from serve_app.options import SessionOptions
from serve_app.pipeline.graph import prepend_uint8_normalization
from serve_app.pipeline.session import OnnxSession
from serve_app.registry.manifest import Manifest
from serve_app.settings import Settings
from serve_app.tasks.vision_model import VisionModel

ROOT = Path(__file__).resolve().parents[1]


def _variant(raw: bytes, i: int) -> bytes:
    import onnx

    m = onnx.load_from_string(raw)
    m.metadata_props.append(onnx.StringStringEntryProto(key="cold_variant", value=str(i)))
    return m.SerializeToString()


def _build_and_warm(weights: bytes, options: SessionOptions, size: int) -> tuple[float, float]:
    """One session as the server builds it (no buckets of its own), then its warm-up call at ``size``."""
    t0 = time.perf_counter()
    session = OnnxSession.from_bytes(weights, replace(options, batch_sizes=()), "cold")
    t1 = time.perf_counter()
    session.run(np.zeros((size, 640, 640, 3), np.uint8))
    return t1 - t0, time.perf_counter() - t1


def _preoptimized(weights: bytes, options: SessionOptions, saved: Path) -> dict[str, float]:
    """Build times of a session that saves its optimised graph, then of one from that graph with
    optimisations off (ONNX Runtime's ``optimized_model_filepath``), and the latter's warm-up."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [(p, {"cudnn_conv_algo_search": "HEURISTIC"}) if p == "CUDAExecutionProvider" else p
                 for p in options.providers if isinstance(p, str) and p in available]
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(saved)
    t0 = time.perf_counter()
    ort.InferenceSession(weights, sess_options=so, providers=providers)
    t1 = time.perf_counter()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(saved), sess_options=so, providers=providers)
    t2 = time.perf_counter()
    session.run(None, {session.get_inputs()[0].name: np.zeros((1, 640, 640, 3), np.uint8)})
    t3 = time.perf_counter()
    saved.unlink(missing_ok=True)
    return {"build_saving_optimized_ms": (t1 - t0) * 1e3, "build_from_optimized_ms": (t2 - t1) * 1e3,
            "warm_from_optimized_1_ms": (t3 - t2) * 1e3}


def _with_search(options: SessionOptions, mode: str) -> SessionOptions:
    """``options`` with the CUDA provider's ``cudnn_conv_algo_search`` set to ``mode``."""
    providers = []
    for entry in options.providers:
        name, opts = (entry, {}) if isinstance(entry, str) else entry
        providers.append((name, {**opts, "cudnn_conv_algo_search": mode}) if name == "CUDAExecutionProvider" else entry)
    return replace(options, providers=tuple(providers))


def _steady_ms(model: VisionModel, batch: int) -> float:
    return time_calls(model, batch, calls=40, warmup=5, deadline=math.inf)["p50_ms"]


def _search_row(raw: bytes, serial: int, options: SessionOptions, mode: str) -> dict[str, float]:
    """A batch-1 load under cuDNN search ``mode``, its steady batch-1 call, then its batch-8 session."""
    data = _variant(raw, serial)
    manifest = Manifest.from_dict(_manifest(f"search{serial}/1", data, ""))
    sized = replace(_with_search(options, mode), lazy_batch_sessions=True)
    t = time.perf_counter()
    model = VisionModel.load(manifest, {"weights": data}, sized)
    row = {"load_ms": (time.perf_counter() - t) * 1e3, "warmup_ms": model.warmup_seconds * 1e3}
    row["steady_1_ms"] = _steady_ms(model, 1)
    t = time.perf_counter()
    model.add_batch_sessions()
    row["add_buckets_ms"] = (time.perf_counter() - t) * 1e3
    for size in model.batch_sessions[1:]:
        row[f"steady_{size}_ms"] = _steady_ms(model, size)
    return row


def sequence(raw: bytes, options: SessionOptions, count: int, folder: Path, pause_s: float) -> list[dict]:
    """``count`` distinct models loaded one after another as a replica loads them (batch 1's session
    and its warm-up; optimised graphs kept in ``folder``), then the same models again (each load
    now from its kept graph): where each load's time went, and whether a process's later loads
    get faster by themselves (CUDA's lazy module loading, cuDNN's caches) or after ``pause_s``."""
    sized = replace(options, lazy_batch_sessions=True, graph_cache_dir=str(folder))
    rows = []
    models = [_variant(raw, 1000 + i) for i in range(count)]
    for again in (False, True):
        for i, data in enumerate(models):
            manifest = Manifest.from_dict(_manifest(f"seq{i}/1", data, ""))
            time.sleep(pause_s)
            t = time.perf_counter()
            model = VisionModel.load(manifest, {"weights": data}, sized, manifest.weights.sha256)
            total = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            model.session.run(model.blank_batch(1))
            rows.append({"model": i, "again": again, "hit": model.graph_cache_hit, "load_ms": round(total, 1),
                         **{f"{k}_ms": round(v * 1e3, 1) for k, v in model.load_phases.items()},
                         "next_call_ms": round((time.perf_counter() - t) * 1e3, 2)})
            print(json.dumps(rows[-1]), flush=True)
            del model
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--search", default="HEURISTIC,DEFAULT", help="cuDNN algorithm searches to compare")
    ap.add_argument("--search-only", action="store_true", help="only the cuDNN search comparison")
    ap.add_argument("--sequence", type=int, default=0,
                    help="only this many loads in a row, then again from their kept graphs (sequence())")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between the sequence's loads")
    ap.add_argument("--label", default="", help="what this process differs in (an environment variable)")
    ap.add_argument("--cuda-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a CUDA provider option over the server's (cudnn_conv_use_max_workspace=0, ...)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_cold.json"
    server_args = yaml.safe_load((ROOT / "configs" / "serve_gpu.yaml").read_text())["applications"][0]["args"]
    settings = Settings.from_args({k: v for k, v in server_args.items() if k not in ("cache_dir", "state_dir")})
    options = settings.session_options
    if args.cuda_option:
        extra = dict(o.split("=", 1) for o in args.cuda_option)
        options = replace(options, providers=tuple(
            ("CUDAExecutionProvider", {**(e[1] if not isinstance(e, str) else {}), **extra})
            if (e if isinstance(e, str) else e[0]) == "CUDAExecutionProvider" else e for e in options.providers))
    sizes = (1, *[b for b in options.batch_sizes if b != 1])  # the main session's, then each bucket's
    raw = args.onnx.read_bytes()
    result: dict = {"machine": machine(os.environ.get("GIT_COMMIT")), "buckets": list(options.batch_sizes),
                    "providers": [str(p) for p in options.providers], "rounds": []}
    if args.sequence:
        import tempfile

        from serve_app.pipeline.cuda_env import limit_cublas_workspace

        limit_cublas_workspace(settings.cublas_workspace_kib)  # as a replica does, before any CUDA handle

        path = args.out / f"gpu_cold_sequence{('_' + args.label) if args.label else ''}.json"
        result.update(label=args.label, pause_s=args.pause, cuda_options=args.cuda_option, cuda_module_loading=os.environ.get("CUDA_MODULE_LOADING"),
                      sequence=sequence(raw, options, args.sequence, Path(tempfile.mkdtemp()), args.pause))
        path.write_text(json.dumps(result, indent=1))
        return
    serial = 0
    modes = [m for m in args.search.split(",") if m]
    result["search"] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in (modes if r % 2 == 0 else modes[::-1]):  # alternating order: neither always goes first
            serial += 1
            got = {k: round(v, 2) for k, v in _search_row(raw, serial, options, mode).items()}
            result["search"][mode].append(got)
            print(mode, json.dumps(got), flush=True)
        path.write_text(json.dumps(result, indent=1))
        if args.search_only:
            continue
        row: dict = {}
        serial += 1
        data = _variant(raw, serial)
        manifest = Manifest.from_dict(_manifest(f"cold{serial}/1", data, ""))
        t = time.perf_counter()
        model = VisionModel.load(manifest, {"weights": data}, options)
        row["served_ms"] = (time.perf_counter() - t) * 1e3
        row["served_warmup_ms"] = model.warmup_seconds * 1e3
        del model

        serial += 1  # the load a first request would wait for if only the batch-1 session were built first
        data = _variant(raw, serial)
        manifest = Manifest.from_dict(_manifest(f"cold{serial}/1", data, ""))
        t = time.perf_counter()
        model = VisionModel.load(manifest, {"weights": data}, replace(options, batch_sizes=(1,)))
        row["served_bucket1_only_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        model.session.run(model.blank_batch(1))
        row["second_call_1_ms"] = (time.perf_counter() - t) * 1e3
        del model

        serial += 1
        data = _variant(raw, serial)
        t = time.perf_counter()
        weights = prepend_uint8_normalization(data, 1 / 255, channels_last=True, reverse_channels=True)
        row["rewrite_ms"] = (time.perf_counter() - t) * 1e3
        for size in sizes:
            build, warm = _build_and_warm(weights, options, size)
            row[f"build_{size}_ms"], row[f"warm_{size}_ms"] = build * 1e3, warm * 1e3
        row["phases_total_ms"] = sum(v for k, v in row.items() if k.startswith(("rewrite", "build", "warm")))

        serial += 1  # a session from a graph ONNX Runtime already optimised (saved by an earlier build)
        weights = prepend_uint8_normalization(_variant(raw, serial), 1 / 255, channels_last=True, reverse_channels=True)
        row.update(_preoptimized(weights, options, args.out / f"optimized{serial}.onnx"))

        serial += 1
        weights = prepend_uint8_normalization(_variant(raw, serial), 1 / 255, channels_last=True, reverse_channels=True)
        t = time.perf_counter()
        with ThreadPoolExecutor(len(sizes)) as pool:
            parts = list(pool.map(lambda s: _build_and_warm(weights, options, s), sizes))
        row["threads_ms"] = (time.perf_counter() - t) * 1e3
        row["threads_parts_ms"] = [[round(b * 1e3, 1), round(w * 1e3, 1)] for b, w in parts]
        result["rounds"].append({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()})
        print(json.dumps(result["rounds"][-1]), flush=True)
        path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
