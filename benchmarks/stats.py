"""Pure helpers: request sequences, latency summaries, ratios and the issue's targets.

Latencies are in seconds inside the code and in milliseconds in the JSON and on screen.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def round_robin(models: int, count: int, start: int = 0) -> list[int]:
    """``count`` model indices cycling through ``models`` ids.

    >>> round_robin(3, 7)
    [0, 1, 2, 0, 1, 2, 0]
    """
    return [(start + i) % models for i in range(count)]


def zipf(models: int, count: int, s: float = 1.1, seed: int = 7) -> list[int]:
    """``count`` model indices drawn with P(rank k) proportional to 1 / k**s (rank 1 = index 0).

    >>> seq = zipf(12, 2000)
    >>> seq.count(0) > seq.count(1) > seq.count(11), min(seq) >= 0, max(seq) < 12
    (True, True, True)
    """
    weights = 1.0 / np.arange(1, models + 1) ** s
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(models, size=count, p=weights / weights.sum())]


def lru_misses(sequence: Iterable[int], capacity: int) -> int:
    """How many requests of ``sequence`` miss an LRU cache of ``capacity`` (the reload count).

    >>> lru_misses(round_robin(12, 24), 8), lru_misses(round_robin(8, 24), 8)
    (24, 8)
    """
    held: list[int] = []
    misses = 0
    for m in sequence:
        if m in held:
            held.remove(m)
        else:
            misses += 1
            if len(held) >= capacity:
                held.pop(0)
        held.append(m)
    return misses


def summarize(latencies_s: Sequence[float] | np.ndarray, *, errors: int = 0, wall_s: float | None = None) -> dict[str, Any]:
    """Percentiles, mean, min, max in ms; throughput in requests per second when ``wall_s`` is given.

    >>> s = summarize([0.010, 0.020, 0.030, 0.040], wall_s=2.0)
    >>> s["p50_ms"], s["n"], s["throughput_rps"]
    (25.0, 4, 2.0)
    """
    lat = np.asarray(latencies_s, dtype=float) * 1e3
    out: dict[str, Any] = {"n": int(lat.size), "errors": int(errors)}
    if lat.size:
        for p in PERCENTILES:
            out[f"p{p}_ms"] = round(float(np.percentile(lat, p)), 3)
        out.update(mean_ms=round(float(lat.mean()), 3), min_ms=round(float(lat.min()), 3),
                   max_ms=round(float(lat.max()), 3))
    else:
        out.update({f"p{p}_ms": None for p in PERCENTILES}, mean_ms=None, min_ms=None, max_ms=None)
    if wall_s is not None:
        out["wall_s"] = round(float(wall_s), 3)
        out["throughput_rps"] = round(lat.size / wall_s, 3) if wall_s > 0 else None
    return out


def rolling_percentile(times: np.ndarray, values: np.ndarray, window: int, q: float = 50) -> np.ndarray:
    """The ``q``-th percentile of the last ``window`` values at each point (for plots).

    >>> rolling_percentile(np.arange(5.0), np.array([1., 3., 2., 8., 4.]), 3).tolist()
    [1.0, 2.0, 2.0, 3.0, 4.0]
    """
    order = np.argsort(times, kind="stable")
    v = values[order]
    return np.array([np.percentile(v[max(0, i - window + 1):i + 1], q) for i in range(v.size)])


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is zero.

    >>> ratio(3, 2), ratio(None, 2), ratio(1, 0)
    (1.5, None, None)
    """
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    return round(value, digits) if math.isfinite(value) else None


def get(data: Any, *path: Any) -> Any:
    """``data[path[0]][path[1]]...``, or None where a step is missing.

    >>> get({"a": {"b": [1, 2]}}, "a", "b", 1), get({"a": {}}, "a", "x", "y")
    (2, None)
    """
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def target(name: str, value: float | None, threshold: float, higher_is_better: bool, detail: str = "") -> dict:
    """One target's verdict: pass, fail, or not measured (value None).

    >>> target("x", 1.1, 1.25, False)["verdict"], target("y", None, 3, True)["verdict"]
    ('pass', 'not measured')
    """
    if value is None:
        verdict = "not measured"
    elif higher_is_better:
        verdict = "pass" if value >= threshold else "fail"
    else:
        verdict = "pass" if value <= threshold else "fail"
    by = None
    if value is not None and verdict == "fail":
        by = round(threshold / value if higher_is_better else value / threshold, 3)
    return {"target": name, "value": value, "threshold": threshold,
            "wants": ">=" if higher_is_better else "<=", "verdict": verdict, "missed_by_factor": by,
            "detail": detail}


def best_throughput(levels: dict[str, dict]) -> tuple[str | None, float | None]:
    """The concurrency level (key) with the highest throughput and that throughput.

    >>> best_throughput({"1": {"throughput_rps": 20.0}, "4": {"throughput_rps": 25.5}, "8": {}})
    ('4', 25.5)
    """
    best: tuple[str | None, float | None] = (None, None)
    for key, s in levels.items():
        rps = s.get("throughput_rps")
        if rps is not None and (best[1] is None or rps > best[1]):
            best = (key, rps)
    return best


def evaluate_targets(results: dict[str, dict], ours: str = "ours") -> list[dict]:
    """The issue's targets, from the workloads' result documents (keyed by workload name)."""
    seq = results.get("sequential", {})
    floor_p50 = get(seq, "floor", "pipeline", "p50_ms")
    ours_p50 = get(seq, "contenders", ours, "p50_ms")
    rf_p50 = get(seq, "contenders", "rf", "p50_ms")
    out = [
        target("sequential p50: ours / raw ONNX Runtime floor", ratio(ours_p50, floor_p50), 1.25, False,
               f"ours {ours_p50} ms, floor {floor_p50} ms"),
        target("sequential p50: ours / Roboflow Inference", ratio(ours_p50, rf_p50), 1.0, False,
               f"ours {ours_p50} ms, Roboflow {rf_p50} ms"),
    ]
    conc = results.get("concurrency", {})
    ours_at, ours_rps = best_throughput(get(conc, "contenders", ours) or {})
    rf_at, rf_rps = best_throughput(get(conc, "contenders", "rf") or {})
    out.append(target("best throughput: ours / Roboflow Inference", ratio(ours_rps, rf_rps), 1.2, True,
                      f"ours {ours_rps} req/s at {ours_at} clients, Roboflow {rf_rps} req/s at {rf_at} clients"))
    sw = results.get("switching", {})
    runs = [k for k in (get(sw, "runs") or {}) if k.startswith("rr-12-")]
    for key in sorted(runs, key=lambda k: int(k.rsplit("c", 1)[-1])):
        o = get(sw, "runs", key, "contenders", ours) or {}
        r = get(sw, "runs", key, "contenders", "rf") or {}
        out.append(target(f"switching {key}: Roboflow p50 / ours p50", ratio(r.get("p50_ms"), o.get("p50_ms")), 3.0, True,
                          f"ours {o.get('p50_ms')} ms, Roboflow {r.get('p50_ms')} ms"))
        out.append(target(f"switching {key}: Roboflow p99 / ours p99", ratio(r.get("p99_ms"), o.get("p99_ms")), 5.0, True,
                          f"ours {o.get('p99_ms')} ms, Roboflow {r.get('p99_ms')} ms"))
    cold = results.get("coldstart", {})
    origin = get(cold, "contenders", ours, "origin_http", "load_ms", "median")
    store = get(cold, "contenders", ours, "object_store", "load_ms", "median")
    out.append(target("load: throttled origin / object store (whole load)", ratio(origin, store), 5.0, True,
                      f"origin {origin} ms, object store {store} ms (server-side load time, median)"))
    origin_f = get(cold, "contenders", ours, "origin_http", "fetch_ms", "median")
    store_f = get(cold, "contenders", ours, "object_store", "fetch_ms", "median")
    out.append(target("load: throttled origin / object store (artifact fetch only)", ratio(origin_f, store_f), 5.0, True,
                      f"origin {origin_f} ms, object store {store_f} ms (from the replica's log)"))
    return out


def median(values: Sequence[float]) -> float | None:
    """
    >>> median([3.0, 1.0, 2.0]), median([])
    (2.0, None)
    """
    return round(float(np.median(values)), 3) if len(values) else None
