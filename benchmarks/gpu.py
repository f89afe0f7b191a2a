"""GPU benchmark (issue 7), run on the GPU machine: raw ONNX Runtime against this server, one run.

    python -m benchmarks.gpu --onnx yolov8n.onnx --images DIR --out DIR [--quick]

Measures, in order, writing JSON after each step (so a timeout loses little):
1. raw ORT on CUDA: batch 1 and 32 with NumPy in/out, batch 32 with input and output on the GPU;
2. the in-process pipeline (JPEG decode + letterbox + session + postprocess) at batch 1;
3. this server under ``serve run`` (CUDA provider, replicas sharing the GPU): throughput and
   p50/p99 over a client sweep (asyncio clients in separate processes), one model, then requests
   spread over 3 and 12 models; cold loads of new models whose artifacts are in the object store.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.gpu_machine import gpu_memory_by_pid
from benchmarks.native_profile import NativeProfile, package_roots
from benchmarks.proc_cpu import WindowAccount, pids_by_role
from benchmarks.servers import ManagedProcess

ROOT = Path(__file__).resolve().parents[1]


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def raw_ort(onnx_path: Path, quick: bool) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out: dict = {"providers": sess.get_providers()}
    for batch, iters in ((1, 50 if quick else 300), (32, 10 if quick else 60)):
        x = np.random.rand(batch, 3, 640, 640).astype(np.float32)
        for _ in range(5):
            sess.run(None, {name: x})
        t = time.perf_counter()
        for _ in range(iters):
            sess.run(None, {name: x})
        dt = (time.perf_counter() - t) / iters
        out[f"batch{batch}_numpy"] = {"ms": dt * 1e3, "img_per_s": batch / dt}
        xv = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding = sess.io_binding()
        binding.bind_ortvalue_input(name, xv)
        for o in sess.get_outputs():
            binding.bind_output(o.name, "cuda", 0)
        for _ in range(5):
            sess.run_with_iobinding(binding)
        t = time.perf_counter()
        for _ in range(iters):
            sess.run_with_iobinding(binding)
        dt = (time.perf_counter() - t) / iters
        out[f"batch{batch}_gpu_bound"] = {"ms": dt * 1e3, "img_per_s": batch / dt}
    return out


def pipeline(onnx_path: Path, images: list[bytes], quick: bool) -> dict:
    import cv2

    from serve_app.pipeline.images import ImageLimits, decode_image_bytes
    from serve_app.pipeline.preprocess import resize_to_input
    from serve_app.pipeline.session import SessionOptions
    from serve_app.registry.manifest import Manifest
    from serve_app.tasks.params import InferenceParams
    from serve_app.tasks.vision_model import VisionModel

    manifest = Manifest.from_dict(_manifest("bench/0", onnx_path.read_bytes(), str(onnx_path)))
    model = VisionModel.load(manifest, {"weights": onnx_path.read_bytes()},
                             SessionOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
    limits = ImageLimits()
    n = 50 if quick else 300
    dec = []
    for i in range(n):
        t = time.perf_counter()
        img = decode_image_bytes(images[i % len(images)], limits)
        resize_to_input(img, manifest.input)
        dec.append(time.perf_counter() - t)
    full, parts = [], []
    for i in range(n):
        t = time.perf_counter()
        img = decode_image_bytes(images[i % len(images)], limits)
        model.predict([img], InferenceParams())
        full.append(time.perf_counter() - t)
        parts.append(dict(model.timings))
    del cv2
    return {"providers": model.providers, "decode_letterbox_ms_p50": _pct(dec, 50) * 1e3,
            "pipeline_ms_p50": _pct(full, 50) * 1e3, "pipeline_ms_p99": _pct(full, 99) * 1e3,
            "parts_ms_p50": {k: _pct([p[k] for p in parts], 50) * 1e3 for k in parts[0]}}


def _manifest(model_id: str, data: bytes, path: str) -> dict:
    import hashlib

    return {"model_id": model_id, "task": "object-detection", "architecture": "yolov8",
            "files": {"weights": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "path": "weights.onnx"}},
            "classes": [f"c{i}" for i in range(80)], "input": {"width": 640, "height": 640}}


def write_repository(onnx_path: Path, root: Path, count: int) -> list[str]:
    import onnx

    ids = []
    base = onnx.load(str(onnx_path))
    for i in range(count):
        model_id = f"bench{i}/1"
        folder = root / model_id
        folder.mkdir(parents=True, exist_ok=True)
        m = onnx.ModelProto()
        m.CopyFrom(base)
        m.metadata_props.append(onnx.StringStringEntryProto(key="bench_variant", value=str(i)))
        data = m.SerializeToString()
        (folder / "weights.onnx").write_bytes(data)
        (folder / "model.json").write_text(json.dumps(_manifest(model_id, data, "")))
        ids.append(model_id)
    return ids


# Server variants a run can compare side by side: "args" go over configs/serve_gpu.yaml's
# application arguments, "env" to `serve run` (hence to Ray's controller, proxies and replicas).
HAPROXY = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
VARIANTS = {
    # as configs/serve_gpu.yaml says to start it: Ray 2.60's throughput-optimised Serve, HAProxy in
    # front of the gateways' own HTTP servers (no Python proxy on the path), gRPC between gateway
    # and replicas, user code on the replica's event loop
    "haproxy": {"env": HAPROXY},
    # with buckets 1, 2, 4, 8 (four sessions per model) instead of 1 and 8
    "haproxy-4-buckets": {"env": HAPROXY, "args": {"batch_buckets": [2, 4]}},
    # cuDNN limited to its default workspace (onnxruntime lets it take the maximum by default)
    "haproxy-small-workspace": {"env": HAPROXY, "args": {"providers": [
        ["CUDAExecutionProvider", {"cudnn_conv_use_max_workspace": "0"}], "CPUExecutionProvider"]}},
    # the opt-in GPU session features (issue 14): float16 graphs, a CUDA graph for the batch-1
    # session, one arena for all of a replica's sessions
    "haproxy-fp16-graph": {"env": HAPROXY, "args": {"precision": "fp16", "cuda_graph": True, "shared_arena": True,
                                                    "max_models_per_replica": 1, "inference_threads": 1,
                                                    "lazy_batch_sessions": False}},
    "haproxy-fp16": {"env": HAPROXY, "args": {"precision": "fp16"}},
    # a CUDA graph needs one model per replica (settings.py says why; the spread of --spread then reloads)
    "haproxy-graph": {"env": HAPROXY, "args": {"cuda_graph": True, "max_models_per_replica": 1}},
    # JPEGs decoded on the GPU (nvImageCodec: the H200's hardware JPEG engines), pixels back to the host
    "haproxy-gpujpeg": {"env": HAPROXY, "args": {"gpu_jpeg_decode": True}},
    # configs/serve_gpu.yaml before lazy_batch_sessions and cublas_workspace_kib (both buckets' sessions
    # at load, cuBLAS' default workspaces)
    "haproxy-eager": {"env": HAPROXY, "args": {"lazy_batch_sessions": False, "cublas_workspace_kib": 0}},
    # each of the two alone; "haproxy-lean" was both with shared_arena, which broke a replica under
    # --spread (gpu_h200_lean_spread.json) and is now refused with more than one model per replica
    "haproxy-lazy": {"env": HAPROXY, "args": {"lazy_batch_sessions": True, "cublas_workspace_kib": 0}},
    "haproxy-cublas": {"env": HAPROXY, "args": {"lazy_batch_sessions": False, "cublas_workspace_kib": 4096}},
    # a hot model spreads to one more replica once each holder has 8 requests in flight (one batch),
    # not 32: at 32 clients one model is on about 4 replicas instead of 1
    "haproxy-spread8": {"env": HAPROXY, "args": {"spread_at_ongoing": 8}},
    "haproxy-spread16": {"env": HAPROXY, "args": {"spread_at_ongoing": 16}},
    # the same config behind Ray's Python proxy (a plain `serve run`)
    "proxy": {},
    # the replicas as the HTTP ingress, no gateway (no alias resolution before routing; behind HAProxy
    # no model affinity either: Serve's own router, see serve_app/app.py ingress_settings)
    "haproxy-direct": {"env": HAPROXY, "args": {"direct_ingress": True}},
    "direct": {"args": {"direct_ingress": True}},
    # more, smaller replicas per GPU ("sizes" go over --replicas, --gateways and --replica-cpus): a
    # replica's event loop runs decode, pre- and postprocessing and Ray's messaging for all its requests
    "haproxy-r8": {"env": HAPROXY, "sizes": {"replicas": 8, "replica_cpus": 1.0}},
    "haproxy-r8-g8": {"env": HAPROXY, "sizes": {"replicas": 8, "replica_cpus": 1.0, "gateways": 8}},
    "haproxy-direct-r8": {"env": HAPROXY, "args": {"direct_ingress": True}, "sizes": {"replicas": 8, "replica_cpus": 1.0}},
    # every load optimises its graph again (before the optimised-graph cache, pipeline/graph_cache.py)
    "haproxy-no-graph-cache": {"env": HAPROXY, "args": {"graph_cache": False}},
    # a cold model's first session plans its convolutions per shape before its first answer (before quick_start)
    "haproxy-no-quick-start": {"env": HAPROXY, "args": {"quick_start": False}},
    # the bucket sessions give their arena back after each call: a model holds batch 1's memory only
    "haproxy-shrink": {"env": HAPROXY, "args": {"shrink_batch_arenas": True}},
    # batches of up to 16 images (buckets 1 and 16): a batch's fixed host cost shared by twice the images
    "haproxy-b16": {"env": HAPROXY, "args": {"max_batch_size": 16}},
    # the candidate filter off (pipeline/candidates.py): every row of YOLOv8's output leaves the session
    "haproxy-no-filter": {"env": HAPROXY, "args": {"candidate_filter": False}},
    # before the per-bucket sessions: one session for every batch size, one inference thread
    "one-session": {"args": {"session_per_batch_size": False, "inference_threads": 1, "batch_buckets": [2, 4]}},
}


def variant_named(name: str, before: Path | None = None) -> dict:
    """A variant by name; ``NAME@before`` is ``NAME`` served from the ``--before`` tree's serve_app
    (the code before a change, side by side with it in one run).

    >>> variant_named("haproxy@before", Path("/b"))["tree"], "tree" in variant_named("haproxy")
    ('/b', False)
    """
    base, _, at = name.partition("@")
    if at and (at != "before" or before is None):
        raise SystemExit(f"variant {name}: only NAME@before, with --before DIR")
    return {**VARIANTS[base], "tree": str(before)} if at else VARIANTS[base]


def start_server(work: Path, repo: Path, port: int, replicas: int, gateways: int, batch: int,
                 cpu: bool = False, variant: dict | None = None, max_ongoing: int = 32, gpus: int = 1,
                 replica_cpus: float = 2.0) -> ManagedProcess:
    """``serve run`` of configs/serve_gpu.yaml with the bench repository, sizes and variant."""
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "serve_gpu.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update({"repositories": [str(repo)], "cache_dir": str(work / "cache"), "state_dir": str(work / "state"),
                        "max_batch_size": batch, **(variant or {}).get("args", {})})
    if app["args"].get("direct_ingress"):
        app["deployments"] = [d for d in app["deployments"] if d["name"] != "Gateway"]
    for d in app["deployments"]:
        if d["name"] == "Gateway":
            d.update(num_replicas=gateways, ray_actor_options={"num_cpus": 0.25 if cpu else 1})
        else:
            d.update(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                     ray_actor_options={"num_cpus": 0.5 if cpu else replica_cpus,
                                        "num_gpus": 0 if cpu else round(gpus / replicas, 3)})
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray"), "RAY_USAGE_STATS_ENABLED": "0", **(variant or {}).get("env", {})}
    tree = (variant or {}).get("tree")
    if tree:  # serve run and Ray's workers import serve_app from that tree first (its folder, then PYTHONPATH)
        env["PYTHONPATH"] = os.pathsep.join([tree, *filter(None, [env.get("PYTHONPATH")])])
    return ManagedProcess("serve", [sys.executable, "-c", "from ray.serve.scripts import cli; cli()", "run",
                                    str(work / "config.yaml")], cwd=tree or ROOT, env=env, log_path=work / "serve.log",
                          marker=str(work / "ray"))


def request_bodies(style: str, models: list[str], images: list[bytes], extra: dict) -> list[tuple[str, bytes]]:
    """(model id, body) pairs a load process cycles through: the JPEG itself for the raw route
    (the id goes in the header), else a Roboflow-style JSON body with the image in base64.

    >>> [(m, b) for m, b in request_bodies("raw", ["a/1", "b/1"], [b"x"], {})]
    [('a/1', b'x'), ('b/1', b'x')]
    >>> json.loads(request_bodies("json", ["a/1"], [b"jpg"], {"api_key": "k"})[0][1])
    {'model_id': 'a/1', 'image': {'type': 'base64', 'value': 'anBn'}, 'api_key': 'k'}
    """
    import base64

    pairs = []
    for i in range(len(models) * len(images)):
        model, image = models[i % len(models)], images[i % len(images)]
        if style == "raw":
            pairs.append((model, image))
        else:
            body = {"model_id": model, "image": {"type": "base64", "value": base64.b64encode(image).decode()}, **extra}
            pairs.append((model, json.dumps(body).encode()))
    return pairs


def _client(target: dict, models: list[str], images: list[bytes], workers: int, duration: float,
            ready, go, go_at, q) -> None:
    """One load process: ``workers`` closed-loop asyncio clients, all sending from the shared
    instant ``go_at`` until ``go_at + duration``; every request's (start, end, status) relative to
    that instant goes back, with a sample of Server-Timing headers."""
    import aiohttp

    pairs = request_bodies(target["style"], models, images, target.get("extra", {}))
    json_body = target["style"] != "raw"

    async def main() -> None:
        records: list[tuple[float, float, int]] = []
        stages: list[str] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=60)) as s:
            ready.release()
            while not go.is_set():
                await asyncio.sleep(0.002)
            t0 = go_at.value
            while time.monotonic() < t0:
                await asyncio.sleep(0.001)
            end_at = t0 + duration

            async def worker(k: int) -> None:
                while time.monotonic() < end_at:
                    model, body = pairs[k % len(pairs)]
                    headers = ({"Content-Type": "application/json"} if json_body else
                               {"serve_multiplexed_model_id": model, "Content-Type": "image/jpeg"})
                    start = time.monotonic()
                    try:
                        async with s.post(target["url"], data=body, headers=headers) as r:
                            await r.read()
                            status = r.status
                            if status == 200 and len(stages) < 2000:
                                stages.append(r.headers.get("Server-Timing", ""))
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        status = -1
                    records.append((start - t0, time.monotonic() - t0, status))
                    k += workers
            await asyncio.gather(*(worker(i) for i in range(workers)))
        q.put((records, stages[::max(1, len(stages) // 250)]))

    asyncio.run(main())


def window_summary(records: list[tuple[float, float, int]], duration: float) -> dict:
    """Throughput and latency of the answers completed inside the window [0, duration] (times
    relative to the shared start): answers that end after it are in flight at its close and count
    neither as answers nor as errors.

    >>> s = window_summary([(0.0, 0.5, 200), (0.5, 0.9, 200), (0.9, 1.2, 200), (0.1, 0.3, 503)], 1.0)
    >>> s["answers"], s["errors"], s["req_per_s"], s["late"], s["p50_ms"]
    (2, 1, 2.0, 1, 450.0)
    """
    inside = [(a, b, st) for a, b, st in records if b <= duration]
    lat = [b - a for a, b, st in inside if st == 200]
    return {"answers": len(lat), "errors": sum(1 for *_, st in inside if st != 200),
            "late": len(records) - len(inside), "req_per_s": len(lat) / duration,
            "p50_ms": _pct(lat, 50) * 1e3, "p99_ms": _pct(lat, 99) * 1e3}


def py_spy() -> str:
    """py-spy: on the PATH (the GPU machine's bundle), else this tree's venv."""
    return shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")


def settle(window: Callable[[], dict], rounds: int = 4) -> int:
    """Run unrecorded ``window``s until one had no request waiting for a model load (a hot model
    spilling onto another replica, which loads it), at most ``rounds``; how many ran. One fixed
    settling window left such loads inside the measured window in 4 of 21 cells on 2026-12-03.

    >>> windows = iter([{"server_timing_p50_ms": {"load_wait": 700.0}}, {"server_timing_p50_ms": {"decode": 2.0}}])
    >>> settle(lambda: next(windows))
    2
    """
    for done in range(1, rounds + 1):
        if "load_wait" not in window().get("server_timing_p50_ms", {}):
            return done
    return rounds


def drive(target: dict, models: list[str], images: list[bytes], clients: int, duration: float,
          profile_dir: Path | None = None) -> dict:
    """``clients`` closed-loop clients in up to 8 processes, all started at one instant; only the
    answers completed inside the window count. ``cpu``: where the machine's cores went in the
    window, per process role (``benchmarks/proc_cpu.py``). With ``profile_dir``, py-spy samples
    the serving processes through the window (``native_profile``: ``profile`` in the result)."""
    ctx = mp.get_context("spawn")
    procs_n = min(clients, 8)
    per = [clients // procs_n + (1 if i < clients % procs_n else 0) for i in range(procs_n)]
    ready, go, go_at, q = ctx.Semaphore(0), ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(target, models, images, w, duration, ready, go, go_at, q), daemon=True)
             for w in per]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a load process did not start in 120 s")
        go_at.value = time.monotonic() + 0.1
        account = WindowAccount(go_at.value, duration, frozenset(p.pid for p in procs))
        go.set()
        spies = None
        if profile_dir is not None:
            spies = NativeProfile(py_spy(), pids_by_role(("model_server", "gateway")), duration, profile_dir)
        results = [q.get(timeout=duration + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
    records = [r for res in results for r in res[0]]
    summary = window_summary(records, duration)
    out = {"target": target["name"], "clients": clients, "models": len(models), **summary,
           "server_timing_p50_ms": stage_medians([h for res in results for h in res[1]]),
           "cpu": account.result(summary["answers"])}
    if spies is not None:
        out["profile"] = spies.result((out["cpu"] or {}).get("core_ms_per_answer", {}))
    return out


def stage_medians(headers: list[str]) -> dict[str, float]:
    """Median milliseconds per Server-Timing stage (replica's decode, queue, preprocess, inference
    incl. waiting for its batch, postprocess, total; the gateway's total).

    >>> stage_medians(["decode;dur=2.00, gateway;dur=9.00", "decode;dur=4.00, gateway;dur=11.00"])
    {'decode': 3.0, 'gateway': 10.0}
    """
    seen: dict[str, list[float]] = {}
    for header in headers:
        for part in filter(None, (p.strip() for p in header.split(","))):
            name, _, dur = part.partition(";dur=")
            if dur:
                seen.setdefault(name, []).append(float(dur))
    return {name: round(float(np.median(v)), 2) for name, v in seen.items()}


TARGETS = ("ours-raw", "ours-json", "rf-json")


def targets(names: list[str], ours_url: str, rf_url: str | None) -> list[dict]:
    """The routes a sweep drives: ours with the JPEG as the body (model id in the header), ours and
    Roboflow Inference on the same Roboflow-style JSON route with the same body.

    >>> [(t["name"], t["url"].split("?")[0]) for t in targets(list(TARGETS), "http://o", "http://r")]
    [('ours-raw', 'http://o/infer'), ('ours-json', 'http://o/infer/object_detection'), ('rf-json', 'http://r/infer/object_detection')]
    >>> [t["name"] for t in targets(list(TARGETS), "http://o", None)]  # no Roboflow running
    ['ours-raw', 'ours-json']
    """
    from benchmarks.servers import INFER_PARAMS

    query = "&".join(f"{k}={v}" for k, v in INFER_PARAMS.items())
    extra = {"api_key": "dummy", **INFER_PARAMS}
    table = {"ours-raw": {"name": "ours-raw", "url": f"{ours_url}/infer?{query}", "style": "raw"},
             "ours-json": {"name": "ours-json", "url": ours_url + "/infer/object_detection", "style": "json",
                           "extra": extra}}
    if rf_url:
        table["rf-json"] = {"name": "rf-json", "url": rf_url + "/infer/object_detection", "style": "json",
                            "extra": extra}
    return [table[n] for n in names if n in table]


RF_MODEL = "bench/1"


def start_roboflow(work: Path, onnx_path: Path, rf_site: Path, port: int, python: str) -> ManagedProcess:
    """Roboflow Inference (classic ONNX path, CUDA provider, one uvicorn worker as its GPU image
    runs it) with ``onnx_path`` as model ``bench/1`` in a cache written the way it writes one.
    Its packages come from ``rf_site`` ahead of ours (its own fastapi and pydantic); onnxruntime-gpu
    from ours."""
    from benchmarks.models import write_roboflow_model

    cache, scratch = work / "rf-cache", work / "rf"
    write_roboflow_model(cache, RF_MODEL, onnx_path, [f"c{i}" for i in range(80)])
    for static in ("static", "_next/static"):  # the app mounts both, relative to the working folder
        (scratch / "inference" / "landing" / "out" / static).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(rf_site), os.environ.get("PYTHONPATH", "")]),
           "HOME": str(scratch), "OFFLINE_MODE": "true", "MODEL_CACHE_DIR": str(cache), "DISK_CACHE_CLEANUP": "False",
           "USE_INFERENCE_MODELS": "False", "MAX_ACTIVE_MODELS": "8", "METRICS_ENABLED": "False",
           "ENABLE_STREAM_API": "False", "LOG_LEVEL": "WARNING", "NUM_WORKERS": "1",
           "ONNXRUNTIME_EXECUTION_PROVIDERS": "[CUDAExecutionProvider,CPUExecutionProvider]"}
    return ManagedProcess("rf", [python, str(ROOT / "benchmarks" / "rf_server.py"), "--port", str(port)],
                          cwd=scratch, env=env, log_path=work / "rf.log")


def main() -> None:
    from benchmarks.gpu_machine import machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", default="raw,pipeline,server")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--gateways", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--replica-cpus", type=float, default=2.0,
                    help="ModelServer num_cpus (Ray's logical CPUs: 8 replicas and 4 gateways on 16 cores need 1)")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs the replicas spread over (each gets gpus/replicas)")
    ap.add_argument("--replica-max-ongoing", type=int, default=32,
                    help="ModelServer max_ongoing_requests: past it a hot model spills onto more replicas")
    ap.add_argument("--variants", default="haproxy", help=f"comma-separated, of {sorted(VARIANTS)}")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {TARGETS}")
    ap.add_argument("--rf-site", type=Path, default=Path("/tmp/rfsite"),
                    help="folder holding Roboflow Inference's packages (rf-json target)")
    ap.add_argument("--rf-python", default=sys.executable, help="the interpreter Roboflow Inference runs under")
    ap.add_argument("--clients", default="1,8,32,128,256")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds of unrecorded load at each level and target before its window")
    ap.add_argument("--spread", action="store_true", help="also spread the best level over 3 and 12 models")
    ap.add_argument("--before", type=Path, default=None,
                    help="a tree (a copy of serve_app at an earlier commit) that variants named NAME@before serve")
    ap.add_argument("--profile-clients", type=int, default=0,
                    help="after this level's raw-route window, one more with py-spy --native on the serving "
                         "processes (the 'profile' rows of the sweep)")
    ap.add_argument("--cpu", action="store_true", help="dry run on a machine without a GPU")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "gpu.json"
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(os.environ.get("GIT_COMMIT")),
                    "load_generator": "8 processes of asyncio clients, all released at one instant; answers "
                                      "completed inside the window counted; they share the cores with the servers"}

    def save() -> None:
        result_path.write_text(json.dumps(result, indent=1))

    save()
    images = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))]
    steps = args.steps.split(",")
    if "raw" in steps:
        result["raw_ort"] = raw_ort(args.onnx, args.quick)
        print("raw", json.dumps(result["raw_ort"]), flush=True)
        save()
    if "pipeline" in steps:
        result["pipeline"] = pipeline(args.onnx, images, args.quick)
        print("pipeline", json.dumps(result["pipeline"]), flush=True)
        save()
    if "server" not in steps:
        return
    ids = write_repository(args.onnx, Path("/tmp/gpubench-repo"), 20)
    result["server"] = {}
    for name in args.variants.split(","):
        chosen = variant_named(name, args.before)
        result["server"][name] = {"variant": chosen, **sizes(args, chosen),
                                  "max_batch": args.batch, "sweep": []}
        serve_variant(args, name, ids, images, result["server"][name], save)


def sizes(args: argparse.Namespace, variant: dict) -> dict:
    """Replicas, gateways and CPUs per replica: the command line's, unless the variant sets its own.

    >>> a = argparse.Namespace(replicas=4, gateways=4, replica_cpus=2.0)
    >>> sizes(a, VARIANTS["haproxy"]), sizes(a, VARIANTS["haproxy-r8"])["replicas"]
    ({'replicas': 4, 'gateways': 4, 'replica_cpus': 2.0}, 8)
    """
    own = {"replicas": args.replicas, "gateways": args.gateways, "replica_cpus": args.replica_cpus}
    return {**own, **variant.get("sizes", {})}


def _wait_ready(url: str, proc: ManagedProcess, what: str, timeout_s: float = 240,
                post: tuple[bytes, str] | None = None) -> None:
    """Until ``url`` answers 200 (a GET, or with ``post`` = (JPEG, model id) an inference request)."""
    import requests

    deadline = time.time() + timeout_s
    while True:
        try:
            r = (requests.post(url, data=post[0], headers={"serve_multiplexed_model_id": post[1]}, timeout=60)
                 if post else requests.get(url, timeout=5))
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.time() > deadline or not proc.alive():
            raise RuntimeError(f"{what} did not start:\n" + proc.tail(60))
        time.sleep(1)


def first_request(infer: str, model_id: str, image: bytes, pause_s: float = 0.0) -> dict:
    """One raw-body request for ``model_id``, timed: ``{"ms", "status", "server_timing"}``; then
    ``pause_s`` of quiet (so the next first request does not meet this one's background work)."""
    import requests

    t = time.perf_counter()
    r = requests.post(infer, data=image, headers={"serve_multiplexed_model_id": model_id}, timeout=120)
    got = {"ms": (time.perf_counter() - t) * 1e3, "status": r.status_code,
           "server_timing": r.headers.get("Server-Timing", "")}
    time.sleep(pause_s)
    return got


def serve_variant(args: argparse.Namespace, name: str, ids: list[str], images: list[bytes], out: dict, save) -> None:
    """One server variant, with Roboflow Inference beside it when the rf-json target is asked
    for: start both, warm, sweep the clients (at each level every target in turn), optionally
    spread over 3 and 12 models, cold loads of 4 new models; stop both whatever happens."""
    import requests

    from benchmarks.servers import free_port

    work = Path("/tmp/gpubench")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    chosen = variant_named(name, args.before)
    direct = chosen.get("args", {}).get("direct_ingress")
    names = args.targets.split(",")
    rf = rf_url = None
    if "rf-json" in names:
        rf_port = free_port()
        rf = start_roboflow(work, args.onnx, args.rf_site, rf_port, args.rf_python)
        rf_url = f"http://127.0.0.1:{rf_port}"
    size = sizes(args, chosen)
    server = start_server(work, Path("/tmp/gpubench-repo"), port, size["replicas"], size["gateways"], args.batch,
                          args.cpu, chosen, args.replica_max_ongoing, args.gpus, size["replica_cpus"])
    try:
        infer = url + "/infer"
        if direct:  # no readiness route without the gateway: the first request answers it
            _wait_ready(infer, server, "serve run", post=(images[0], ids[0]))
        else:
            _wait_ready(url + "/readiness", server, "serve run")
        replicas = pids_by_role(("model_server",)).get("model_server", [])
        with ThreadPoolExecutor(1) as pool:  # which tree the replicas run, read from their stacks while they load
            roots = pool.submit(package_roots, py_spy(), replicas)
            t = time.perf_counter()
            for mid in ids[:12]:  # warm: load the 12 models once (the first load pays CUDA init)
                for _ in range(2):
                    requests.post(infer, data=images[0], headers={"serve_multiplexed_model_id": mid}, timeout=120)
            out["warm_12_models_s"] = time.perf_counter() - t
            out["serve_app_from"] = roots.result()
        if rf is not None:
            _wait_ready(rf_url + "/info", rf, "Roboflow Inference", 300)
            body = json.loads(request_bodies("json", [RF_MODEL], images[:1], {"api_key": "dummy"})[0][1])
            t = time.perf_counter()
            first = requests.post(rf_url + "/infer/object_detection", json=body, timeout=300)
            out["rf_first_request"] = {"ms": (time.perf_counter() - t) * 1e3, "status": first.status_code,
                                       "body": first.text[:300]}
            for _ in range(20):
                requests.post(rf_url + "/infer/object_detection", json=body, timeout=60)
            used = gpu_memory_by_pid()
            family = {rf.pid, *rf.family()}
            out["rf_gpu_memory_mib"] = sum(v for pid, v in used.items() if pid in family)
            out["rf_log_head"] = (work / "rf.log").read_text(errors="replace")[:3000]
            print("rf ready", json.dumps({k: out[k] for k in ("rf_first_request", "rf_gpu_memory_mib")}), flush=True)
        save()
        (work / "sweep_started").touch()  # a profiler run beside the benchmark waits for this
        sweep_targets = targets(names, url, rf_url)
        for c in [int(x) for x in args.clients.split(",")]:
            for target in sweep_targets:
                model = [RF_MODEL] if target["name"].startswith("rf") else ids[:1]
                rounds = 0
                if args.settle > 0:  # unrecorded: a spill onto another replica loads there before the window
                    rounds = settle(lambda: drive(target, model, images, c, args.settle))
                r = {**drive(target, model, images, c, args.duration), "settled_s": args.settle,
                     "settle_rounds": rounds}
                out["sweep"].append(r)
                print(name, "sweep", json.dumps(r), flush=True)
                save()
                if c == args.profile_clients and target["name"] == "ours-raw":
                    r = drive(target, model, images, c, args.duration, profile_dir=work / "profile")
                    out.setdefault("profiles", []).append(r)
                    print(name, "profile", json.dumps(r["profile"])[:3000], flush=True)
                    save()
        if args.spread:
            ours = [r for r in out["sweep"] if r["target"] == "ours-raw"] or out["sweep"]
            best = max(ours, key=lambda r: r["req_per_s"])
            raw = targets(["ours-raw"], url, None)[0]
            for n in (3, 12):
                # the first pass includes loading the models on every replica the router spills them to;
                # the second is the steady state the target is about
                for key in (f"spread_{n}_first", f"spread_{n}"):
                    r = drive(raw, ids[:n], images, best["clients"], args.duration)
                    out[key] = r
                    print(name, key, json.dumps(r), flush=True)
                    save()
        # new model ids; their artifacts go origin -> disk -> object store -> replica
        cold = [first_request(infer, mid, images[0]) for mid in ids[12:16]]
        # the same once the server is quiet: the loads above may wait for other replicas' loads and
        # bucket-session builds (they are measured one at a time per GPU, under its lock file)
        time.sleep(5)
        quiet = [first_request(infer, mid, images[0], pause_s=1) for mid in ids[16:20]]
        out["cold_first_request_ms"] = [c["ms"] for c in cold]
        out["cold_after_quiet_ms"] = [c["ms"] for c in quiet]
        # where each of those 8 first requests spent its time
        out["cold_server_timing"] = [c["server_timing"] for c in cold + quiet]
        if not direct:
            reg = requests.get(url + "/model/registry", timeout=30).json()
            out["loads"] = [e for m in reg["models"] for e in m.get("loaded_on", [])]
            out["gpu_memory_mib_by_pid"] = gpu_memory_by_pid()
            # issue 14's cold case: a model no replica holds, its weights already in the object store
            # (unloaded everywhere by /model/clear, open on the loopback bind; the artifact stays)
            requests.post(url + "/model/clear", timeout=120).raise_for_status()
            time.sleep(2)
            out["cold_from_object_store"] = [first_request(infer, mid, images[0], pause_s=1) for mid in ids[12:16]]
        save()
    finally:
        out["stop"] = server.stop()
        out["serve_log_tail"] = (work / "serve.log").read_text(errors="replace")[-3000:]
        if rf is not None:
            out["rf_stop"] = rf.stop(int_grace_s=15)
            out["rf_log_tail"] = (work / "rf.log").read_text(errors="replace")[-3000:]
        save()


if __name__ == "__main__":
    main()
