"""``python -m benchmarks <workload> [options]``: this server side by side with Roboflow Inference
and raw ONNX Runtime, on one YOLOv8n 640 ONNX file and the same JPEGs.

Workloads: prepare, sequential, concurrency, offered, switching, coldstart, memory, all (every
workload, then the report), report (ratios, targets and plots from the saved JSON).
Each starts what it measures, drives it from client processes, stops it, and writes
``benchmarks/results/<workload>.json`` and PNG plots. ``--quick`` is a smoke test (tiny counts);
point it elsewhere with ``--results-dir``.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from benchmarks import layout

WORKLOADS = ("prepare", "sequential", "concurrency", "offered", "switching", "coldstart", "memory", "all", "report")
QUICK = {"requests": 6, "duration_s": 3.0, "warmup": 1, "clients": [1, 2], "models": [12], "patterns": ["rr"],
         "switch_clients": [1], "rates": [4.0, 8.0], "samples": 1}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("--contenders", type=_words, default=["floor", "rf", "ours"],
                   help="of floor, rf, ours (default: all three)")
    p.add_argument("--variants", type=_words, default=["ours", "ours-raw"],
                   help="our request styles: ours (Roboflow JSON body, base64), ours-raw (JPEG body, header route)")
    p.add_argument("--cap", type=int, default=8, help="models per replica and Roboflow's MAX_ACTIVE_MODELS")
    p.add_argument("--requests", type=int, help="requests per run (sequential, switching); default 300")
    p.add_argument("--duration", dest="duration_s", type=float, help="seconds per level (concurrency, offered); default 20")
    p.add_argument("--warmup", type=int, help="warm-up requests before measuring; default 20")
    p.add_argument("--clients", type=_ints, help="concurrency levels; default 1,2,4,8,16")
    p.add_argument("--models", type=_ints, help="model counts to switch over; default 12,50")
    p.add_argument("--patterns", type=_words, help="switching patterns: rr, zipf; default both")
    p.add_argument("--switch-clients", type=_ints, help="clients in the switching runs; default 1,4")
    p.add_argument("--rates", type=_floats, help="offered loads in req/s (open loop); default 5,10,...,30")
    p.add_argument("--samples", type=int, help="cold starts per tier; default 3")
    p.add_argument("--zipf-s", dest="zipf_s", type=float, help="Zipf exponent; default 1.1")
    p.add_argument("--origin-mb-s", dest="origin_mb_s", type=float, help="throttled origin rate; default 50")
    p.add_argument("--ours-set", dest="ours_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the generated serve config: args.<arg>=v, <Deployment>.<option>=v (repeatable)")
    p.add_argument("--label", default="", help="name this configuration of ours (with --ours-set): results go "
                   "under ours@<label>; combine with --merge to keep the default configuration's figures")
    p.add_argument("--ours-tree", dest="ours_tree", type=Path, default=None,
                   help="serve another work tree's serve_app (git worktree add DIR <commit>), e.g. the code "
                        "before a change, with --label before")
    p.add_argument("--prepare-models", type=int, default=50, help="model copies to prepare (default 50)")
    p.add_argument("--results-dir", type=Path, default=layout.RESULTS)
    p.add_argument("--keep-runs", action="store_true", help="keep each run's Ray temp folder (logs)")
    p.add_argument("--merge", action="store_true",
                   help="keep an earlier result's contenders that this run does not measure (e.g. rerun only ours)")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny counts")
    return p.parse_args(argv)


def options(ns: argparse.Namespace):
    from benchmarks.context import Options
    from benchmarks.models import load_images

    opts = Options(contenders=ns.contenders, variants=ns.variants, cap=ns.cap, ours_set=ns.ours_set,
                   results_dir=ns.results_dir.resolve(), keep_runs=ns.keep_runs,
                   merge=ns.merge, label=ns.label, ours_tree=ns.ours_tree.resolve() if ns.ours_tree else None)
    if ns.quick:
        for key, value in QUICK.items():
            setattr(opts, key, value)
    for key in ("requests", "duration_s", "warmup", "clients", "models", "patterns", "switch_clients", "rates",
                "samples", "zipf_s", "origin_mb_s"):
        value = getattr(ns, key)
        if value is not None:
            setattr(opts, key, value)
    opts.images = load_images()
    return opts


def _terminate(signum, frame):  # turn SIGTERM into an exception so every started server is stopped
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started in the background by a shell: SIGINT is ignored and the servers would inherit
        # that, so `serve run` could not be stopped with SIGINT; a handler resets to default on exec
        signal.signal(signal.SIGINT, signal.default_int_handler)
    from benchmarks import models

    if ns.workload == "prepare":
        models.prepare(ns.prepare_models)
        return 0
    if ns.workload == "report":
        from benchmarks.report import report

        report(ns.results_dir.resolve())
        return 0
    models.prepare(max(ns.prepare_models, *(ns.models or [50])))
    opts = options(ns)
    from benchmarks import loads, plots, report, workloads

    run = {"sequential": workloads.sequential, "concurrency": workloads.concurrency, "offered": workloads.offered,
           "switching": workloads.switching, "coldstart": loads.coldstart, "memory": loads.memory_workload}
    chosen = list(run) if ns.workload == "all" else [ns.workload]
    for name in chosen:
        doc = run[name](opts)
        for path in plots.plot(name, doc, opts.results_dir):
            print(f"wrote {path}", file=sys.stderr)
    report.report(opts.results_dir, redraw=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
