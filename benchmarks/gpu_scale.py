"""Autoscaling on one GPU under a load step (issue 11): configs/serve_gpu_autoscale.yaml (ModelServer
from 1 to 4 replicas, a quarter of the GPU each) against the fixed 4 replicas of configs/serve_gpu.yaml.

    python -m benchmarks.gpu_scale --out DIR [--clients 256] [--idle 8] [--step 90] [--tail 10]
    python -m benchmarks.gpu_scale --out DIR --cpu     # a small dry run on a machine without a GPU

Each config is started as shipped (only the port, the cache and state folders and the repository's
absolute path are changed) under ``serve run`` with the GPU launch's environment (Ray's
throughput-optimised Serve, HAProxy in front; HAProxy's files and ports private to the run), one
after the other: fixed first, then autoscale. Per config: wait for its ModelServer replicas, warm
the model with a few requests, then the load step: ``--idle`` seconds of nothing, ``--clients``
closed-loop clients (asyncio, in up to 8 processes, raw JPEG bodies on ``POST /infer``, the model id
in the header) that all start at one instant and stop after ``--step`` seconds, then ``--tail``
idle seconds. Every answer is kept (completion time, latency, status); only answers completed
inside the step count. Each second: answers, errors by status, p50/p99 of that second's answers,
and the ModelServer replicas listed and ready in ``GET /model/registry`` (polled every second;
the registry ages a gone replica out after 6 s) and, on a GPU, nvidia-smi's utilization.

Figures: the fixed config's best ``--window``-second window of the step; the autoscale config's
best window ending within ``--within`` seconds of the step's start, its ratio to the fixed best
(target >= 0.9), and the time until a window first reached 90% of the fixed best (the end of that
window, and the first single second at 90%). Model: the built-in ``shapes-det/1`` (a small YOLOv8
at 640 px, configs/models); images: 640x480 JPEGs drawn with zoo/shapes.py's draw_scene. Writes
``gpu_scale.json`` under ``--out`` after each config (the machine and versions included);
``--plot`` draws the PNG beside a saved JSON (here, with matplotlib; a second panel for a run
kept under the JSON's ``repeat``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu import HAPROXY, ROOT, _pct, stage_medians
from benchmarks.gpu_machine import command_output, machine
from benchmarks.servers import ManagedProcess, free_port

MODEL = "shapes-det/1"
CONFIGS = {"fixed": "configs/serve_gpu.yaml", "autoscale": "configs/serve_gpu_autoscale.yaml"}
TARGET_RATIO = 0.9


# -- images and the machine ------------------------------------------------------------------
def scene_jpegs(n: int, seed: int = 11) -> list[bytes]:
    import cv2

    from zoo.shapes import draw_scene

    rng = np.random.default_rng(seed)
    return [cv2.imencode(".jpg", draw_scene(rng, size=(640, 480)).image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            for _ in range(n)]


# -- the server ------------------------------------------------------------------------------
def haproxy_env(state: Path) -> dict[str, str]:
    """The GPU launch's variables (benchmarks/gpu.py's HAPROXY), HAProxy's files and ports private."""
    return {**HAPROXY, "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port())}


def server_config(name: str, work: Path, port: int, cpu: bool) -> dict:
    """The shipped config with this run's port and folders; ``cpu``: scaled down to a small CPU box
    (CPU provider, 1 gateway, 2 ModelServer replicas or at most 2 autoscaled at a target of 2, so
    that a few clients make it scale; fractional CPUs, no GPU)."""
    import yaml

    config = yaml.safe_load((ROOT / CONFIGS[name]).read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(repositories=[str(ROOT / "configs" / "models")], cache_dir=str(work / "cache"),
                       state_dir=str(work / "state"))
    if cpu:
        app["args"].update(providers=["CPUExecutionProvider"], intra_op_threads=1)
        for d in app["deployments"]:
            if d["name"] == "Gateway":
                d.update(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
            else:
                d["ray_actor_options"] = {"num_cpus": 0.25, "num_gpus": 0}
                if "autoscaling_config" in d:  # few clients here: a low target, so that it scales
                    d["autoscaling_config"].update(max_replicas=2, target_ongoing_requests=2)
                    d["max_ongoing_requests"] = 4
                    app["args"]["spread_at_ongoing"] = 2
                else:
                    d["num_replicas"] = 2
    return config


def start(name: str, work: Path, cpu: bool) -> tuple[ManagedProcess, str, dict]:
    import yaml

    port = free_port()
    config = server_config(name, work, port, cpu)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    hap = Path(tempfile.mkdtemp(prefix="hap"))  # short: HAProxy's socket path gets the node id appended
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray"), "RAY_USAGE_STATS_ENABLED": "0", **haproxy_env(hap)}
    env.pop("RAY_ADDRESS", None)
    proc = ManagedProcess("serve", [sys.executable, "-c", "from ray.serve.scripts import cli; cli()", "run",
                                    str(work / "config.yaml")], cwd=ROOT, env=env, log_path=work / "serve.log",
                          marker=str(work / "ray"))
    return proc, f"http://127.0.0.1:{port}", config


def registry_replicas(url: str, timeout: float = 2.0) -> dict | None:
    import requests

    try:
        reg = requests.get(url + "/model/registry", timeout=timeout).json()
    except Exception:
        return None
    reps = reg.get("replicas", [])
    return {"listed": len(reps), "ready": sum(1 for r in reps if r.get("ready")),
            "holding": sum(1 for r in reps if MODEL in r.get("models", []))}


def wait_ready(proc: ManagedProcess, url: str, replicas: int, timeout_s: float) -> float:
    import requests

    t = time.monotonic()
    while True:
        if not proc.alive() or time.monotonic() - t > timeout_s:
            raise RuntimeError(f"server not ready ({replicas} replicas) in {timeout_s:.0f} s:\n{proc.tail(60)}")
        try:
            if requests.get(url + "/readiness", timeout=5).status_code == 200:
                reps = registry_replicas(url, 5)
                if reps and reps["ready"] >= replicas:
                    return time.monotonic() - t
        except requests.RequestException:
            pass
        time.sleep(1)


# -- load ------------------------------------------------------------------------------------
def _client(url: str, bodies: list[bytes], workers: int, duration: float, ready, go, start_at, q) -> None:
    """``workers`` closed-loop clients from wall time ``start_at`` (set by the parent once every
    client process is up) for ``duration`` s; puts (completion time - start, latency, status) per
    answer, status -1 for a connection error or timeout."""
    import aiohttp

    async def main() -> None:
        rows: list[tuple[float, float, int]] = []
        stages: list[str] = []
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
            ready.release()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            t0 = start_at.value
            end = t0 + duration
            async def worker(k: int) -> None:
                while time.time() < end:
                    t = time.time()
                    status = -1
                    try:
                        async with s.post(url, data=bodies[k % len(bodies)],
                                          headers={"serve_multiplexed_model_id": MODEL}) as r:
                            await r.read()
                            status = r.status
                            if status == 200 and len(stages) < 4000:
                                stages.append(r.headers.get("Server-Timing", ""))
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        pass
                    done = time.time()
                    rows.append((done - t0, done - t, status))
                    k += workers

            await asyncio.sleep(max(0.0, t0 - time.time()))  # every client starts at one instant
            await asyncio.gather(*(worker(i) for i in range(workers)))
        q.put((np.array(rows, dtype=np.float64).reshape(-1, 3), stages[::max(1, len(stages) // 300)]))

    asyncio.run(main())


class Poller(threading.Thread):
    """Every second from ``t_from`` to ``t_to`` (wall times): the registry's replicas, GPU utilization."""

    def __init__(self, url: str, t0: float, t_from: float, t_to: float, gpu: bool) -> None:
        super().__init__(daemon=True)
        self.url, self.t0, self.t_from, self.t_to, self.gpu = url, t0, t_from, t_to, gpu
        self.rows: list[dict] = []

    def run(self) -> None:
        k = 0
        while True:
            at = self.t_from + k
            if at > self.t_to:
                return
            time.sleep(max(0.0, at - time.time()))
            row: dict[str, Any] = {"t": round(time.time() - self.t0, 2)}
            row.update(registry_replicas(self.url) or {"listed": None, "ready": None, "holding": None})
            if self.gpu:
                out = command_output(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]) or ""
                try:
                    util, mem = (float(x) for x in out.splitlines()[0].split(","))
                    row.update(gpu_util=util, gpu_mem_mib=mem)
                except (ValueError, IndexError):
                    pass
            self.rows.append(row)
            k += 1


def load_step(url: str, bodies: list[bytes], clients: int, idle: float, step: float, tail: float,
              gpu: bool) -> dict:
    procs_n = min(clients, 8)
    per = [clients // procs_n + (1 if i < clients % procs_n else 0) for i in range(procs_n)]
    ctx = mp.get_context("spawn")
    q, ready, go, start_at = ctx.Queue(), ctx.Semaphore(0), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_client, args=(url + "/infer", bodies, w, step, ready, go, start_at, q))
             for w in per]
    for p in procs:
        p.start()
    for _ in procs:  # every client process imported and holds its HTTP session
        if not ready.acquire(timeout=120):
            raise RuntimeError("client processes did not start")
    now = time.time()
    t0 = now + idle
    start_at.value = t0
    poller = Poller(url, t0, now, t0 + step + tail, gpu)
    poller.start()
    go.set()
    results = [q.get(timeout=idle + step + 180) for _ in procs]
    for p in procs:
        p.join(10)
    poller.join(timeout=t0 + step + tail - time.time() + 10)
    rows = np.concatenate([r[0] for r in results])
    return {"t0": t0, "t0_local": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)), "rows": rows, "polls": poller.rows,
            "server_timing_p50_ms": stage_medians([h for r in results for h in r[1]])}


# -- figures ---------------------------------------------------------------------------------
def per_second(rows: np.ndarray, polls: list[dict], step: float, idle: float, tail: float) -> list[dict]:
    """One row per second from -idle to step+tail: answers (200s) completed in it, errors by status,
    p50/p99 of its answers' latency, and the last registry poll taken in it."""
    out = []
    for s in range(-int(idle), int(step + tail)):
        sel = (rows[:, 0] >= s) & (rows[:, 0] < s + 1)
        if s >= step:  # the clients stopped sending at `step`: what completes later is not counted
            sel &= False
        ok = sel & (rows[:, 2] == 200)
        lat = rows[ok, 1] * 1e3
        errors: dict[str, int] = {}
        for status in rows[sel & (rows[:, 2] != 200), 2]:
            key = "connection" if status < 0 else str(int(status))
            errors[key] = errors.get(key, 0) + 1
        poll = [p for p in polls if s <= p["t"] < s + 1]
        row = {"t": s, "answers": int(ok.sum()), "errors": errors,
               "p50_ms": round(_pct(list(lat), 50), 1) if len(lat) else None,
               "p99_ms": round(_pct(list(lat), 99), 1) if len(lat) else None}
        if poll:
            row.update({k: v for k, v in poll[-1].items() if k != "t"})
        out.append(row)
    return out


def windows(seconds: list[dict], step: float, window: int) -> list[tuple[int, float]]:
    """(end second, mean answers/s) of every ``window``-second window inside the step."""
    ans = [r["answers"] for r in seconds if 0 <= r["t"] < step]
    return [(s + window, sum(ans[s:s + window]) / window) for s in range(0, len(ans) - window + 1)]


def summarize(seconds: list[dict], rows: np.ndarray, step: float, window: int) -> dict:
    inside = rows[(rows[:, 0] >= 0) & (rows[:, 0] < step)]
    ok = inside[inside[:, 2] == 200]
    errors: dict[str, int] = {}
    for r in seconds:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    w = windows(seconds, step, window)
    best_end, best = max(w, key=lambda x: x[1])
    ready = [r.get("ready") for r in seconds if 0 <= r["t"] < step and r.get("ready") is not None]
    top = max(ready) if ready else None
    return {"answers": int(len(ok)), "req_per_s_whole_step": round(len(ok) / step, 1), "errors": errors,
            "p50_ms": round(_pct(list(ok[:, 1] * 1e3), 50), 1), "p99_ms": round(_pct(list(ok[:, 1] * 1e3), 99), 1),
            "best_window_req_per_s": round(best, 1), "best_window_end_s": best_end,
            "replicas_ready_max": top,
            "replicas_ready_max_first_s": next((r["t"] for r in seconds if r["t"] >= 0 and top is not None
                                                and r.get("ready") == top), None)}


def compare(result: dict, window: int, within: float) -> dict | None:
    runs = result["configs"]
    if "fixed" not in runs or "autoscale" not in runs:
        return None
    fixed_best = runs["fixed"]["summary"]["best_window_req_per_s"]
    auto = runs["autoscale"]
    step = result["options"]["step"]
    w = [x for x in windows(auto["seconds"], step, window) if x[0] <= within]
    best_end, best = max(w, key=lambda x: x[1])
    goal = TARGET_RATIO * fixed_best
    first_window = next((end for end, v in windows(auto["seconds"], step, window) if v >= goal), None)
    first_second = next((r["t"] + 1 for r in auto["seconds"] if 0 <= r["t"] < step and r["answers"] >= goal), None)
    return {"fixed_best_req_per_s": fixed_best, f"autoscale_best_within_{int(within)}s_req_per_s": round(best, 1),
            "autoscale_best_window_end_s": best_end, "ratio": round(best / fixed_best, 3) if fixed_best else None,
            "target": f">= {TARGET_RATIO} within {int(within)} s of the step",
            "met": bool(fixed_best and best >= goal),
            "autoscale_first_window_at_90pct_end_s": first_window,
            "autoscale_first_second_at_90pct_end_s": first_second}


# -- one config ------------------------------------------------------------------------------
def run_config(name: str, args: argparse.Namespace, bodies: list[bytes], out: dict, save) -> None:
    import requests

    work = Path(tempfile.mkdtemp(prefix=f"gs-{name}-"))
    t = time.monotonic()
    server, url, config = start(name, work, args.cpu)
    out["config"] = config
    try:
        ms = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ModelServer")
        initial = ms.get("autoscaling_config", {}).get("initial_replicas") or ms.get("num_replicas", 1)
        out["ready_s"] = round(wait_ready(server, url, initial, args.ready_timeout), 1)
        print(name, "ready in", out["ready_s"], "s; replicas", registry_replicas(url), flush=True)
        warm = []
        for i in range(6):  # the first request loads the model on one replica
            t1 = time.perf_counter()
            r = requests.post(url + "/infer", data=bodies[i % len(bodies)],
                              headers={"serve_multiplexed_model_id": MODEL}, timeout=120)
            warm.append([r.status_code, round((time.perf_counter() - t1) * 1e3, 1)])
        out["warm_requests"] = warm
        out["replicas_before_step"] = registry_replicas(url)
        print(name, "warm", warm, out["replicas_before_step"], flush=True)
        raw = load_step(url, bodies, args.clients, args.idle, args.step, args.tail, not args.cpu)
        out["step_started"] = raw["t0_local"]
        out["seconds"] = per_second(raw["rows"], raw["polls"], args.step, args.idle, args.tail)
        out["server_timing_p50_ms"] = raw["server_timing_p50_ms"]
        out["summary"] = summarize(out["seconds"], raw["rows"], args.step, args.window)
        out["replicas_after_step"] = registry_replicas(url)
        print(name, json.dumps(out["summary"]), flush=True)
        for r in out["seconds"]:
            if r["t"] % 5 == 0 or r["t"] < 20:
                print(f"  t={r['t']:>4} answers={r['answers']:>5} ready={r.get('ready')} p50={r['p50_ms']} "
                      f"err={r['errors'] or ''} gpu={r.get('gpu_util', '')}", flush=True)
        save()
    finally:
        out["stop"] = server.stop()
        log = (work / "serve.log").read_text(errors="replace")
        try:
            controller = "".join(p.read_text(errors="replace") for p in (work / "ray").rglob("controller_*.log"))
        except OSError:
            controller = ""
        out["autoscaler_log"] = [line[-300:] for line in (log + controller).splitlines()
                                 if re.search(r"[Uu]pscal|[Dd]ownscal|Adding \d+ replica|Removing \d+ replica", line)][:40]
        out["serve_log_tail"] = log[-3000:]
        out["wall_s"] = round(time.monotonic() - t, 1)
        save()
        shutil.rmtree(work, ignore_errors=True)


def _plot_run(ax, result: dict, label: str) -> None:
    ax2 = ax.twinx()
    colours = {"fixed": "tab:blue", "autoscale": "tab:orange"}
    for name, run in result["configs"].items():
        sec = run.get("seconds") or []
        if not sec:
            continue
        t = [r["t"] for r in sec]
        ax.plot(t, [r["answers"] for r in sec], color=colours.get(name), lw=1.2,
                label=f"{name}: answers/s (best 10 s {run['summary']['best_window_req_per_s']:.0f})")
        ax2.step(t, [r.get("ready") if r.get("ready") is not None else np.nan for r in sec], where="post",
                 color=colours.get(name), ls="--", lw=1.6, label=f"{name}: ModelServer replicas ready")
    cmp = result.get("comparison")
    if cmp:
        ax.axhline(TARGET_RATIO * cmp["fixed_best_req_per_s"], color="grey", ls=":", lw=1,
                   label=f"90% of fixed best ({TARGET_RATIO * cmp['fixed_best_req_per_s']:.0f})")
        ax.axvline(result["options"]["within"], color="grey", ls="-.", lw=0.8)
    ax.axvline(0, color="black", lw=0.6)
    ax.axvline(result["options"]["step"], color="black", lw=0.6)
    ax.set_ylabel("answers per second")
    ax2.set_ylabel("ModelServer replicas ready")
    ax2.set_ylim(0, 5)
    ax.set_ylim(bottom=0)
    title = f"{label} (order: {' then '.join(result['configs'])})"
    if cmp:
        title += (f": autoscale's best 10 s within {result['options']['within']:.0f} s = {cmp['ratio']:.0%} of fixed's best;"
                  f" first 10-s window at 90% ends at {cmp['autoscale_first_window_at_90pct_end_s']} s")
    ax.set_title(title, fontsize=8.5)
    lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7.5, loc="lower right")


def plot(path: Path) -> Path:
    """Throughput and replicas over time, both configs on one axis; a second panel for a saved
    ``repeat`` (another run of the same script, kept in the same JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(path.read_text())
    runs = [("run 1", result)] + ([("run 2", result["repeat"])] if result.get("repeat") else [])
    fig, axes = plt.subplots(len(runs), 1, figsize=(10.5, 4.6 * len(runs)), squeeze=False)
    for ax, (label, run) in zip(axes[:, 0], runs):
        _plot_run(ax, run, label)
    axes[-1, 0].set_xlabel("seconds since the load step (clients start at 0, stop at the step's end)")
    m = result.get("machine", {})
    gpu = (m.get("gpus") or ["no GPU"])[0]
    fig.suptitle(f"{result['options']['clients']} clients, {MODEL}; {gpu}, {m.get('cores')} cores shared with "
                 "the client processes", fontsize=10)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--configs", default="fixed,autoscale")
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--idle", type=float, default=8.0)
    ap.add_argument("--step", type=float, default=90.0)
    ap.add_argument("--tail", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--within", type=float, default=60.0, help="autoscale's best window must end by then")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--ready-timeout", type=float, default=240.0)
    ap.add_argument("--commit", default=None, help="the git commit, where the tree has no .git")
    ap.add_argument("--cpu", action="store_true", help="dry run without a GPU (CPU provider, scaled down)")
    ap.add_argument("--plot", type=Path, help="only draw the plot of this saved JSON")
    args = ap.parse_args()
    if args.plot:
        print(plot(args.plot))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # under `timeout`: the finally blocks stop the servers
    path = args.out / "gpu_scale.json"
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(args.commit),
                    "model": MODEL, "images": f"{args.images} JPEGs 640x480, zoo/shapes.py draw_scene",
                    "clients_note": "client processes (up to 8) share the machine's cores with the server",
                    "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "configs": {}}

    def save() -> None:
        result["comparison"] = compare(result, args.window, args.within)
        path.write_text(json.dumps(result, indent=1))

    bodies = scene_jpegs(args.images)
    print("machine", json.dumps(result["machine"]), flush=True)
    for name in args.configs.split(","):
        result["configs"][name] = {"file": CONFIGS[name]}
        run_config(name, args, bodies, result["configs"][name], save)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    save()
    print("comparison", json.dumps(result["comparison"]), flush=True)


if __name__ == "__main__":
    main()
