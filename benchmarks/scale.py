"""Scale-out under a load step: do the replicas the autoscaler adds take their share of a hot model?

    .venv/bin/python -m benchmarks.scale [--variants model-aware,serve-default] [--clients 8]
        [--idle 5] [--step 60] [--tail 45] [--max-replicas 4]

Each variant is ``serve run`` of serve_config.yaml (built-in repository, CPU provider, its
autoscaling config with short delays so a run fits in minutes: upscale 3 s, downscale 15 s), run
one after another. Load, from one start signal: one background client sends ``shapes-det/1``
the whole time (so scale-down happens under traffic); ``--clients`` more join for ``--step``
seconds (the step), then leave; the run goes on ``--tail`` seconds while the autoscaler removes
replicas. Clients are processes (closed loop, raw JPEG on the header route); every answer is
recorded with its status and the replica that served it (``X-Replica``), and ``/model/registry``
is polled every second for the live replicas and what each holds.

Variants: ``model-aware`` (the default: serving/routing.py's ModelAwareRouter spreads a model
once every holder has ``spread_at_ongoing`` requests in flight) and ``serve-default``
(``hot_model_routing: false``: Serve's own router, which spills only when holders are full),
both with new replicas prewarming the 2 hottest models, and each ``-no-prewarm`` (replicas start
empty: what the router does on its own).

Measured per variant: replicas over time, each replica's share of the hot model's answers from
15 s after it became ready to the end of the step or its removal (target: at least the even
share 1/k over the replicas ready each second, less 10 points), answers by status during the
step and during scale-down (target: no 5xx), latency.
Writes benchmarks/results/scale.json (machine and versions included) and scale.png.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from benchmarks import layout
from benchmarks.context import _git, check_quiet, machine
from benchmarks.fairness import scene_images
from benchmarks.servers import OurServer, log

HOT = "shapes-det/1"
SHARE_AFTER_READY_S = 15.0
SHARE_SLACK = 0.10
VARIANTS: dict[str, list[str]] = {
    "model-aware": ["args.hot_model_routing=true"],
    "serve-default": ["args.hot_model_routing=false"],
    # without prewarm: what each router does on its own with replicas that start empty
    "model-aware-no-prewarm": ["args.hot_model_routing=true", "args.prewarm_models=0"],
    "serve-default-no-prewarm": ["args.hot_model_routing=false", "args.prewarm_models=0"],
}


def client(url: str, images: list[bytes], start_s: float, stop_s: float, go: Any, go_at: Any, out: Any,
           index: int) -> None:
    """One closed-loop client from ``start_s`` to ``stop_s`` after the start signal; records
    (start, end, status, replica) with times relative to the signal."""
    session = requests.Session()
    rows: list[tuple[float, float, int, str]] = []
    go.wait()
    t0 = go_at.value
    while time.monotonic() - t0 < start_s:
        time.sleep(0.01)
    n = index
    while time.monotonic() - t0 < stop_s:
        start = time.monotonic() - t0
        try:
            r = session.post(url + "/infer", data=images[n % len(images)], timeout=60,
                             headers={"serve_multiplexed_model_id": HOT, "Content-Type": "image/jpeg"})
            status, replica = r.status_code, r.headers.get("X-Replica", "")
        except requests.RequestException:
            status, replica = -1, ""
        rows.append((start, time.monotonic() - t0, status, replica))
        n += 1
    out.put(rows)


def poll_registry(url: str, t0: float, stop: threading.Event, views: list[dict]) -> None:
    while not stop.is_set():
        try:
            view = requests.get(url + "/model/registry", timeout=5).json()
            views.append({"t": time.monotonic() - t0, "replicas": [
                {"replica": r["replica"], "ready": r["ready"], "models": r["models"]} for r in view["replicas"]]})
        except (requests.RequestException, ValueError, KeyError):
            pass
        stop.wait(1.0)


def run_variant(name: str, overrides: list[str], opts: argparse.Namespace, images: list[bytes]) -> dict:
    run_dir = layout.RUNS / f"scale-{name}-{time.strftime('%H%M%S')}"
    autoscaling = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": opts.max_replicas,
                   "target_ongoing_requests": 4, "upscale_delay_s": 3, "downscale_delay_s": 15,
                   "metrics_interval_s": 1, "look_back_period_s": 3}
    server = ScaledServer(run_dir, autoscaling, repositories=[layout.ROOT / "configs" / "models"],
                          overrides=["args.intra_op_threads=1", "args.prewarm_models=2", *overrides,
                                     f"ModelServer.ray_actor_options.num_cpus={opts.replica_cpus}"])
    started = server.start()
    log(f"  {name}: ready in {started.seconds:.0f} s")
    try:
        requests.post(server.url + "/infer", data=images[0], headers={"serve_multiplexed_model_id": HOT}, timeout=120)
        time.sleep(3)
        ctx = mp.get_context("spawn")
        go, go_at, out = ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
        end = opts.idle + opts.step + opts.tail
        plans = [(0.0, end)] + [(opts.idle, opts.idle + opts.step)] * opts.clients
        procs = [ctx.Process(target=client, args=(server.url, images, a, b, go, go_at, out, i), daemon=True)
                 for i, (a, b) in enumerate(plans)]
        for p in procs:
            p.start()
        time.sleep(3)  # the client processes are up and waiting on the signal
        views: list[dict] = []
        stop = threading.Event()
        go_at.value = time.monotonic() + 0.2
        poller = threading.Thread(target=poll_registry, args=(server.url, go_at.value, stop, views), daemon=True)
        go.set()
        poller.start()
        rows = [row for _ in procs for row in out.get(timeout=end + 180)]
        stop.set()
        poller.join(10)
        for p in procs:
            p.join(10)
    finally:
        server.stop()
    return analyse(name, overrides, rows, views, opts)


class ScaledServer(OurServer):
    """OurServer with the shipped autoscaling config (delays shortened) instead of fixed replicas."""

    def __init__(self, run_dir: Path, autoscaling: dict, **kwargs: Any) -> None:
        super().__init__(run_dir, **kwargs)
        self.autoscaling = autoscaling

    def config(self) -> dict:
        config = super().config()
        for d in config["applications"][0]["deployments"]:
            if d["name"] == "ModelServer":
                d.pop("num_replicas", None)
                d["autoscaling_config"] = dict(self.autoscaling)
        return config


def analyse(name: str, overrides: list[str], rows: list[tuple], views: list[dict], opts: argparse.Namespace) -> dict:
    rows.sort()
    step_start, step_end = opts.idle, opts.idle + opts.step
    ready_at: dict[str, float] = {}
    gone_at: dict[str, float] = {}
    for view in views:
        live = {r["replica"] for r in view["replicas"] if r["ready"]}
        for rid in live:
            ready_at.setdefault(rid, view["t"])
        for rid in list(ready_at):
            if rid not in live and rid not in gone_at and view["t"] > ready_at[rid]:
                gone_at[rid] = view["t"]
    in_step = [r for r in rows if step_start <= r[1] <= step_end]
    def statuses(sel: list[tuple]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in sel:
            out[str(r[2])] = out.get(str(r[2]), 0) + 1
        return out
    after = [r for r in rows if r[1] > step_end]
    lat = np.array([r[1] - r[0] for r in in_step if r[2] == 200]) * 1e3
    timeline = []
    for second in range(int(opts.idle + opts.step + opts.tail)):
        done = [r for r in rows if second <= r[1] < second + 1]
        per_replica: dict[str, int] = {}
        for r in done:
            if r[2] == 200:
                per_replica[r[3][:12]] = per_replica.get(r[3][:12], 0) + 1
        live = next((v for v in reversed(views) if v["t"] <= second + 1), {"replicas": []})
        timeline.append({"t": second, "answers": sum(per_replica.values()), "errors": len(done) - sum(per_replica.values()),
                         "replicas": len([r for r in live["replicas"] if r["ready"]]),
                         "holders": len([r for r in live["replicas"] if HOT in r["models"]]),
                         "per_replica": per_replica,
                         "p50_ms": round(float(np.median([(r[1] - r[0]) * 1e3 for r in done if r[2] == 200])), 1)
                         if per_replica else None})
    shares = replica_shares(timeline, ready_at, gone_at, step_start, step_end)
    return {"variant": name, "overrides": overrides, "replicas_seen": len(ready_at),
            "max_replicas_live": max((t["replicas"] for t in timeline), default=0),
            "shares": shares, "share_target_met": bool(shares) and all(s["met"] for s in shares.values()),
            "statuses_step": statuses(in_step), "statuses_scale_down": statuses(after),
            "server_errors": sum(1 for r in rows if r[2] >= 500 or r[2] < 0),
            "throughput_step": round(sum(1 for r in in_step if r[2] == 200) / opts.step, 1),
            "latency_step_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)}
            if len(lat) else None,
            "timeline": timeline}


def replica_shares(timeline: list[dict], ready_at: dict[str, float], gone_at: dict[str, float],
                   step_start: float, step_end: float) -> dict[str, dict]:
    """Each replica's share of the hot model's answers from 15 s after it was ready until it left
    or the step ended, against what an even spread over the replicas ready each second gives
    (the autoscaler may remove a replica during the step, and then the others' fair share grows).

    >>> tl = [{"t": t, "answers": 6, "replicas": 2, "per_replica": {"a": 3, "b": 3}} for t in range(40)]
    >>> replica_shares(tl, {"a": 0.0, "b": 5.0}, {}, 0.0, 40.0)["b"]["share"]
    0.5
    """
    out: dict[str, dict] = {}
    for rid, t_ready in ready_at.items():
        start = max(step_start, t_ready + SHARE_AFTER_READY_S)
        end = min(step_end, gone_at.get(rid, step_end))
        seconds = [x for x in timeline if start <= x["t"] and x["t"] + 1 <= end and x["answers"]]
        if not seconds:
            continue
        total = sum(x["answers"] for x in seconds)
        mine = sum(x["per_replica"].get(rid[:12], 0) for x in seconds)
        even = sum(x["answers"] / max(1, x["replicas"]) for x in seconds) / total
        share = mine / total
        out[rid[:12]] = {"ready_at_s": round(t_ready, 1), "window_s": [round(start, 1), round(end, 1)],
                         "answers_in_window": total, "share": round(share, 3), "even_share": round(even, 3),
                         "target": round(even - SHARE_SLACK, 3), "met": share >= even - SHARE_SLACK}
    return out


def plot(results: list[dict], path: Path, opts: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(7 * len(results), 7), squeeze=False, sharex=True)
    for col, res in enumerate(results):
        tl = res["timeline"]
        t = [x["t"] for x in tl]
        ax = axes[0][col]
        ids = sorted({rid for x in tl for rid in x["per_replica"]})
        bottom = np.zeros(len(tl))
        for rid in ids:
            vals = np.array([x["per_replica"].get(rid, 0) for x in tl], float)
            ax.bar(t, vals, bottom=bottom, width=1.0, label=rid[:8])
            bottom += vals
        ax.set_title(f"{res['variant']}: answers/s per replica ({HOT})")
        ax.axvspan(opts.idle, opts.idle + opts.step, color="grey", alpha=0.08)
        ax.legend(fontsize=7, loc="upper right")
        ax2 = ax.twinx()
        ax2.step(t, [x["replicas"] for x in tl], where="post", color="k", label="replicas ready")
        ax2.step(t, [x["holders"] for x in tl], where="post", color="r", linestyle="--", label="replicas holding it")
        ax2.set_ylim(0, opts.max_replicas + 1)
        ax2.legend(fontsize=7, loc="upper left")
        ax = axes[1][col]
        ax.plot(t, [x["p50_ms"] if x["p50_ms"] is not None else np.nan for x in tl], label="p50 per second")
        ax.set_ylabel("ms")
        ax.set_xlabel("s from the start signal (shaded: the step)")
        ax.axvspan(opts.idle, opts.idle + opts.step, color="grey", alpha=0.08)
        ax.legend(fontsize=7)
    m = machine()
    fig.suptitle(f"load step 1 -> {1 + opts.clients} clients -> 1, autoscaling 1..{opts.max_replicas}; "
                 f"{m['cores']} cores ({m['cpu'][:40]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="model-aware,serve-default,model-aware-no-prewarm,serve-default-no-prewarm")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--step", type=float, default=60.0)
    p.add_argument("--tail", type=float, default=45.0)
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--replica-cpus", type=float, default=0.3)
    p.add_argument("--out", default=str(layout.RESULTS / "scale.json"))
    p.add_argument("--reanalyse", help="recompute the shares of an earlier result file and plot it again")
    opts = p.parse_args()
    if opts.reanalyse:
        reanalyse(Path(opts.reanalyse))
        return
    busy = check_quiet(None)
    images = scene_images()
    results = [run_variant(v, VARIANTS[v], opts, images) for v in opts.variants.split(",")]
    out = Path(opts.out)
    import onnxruntime
    import ray

    doc = {"benchmark": "scale", "machine": machine(), "git": _git("rev-parse", "HEAD"), "busy": busy,
           "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__},
           "options": vars(opts),
           "targets": {"share": f"each replica >= 1/k - {SHARE_SLACK:.0%} of the hot model's answers from "
                                f"{SHARE_AFTER_READY_S:.0f} s after it is ready", "errors": "no 5xx"},
           "results": results}
    out.write_text(json.dumps(doc, indent=1))
    plot(results, out.with_suffix(".png"), opts)
    for r in results:
        log(f"{r['variant']}: replicas seen {r['replicas_seen']}, shares {[(k, v['share'], v['target']) for k, v in r['shares'].items()]}, "
            f"met={r['share_target_met']}, step {r['statuses_step']}, scale-down {r['statuses_scale_down']}, "
            f"{r['throughput_step']} req/s, {r['latency_step_ms']}")


def reanalyse(path: Path) -> None:
    doc = json.loads(path.read_text())
    opts = argparse.Namespace(**doc["options"])
    for res in doc["results"]:
        tl = res["timeline"]
        ready_at: dict[str, float] = {}
        gone_at: dict[str, float] = {}
        for rid, info in res["shares"].items():
            ready_at[rid] = info["ready_at_s"]
        for rid in ready_at:  # the last second it answered, if it stopped before the step's end
            seen = [x["t"] for x in tl if x["per_replica"].get(rid)]
            if seen and max(seen) + 3 < opts.idle + opts.step:
                gone_at[rid] = max(seen) + 1
        res["shares"] = replica_shares(tl, ready_at, gone_at, opts.idle, opts.idle + opts.step)
        res["share_target_met"] = bool(res["shares"]) and all(s["met"] for s in res["shares"].values())
    path.write_text(json.dumps(doc, indent=1))
    plot(doc["results"], path.with_suffix(".png"), opts)
    for r in doc["results"]:
        log(f"{r['variant']}: {r['shares']}")


if __name__ == "__main__":
    main()
