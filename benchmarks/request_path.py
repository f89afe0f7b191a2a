"""The request path before and after a change: CPU per request in the gateway, the replica and the
proxy, the Server-Timing breakdown, and the JSON route's throughput against the raw-body route.

    .venv/bin/python -m benchmarks.request_path --before /work/before [--after .] [--rounds 4]
        [--requests 150] [--clients 4] [--duration 15]

``--before`` and ``--after`` are two work trees of this repository (``git worktree add DIR
<commit>``) run with this one virtual environment: each server is ``serve run`` started in its
tree with ``PYTHONPATH`` set to it, so its Ray workers import that tree's ``serve_app``. They run
one after the other, never at once (two cores), in rounds of before-after then after-before (so a
drift of the machine's load over the run cancels out), from
one generated configuration: one Gateway, one ModelServer replica (1 CPU), the built-in
``shapes-det/1`` (YOLOv8 at 640 px: the session dominates) and ``shapes-cls/1`` (a 128 px classifier:
the request path dominates), both pinned, CPU provider, ``hot_model_routing: false`` (known to both:
Serve's own router).

Per server, model and route (``json``: ``POST /infer/{task}`` with a base64 image, the body
Roboflow's clients send; ``raw``: ``POST /infer`` with the JPEG as the body): ``--requests``
sequential requests, during which the CPU time (``utime + stime`` of every thread) of the Gateway,
ModelServer and proxy processes is read from ``/proc``, then ``--clients`` closed-loop client
processes for ``--duration`` seconds. First, without Ray, each tree's own parse/pickle/decode
code is timed in process on one JSON base64 request (``in_process``: what the gateway and the
replica spend on the request's bytes, free of the Serve machinery's cost and of the box's noise).
Writes benchmarks/results/request_path.{json,png}.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests
import yaml

from benchmarks.loadgen import ClientPlan, Target, run_clients
from benchmarks.servers import INFER_PARAMS, ManagedProcess, cmdline, free_port, wait_http
from benchmarks.stats import summarize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"shapes-det/1": "object_detection", "shapes-cls/1": "classification"}  # id -> its JSON route
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def images(count: int = 4) -> list[bytes]:
    from zoo.shapes import draw_scene

    return [cv2.imencode(".jpg", draw_scene(np.random.default_rng(seed), size=(640, 480), max_shapes=4).image,
                         [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for seed in range(count)]


def config(port: int, work: Path) -> dict:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "vision", "route_prefix": "/", "import_path": "serve_app.app:build_app",
            "args": {"repositories": ["configs/models"], "aliases": {}, "providers": ["CPUExecutionProvider"],
                     "cache_dir": str(work / "cache"), "state_dir": str(work / "state"),
                     "hot_model_routing": False, "pinned": list(MODELS)},
            "deployments": [
                {"name": "Gateway", "num_replicas": 1, "max_ongoing_requests": 256,
                 "ray_actor_options": {"num_cpus": 0.25}},
                {"name": "ModelServer", "num_replicas": 1, "max_ongoing_requests": 16,
                 "ray_actor_options": {"num_cpus": 1, "num_gpus": 0}},
            ],
        }],
    }


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime + stime, all threads


def roles(proc: ManagedProcess) -> dict[str, int]:
    """Gateway, ModelServer and proxy PIDs of this server (by their Ray process titles)."""
    found: dict[str, int] = {}
    for pid in proc.family():
        title = cmdline(pid)
        m = re.match(r"ray::ServeReplica:\w+:(Gateway|ModelServer)\b", title)
        if m:
            found[m.group(1).lower()] = pid
        elif title.startswith("ray::ProxyActor"):
            found["proxy"] = pid
    return found


def stages_of(header: str) -> dict[str, float]:
    """``decode;dur=2.00, gateway;dur=10.50`` -> {"decode": 2.0, "gateway": 10.5} (milliseconds)."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def target(url: str, model: str, route: str) -> Target:
    if route == "json":
        return Target(route, f"{url}/infer/{MODELS[model]}", "json", dict(INFER_PARAMS))
    return Target(route, f"{url}/infer?" + "&".join(f"{k}={v}" for k, v in INFER_PARAMS.items()), "raw")


def send(session: requests.Session, url: str, model: str, route: str, image: bytes) -> requests.Response:
    """One request as the load generator's clients send it."""
    t = target(url, model, route)
    if route == "json":
        body = {"model_id": model, "image": {"type": "base64", "value": base64.b64encode(image).decode()}, **t.extra}
        return session.post(t.url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=60)
    return session.post(t.url, data=image, timeout=60, headers={t.header: model, "Content-Type": "image/jpeg"})


def measure_route(url: str, model: str, route: str, pids: dict[str, int], jpegs: list[bytes], n: int, clients: int,
                  duration: float) -> dict[str, Any]:
    session = requests.Session()
    for i in range(10):
        r = send(session, url, model, route, jpegs[i % len(jpegs)])
        assert r.status_code == 200 and r.json()["predictions"] is not None, r.text[:300]
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    latencies, timings = [], []
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        r = send(session, url, model, route, jpegs[i % len(jpegs)])
        latencies.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text[:300]
        timings.append(stages_of(r.headers.get("Server-Timing", "")))
    wall = time.perf_counter() - started
    cpu = {role: (cpu_seconds(pid) - before[role]) / n * 1e3 for role, pid in pids.items()}
    names = sorted({k for t in timings for k in t})
    out: dict[str, Any] = {
        "sequential": summarize(latencies, wall_s=wall),
        "cpu_ms_per_request": {k: round(v, 2) for k, v in cpu.items()},
        "server_timing_p50_ms": {k: round(float(np.median([t[k] for t in timings if k in t])), 2) for k in names},
    }
    plans = [ClientPlan(target(url, model, route), (model,), tuple([0] * 100_000), tuple(jpegs), duration,
                        image_offset=c) for c in range(clients)]
    run = run_clients(plans, f"{model} {route} x{clients}", progress=False)
    out["throughput"] = {"clients": clients, **summarize(run.latencies, errors=int((run.records["status"] != 200).sum()),
                                                         wall_s=run.wall_s)}
    return out

# The request path without Ray, in each tree's own code: the gateway's part (body join, JSON parse,
# validation, the handle's pickle) and the replica's (unpickle, parameters, base64 decode: up to the
# image file's bytes; then the JPEG decode, the same code in both),
# timed with process CPU time over many repetitions of one JSON base64 request.
PROBE = """
import base64, json, pickle, sys, time
import serve_app.http.roboflow as rf
from serve_app.http.parsing import parse_json
from serve_app.settings import Settings
jpeg = open(sys.argv[1], "rb").read()
n = int(sys.argv[2])
body = json.dumps({"model_id": "shapes-det/1", "image": {"type": "base64", "value": base64.b64encode(jpeg).decode()},
                   "confidence": 0.4, "iou_threshold": 0.3, "max_detections": 300}).encode()
chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
limits = Settings().image_limits
after = hasattr(rf, "inference_params")
if after:
    def gateway():
        req = rf.from_json_body(parse_json(b"".join(chunks)), 64, limits)
        return pickle.dumps(req.for_model("shapes-det/1@0"), protocol=5)
    def replica(blob):  # up to the image file's bytes (what load_source decodes)
        sent = pickle.loads(blob)
        return [s.data for s in sent.images], sent.params.overrides.disable_preproc_auto_orient
else:
    from serve_app.tasks.params import InferenceParams
    def gateway():
        req = rf.from_json_body(parse_json(b"".join(chunks)), 64)
        return pickle.dumps({"images": req.images, "params": req.params}, protocol=5)
    from serve_app.pipeline.images import _decode_base64
    def replica(blob):  # up to the image file's bytes (load_image's base64 step; the JPEG decode is alike)
        payload = pickle.loads(blob)
        params = InferenceParams.from_request(payload["params"])
        images = payload["images"] if isinstance(payload["images"], list) else [payload["images"]]
        return [_decode_base64(s["value"], limits.max_file_bytes, "image") for s in images], params
def cpu_ms(fn, *a):
    fn(*a)
    t = time.process_time()
    for _ in range(n):
        fn(*a)
    return (time.process_time() - t) / n * 1e3
blob = gateway()
from serve_app.pipeline.images import decode_image_bytes
print(json.dumps({"json_body_bytes": len(body), "handle_pickle_bytes": len(blob),
                  "gateway_parse_and_pickle_cpu_ms": round(cpu_ms(gateway), 4),
                  "replica_to_image_bytes_cpu_ms": round(cpu_ms(replica, blob), 4),
                  "then_jpeg_decode_cpu_ms (alike)": round(cpu_ms(lambda: decode_image_bytes(jpeg, limits)), 4)}))
"""


def in_process(tree: Path, jpeg: bytes, repeats: int) -> dict[str, Any]:
    """The probe above, run by this venv's Python in ``tree`` (its ``serve_app``)."""
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(jpeg)
        f.flush()
        out = subprocess.run([sys.executable, "-c", PROBE, f.name, str(repeats)], cwd=tree, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(tree)}, timeout=600)
    if out.returncode:
        raise RuntimeError(f"the in-process probe failed in {tree}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_server(tree: Path, label: str, args: argparse.Namespace, jpegs: list[bytes]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rp", dir=ROOT / ".cache"))
    port = free_port()
    (work / "config.yaml").write_text(yaml.safe_dump(config(port, work), sort_keys=False))
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir=ROOT / ".cache"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(tree)}
    env.pop("RAY_ADDRESS", None)
    proc = ManagedProcess("serve", [str(Path(sys.executable).parent / "serve"), "run", "--address", "local",
                                    str(work / "config.yaml")], cwd=tree, env=env, log_path=work / "serve.log",
                          marker=str(ray_tmp))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/readiness", proc, 300, f"serve run ({label})")
        deadline = time.monotonic() + 180
        while send(requests.Session(), url, next(iter(MODELS)), "raw", jpegs[0]).status_code != 200:  # replica up
            assert time.monotonic() < deadline and proc.alive(), proc.tail()
            time.sleep(1)
        pids = roles(proc)
        assert {"gateway", "modelserver"} <= set(pids), (pids, proc.tail())
        result = {"tree": str(tree), "commit": _git(tree, "rev-parse", "HEAD"), "pids": pids,
                  "serve_app": _serve_app_file(pids["modelserver"])}
        for model in MODELS:
            for route in ("json", "raw"):
                got = measure_route(url, model, route, pids, jpegs, args.requests, args.clients, args.duration)
                result.setdefault(model, {})[route] = got
                print(label, model, route, json.dumps({k: got[k] for k in ("cpu_ms_per_request", "server_timing_p50_ms")}),
                      "p50", got["sequential"].get("p50_ms"), "rps", got["throughput"].get("throughput_rps"), flush=True)
        return result
    finally:
        proc.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _serve_app_file(pid: int) -> str | None:
    """Which serve_app the replica imported: the tree on its PYTHONPATH (read from its environment)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e.decode().partition("=")[2] for e in env if e.startswith(b"PYTHONPATH=")), None)


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True).stdout.strip()


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one variant, per model and route."""
    def median(values: list[float]) -> float:
        return round(float(np.median(values)), 2)

    out: dict[str, Any] = {}
    for model in MODELS:
        per = [r[model] for r in runs]
        out[model] = {}
        for route in ("json", "raw"):
            rows = [p[route] for p in per]
            out[model][route] = {
                "cpu_ms_per_request": {k: median([r["cpu_ms_per_request"][k] for r in rows if k in r["cpu_ms_per_request"]])
                                       for k in sorted({k for r in rows for k in r["cpu_ms_per_request"]})},
                "server_timing_p50_ms": {k: median([r["server_timing_p50_ms"][k] for r in rows
                                                    if k in r["server_timing_p50_ms"]])
                                         for k in sorted({k for r in rows for k in r["server_timing_p50_ms"]})},
                "sequential_p50_ms": median([r["sequential"]["p50_ms"] for r in rows]),
                "throughput_rps": median([r["throughput"]["throughput_rps"] for r in rows]),
            }
        out[model]["json_over_raw_throughput"] = round(out[model]["json"]["throughput_rps"]
                                                       / out[model]["raw"]["throughput_rps"], 3)
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(doc["summary"])
    roles_ = ("gateway", "modelserver", "proxy")
    width = 0.8 / len(variants)
    fig, axes = plt.subplots(len(MODELS), 3, figsize=(16, 3.6 * len(MODELS)), squeeze=False)
    probe = doc.get("in_process_median") or {}
    steps = (("gateway_parse_and_pickle_cpu_ms", "gateway: parse,\nvalidate, pickle"),
             ("replica_to_image_bytes_cpu_ms", "replica: unpickle,\nto image bytes"))
    c = axes[0][2]
    for i, v in enumerate(variants):
        bars = c.bar(np.arange(len(steps)) + i * width, [probe.get(v, {}).get(k, 0) for k, _ in steps], width, label=v)
        c.bar_label(bars, fmt="%.3f", fontsize=8)
    c.set_xticks(np.arange(len(steps)) + width * (len(variants) - 1) / 2, [name for _, name in steps])
    c.set_ylabel("CPU ms per request")
    c.set_title("a JSON base64 request's bytes, in process (no Ray)")
    c.legend()
    for extra in axes[1:, 2]:
        extra.axis("off")
    for row, model in enumerate(MODELS):
        a, b = axes[row][:2]
        for i, v in enumerate(variants):
            got = doc["summary"][v][model]
            cpu = got["json"]["cpu_ms_per_request"]
            bars = a.bar(np.arange(len(roles_)) + i * width, [cpu.get(r, 0) for r in roles_], width, label=v)
            a.bar_label(bars, fmt="%.1f", fontsize=8)
            bars = b.bar(np.arange(2) + i * width, [got["json"]["throughput_rps"], got["raw"]["throughput_rps"]],
                         width, label=v)
            b.bar_label(bars, fmt="%.1f", fontsize=8)
        a.set_xticks(np.arange(len(roles_)) + width * (len(variants) - 1) / 2, roles_)
        a.set_ylabel("CPU ms per request")
        a.set_title(f"{model}: CPU per JSON base64 request (sequential)")
        b.set_xticks(np.arange(2) + width * (len(variants) - 1) / 2, ["JSON base64", "raw body"])
        b.set_ylabel("req/s")
        b.set_title(f"{model}: throughput, {doc['options']['clients']} clients")
        a.legend()
        b.legend()
    fig.suptitle(f"request path before/after ({doc['machine']['cores']} cores, 640x480 JPEG, medians of "
                 f"{doc['options']['rounds']} rounds, before/after alternating)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=ROOT)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--probe-repeats", type=int, default=2000, help="repetitions of the in-process probe")
    ap.add_argument("--out", type=Path, default=RESULTS / "request_path.json")
    args = ap.parse_args()
    import onnxruntime
    import ray
    import starlette

    jpegs = images()
    doc: dict[str, Any] = {
        "workload": "request_path", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "cpu": _cpu_name(), "python": platform.python_version(),
                    "loadavg_at_start": list(os.getloadavg())},
        "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__, "starlette": starlette.__version__,
                     "orjson": _version("orjson")},
        "options": {**vars(args), "before": str(args.before), "after": str(args.after), "out": str(args.out),
                    "image_bytes": [len(j) for j in jpegs], "models": MODELS},
        "runs": [],
    }
    doc["in_process"] = {"before": [], "after": []}
    for _ in range(3):  # alternating, as the servers
        for label, tree in (("before", args.before), ("after", args.after)):
            doc["in_process"][label].append(in_process(tree.resolve(), jpegs[0], args.probe_repeats))
    doc["in_process_median"] = {v: {k: round(float(np.median([r[k] for r in rows])), 4) for k in rows[0]}
                                for v, rows in doc["in_process"].items()}
    print("in-process", json.dumps(doc["in_process_median"]), flush=True)
    pair = (("before", args.before), ("after", args.after))
    for round_ in range(args.rounds):  # before, after, then after, before, ...: a drift of the box's load cancels
        for label, tree in (pair if round_ % 2 == 0 else pair[::-1]):
            result = run_server(tree.resolve(), label, args, jpegs)
            doc["runs"].append({"variant": label, "round": round_, **result})
    doc["machine"]["loadavg_at_end"] = list(os.getloadavg())
    doc["summary"] = {v: combine([r for r in doc["runs"] if r["variant"] == v]) for v in ("before", "after")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    plot(doc, args.out.with_suffix(".png"))
    print(json.dumps(doc["summary"], indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def _version(name: str) -> str | None:
    try:
        import importlib.metadata as m

        return m.version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
