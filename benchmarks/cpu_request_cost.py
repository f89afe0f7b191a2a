"""CPU per request on the 2-core box: Roboflow Inference, our server before a change and after it,
side by side in one run (issue 14's CPU-box target: throughput at least 1.2x Roboflow's).

    git worktree add --detach /work/cpu14-before <commit before the change>
    .venv/bin/python -m benchmarks.cpu_request_cost --before /work/cpu14-before [--after DIR] [--rounds 1]
        [--duration 15] [--clients 1,2,4,8,16] [--extra NAME:KEY=VALUE[,KEY=VALUE]] [--launch haproxy]

Each round runs the ``concurrency`` workload (benchmarks/workloads.py: closed loop, all clients
released at one instant, only answers completed inside the window counted) once per configuration,
one server at a time: ``rf``; ``ours@before`` (the JSON base64 route, served from the ``--before``
tree); ``ours`` and ``ours-raw`` (this tree, JSON and raw-body routes); and each ``--extra`` (this
tree with ``--ours-set`` overrides, JSON route, e.g. ``1thread:args.intra_op_threads=1``). Rounds
alternate the order, so a drift of the box's load falls on every contender. ``--launch haproxy``
starts our server as the README's CPU-box launch does (Ray's throughput-optimised Serve, HAProxy
in front); every tree reads this tree's serve_config.yaml. Writes
``benchmarks/results/cpu_request_cost.{json,png}``: per configuration and level the windowed
throughput (median over rounds), p50/p99, errors, and ours/rf at each level, with the machine
(CPU, cores, memory, load average at start and end), versions and both trees' commits.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import layout
from benchmarks.context import Options, metadata
from benchmarks.models import load_images
from benchmarks.servers import log
from benchmarks.workloads import concurrency

TARGET_RATIO = 1.2
# how our server is started (the environment of its serve run)
LAUNCHES = {"proxy": {}, "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}}
OUT = layout.RESULTS / "cpu_request_cost.json"


def _commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()


def configurations(base: Options, before: Path, extras: list[str], after: Path | None = None) -> list[tuple[str, Options]]:
    """(name, options) for each server start of a round: rf, ours@before, ours + ours-raw, extras."""
    configs = [("rf", replace(base, contenders=["rf"])),
               ("before", replace(base, contenders=["ours"], variants=["ours"], label="before", ours_tree=before)),
               ("after", replace(base, contenders=["ours"], variants=["ours", "ours-raw"], ours_tree=after))]
    for spec in extras:
        name, _, sets = spec.partition(":")
        configs.append((name, replace(base, contenders=["ours"], variants=["ours"], label=name, ours_tree=after,
                                      ours_set=[s for s in sets.split(",") if s])))
    return configs


def summarise(rounds: list[dict[str, dict]], clients: list[int]) -> dict[str, Any]:
    """Median over rounds, per contender and level, of the windowed throughput; p50/p99 of the median round."""
    names = sorted({name for r in rounds for name in r})
    out: dict[str, Any] = {}
    for name in names:
        levels = {}
        for c in clients:
            got = [r[name][str(c)] for r in rounds if name in r and str(c) in r[name]]
            if not got:
                continue
            rps = [g.get("window_throughput_rps", g["throughput_rps"]) for g in got]
            levels[str(c)] = {"throughput_rps": round(statistics.median(rps), 3), "per_round_rps": rps,
                              "p50_ms": statistics.median(g["p50_ms"] for g in got if g["p50_ms"] is not None),
                              "p99_ms": statistics.median(g["p99_ms"] for g in got if g["p99_ms"] is not None),
                              "errors": sum(g["errors"] for g in got)}
        out[name] = levels
    return out


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    rf = summary.get("rf", {})
    out = {}
    for name, levels in summary.items():
        if name == "rf":
            continue
        per = {c: round(v["throughput_rps"] / rf[c]["throughput_rps"], 3) for c, v in levels.items()
               if c in rf and rf[c]["throughput_rps"]}
        best = max((v["throughput_rps"] for v in levels.values()), default=None)
        rf_best = max((v["throughput_rps"] for v in rf.values()), default=None)
        out[name] = {"per_level_vs_rf": per, "min_vs_rf": min(per.values(), default=None),
                     "best_vs_rf_best": round(best / rf_best, 3) if best and rf_best else None,
                     "meets_1_2x_at_every_level": bool(per) and min(per.values()) >= TARGET_RATIO}
    return out


def plot(doc: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, levels in doc["summary"].items():
        xs = [int(c) for c in levels]
        ax.plot(xs, [v["throughput_rps"] for v in levels.values()], marker="o", label=name)
        if name != "rf":
            per = doc["ratios"][name]["per_level_vs_rf"]
            bx.plot([int(c) for c in per], list(per.values()), marker="o", label=name)
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xlabel("closed-loop clients")
        a.grid(alpha=0.3)
    ax.set_ylabel("answers/s inside the window")
    ax.set_title("YOLOv8n 640, 640x480 JPEGs, 2-core box")
    bx.axhline(TARGET_RATIO, color="tab:red", ls="--", lw=1, label="target 1.2x")
    bx.axhline(1.0, color="gray", lw=0.8)
    bx.set_ylabel("throughput / Roboflow's")
    bx.set_title("ratio to Roboflow Inference, same run")
    ax.legend(fontsize=8)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_request_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="work tree of the code before the change")
    p.add_argument("--after", type=Path, default=None,
                   help="work tree of the code after the change (default: this one, uncommitted edits included)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--clients", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8, 16])
    p.add_argument("--extra", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--launch", choices=sorted(LAUNCHES), default="proxy",
                   help="how our server is started: Ray's Python proxy (plain serve run) or the README's CPU-box "
                        "launch, Ray's throughput-optimised Serve with HAProxy in front")
    p.add_argument("--replot", action="store_true", help="redraw the PNG from the saved JSON")
    args = p.parse_args(argv)
    if args.replot:
        print(plot(json.loads(args.out.read_text()), args.out.with_suffix(".png")))
        return
    os.environ.update(LAUNCHES[args.launch])  # our server's serve run inherits it (Roboflow ignores it)
    scratch = layout.BENCH / "cpu_request_cost"
    scratch.mkdir(parents=True, exist_ok=True)
    base = Options(duration_s=args.duration, warmup=args.warmup, clients=args.clients, results_dir=scratch,
                   images=load_images())
    doc = metadata("cpu_request_cost", base)
    after = args.after.resolve() if args.after else None
    doc["trees"] = {"after": {"path": str(after or layout.ROOT), "commit": _commit(after or layout.ROOT)},
                    "before": {"path": str(args.before.resolve()), "commit": _commit(args.before)}}
    doc["options"] = {**doc["options"], "rounds": args.rounds, "extra": args.extra, "launch": args.launch,
                      "launch_env": LAUNCHES[args.launch]}
    rounds: list[dict[str, dict]] = []
    configs = configurations(base, args.before.resolve(), args.extra, after)
    for i in range(args.rounds):
        order = configs if i % 2 == 0 else configs[::-1]
        got: dict[str, dict] = {}
        for name, opts in order:
            log(f"round {i + 1}/{args.rounds}: {name} (load average {os.getloadavg()[0]:.2f})")
            got.update(concurrency(opts)["contenders"])
        rounds.append(got)
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["loadavg_at_end"] = list(os.getloadavg())
    doc["rounds"] = rounds
    doc["summary"] = summarise(rounds, args.clients)
    doc["ratios"] = ratios(doc["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    plot(doc, args.out.with_suffix(".png"))
    print("clients | " + " | ".join(doc["summary"]))
    for c in args.clients:
        row = [f"{v[str(c)]['throughput_rps']:.2f}" for v in doc["summary"].values() if str(c) in v]
        print(f"{c} | " + " | ".join(row) + " | vs rf: " +
              ", ".join(f"{n} {r['per_level_vs_rf'].get(str(c))}" for n, r in doc["ratios"].items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
