"""The opt-in GPU session features (issue 14) on one GPU: float16, CUDA graphs, the shared arena.

    python -m benchmarks.gpu_precision --out DIR [--budget-s 240] [--onnx .cache/bench/export/yolov8n.onnx]
    python -m benchmarks.gpu_precision --out DIR --cpu      # a quick dry run without a GPU

No Ray: ``VisionModel``/``OnnxSession`` in this process, ONNX Runtime's CUDA provider. Measured,
for ``shapes-det/1`` and (when ``--onnx`` exists) a YOLOv8n graph, each step written to
``DIR/gpu_precision.json`` as it ends (an error is recorded there and the next step runs):

1. ``latency``: the session call the replica makes (uint8 NumPy batch in, NumPy outputs back,
   host-device copies included), batch 1 and 8, median and p90 of ``--calls`` calls after
   ``--warmup``, for fp32, fp16, fp32+cuda_graph and fp16+cuda_graph (each bucket its own
   session, as the server runs them); with a CUDA graph, the largest difference of its raw
   outputs from the same precision without one, on fresh inputs (a replay that missed new input
   would show here);
2. ``accuracy``: fp16 against fp32 detections on ``--scenes`` synthetic scenes
   (``zoo.shapes.draw_scene``): boxes matched one to one by class with IoU >= 0.98, the smallest
   IoU, the largest confidence difference (YOLOv8n's weights are random: few or no boxes);
3. ``memory``: GPU memory per loaded model, 4 models loaded (two sessions each, buckets 1 and 8,
   each run once) in a fresh process per mode (:data:`MEMORY_MODES`: without ``shared_arena``,
   with it, with it and fp16, and with it and each suspect of the fixed cost per session: one
   bucket only, cuDNN's and cuBLAS' workspaces kept small, CUDA's modules loaded eagerly; a
   registered arena cannot be unregistered): the growth after a
   first CUDA session, read from ``nvidia-smi --query-compute-apps`` for the process's pid
   (and the device's total, in case the pid is not listed), and the host's resident memory.

``machine`` records nvidia-smi's name, driver and CUDA version, ONNX Runtime and the other
versions, cores and the start time. The whole run stops starting steps after ``--budget-s``.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.gpu_machine import command_output, gpu_memory_by_pid, machine

ROOT = Path(__file__).resolve().parents[1]
YOLO = ROOT / ".cache" / "bench" / "export" / "yolov8n.onnx"
GPU = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU = ("CPUExecutionProvider",)
BUCKETS = (1, 8)
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "fp16": {"precision": "fp16"},
    "fp32+cuda_graph": {"cuda_graph": True},
    "fp16+cuda_graph": {"precision": "fp16", "cuda_graph": True},
}
MIN_IOU = 0.98
# memory measured in a fresh process per mode: what SessionOptions each of the 4 models loads with
_SMALL_CUDNN = (("CUDAExecutionProvider", {"cudnn_conv_use_max_workspace": "0"}), "CPUExecutionProvider")
MEMORY_MODES: dict[str, dict[str, Any]] = {
    "per_session_arenas": {},
    "shared_arena": {"shared_arena": True},
    "shared_arena+fp16": {"shared_arena": True, "precision": "fp16"},
    # what the fixed cost per session (the same with fp16: not weights, not activations) is made of
    "shared_arena+bucket1_only": {"shared_arena": True, "batch_sizes": (1,)},
    "shared_arena+small_cudnn_workspace": {"shared_arena": True, "providers": _SMALL_CUDNN},
    "shared_arena+small_cublas_workspace": {"shared_arena": True},
    "shared_arena+cuda_module_loading_eager": {"shared_arena": True},
    "shared_arena+bucket1_only+small_workspaces": {"shared_arena": True, "batch_sizes": (1,), "providers": _SMALL_CUDNN},
}
# environment of a memory mode's child process, besides the parent's
MEMORY_ENV: dict[str, dict[str, str]] = {
    "shared_arena+small_cublas_workspace": {"CUBLAS_WORKSPACE_CONFIG": ":4096:1", "CUBLASLT_WORKSPACE_SIZE": "1024"},
    "shared_arena+cuda_module_loading_eager": {"CUDA_MODULE_LOADING": "EAGER"},
    "shared_arena+bucket1_only+small_workspaces": {"CUBLAS_WORKSPACE_CONFIG": ":4096:1", "CUBLASLT_WORKSPACE_SIZE": "1024"},
}


@dataclass
class Source:
    model_id: str
    manifest: Any  # serve_app.registry.manifest.Manifest
    weights: bytes


def sources(names: list[str], onnx_path: Path) -> dict[str, Source | str]:
    """The models to measure: built-ins by id, ``yolov8n`` from ``onnx_path``; a string says why not."""
    from serve_app.registry.manifest import Manifest

    out: dict[str, Source | str] = {}
    for name in names:
        if name == "yolov8n":
            if not onnx_path.exists():
                out[name] = f"not measured: {onnx_path} does not exist (benchmarks/models.py exports it)"
                continue
            data = onnx_path.read_bytes()
            manifest = Manifest.from_dict({
                "model_id": "yolov8n/1", "task": "object-detection", "architecture": "yolov8",
                "files": {"weights": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "path": "w.onnx"}},
                "classes": [f"c{i}" for i in range(80)], "input": {"width": 640, "height": 640}})
            out[name] = Source("yolov8n/1", manifest, data)
        else:
            folder = ROOT / "configs" / "models" / name
            manifest = Manifest.from_dict(json.loads((folder / "model.json").read_text()))
            out[name] = Source(name, manifest, (folder / manifest.files["weights"].path).read_bytes())
    return out


def load(source: Source, cpu: bool, **features: Any):
    from serve_app.pipeline.session import SessionOptions
    from serve_app.tasks.vision_model import VisionModel

    features = {"providers": CPU if cpu else GPU, "batch_sizes": BUCKETS, **features}
    if cpu:
        features["providers"] = CPU
    options = SessionOptions(force_precision=cpu, **features)
    return VisionModel.load(source.manifest, {"weights": source.weights}, options)


def describe(model: Any) -> dict[str, Any]:
    s = model.session
    return {"providers": s.providers, "precision": s.precision, "cuda_graph": s.cuda_graph is not None,
            "shared_arena": s.shared_arena, "batch_sessions": s.batch_sizes,
            "load_ms": s.load_seconds * 1e3, "warmup_ms": model.warmup_seconds * 1e3}


def inputs(model: Any, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, model.blank_batch(batch).shape, dtype=np.uint8)


def time_calls(model: Any, batch: int, calls: int, warmup: int, deadline: float) -> dict[str, Any]:
    """Median/p90 wall time of ``model.session.run`` on one uint8 batch (stops at ``deadline``)."""
    x = inputs(model, batch, batch)
    for _ in range(warmup):
        model.session.run(x)
    times = []
    while len(times) < calls and time.monotonic() < deadline:
        t = time.perf_counter()
        model.session.run(x)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"batch": batch, "calls": len(times), "p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "img_per_s": batch / float(np.median(ms)) * 1e3, "cut_by_budget": len(times) < calls}


def output_difference(a: Any, b: Any, batch: int) -> float:
    """Largest |a - b| over the raw outputs of three fresh inputs."""
    worst = 0.0
    for seed in (101, 202, 303):
        x = inputs(a, batch, seed)
        for oa, ob in zip(a.session.run(x), b.session.run(x)):
            worst = max(worst, float(np.abs(np.asarray(oa, np.float64) - np.asarray(ob, np.float64)).max()))
    return worst


def compare_detections(fp32: Any, fp16: Any, scenes: int) -> dict[str, Any]:
    """fp16's boxes against fp32's on ``scenes`` synthetic scenes: one-to-one same-class matches."""
    from serve_app.pipeline.geometry import box_iou
    from serve_app.tasks.params import InferenceParams
    from zoo.matching import match, pred_boxes
    from zoo.shapes import draw_scene

    params = InferenceParams(confidence=0.4, iou_threshold=0.5)
    rng = np.random.default_rng(2024)
    total = matched = extra = 0
    min_iou, max_dconf = 1.0, 0.0
    for _ in range(scenes):
        image = draw_scene(rng, size=(640, 480)).image
        a = fp32.predict([image], params)[0]["predictions"]
        b = fp16.predict([image], params)[0]["predictions"]
        pairs = match(pred_boxes(a), [p["class"] for p in a], b, min_iou=MIN_IOU)
        total, matched, extra = total + len(a), matched + len(pairs), extra + len(b) - len(pairs)
        if pairs:
            iou = box_iou(pred_boxes(a), pred_boxes(b))
            min_iou = min(min_iou, min(float(iou[i, j]) for i, j in pairs))
            max_dconf = max(max_dconf, max(abs(a[i]["confidence"] - b[j]["confidence"]) for i, j in pairs))
    return {"scenes": scenes, "fp32_boxes": total, "matched": matched, "fp16_unmatched": extra,
            "all_matched": matched == total and extra == 0, "min_iou_of_matches": min_iou if matched else None,
            "max_confidence_difference": max_dconf if matched else None}


def _gpu_memory(pid: int) -> dict[str, float | None]:
    """This process's GPU memory (MiB) as nvidia-smi lists it, and the device's total in use."""
    own = gpu_memory_by_pid().get(pid)
    total = command_output(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    device = float(total.splitlines()[0]) if total and total.splitlines()[0].strip().isdigit() else None
    return {"process_mib": own, "device_mib": device}


def _rss_mib() -> float | None:
    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmRSS"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        return None


def memory_child(model_name: str, count: int, mode: str, cpu: bool, onnx_path: Path) -> dict[str, Any]:
    """In a fresh process: memory after a first CUDA session, then after each of ``count`` loads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    source = sources([model_name], onnx_path)[model_name]
    if isinstance(source, str):
        return {"error": source}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    probe.ir_version = 8
    first = ort.InferenceSession(probe.SerializeToString(), providers=list(CPU if cpu else GPU))
    first.run(None, {"x": np.ones(1, np.float32)})  # the CUDA context exists from here on
    pid = os.getpid()
    steps = [{"loaded": 0, "rss_mib": _rss_mib(), **_gpu_memory(pid)}]
    models = []
    for i in range(count):
        models.append(load(source, cpu, **MEMORY_MODES[mode]))
        for b in models[-1].session.batch_sizes:
            models[-1].session.run(inputs(models[-1], b, i))
        steps.append({"loaded": i + 1, "rss_mib": _rss_mib(), **_gpu_memory(pid), **describe(models[-1])})

    def per_model(key: str) -> float | None:
        a, b = steps[0].get(key), steps[-1].get(key)
        return (b - a) / count if isinstance(a, float) and isinstance(b, float) else None

    return {"model": model_name, "mode": mode, "options": MEMORY_MODES[mode], "env": MEMORY_ENV.get(mode, {}),
            "models": count, "steps": steps,
            "per_model_mib": {k: per_model(k) for k in ("process_mib", "device_mib", "rss_mib")}}


class Run:
    """The result document, written after every step; steps stop starting once the budget is spent."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.path = out / "gpu_precision.json"
        self.deadline = time.monotonic() + budget_s
        self.doc: dict[str, Any] = {"budget_s": budget_s}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.doc["saved"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.path.write_text(json.dumps(self.doc, indent=1, default=str))

    def step(self, keys: list[str], fn: Callable[[], Any], need_s: float = 5.0,
             record: Callable[[Any], Any] = lambda r: r) -> Any:
        """Run ``fn`` and store ``record`` of what it returns (or its error) under ``keys``; returns
        what ``fn`` returned, or None when it failed or was skipped."""
        node = self.doc
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if self.left() < need_s:
            node[keys[-1]] = {"skipped": f"budget spent ({self.left():.0f} s left, {need_s:.0f} s needed)"}
            self.save()
            print(f"{'/'.join(keys)}: skipped, budget spent", flush=True)
            return None
        started = time.monotonic()
        result = None
        try:
            result = fn()
            stored = record(result)
        except Exception as exc:  # noqa: BLE001 - record it and go on: the run happens once, far away
            result, stored = None, {"error": f"{type(exc).__name__}: {str(exc)[:500]}",
                                    "traceback": traceback.format_exc()[-2000:]}
            print(f"{'/'.join(keys)}: {stored['error']}", file=sys.stderr, flush=True)
        node[keys[-1]] = stored
        self.save()
        print(f"{'/'.join(keys)} ({time.monotonic() - started:.1f} s): {json.dumps(stored, default=str)[:400]}", flush=True)
        return result


def measure_model(run: Run, name: str, source: Source, args: argparse.Namespace) -> None:
    models: dict[str, Any] = {}
    for variant, features in VARIANTS.items():
        models[variant] = run.step(["models", name, variant, "load"], lambda f=features: load(source, args.cpu, **f),
                                   record=describe)
        if models[variant] is None:
            continue
        for b in BUCKETS:
            run.step(["models", name, variant, f"batch{b}"],
                     lambda m=models[variant], b=b: time_calls(m, b, args.calls, args.warmup, run.deadline))
        plain = models.get(variant.replace("+cuda_graph", ""))
        if "+cuda_graph" in variant and plain is not None:
            run.step(["models", name, variant, "max_abs_difference_from_no_graph"],
                     lambda m=models[variant], p=plain: {f"batch{b}": output_difference(m, p, b) for b in BUCKETS})
    if models.get("fp32") is not None and models.get("fp16") is not None:
        run.step(["models", name, "accuracy_fp16_vs_fp32"],
                 lambda: compare_detections(models["fp32"], models["fp16"], args.scenes))
    models.clear()
    gc.collect()


def measure_memory(run: Run, args: argparse.Namespace, model: str) -> None:
    """Every memory mode for ``model``, under ``memory`` (the first of ``--memory-model``) or ``memory@model``."""
    key = "memory" if model == args.memory_model.split(",")[0] else f"memory@{model}"
    for mode in MEMORY_MODES:
        def child(mode: str = mode) -> dict[str, Any]:
            cmd = [sys.executable, "-m", "benchmarks.gpu_precision", "--memory-child", mode,
                   "--memory-model", model, "--onnx", str(args.onnx), "--out", str(args.out)]
            if args.cpu:
                cmd.append("--cpu")
            env = {**os.environ, **MEMORY_ENV.get(mode, {})}
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, run.left()), cwd=ROOT, env=env)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode != 0 or not lines:
                return {"error": f"exit {done.returncode}", "stderr": done.stderr[-2000:]}
            return json.loads(lines[-1])
        run.step([key, mode], child, need_s=20)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=240.0)
    ap.add_argument("--onnx", type=Path, default=YOLO, help="the YOLOv8n-sized graph (skipped when absent)")
    ap.add_argument("--models", default=None, help="comma-separated; default shapes-det/1,yolov8n (--cpu: shapes-det/1)")
    ap.add_argument("--memory-model", default="shapes-det/1", help="comma-separated: yolov8n or built-in ids")
    ap.add_argument("--memory-only", action="store_true", help="only the memory step (no latency, no accuracy)")
    ap.add_argument("--calls", type=int, default=None, help="timed calls per case (default 200; --cpu 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 20; --cpu 1)")
    ap.add_argument("--scenes", type=int, default=None, help="scenes for fp16 vs fp32 (default 20; --cpu 3)")
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU provider (fp16 forced, CUDA graphs refused)")
    ap.add_argument("--memory-child", choices=tuple(MEMORY_MODES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        try:
            result = memory_child(args.memory_model, 4, args.memory_child, args.cpu, args.onnx)
        except Exception as exc:  # noqa: BLE001 - the parent records it
            result = {"error": f"{type(exc).__name__}: {str(exc)[:500]}", "traceback": traceback.format_exc()[-2000:]}
        print(json.dumps(result, default=str), flush=True)
        return
    args.calls = args.calls if args.calls is not None else (3 if args.cpu else 200)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.cpu else 20)
    args.scenes = args.scenes if args.scenes is not None else (3 if args.cpu else 20)
    names = (args.models or ("shapes-det/1" if args.cpu else "shapes-det/1,yolov8n")).split(",")
    run = Run(args.out, args.budget_s)
    run.doc["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    run.step(["machine"], machine, need_s=0)
    found = run.step(["sources"], lambda: {n: (s if isinstance(s, str) else "ok")
                                           for n, s in sources(names, args.onnx).items()}, need_s=0)
    loaded = sources(names, args.onnx) if isinstance(found, dict) and "error" not in found else {}
    for name, source in loaded.items():
        if isinstance(source, Source) and not args.memory_only:
            measure_model(run, name, source, args)
    for model in args.memory_model.split(","):
        measure_memory(run, args, model)
    run.doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run.save()
    print(f"wrote {run.path}", flush=True)


if __name__ == "__main__":
    main()
