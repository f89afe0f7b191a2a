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
import sys
import time
from pathlib import Path

import numpy as np

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
    # the same config behind Ray's Python proxy (a plain `serve run`)
    "proxy": {},
    # the replicas as the HTTP ingress, no gateway (no alias resolution before routing, no affinity)
    "haproxy-direct": {"env": HAPROXY, "args": {"direct_ingress": True}},
    "direct": {"args": {"direct_ingress": True}},
    # before the per-bucket sessions: one session for every batch size, one inference thread
    "one-session": {"args": {"session_per_batch_size": False, "inference_threads": 1, "batch_buckets": [2, 4]}},
}


def start_server(work: Path, repo: Path, port: int, replicas: int, gateways: int, batch: int,
                 cpu: bool = False, variant: dict | None = None, max_ongoing: int = 32, gpus: int = 1) -> ManagedProcess:
    """``serve run`` of configs/serve_gpu.yaml with the bench repository, sizes and variant."""
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "serve_gpu.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(repositories=[str(repo)], cache_dir=str(work / "cache"), state_dir=str(work / "state"),
                       max_batch_size=batch, **(variant or {}).get("args", {}))
    if app["args"].get("direct_ingress"):
        app["deployments"] = [d for d in app["deployments"] if d["name"] != "Gateway"]
    for d in app["deployments"]:
        if d["name"] == "Gateway":
            d.update(num_replicas=gateways, ray_actor_options={"num_cpus": 0.25 if cpu else 1})
        else:
            d.update(num_replicas=replicas, max_ongoing_requests=max_ongoing,
                     ray_actor_options={"num_cpus": 0.5 if cpu else 2, "num_gpus": 0 if cpu else round(gpus / replicas, 3)})
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray"), "RAY_USAGE_STATS_ENABLED": "0", **(variant or {}).get("env", {})}
    return ManagedProcess("serve", [sys.executable, "-c", "from ray.serve.scripts import cli; cli()", "run",
                                    str(work / "config.yaml")], cwd=ROOT, env=env, log_path=work / "serve.log",
                          marker=str(work / "ray"))


def _client(url: str, models: list[str], bodies: list[bytes], workers: int, duration: float, q) -> None:
    import aiohttp

    async def main() -> None:
        lat: list[float] = []
        stages: list[str] = []  # Server-Timing headers, parsed by the parent
        errors = 0
        end = time.time() + duration
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def worker(k: int) -> None:
                nonlocal errors
                while time.time() < end:
                    t = time.perf_counter()
                    try:
                        async with s.post(url, data=bodies[k % len(bodies)],
                                          headers={"serve_multiplexed_model_id": models[k % len(models)]}) as r:
                            await r.read()
                            ok = r.status == 200
                            if ok:
                                stages.append(r.headers.get("Server-Timing", ""))
                    except aiohttp.ClientError:
                        ok = False
                    if ok:
                        lat.append(time.perf_counter() - t)
                    else:
                        errors += 1
                    k += workers
            await asyncio.gather(*(worker(i) for i in range(workers)))
        q.put((lat, errors, stages[::max(1, len(stages) // 500)]))

    asyncio.run(main())


def drive(url: str, models: list[str], bodies: list[bytes], clients: int, duration: float) -> dict:
    procs_n = min(clients, 8)
    per = [clients // procs_n + (1 if i < clients % procs_n else 0) for i in range(procs_n)]
    q = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_client, args=(url, models, bodies, w, duration, q)) for w in per]
    t = time.time()
    for p in procs:
        p.start()
    results = [q.get(timeout=duration + 120) for _ in procs]
    for p in procs:
        p.join(10)
    wall = time.time() - t - 1.0  # process start
    lat = [x for r in results for x in r[0]]
    errors = sum(r[1] for r in results)
    return {"clients": clients, "models": len(models), "requests": len(lat), "errors": errors,
            "req_per_s": len(lat) / duration, "p50_ms": _pct(lat, 50) * 1e3, "p99_ms": _pct(lat, 99) * 1e3,
            "wall_s": wall, "server_timing_p50_ms": stage_medians([h for r in results for h in r[2]])}


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", default="raw,pipeline,server")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--gateways", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gpus", type=int, default=1, help="GPUs the replicas spread over (each gets gpus/replicas)")
    ap.add_argument("--replica-max-ongoing", type=int, default=32,
                    help="ModelServer max_ongoing_requests: past it a hot model spills onto more replicas")
    ap.add_argument("--variants", default="haproxy,proxy", help=f"comma-separated, of {sorted(VARIANTS)}")
    ap.add_argument("--clients", default="1,8,32,64,128,256")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--cpu", action="store_true", help="dry run on a machine without a GPU")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "gpu.json"
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save() -> None:
        result_path.write_text(json.dumps(result, indent=1))

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
    ids = write_repository(args.onnx, Path("/tmp/gpubench-repo"), 16)
    result["server"] = {}
    for name in args.variants.split(","):
        result["server"][name] = {"variant": VARIANTS[name], "replicas": args.replicas, "gateways": args.gateways,
                                  "max_batch": args.batch, "sweep": []}
        serve_variant(args, name, ids, images, result["server"][name], save)


def serve_variant(args: argparse.Namespace, name: str, ids: list[str], images: list[bytes], out: dict, save) -> None:
    """One server variant: start it, warm 12 models, sweep clients, spread over 3 and 12 models,
    cold loads of 4 new models; stop it (and every process it started) whatever happens."""
    import shutil

    import requests

    work = Path("/tmp/gpubench")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    port = 18000
    server = start_server(work, Path("/tmp/gpubench-repo"), port, args.replicas, args.gateways, args.batch, args.cpu,
                          VARIANTS[name], args.replica_max_ongoing, args.gpus)
    url = f"http://127.0.0.1:{port}"
    direct = VARIANTS[name].get("args", {}).get("direct_ingress")
    try:
        deadline = time.time() + 240
        while True:
            try:
                if direct:  # no readiness route without the gateway: the first request answers it
                    r = requests.post(url + "/infer", data=images[0], headers={"serve_multiplexed_model_id": ids[0]},
                                      timeout=60)
                else:
                    r = requests.get(url + "/readiness", timeout=5)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline or not server.alive():
                raise RuntimeError(server.tail(60))
            time.sleep(2)
        infer = url + "/infer"
        t = time.perf_counter()
        for mid in ids[:12]:  # warm: load the 12 models once (the first load pays CUDA init)
            for _ in range(2):
                requests.post(infer, data=images[0], headers={"serve_multiplexed_model_id": mid}, timeout=120)
        out["warm_12_models_s"] = time.perf_counter() - t
        (work / "sweep_started").touch()  # a profiler run beside the benchmark waits for this
        for c in [int(x) for x in args.clients.split(",")]:
            r = drive(infer, ids[:1], images, c, args.duration)
            out["sweep"].append(r)
            print(name, "sweep", json.dumps(r), flush=True)
            save()
        best = max(out["sweep"], key=lambda r: r["req_per_s"])
        for n in (3, 12):
            # the first pass includes loading the models on every replica the router spills them to;
            # the second is the steady state the target is about
            for key in (f"spread_{n}_first", f"spread_{n}"):
                r = drive(infer, ids[:n], images, best["clients"], args.duration)
                out[key] = r
                print(name, key, json.dumps(r), flush=True)
                save()
        cold = []
        for mid in ids[12:16]:  # new model ids; their artifacts go origin -> disk -> object store -> replica
            t = time.perf_counter()
            requests.post(infer, data=images[0], headers={"serve_multiplexed_model_id": mid}, timeout=120)
            cold.append((time.perf_counter() - t) * 1e3)
        out["cold_first_request_ms"] = cold
        if not direct:
            reg = requests.get(url + "/model/registry", timeout=30).json()
            out["loads"] = [e for m in reg["models"] for e in m.get("loaded_on", [])]
        save()
    finally:
        out["stop"] = server.stop()
        out["serve_log_tail"] = (work / "serve.log").read_text(errors="replace")[-3000:]
        save()


if __name__ == "__main__":
    main()
