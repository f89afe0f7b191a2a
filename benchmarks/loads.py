"""What a model costs to load and to hold: cold start by where its artifact is, and memory per
loaded model.

Cold start, first request to a model the server has not loaded, its artifact:
  (a) on local disk: our repository's file (``file://`` origin -> disk cache -> object store ->
      session); Roboflow: its ``MODEL_CACHE_DIR``. After a restart of our server with the same
      disk cache, (a') the node disk cache tier.
  (b) already in the object store (ours only): a model evicted from the replica, loaded again.
  (c) only at a throttled origin (ours only; Roboflow offline cannot fetch): HTTP at 50 MB/s.
Each sample is timed by the client (first-request latency) and, for our server, split by the
replica's own log line into artifact fetch and session creation (+ warm-up inference).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import numpy as np

from benchmarks import layout, models
from benchmarks.context import Options, start_document, check_quiet, metadata, running, targets_of, warm, write_result
from benchmarks.servers import ThrottledOrigin, first_request, log, memory
from benchmarks.stats import median, ratio




def _timed(target, model_ids: list[str], opts: Options) -> list[dict]:
    out = []
    started = time.monotonic()
    for i, mid in enumerate(model_ids):
        seconds, status, body = first_request(target, mid, opts.images[i % len(opts.images)])
        out.append({"model_id": mid, "first_request_ms": round(seconds * 1e3, 1), "status": status,
                    **({"error": body} if status != 200 else {})})
        eta = (time.monotonic() - started) / (i + 1) * (len(model_ids) - i - 1)
        log(f"    [{i + 1}/{len(model_ids)}] {target.name} {mid}: {seconds * 1e3:.0f} ms (HTTP {status})"
            + (f", about {eta:.0f} s left" if i + 1 < len(model_ids) else ""))
    return out


def _steady_ms(target, model_id: str, opts: Options, n: int = 5) -> float:
    return float(np.median([first_request(target, model_id, opts.images[i % len(opts.images)])[0]
                            for i in range(n)])) * 1e3


def _tier_summary(samples: list[dict], steady_ms: float, log_lines: list[dict] | None = None) -> dict:
    ok = [s for s in samples if s["status"] == 200]
    out = {"samples": samples, "first_request_ms": {"median": median([s["first_request_ms"] for s in ok])},
           "load_estimate_ms": {"median": median([s["first_request_ms"] - steady_ms for s in ok]),
                                "how": "first-request latency minus the median warm request on a loaded model"}}
    if log_lines is not None:
        by_model = {x["model_id"]: x for x in log_lines}  # the last load of each model
        lines = [by_model[s["model_id"]] for s in ok if s["model_id"] in by_model]
        for s in samples:
            if s["model_id"] in by_model:
                s["server_log"] = by_model[s["model_id"]]
        out["tiers_seen"] = sorted({x["tier"] for x in lines})
        out["fetch_ms"] = {"median": median([x["fetch_ms"] for x in lines])}
        out["session_ms"] = {"median": median([x["session_ms"] for x in lines])}
        out["load_ms"] = {"median": median([x["fetch_ms"] + x["session_ms"] for x in lines]),
                          "how": "the replica's log: registry + artifact fetch, then session creation + warm-up"}
    return out


def coldstart(opts: Options) -> dict:
    doc = start_document("coldstart", opts)
    n = opts.samples
    disk_ids = [layout.model_id(1 + i) for i in range(n)]
    if "floor" in opts.contenders:
        doc["floor"] = _floor_loads(disk_ids, opts.server_args())
    if "rf" in opts.contenders:
        with running("rf", "coldstart", opts) as server:
            target = targets_of(server, opts)[0]
            warm(target, layout.model_id(0), opts, count=3)
            steady = _steady_ms(target, layout.model_id(0), opts)
            doc["contenders"]["rf"] = {"steady_request_ms": round(steady, 1),
                                       "local_disk": _tier_summary(_timed(target, disk_ids, opts), steady)}
    if "ours" in opts.contenders:
        doc["contenders"]["ours"] = _ours_coldstart(opts, disk_ids)
    write_result("coldstart", doc, opts, coldstart_ratios)
    return doc


def _ours_coldstart(opts: Options, disk_ids: list[str]) -> dict:
    n = opts.samples
    run_stamp = time.strftime("%Y%m%d-%H%M%S")
    shared_cache = layout.RUNS / f"coldstart-cache-{run_stamp}"
    origin = ThrottledOrigin(layout.RUNS / f"coldstart-origin-{run_stamp}", rate_mb=opts.origin_mb_s)
    out: dict[str, Any] = {}
    try:
        base_url = origin.start()
        origin_repo, origin_ids = models.origin_models(n, base_url)
        with running("ours", "coldstart", opts, repositories=[layout.REPOSITORY, origin_repo],
                     cache_dir=shared_cache) as server:
            target = next(t for t in targets_of(server, opts) if t.name.split("@")[0] == "ours")
            out["first_model_ever_ms"] = round(warm(target, layout.model_id(0), opts, count=3) * 1e3, 1)
            steady = _steady_ms(target, layout.model_id(0), opts)
            out["steady_request_ms"] = round(steady, 1)
            log("  (a) artifact on local disk (repository file)")
            local = _timed(target, disk_ids, opts)
            log(f"  filling the replica's {opts.cap} slots so those models are evicted")
            fill = [layout.model_id(1 + n + i) for i in range(opts.cap)]
            _timed(target, fill, opts)
            log("  (b) artifact already in the object store (evicted model)")
            store = _timed(target, disk_ids, opts)
            log(f"  (c) artifact only at the throttled origin ({opts.origin_mb_s:g} MB/s)")
            remote = _timed(target, origin_ids, opts)
            lines = server.load_log()
            first_loads = _first_per_model(lines)
            out["local_file"] = _tier_summary(local, steady, first_loads)
            out["object_store"] = _tier_summary(store, steady, lines)
            out["origin_http"] = _tier_summary(remote, steady, lines)
            out["origin_http"]["artifact_bytes"] = (layout.ORIGIN / "origin-0.onnx").stat().st_size
            out["origin_http"]["rate_mb_s"] = opts.origin_mb_s
        log("  (a') restart with the same disk cache: artifact in the node disk cache")
        with running("ours", "coldstart", opts, cache_dir=shared_cache) as server:
            target = next(t for t in targets_of(server, opts) if t.name.split("@")[0] == "ours")
            warm(target, layout.model_id(0), opts, count=3)
            cached = _timed(target, disk_ids, opts)
            out["disk_cache"] = _tier_summary(cached, steady, server.load_log())
    finally:
        origin.stop()
        if not opts.keep_runs:
            shutil.rmtree(shared_cache, ignore_errors=True)
    return out


def _first_per_model(lines: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for x in lines:
        seen.setdefault(x["model_id"], x)
    return list(seen.values())


def _floor_loads(model_ids: list[str], server_args: dict) -> dict:
    """Raw ONNX Runtime: read the file and create the session (+ warm-up), in this process."""
    from benchmarks.floor import load_model

    load_model(layout.model_id(0), server_args)  # untimed: the process's first session pays onnxruntime's one-off setup
    samples = []
    for mid in model_ids:
        t0 = time.perf_counter()
        load_model(mid, server_args)
        samples.append(round((time.perf_counter() - t0) * 1e3, 1))
    return {"load_from_local_file_ms": {"samples": samples, "median": median(samples)}}


def coldstart_ratios(doc: dict) -> dict:
    ours = doc["contenders"].get("ours", {})
    rf = doc["contenders"].get("rf", {})
    g = lambda d, *k: _get(d, *k)  # noqa: E731
    floor_ms = g(doc, "floor", "load_from_local_file_ms", "median")
    return {
        "origin_over_object_store_load": ratio(g(ours, "origin_http", "load_ms", "median"),
                                               g(ours, "object_store", "load_ms", "median")),
        "origin_over_object_store_fetch": ratio(g(ours, "origin_http", "fetch_ms", "median"),
                                                g(ours, "object_store", "fetch_ms", "median")),
        "ours_local_disk_vs_rf_first_request": ratio(g(ours, "local_file", "first_request_ms", "median"),
                                                     g(rf, "local_disk", "first_request_ms", "median")),
        "ours_object_store_vs_rf_local_disk_first_request": ratio(g(ours, "object_store", "first_request_ms", "median"),
                                                                  g(rf, "local_disk", "first_request_ms", "median")),
        "ours_local_disk_load_vs_floor": ratio(g(ours, "local_file", "load_ms", "median"), floor_ms),
        "ours_object_store_load_vs_floor": ratio(g(ours, "object_store", "load_ms", "median"), floor_ms),
    }


def _get(d: Any, *keys: str) -> Any:
    from benchmarks.stats import get

    return get(d, *keys)


# -- memory per loaded model --------------------------------------------------------------------
def memory_workload(opts: Options) -> dict:
    doc = start_document("memory", opts)
    count = 2 * opts.cap
    if "floor" in opts.contenders:
        out = subprocess.run([str(layout.VENV_PYTHON), "-m", "benchmarks.floor", "memory", "--models", str(opts.cap)],
                             cwd=layout.ROOT, capture_output=True, text=True, check=True)
        doc["floor"] = json.loads(out.stdout.strip().splitlines()[-1])
        doc["floor"]["per_model"] = _per_model(doc["floor"]["points"], opts.cap)
    for kind in opts.servers():
        with running(kind, "memory", opts) as server:
            target = targets_of(server, opts)[0]
            time.sleep(2)
            points = [_point(server, 0, None)]
            for i in range(count):
                seconds, status, body = first_request(target, layout.model_id(i), opts.images[0])
                if status != 200:
                    raise RuntimeError(f"{kind}: loading {layout.model_id(i)} failed: HTTP {status}: {body}")
                time.sleep(0.5)
                points.append(_point(server, i + 1, seconds))
                log(f"    {kind}: {i + 1}/{count} models requested, replica RSS {points[-1].get('rss_mib')} MiB")
            doc["contenders"][kind] = {"points": points, "per_model": _per_model(points, opts.cap),
                                       "processes": {k: len(v) for k, v in server.processes().items()}}
    write_result("memory", doc, opts, memory_ratios)
    return doc


def memory_ratios(doc: dict) -> dict:
    ours = _get(doc, "contenders", "ours", "per_model", "rss_mib")
    return {"ours_per_model_vs_rf": ratio(ours, _get(doc, "contenders", "rf", "per_model", "rss_mib")),
            "ours_per_model_vs_floor": ratio(ours, _get(doc, "floor", "per_model", "rss_mib")),
            "ours_idle_total_pss_vs_rf": ratio(_get(doc, "contenders", "ours", "points", 0, "server_total_pss_mib"),
                                               _get(doc, "contenders", "rf", "points", 0, "server_total_pss_mib"))}


def _point(server: Any, loaded: int, seconds: float | None) -> dict:
    pids = server.replica_pids()
    replica = memory(pids[0]) if pids else None
    total_pss = 0.0
    for role_pids in server.processes().values():
        for pid in role_pids:
            m = memory(pid)
            total_pss += (m or {}).get("pss_mib", 0.0)
    return {"models": loaded, "request_ms": round(seconds * 1e3, 1) if seconds is not None else None,
            "replica_pid": pids[0] if pids else None, **(replica or {}), "server_total_pss_mib": round(total_pss, 1)}


def _per_model(points: list[dict], cap: int) -> dict:
    """Memory growth per model between 1 and ``cap`` loaded models (MiB per model)."""
    by = {p["models"]: p for p in points}
    if 1 not in by or cap not in by or cap == 1:
        return {}
    return {k: round((by[cap][k] - by[1][k]) / (cap - 1), 2)
            for k in ("rss_mib", "pss_mib", "anonymous_mib", "server_total_pss_mib") if k in by[1] and k in by[cap]}

