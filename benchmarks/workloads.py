"""The request workloads: sequential latency, the concurrency sweep, offered load (open loop) and
model switching. Each starts one contender at a time (the machine has two cores: running both
servers together would measure their fight), drives it from client processes, stops it, and
writes ``<results>/<workload>.json``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import floor, layout
from benchmarks.context import Options, start_document, check_quiet, metadata, plan, running, targets_of, warm, write_result
from benchmarks.loadgen import RunResult, run_clients, split_sequence
from benchmarks.servers import log
from benchmarks.stats import lru_misses, ratio, round_robin, summarize, zipf


def _summary(result: RunResult, *, raw: bool = False, window_s: float | None = None) -> dict[str, Any]:
    errors = int((result.records["status"] != 200).sum())
    out = summarize(result.latencies, errors=errors, wall_s=result.wall_s)
    if window_s:  # all clients start at one instant; count only answers completed inside the window
        inside = int(((result.records["status"] == 200) & (result.records["end"] <= window_s)).sum())
        out.update(window_s=window_s, answered_in_window=inside, window_throughput_rps=round(inside / window_s, 3))
    if result.error_samples:
        out["error_samples"] = result.error_samples
    preds = result.ok["predictions"]
    if preds.size:
        out["predictions_per_image"] = {"min": int(preds.min()), "max": int(preds.max())}
    server_s = result.ok["server_s"]
    server_s = server_s[np.isfinite(server_s)]
    if server_s.size:  # the response's "time": ours = gateway-measured, Roboflow = its handler's
        out["server_time_p50_ms"] = round(float(np.median(server_s)) * 1e3, 3)
        if out.get("p50_ms") is not None:
            out["outside_server_time_p50_ms"] = round(out["p50_ms"] - out["server_time_p50_ms"], 3)
    if raw:
        ok = result.ok
        order = np.argsort(ok["end"], kind="stable")
        ok = ok[order]
        out["raw"] = {"end_s": np.round(ok["end"], 4).tolist(),
                      "latency_ms": np.round((ok["end"] - ok["intended"]) * 1e3, 3).tolist(),
                      "model": ok["model"].tolist()}
    return out




def _floor(opts: Options, requests: int) -> dict:
    log("  floor: raw ONNX Runtime in this process")
    return floor.measure(opts.images, requests, min(opts.warmup, 20), deadline_s=max(opts.duration_s, 30),
                         server_args=opts.server_args())


# -- sequential ---------------------------------------------------------------------------------
def sequential(opts: Options) -> dict:
    doc = start_document("sequential", opts)
    if "floor" in opts.contenders:
        doc["floor"] = _floor(opts, opts.requests)
        log("  floor: bare session.run under each venv's onnxruntime")
        doc["floor"]["session_run_by_onnxruntime"] = floor.bare_run_by_interpreter(min(opts.requests, 100),
                                                                                   min(opts.warmup, 10))
    mid = (layout.model_id(0),)
    for kind in opts.servers():
        with running(kind, "sequential", opts) as server:
            for target in targets_of(server, opts):
                warm(target, mid[0], opts)
                result = run_clients([plan(target, mid, [0] * opts.requests, opts, opts.duration_s * 6)],
                                     f"sequential {target.name}")
                doc["contenders"][target.name] = _summary(result, raw=True)
    write_result("sequential", doc, opts, sequential_ratios)
    return doc


def sequential_ratios(doc: dict) -> dict:
    floor_s = doc.get("floor", {})
    rf = doc["contenders"].get("rf", {})
    out = {}
    for name, s in doc["contenders"].items():
        if not name.startswith("ours"):
            continue
        out[name] = {"p50_vs_floor_pipeline": ratio(s.get("p50_ms"), floor_s.get("pipeline", {}).get("p50_ms")),
                     "p50_vs_floor_session_run": ratio(s.get("p50_ms"), floor_s.get("session_run", {}).get("p50_ms")),
                     "p50_vs_rf": ratio(s.get("p50_ms"), rf.get("p50_ms")),
                     "p99_vs_rf": ratio(s.get("p99_ms"), rf.get("p99_ms"))}
    if rf:
        out["rf"] = {"p50_vs_floor_pipeline": ratio(rf.get("p50_ms"), floor_s.get("pipeline", {}).get("p50_ms"))}
    return out


# -- concurrency sweep (closed loop) ------------------------------------------------------------
def concurrency(opts: Options) -> dict:
    doc = start_document("concurrency", opts)
    if "floor" in opts.contenders:
        doc["floor"] = _floor(opts, min(opts.requests, 100))
    mid = (layout.model_id(0),)
    cap_per_client = max(opts.requests, int(opts.duration_s * 100))
    for kind in opts.servers():
        with running(kind, "concurrency", opts) as server:
            for target in targets_of(server, opts):
                warm(target, mid[0], opts)
                levels: dict[str, Any] = {}
                for i, clients in enumerate(opts.clients):
                    log(f"  {target.name}: level {i + 1}/{len(opts.clients)} ({clients} clients), "
                        f"about {(len(opts.clients) - i) * opts.duration_s:.0f} s of load left")
                    run_clients([plan(target, mid, [0] * 2, opts, 30.0) for _ in range(clients)],
                                f"warm {target.name} x{clients}", progress=False)
                    result = run_clients([plan(target, mid, [0] * cap_per_client, opts, opts.duration_s,
                                               image_offset=c) for c in range(clients)],
                                         f"concurrency {target.name} x{clients}")
                    levels[str(clients)] = _summary(result, window_s=opts.duration_s)
                doc["contenders"][target.name] = levels
    write_result("concurrency", doc, opts, concurrency_ratios)
    return doc


def concurrency_ratios(doc: dict) -> dict:
    from benchmarks.stats import best_throughput

    rf_at, rf_best = best_throughput(doc["contenders"].get("rf", {}))
    floor_rps = doc.get("floor", {}).get("pipeline_throughput_rps")
    out = {}
    for name, levels in doc["contenders"].items():
        at, best = best_throughput(levels)
        out[name] = {"best_throughput_rps": best, "at_clients": at,
                     "best_vs_floor": ratio(best, floor_rps),
                     "best_vs_rf": ratio(best, rf_best) if name != "rf" else None,
                     "per_level_vs_rf": {k: ratio(v.get("throughput_rps"), doc["contenders"].get("rf", {}).get(k, {}).get("throughput_rps"))
                                         for k, v in levels.items()} if name != "rf" else None}
    return out


# -- offered load (open loop) -------------------------------------------------------------------
def offered(opts: Options) -> dict:
    doc = start_document("offered", opts)
    mid = (layout.model_id(0),)
    clients = max(opts.clients)
    for kind in opts.servers():
        with running(kind, "offered", opts) as server:
            for target in targets_of(server, opts):
                warm(target, mid[0], opts)
                levels: dict[str, Any] = {}
                for i, rate in enumerate(opts.rates):
                    log(f"  {target.name}: rate {i + 1}/{len(opts.rates)} ({rate:g} req/s), "
                        f"about {(len(opts.rates) - i) * opts.duration_s:.0f} s of load left")
                    interval = clients / rate
                    per_client = int(opts.duration_s / interval) + 1
                    result = run_clients([plan(target, mid, [0] * per_client, opts, opts.duration_s + 30,
                                               interval_s=interval, offset_s=c * interval / clients, image_offset=c)
                                          for c in range(clients)], f"offered {target.name} {rate:g} req/s")
                    s = _summary(result)
                    s["offered_rps"] = rate
                    levels[f"{rate:g}"] = s
                doc["contenders"][target.name] = levels
    write_result("offered", doc, opts, offered_ratios)
    return doc


def offered_ratios(doc: dict) -> dict:
    rf = doc["contenders"].get("rf", {})
    out = {}
    for name, levels in doc["contenders"].items():
        if name == "rf":
            continue
        out[name] = {rate: {"p50_vs_rf": ratio(s.get("p50_ms"), rf.get(rate, {}).get("p50_ms")),
                            "p99_vs_rf": ratio(s.get("p99_ms"), rf.get(rate, {}).get("p99_ms")),
                            "achieved_vs_rf": ratio(s.get("throughput_rps"), rf.get(rate, {}).get("throughput_rps"))}
                     for rate, s in levels.items()}
    return out


# -- model switching ----------------------------------------------------------------------------
def switching_sequence(pattern: str, models: int, count: int, opts: Options) -> list[int]:
    return round_robin(models, count) if pattern == "rr" else zipf(models, count, opts.zipf_s)


def switching(opts: Options) -> dict:
    doc = start_document("switching", opts)
    doc["runs"] = {}
    combos = [(p, m, c) for p in opts.patterns for m in opts.models for c in opts.switch_clients]
    for models in opts.models:
        if models > json_models_prepared():
            raise SystemExit(f"switching over {models} models needs them prepared: python -m benchmarks prepare --models {models}")
    floor_doc = None
    if "floor" in opts.contenders:
        floor_doc = floor.measure(opts.images, 20, 3, loads=3, deadline_s=60, server_args=opts.server_args())
        doc["floor"] = {"reload_every_request_ms": round(floor_doc["load_from_memory_ms"]["median"]
                                                         + floor_doc["pipeline"]["p50_ms"], 3),
                        "load_from_memory_ms": floor_doc["load_from_memory_ms"], "pipeline": floor_doc["pipeline"]}
    for kind in opts.servers():
        with running(kind, "switching", opts) as server:
            for target in targets_of(server, opts):
                if target.name.startswith("ours-raw") and "ours" in opts.variants:
                    continue  # one request style is enough here: the loads dominate
                for i, (pattern, models, clients) in enumerate(combos):
                    key = f"{pattern}-{models}-c{clients}"
                    log(f"  {target.name}: run {i + 1}/{len(combos)} ({key})")
                    ids = tuple(layout.model_id(i) for i in range(models))
                    # every model touched once first: all artifacts in the fastest tier each server has
                    run_clients([plan(target, ids, list(range(models)), opts, 600.0)], f"touch {models} models",
                                progress=False)
                    sequence = switching_sequence(pattern, models, opts.requests, opts)
                    before = len(server.load_log()) if kind == "ours" else 0
                    result = run_clients([plan(target, ids, part, opts, opts.duration_s * 6)
                                          for part in split_sequence(sequence, clients)],
                                         f"switching {key} {target.name}")
                    run = doc["runs"].setdefault(key, {"pattern": pattern, "models": models, "clients": clients,
                                                        "requests": len(sequence),
                                                        "expected_reloads_lru": lru_misses(sequence, opts.cap),
                                                        "contenders": {}})
                    summary = _summary(result, raw=True)
                    if kind == "ours":
                        loads = server.load_log()[before:]
                        summary["loads_by_tier"] = {t: sum(1 for x in loads if x["tier"] == t)
                                                    for t in sorted({x["tier"] for x in loads})}
                        if loads:
                            summary["load_ms_median"] = round(float(np.median([x["fetch_ms"] + x["session_ms"] for x in loads])), 1)
                    run["contenders"][target.name] = summary
    write_result("switching", doc, opts, switching_ratios)
    return doc


def json_models_prepared() -> int:
    import json

    return json.loads(layout.PREPARED.read_text()).get("models", 0) if layout.PREPARED.exists() else 0


def switching_ratios(doc: dict) -> dict:
    out = {}
    floor_ms = doc.get("floor", {}).get("reload_every_request_ms")
    for key, run in doc["runs"].items():
        rf = run["contenders"].get("rf", {})
        for name, s in run["contenders"].items():
            if name == "rf":
                continue
            out[f"{key} {name}"] = {"rf_p50_over_ours": ratio(rf.get("p50_ms"), s.get("p50_ms")),
                                    "rf_p99_over_ours": ratio(rf.get("p99_ms"), s.get("p99_ms")),
                                    "ours_p50_vs_floor_reload": ratio(s.get("p50_ms"), floor_ms)}
    return out
