"""The closing report: ratios per workload and the issue's targets with pass/fail, printed and
kept in ``<results>/summary.json``; plots redrawn from the JSON documents.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import plots
from benchmarks.stats import evaluate_targets, get

WORKLOADS = ("sequential", "concurrency", "offered", "switching", "coldstart", "memory")


def load_results(folder: Path) -> dict[str, dict]:
    out = {}
    for name in WORKLOADS:
        path = folder / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def headline(results: dict[str, dict]) -> list[str]:
    """Short lines: the figures behind the ratios."""
    lines = []
    seq = results.get("sequential")
    if seq:
        parts = [f"{n} p50 {s.get('p50_ms')} ms / p99 {s.get('p99_ms')} ms" for n, s in seq["contenders"].items()]
        fl = seq.get("floor", {})
        if fl:
            parts.append(f"raw ORT pipeline p50 {get(fl, 'pipeline', 'p50_ms')} ms, session.run p50 "
                         f"{get(fl, 'session_run', 'p50_ms')} ms")
        lines.append("sequential: " + "; ".join(parts))
    conc = results.get("concurrency")
    if conc:
        for name, r in conc.get("ratios", {}).items():
            lines.append(f"concurrency: {name} best {r['best_throughput_rps']} req/s at {r['at_clients']} clients"
                         + (f" ({r['best_vs_rf']}x Roboflow)" if r.get("best_vs_rf") else ""))
    sw = results.get("switching")
    if sw:
        for key, run in sw.get("runs", {}).items():
            parts = [f"{n} p50 {s.get('p50_ms')} / p99 {s.get('p99_ms')} ms"
                     + (f" loads {s['loads_by_tier']}" if s.get("loads_by_tier") else "")
                     for n, s in run["contenders"].items()]
            lines.append(f"switching {key}: " + "; ".join(parts))
    cold = results.get("coldstart")
    if cold:
        ours = get(cold, "contenders", "ours") or {}
        parts = [f"{k} {get(ours, k, 'first_request_ms', 'median')} ms (load {get(ours, k, 'load_ms', 'median')} ms, "
                 f"fetch {get(ours, k, 'fetch_ms', 'median')} ms)" for k in ("local_file", "disk_cache", "object_store",
                                                                             "origin_http") if k in ours]
        rf = get(cold, "contenders", "rf", "local_disk", "first_request_ms", "median")
        if rf is not None:
            parts.append(f"Roboflow local disk {rf} ms")
        lines.append("cold start, first request: " + "; ".join(parts))
    mem = results.get("memory")
    if mem:
        parts = [f"{n} {get(s, 'per_model', 'rss_mib')} MiB/model" for n, s in mem["contenders"].items()]
        if mem.get("floor"):
            parts.append(f"raw ORT {get(mem, 'floor', 'per_model', 'rss_mib')} MiB/model")
        lines.append("memory: " + "; ".join(parts))
    return lines


def report(folder: Path, *, redraw: bool = True) -> dict[str, Any]:
    results = load_results(folder)
    if not results:
        raise SystemExit(f"no results in {folder}")
    pngs = []
    if redraw:
        for name, doc in results.items():
            pngs += [str(p.name) for p in plots.plot(name, doc, folder)]
    targets = evaluate_targets(results)
    summary = {"ratios": {name: doc.get("ratios") for name, doc in results.items()},
               "targets": targets, "headline": headline(results), "plots": pngs,
               "warnings": {name: doc["meta"]["warning"] for name, doc in results.items()
                            if doc.get("meta", {}).get("warning")}}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    print("\n== figures")
    for line in summary["headline"]:
        print("  " + line)
    print("\n== ratios")
    for name, ratios in summary["ratios"].items():
        if not ratios:
            continue
        print(f"  {name}:")
        for key, value in ratios.items():
            print(f"    {key}: {json.dumps(value) if isinstance(value, dict) else value}")
    print("\n== targets (issue 6)")
    for t in summary["targets"]:
        missed = f", missed by {t['missed_by_factor']}x" if t.get("missed_by_factor") else ""
        print(f"  [{t['verdict'].upper():>12}] {t['target']}: {t['value']} (wants {t['wants']} {t['threshold']}{missed})"
              f"  {t['detail']}")
    for name, warning in summary.get("warnings", {}).items():
        print(f"  note ({name}): {warning}")
