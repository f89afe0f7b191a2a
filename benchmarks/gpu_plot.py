"""Plot benchmarks/results/gpu/*.json: throughput and latency against clients.

    python -m benchmarks.gpu_plot benchmarks/results/gpu/gpu_h200_r2.json ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(paths: list[Path], out: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for p in paths:
        d = json.loads(p.read_text())
        s = d["server"]
        label = f"{p.stem}: {s['replicas']} replicas, batch<={s['max_batch']}"
        c = [r["clients"] for r in s["sweep"]]
        a.plot(c, [r["req_per_s"] for r in s["sweep"]], "o-", label=label)
        b.plot(c, [r["p50_ms"] for r in s["sweep"]], "o-", label=label + " p50")
        b.plot(c, [r["p99_ms"] for r in s["sweep"]], "x--", label=label + " p99")
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
    fig.suptitle("YOLOv8n 640, 640x480 JPEG, one H200: this server vs raw ONNX Runtime")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    files = [Path(x) for x in sys.argv[1:]]
    plot(files, files[0].parent / "gpu.png")
