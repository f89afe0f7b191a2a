"""PNG plots from the result documents (matplotlib, ``Agg``): each function reads one workload's
JSON and writes ``<results>/<workload>*.png``, so ``python -m benchmarks report`` redraws them all.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.stats import rolling_percentile  # noqa: E402

COLOURS = {"ours": "tab:blue", "ours-raw": "tab:cyan", "rf": "tab:orange", "floor": "tab:gray"}
LABELS = {"ours": "this server (JSON body)", "ours-raw": "this server (raw JPEG, header route)",
          "rf": "Roboflow Inference", "floor": "raw ONNX Runtime"}


def _label(name: str) -> str:
    base, _, config = name.partition("@")
    return LABELS.get(base, base) + (f" [{config}]" if config else "")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _subtitle(doc: dict) -> str:
    m = doc.get("meta", {}).get("machine", {})
    text = f"{m.get('cores')} cores, {m.get('cpu', '')[:40]}; YOLOv8n 640, 640x480 JPEG"
    return text + ("  [machine busy]" if doc.get("meta", {}).get("warning") else "")


def sequential(doc: dict, out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(doc["contenders"])
    data = [doc["contenders"][n].get("raw", {}).get("latency_ms", []) for n in names]
    if any(len(d) for d in data):
        ax.boxplot(data, whis=(1, 99), showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), [_label(n) for n in names], fontsize=8)
    fl = doc.get("floor", {})
    for key, style in (("pipeline", "--"), ("session_run", ":")):
        if fl.get(key, {}).get("p50_ms"):
            ax.axhline(fl[key]["p50_ms"], color="gray", ls=style, label=f"raw ORT {key.replace('_', '.')} p50")
    ax.set_ylabel("latency, ms (box: p25-p75, whiskers p1-p99)")
    ax.set_title(f"Sequential latency, one client\n{_subtitle(doc)}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return [_save(fig, out / "sequential.png")]


def concurrency(doc: dict, out: Path) -> list[Path]:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, levels in doc["contenders"].items():
        xs = sorted(int(k) for k in levels)
        c = COLOURS.get(name)
        for p, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
            ax1.plot(xs, [levels[str(x)].get(f"{p}_ms") for x in xs], style, color=c, marker="o", ms=3,
                     label=f"{_label(name)} {p}")
        ax2.plot(xs, [levels[str(x)].get("throughput_rps") for x in xs], "-o", color=c, label=_label(name))
    floor_rps = doc.get("floor", {}).get("pipeline_throughput_rps")
    if floor_rps:
        ax2.axhline(floor_rps, color="gray", ls="--", label="raw ORT, one stream")
    levels = sorted({int(k) for v in doc["contenders"].values() for k in v})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(x) for x in levels])
        ax.set_xlabel("concurrent clients")
    ax1.set_yscale("log")
    ax1.set_ylabel("latency, ms")
    ax2.set_ylabel("throughput, requests/s")
    ax1.legend(fontsize=6)
    ax2.legend(fontsize=7)
    ax1.set_title("Latency percentiles vs concurrency", fontsize=9)
    ax2.set_title(f"Throughput vs concurrency\n{_subtitle(doc)}", fontsize=9)
    return [_save(fig, out / "concurrency.png")]


def offered(doc: dict, out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, levels in doc["contenders"].items():
        xs = sorted(float(k) for k in levels)
        for p, style in (("p50", "-"), ("p99", ":")):
            ax.plot(xs, [levels[f"{x:g}"].get(f"{p}_ms") for x in xs], style, marker="o", ms=3,
                    color=COLOURS.get(name), label=f"{_label(name)} {p}")
    ax.set_yscale("log")
    ax.set_xlabel("offered load, requests/s (open loop)")
    ax.set_ylabel("latency from scheduled send, ms")
    ax.set_title(f"Latency vs offered load\n{_subtitle(doc)}", fontsize=9)
    ax.legend(fontsize=7)
    return [_save(fig, out / "offered.png")]


def switching(doc: dict, out: Path) -> list[Path]:
    runs = doc.get("runs", {})
    if not runs:
        return []
    keys = list(runs)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        run = runs[key]
        for name, s in run["contenders"].items():
            raw = s.get("raw")
            if not raw or not raw["end_s"]:
                continue
            t, lat = np.array(raw["end_s"]), np.array(raw["latency_ms"])
            c = COLOURS.get(name)
            ax.scatter(t, lat, s=4, color=c, alpha=0.35)
            ax.plot(np.sort(t), rolling_percentile(t, lat, 15), color=c,
                    label=f"{_label(name)}: p50 {s.get('p50_ms')} ms, p99 {s.get('p99_ms')} ms")
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms")
        ax.set_title(f"{key}: {run['pattern']} over {run['models']} models, {run['clients']} client(s), cap "
                     f"{doc['meta']['options']['cap']} ({run['expected_reloads_lru']}/{run['requests']} requests miss an LRU)",
                     fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time since the run started, s (line: rolling p50 of 15)")
    fig.suptitle(f"Latency over time while switching models\n{_subtitle(doc)}", fontsize=9)
    return [_save(fig, out / "switching.png")]


def coldstart(doc: dict, out: Path) -> list[Path]:
    bars: list[tuple[str, float, str]] = []
    fl = doc.get("floor", {}).get("load_from_local_file_ms", {}).get("median")
    if fl:
        bars.append(("raw ORT: file -> session\n(load only, no request)", fl, "floor"))
    rf = doc["contenders"].get("rf", {})
    if rf.get("local_disk", {}).get("first_request_ms", {}).get("median"):
        bars.append(("Roboflow: local disk\n(first request)", rf["local_disk"]["first_request_ms"]["median"], "rf"))
    ours = doc["contenders"].get("ours", {})
    for key, label in (("local_file", "ours: (a) local file"), ("disk_cache", "ours: (a') disk cache"),
                       ("object_store", "ours: (b) object store"), ("origin_http", "ours: (c) origin 50 MB/s")):
        v = ours.get(key, {}).get("first_request_ms", {}).get("median")
        if v:
            bars.append((label + "\n(first request)", v, "ours"))
    if not bars:
        return []
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(range(len(bars)), [b[1] for b in bars], color=[COLOURS.get(b[2]) for b in bars])
    for i, b in enumerate(bars):
        ax.text(i, b[1], f"{b[1]:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.set_ylabel("ms (median)")
    ax.set_title(f"Cold start by where the artifact is\n{_subtitle(doc)}", fontsize=9)
    return [_save(fig, out / "coldstart.png")]


def memory(doc: dict, out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = dict(doc["contenders"])
    if doc.get("floor"):
        series["floor"] = doc["floor"]
    for name, s in series.items():
        pts = s.get("points", [])
        ax.plot([p["models"] for p in pts], [p.get("rss_mib") for p in pts], "-o", ms=3, color=COLOURS.get(name),
                label=f"{_label(name)} ({s.get('per_model', {}).get('rss_mib')} MiB/model)")
    ax.axvline(doc["meta"]["options"]["cap"], color="gray", ls=":", label="cap")
    ax.set_xlabel("distinct models requested")
    ax.set_ylabel("RSS of the serving process, MiB")
    ax.set_title(f"Memory per loaded model\n{_subtitle(doc)}", fontsize=9)
    ax.legend(fontsize=7)
    return [_save(fig, out / "memory.png")]


PLOTTERS = {"sequential": sequential, "concurrency": concurrency, "offered": offered, "switching": switching,
            "coldstart": coldstart, "memory": memory}


def plot(workload: str, doc: dict, out: Path) -> list[Path]:
    fn = PLOTTERS.get(workload)
    return fn(doc, out) if fn else []
