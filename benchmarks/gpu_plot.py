"""Plot GPU benchmark results (benchmarks/gpu.py's JSON): throughput and latency against clients
for every server variant and route (Roboflow Inference's too, where the run had it), and where a
request's time goes (Server-Timing) for the first variant's first route of this server (Roboflow's
answers carry no Server-Timing).

    python -m benchmarks.gpu_plot benchmarks/results/gpu/gpu_h200_graph_vs_roboflow.json [more.json ...] [--out PNG]

Writes gpu.png beside the first file unless ``--out`` names another; where the runs recorded
where the cores went (``cpu`` in each row, benchmarks/proc_cpu.py), also ``<out>_cores.png``: core-ms
per answer by process role for every variant, route and client level; where the runs' cold
requests carry load phases (Server-Timing's ``load_*``), also ``<out>_cold.png``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.request_path import stages_of  # noqa: E402

STAGES = ("decode", "preprocess", "inference", "postprocess")


def variants(result: dict) -> dict[str, dict]:
    """``{name: server result}``; results written before variants existed hold one unnamed server."""
    server = result.get("server", {})
    return {"": server} if "sweep" in server else server


def routes(sweep: list[dict]) -> dict[str, list[dict]]:
    """Sweep rows by route (``target``; runs before routes existed have one, unnamed).

    >>> sorted(routes([{"target": "rf-json", "clients": 1}, {"clients": 1}, {"target": "rf-json", "clients": 8}]).items())
    [('', [{'clients': 1}]), ('rf-json', [{'target': 'rf-json', 'clients': 1}, {'target': 'rf-json', 'clients': 8}])]
    """
    out: dict[str, list[dict]] = {}
    for row in sweep:
        out.setdefault(row.get("target", ""), []).append(row)
    return out


def breakdown(row: dict) -> dict[str, float]:
    """Median ms per part of one sweep level: the replica's stages, the rest of the replica, the
    gateway hop (gateway total minus replica total), proxy and client (client p50 minus gateway).

    >>> breakdown({"p50_ms": 20, "server_timing_p50_ms": {"decode": 2, "preprocess": 1, "inference": 5,
    ...            "postprocess": 2, "total": 11, "gateway": 15}})["proxy + client"]
    5
    """
    t = row.get("server_timing_p50_ms") or {}
    parts = {s: t.get(s, 0.0) for s in STAGES}
    parts["replica, other"] = max(0.0, t.get("total", 0.0) - sum(parts.values()))
    if "gateway" in t:
        parts["gateway hop"] = max(0.0, t["gateway"] - t.get("total", 0.0))
    parts["proxy + client"] = max(0.0, row["p50_ms"] - t.get("gateway", t.get("total", 0.0)))
    return parts


ROLES = ("model_server", "gateway", "haproxy", "load", "roboflow")


def core_ms(row: dict) -> dict[str, float]:
    """Core-ms per answer of one sweep level by role, Ray's own processes and the rest pooled.

    >>> core_ms({"cpu": {"core_ms_per_answer": {"model_server": 8.0, "gcs": 0.1, "ray:ProxyActor": 0.4}}})
    {'model_server': 8.0, 'gateway': 0.0, 'haproxy': 0.0, 'load': 0.0, 'roboflow': 0.0, 'Ray and other': 0.5}
    """
    per = (row.get("cpu") or {}).get("core_ms_per_answer", {})
    out = {r: per.get(r, 0.0) for r in ROLES}
    out["Ray and other"] = round(sum(v for r, v in per.items() if r not in ROLES), 2)
    return out


def stacked(ax, labels: list[str], rows: list[dict[str, float]]) -> None:
    """One stacked bar per label, a segment per key of the first row (missing keys count 0)."""
    bottom = [0.0] * len(rows)
    for part in rows[0]:
        vals = [r.get(part, 0.0) for r in rows]
        ax.bar(labels, vals, bottom=bottom, label=part)
        bottom = [x + y for x, y in zip(bottom, vals)]


def plot_cores(paths: list[Path], out: Path) -> bool:
    """The cores figure; False (nothing written) when no row recorded ``cpu``."""
    bars = []
    for p in paths:
        for name, s in variants(json.loads(p.read_text())).items():
            for route, rows in routes(s.get("sweep", [])).items():
                bars += [(f"{name} {route}\n{r['clients']} cl, {r['req_per_s']:.0f}/s", core_ms(r))
                         for r in rows if r.get("cpu")]
    return bar_figure(bars, out, "core-ms per answer (stacked)",
                      "where the cores go, per answer, by process role (one H200, 16 cores)")


def bar_figure(bars: list[tuple[str, dict[str, float]]], out: Path, ylabel: str, title: str,
               width: float = 0.8, target_ms: float | None = None) -> bool:
    """One stacked bar per (label, parts) pair, written to ``out``; False (nothing written) without bars."""
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(max(8.0, width * len(bars)), 5))
    stacked(ax, [b[0] for b in bars], [b[1] for b in bars])
    if target_ms is not None:
        ax.axhline(target_ms, color="black", ls=":", label=f"target {target_ms:g} ms")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=6, labelrotation=35)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return True


LOAD_PHASES = ("fetch", "lock", "graph", "session", "warmup")


def load_phases(server_timing: str) -> dict[str, float]:
    """A first request's ms by load phase (its Server-Timing's ``load_*`` entries), the rest of its
    wait for the load as ``other load``, and everything else it spent as ``request``.

    >>> load_phases("decode;dur=2, load_wait;dur=100, load_session;dur=60, load_warmup;dur=30, total;dur=112")
    {'fetch': 0.0, 'lock': 0.0, 'graph': 0.0, 'session': 60.0, 'warmup': 30.0, 'other load': 10.0, 'request': 12.0}
    """
    parts = stages_of(server_timing)
    row = {p: parts.get("load_" + p, 0.0) for p in LOAD_PHASES}
    row["other load"] = max(0.0, parts.get("load_wait", 0.0) - sum(row.values()))
    row["request"] = max(0.0, parts.get("total", 0.0) - parts.get("load_wait", 0.0))
    return row


def plot_cold(paths: list[Path], out: Path) -> bool:
    """The first requests of models whose weights were in the object store (``cold_from_object_store``),
    by load phase, per variant; False (nothing written) when no run has them with load phases."""
    bars = []
    for p in paths:
        for name, s in variants(json.loads(p.read_text())).items():
            for i, c in enumerate(s.get("cold_from_object_store", [])):
                if "load_session" in c.get("server_timing", ""):
                    bars.append((f"{p.stem.removeprefix('gpu_h200_')}: {name}\n#{i + 1}: {c['ms']:.0f} ms",
                                 load_phases(c["server_timing"])))
    return bar_figure(bars, out, "ms on the replica (stacked; the label: the client's time)",
                      "first request of a model whose weights are in the object store, by load phase (one H200)",
                      width=0.7, target_ms=250)


def plot(paths: list[Path], out: Path) -> None:
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.6))
    first = None
    for p in paths:
        d = json.loads(p.read_text())
        for name, s in variants(d).items():
            for route, rows in routes(s.get("sweep", [])).items():
                if not route.startswith("rf"):
                    first = first or (f"{name} {route}", rows)
                label = (f"Roboflow Inference ({route})" if route.startswith("rf") else
                         f"{name or p.stem} {route}: {s['replicas']} replicas")
                x = [r["clients"] for r in rows]
                a.plot(x, [r["req_per_s"] for r in rows], "o-", label=label)
                b.plot(x, [r["p50_ms"] for r in rows], "o-", label=label + " p50")
                b.plot(x, [r["p99_ms"] for r in rows], "x--", label=label + " p99")
        raw = d.get("raw_ort")
        if raw:
            a.axhline(raw["batch1_numpy"]["img_per_s"], color="grey", ls=":", label="raw ORT batch 1 (NumPy)")
            a.axhline(raw["batch32_gpu_bound"]["img_per_s"], color="black", ls=":", label="raw ORT batch 32 (on GPU)")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
    a.set_yscale("log")
    a.set_ylabel("requests/s (log)")
    b.set_ylabel("latency, ms")
    a.legend(fontsize=6)
    b.legend(fontsize=6)
    if first:
        name, sweep = first
        stacked(c, [str(r["clients"]) for r in sweep], [breakdown(r) for r in sweep])
        c.set_xlabel("concurrent clients")
        c.set_ylabel("median ms (stacked)")
        c.set_title(f"where a request's time goes: {name}", fontsize=9)
        c.legend(fontsize=6)
    fig.suptitle("YOLOv8n 640, 640x480 JPEG, one H200 (16 cores, shared with the load generator): "
                 "this server, Roboflow Inference and raw ONNX Runtime")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plot_cores(paths, out.with_name(out.stem + "_cores.png"))
    plot_cold(paths, out.with_name(out.stem + "_cold.png"))


if __name__ == "__main__":
    args = sys.argv[1:]
    out = Path(args.pop(args.index("--out") + 1)) if "--out" in args else None
    files = [Path(x) for x in args if x != "--out"]
    plot(files, out or files[0].parent / "gpu.png")
