"""Fair sharing on one replica: a fast detector's latency alone and beside OCR traffic, per scheduler.

    .venv/bin/python -m benchmarks.fairness [--variants fifo,fair,fair-1thread,fifo-2threads] [--cycles 1]
        [--det-clients 1] [--ocr-clients 2] [--duration 30] [--quick]

Each variant is ``serve run`` of serve_config.yaml (built-in repository, CPU provider,
``intra_op_threads: 0`` as shipped, one ModelServer replica) with its scheduler settings, started
and stopped in turn (by PID). Against each: ``shapes-det/1`` is warmed, then ``--det-clients``
closed-loop clients send 640x480 scene JPEGs alone for ``--duration`` seconds ("alone"), then the
same clients beside ``--ocr-clients`` clients sending ``ocr/1`` pages of text ("beside"). Clients
are threads of this process on the header route (raw JPEG body); latency is the client's, from
send to answer; each answer's Server-Timing gives the replica's stages (the queue share).

Variants: ``fifo`` (one shared pool, 1 thread on the CPU: the behaviour before the fair scheduler),
``fair`` (the default: per-model queues, 2 threads, at most 1 per model), ``fair-1thread``
(per-model queues served by least service, one thread: queues without a thread to spare) and
``fifo-2threads`` (a shared pool of 2: a thread to spare without the per-model cap).

Writes benchmarks/results/fairness.json (machine, versions, options, per variant and phase the
detector's and OCR's latency summaries, stage medians, the p99 ratio against the 2.5x target) and
fairness.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests

from benchmarks import layout
from benchmarks.context import _git, check_quiet, machine
from benchmarks.servers import OurServer, log
from benchmarks.stats import summarize

DETECTOR, OCR = "shapes-det/1", "ocr/1"
PHASES = ("alone", "beside_ocr")
TARGET_P99_RATIO = 2.5
VARIANTS: dict[str, list[str]] = {
    "fifo": ["args.inference_scheduler=fifo"],
    "fair": ["args.inference_scheduler=fair"],
    "fair-1thread": ["args.inference_scheduler=fair", "args.inference_threads=1"],
    "fifo-2threads": ["args.inference_scheduler=fifo", "args.inference_threads=2"],
}


def scene_images(count: int = 8) -> list[bytes]:
    """640x480 JPEGs of the shapes the built-in detector knows."""
    from zoo.shapes import draw_scene

    rng = np.random.default_rng(11)
    return [cv2.imencode(".jpg", draw_scene(rng, size=(640, 480), max_shapes=4).image,
                         [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for _ in range(count)]


def text_pages(count: int = 4, lines: int = 7) -> list[bytes]:
    """640x480 JPEGs of ``lines`` lines of black text on white: 0.5-1 s each for ocr/1 on the 2-core box."""
    out = []
    for p in range(count):
        page = np.full((480, 640, 3), 255, np.uint8)
        for i in range(lines):
            cv2.putText(page, f"PAGE {p} LINE {i} QUICK BROWN FOX {i * 7 + p}", (16, 50 + 60 * i),
                        cv2.FONT_HERSHEY_DUPLEX, 0.9, (0, 0, 0), 2, cv2.LINE_AA)
        out.append(cv2.imencode(".jpg", page, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def stages_of(header: str) -> dict[str, float]:
    """Server-Timing -> stage seconds.

    >>> stages_of("queue;dur=2.00, inference;dur=30.50")
    {'queue': 0.002, 'inference': 0.0305}
    """
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur) / 1e3
    return out


class Client(threading.Thread):
    """A closed loop of one model's requests until ``stop`` is set: (sent, done, status, stages) each."""

    def __init__(self, url: str, model_id: str, images: list[bytes], stop: threading.Event, offset: int = 0) -> None:
        super().__init__(daemon=True)
        self.url, self.model_id, self.images, self.stop_event, self.offset = url, model_id, images, stop, offset
        self.records: list[tuple[float, float, int, dict[str, float]]] = []

    def run(self) -> None:
        session = requests.Session()
        headers = {"serve_multiplexed_model_id": self.model_id, "content-type": "image/jpeg"}
        i = self.offset
        while not self.stop_event.is_set():
            sent = time.monotonic()
            try:
                r = session.post(self.url, data=self.images[i % len(self.images)], headers=headers, timeout=120)
                status, stages = r.status_code, stages_of(r.headers.get("Server-Timing", ""))
            except requests.RequestException:
                status, stages = -1, {}
            self.records.append((sent, time.monotonic(), status, stages))
            i += 1
        session.close()


def summary(records: list[tuple[float, float, int, dict[str, float]]], wall_s: float) -> dict[str, Any]:
    ok = [r for r in records if r[2] == 200]
    out = summarize([done - sent for sent, done, _, _ in ok], errors=len(records) - len(ok), wall_s=wall_s)
    names = sorted({k for r in ok for k in r[3]})
    out["stages_median_ms"] = {k: round(float(np.median([r[3][k] for r in ok if k in r[3]])) * 1e3, 2) for k in names}
    out["stages_p99_ms"] = {k: round(float(np.percentile([r[3][k] for r in ok if k in r[3]], 99)) * 1e3, 2)
                            for k in names}
    # where the slowest 1% went: their stages' medians (Server-Timing), and the client's share outside the replica
    slow = sorted(ok, key=lambda r: r[1] - r[0])[-max(1, len(ok) // 100):] if ok else []
    out["slowest_1pct_stages_median_ms"] = {k: round(float(np.median([r[3][k] for r in slow if k in r[3]])) * 1e3, 2)
                                            for k in names if any(k in r[3] for r in slow)}
    shares = [r[3]["queue"] / r[3]["total"] for r in ok if r[3].get("total") and "queue" in r[3]]
    out["queue_share_of_replica_time"] = {"median": round(float(np.median(shares)), 3),
                                          "p99": round(float(np.percentile(shares, 99)), 3)} if shares else None
    return out


Records = list[tuple[float, float, int, dict[str, float]]]


def phase(url: str, clients: dict[str, tuple[int, list[bytes]]], duration_s: float) -> dict[str, tuple[Records, float]]:
    stop = threading.Event()
    threads = {m: [Client(url, m, images, stop, offset=i * 3) for i in range(n)] for m, (n, images) in clients.items()}
    started = time.monotonic()
    for group in threads.values():
        for t in group:
            t.start()
    time.sleep(duration_s)
    stop.set()
    for group in threads.values():
        for t in group:
            t.join(timeout=180)
    wall = time.monotonic() - started
    # requests still in flight at the stop are kept: a slow answer left out would flatter the tail
    return {m: ([r for t in group for r in t.records], wall) for m, group in threads.items()}


def warm(url: str, model_id: str, images: list[bytes], count: int) -> None:
    headers = {"serve_multiplexed_model_id": model_id, "content-type": "image/jpeg"}
    for i in range(count):
        r = requests.post(url, data=images[i % len(images)], headers=headers, timeout=300)
        if r.status_code != 200:
            raise RuntimeError(f"warm-up of {model_id}: HTTP {r.status_code}: {r.text[:300]}")


def run_variant(name: str, args: argparse.Namespace, scenes: list[bytes], pages: list[bytes]) -> dict[str, Any]:
    """One server start: warm-up, then the two phases; raw records per phase and model."""
    run_dir = layout.RUNS / f"fairness-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    server = OurServer(run_dir, repositories=[layout.ROOT / "configs" / "models"], overrides=VARIANTS[name])
    try:
        info = server.start()
        log(f"  {name}: answered after {info.seconds:.1f} s")
        url = server.url + "/infer"
        warm(url, DETECTOR, scenes, args.warmup)
        warm(url, OCR, pages, max(2, args.warmup // 5))
        out: dict[str, Any] = {"loadavg_before": list(os.getloadavg())}
        log(f"  {name}: detector alone, {args.det_clients} client(s), {args.duration:.0f} s")
        out["alone"] = phase(url, {DETECTOR: (args.det_clients, scenes)}, args.duration)
        log(f"  {name}: detector beside {args.ocr_clients} OCR client(s), {args.duration:.0f} s")
        out["beside_ocr"] = phase(url, {DETECTOR: (args.det_clients, scenes), OCR: (args.ocr_clients, pages)},
                                  args.duration)
        out["loadavg_after"] = list(os.getloadavg())
    finally:
        server.stop()
    return out


def summarize_variant(name: str, starts: list[dict[str, Any]]) -> dict[str, Any]:
    """Each start's summaries, and all starts' requests pooled per phase and model."""
    out: dict[str, Any] = {"settings": VARIANTS[name], "starts": []}
    for start in starts:
        out["starts"].append({"loadavg_before": start["loadavg_before"], "loadavg_after": start["loadavg_after"],
                              **{ph: {m: summary(*rw) for m, rw in start[ph].items()} for ph in PHASES}})
    for ph in PHASES:
        out[ph] = {m: summary([r for s in starts for r in s[ph][m][0]], sum(s[ph][m][1] for s in starts))
                   for m in starts[0][ph]}
    alone, beside = out["alone"][DETECTOR], out["beside_ocr"][DETECTOR]
    out["detector_p50_ratio"] = round(beside["p50_ms"] / alone["p50_ms"], 2)
    out["detector_p99_ratio"] = round(beside["p99_ms"] / alone["p99_ms"], 2)
    out["target_met"] = out["detector_p99_ratio"] <= TARGET_P99_RATIO
    log(f"  {name} ({len(starts)} start(s)): detector p50 {alone['p50_ms']:.0f} -> {beside['p50_ms']:.0f} ms, "
        f"p99 {alone['p99_ms']:.0f} -> {beside['p99_ms']:.0f} ms ({out['detector_p99_ratio']}x); "
        f"OCR p50 {out['beside_ocr'][OCR]['p50_ms']:.0f} ms, {out['beside_ocr'][OCR]['throughput_rps']} req/s")
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    names = list(runs)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 1.3]})
    x = np.arange(len(names))
    bars = [("alone", "p50_ms", "tab:blue", "p50 alone"), ("beside_ocr", "p50_ms", "tab:orange", "p50 beside OCR"),
            ("alone", "p99_ms", "tab:cyan", "p99 alone"), ("beside_ocr", "p99_ms", "tab:red", "p99 beside OCR")]
    width = 0.2
    for k, (ph, key, colour, label) in enumerate(bars):
        values = [runs[n][ph][DETECTOR][key] for n in names]
        ax.bar(x + (k - 1.5) * width, values, width, color=colour, label=label)
        for xi, v in zip(x + (k - 1.5) * width, values):
            ax.text(xi, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    for xi, n in zip(x, names):
        limit = TARGET_P99_RATIO * runs[n]["alone"][DETECTOR]["p99_ms"]
        ax.hlines(limit, xi - 2 * width, xi + 2 * width, colors="black", linestyles="dashed",
                  label=f"target: {TARGET_P99_RATIO}x p99 alone" if xi == 0 else None)
    ax.set_xticks(x, [f"{n}\n({runs[n]['detector_p99_ratio']}x p99)" for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("shapes-det/1 latency (ms, log scale)")
    ax.set_title(f"{DETECTOR}: {doc['options']['det_clients']} client(s) alone, then beside "
                 f"{doc['options']['ocr_clients']} {OCR} client(s)")
    ax.legend(fontsize=8)
    ax2.bar(x, [runs[n]["beside_ocr"][OCR]["throughput_rps"] for n in names], color="tab:green")
    ax2.set_xticks(x, names, fontsize=8)
    ax2.set_ylabel(f"{OCR} answers per second (beside the detector)")
    ax2.set_title("what OCR keeps")
    m = doc["meta"]["machine"]
    fig.suptitle(f"one CPU replica, {m['cores']} cores ({m['cpu'][:40]}); serve_config.yaml, intra_op_threads 0"
                 + ("  [machine busy]" if doc["meta"].get("warning") else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    import onnxruntime
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="fifo,fair,fair-1thread,fifo-2threads")
    ap.add_argument("--det-clients", type=int, default=1)
    ap.add_argument("--ocr-clients", type=int, default=2)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=1,
                    help="start every variant this many times, in turn (fifo, fair, ..., fifo, fair, ...): "
                         "a busy spell of the shared machine then falls on all of them")
    ap.add_argument("--quick", action="store_true", help="smoke test: 5 s phases")
    ap.add_argument("--results-dir", type=Path, default=layout.RESULTS)
    ap.add_argument("--replot", action="store_true", help="only redraw fairness.png from the saved fairness.json")
    args = ap.parse_args(argv)
    if args.replot:
        out = args.results_dir / "fairness.json"
        plot(json.loads(out.read_text()), args.results_dir / "fairness.png")
        return out
    if args.quick:
        args.duration, args.warmup = 5.0, 3
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    scenes, pages = scene_images(), text_pages()
    doc: dict[str, Any] = {
        "meta": {"workload": "fairness", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
                 "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__,
                              "numpy": np.__version__, "python": sys.version.split()[0]},
                 "git": {"commit": _git("rev-parse", "HEAD"),
                         "uncommitted": [line for line in _git("status", "--porcelain").splitlines()
                                         if not line[3:].startswith("benchmarks/results/")]},
                 "command": "python -m benchmarks.fairness " + " ".join(argv if argv is not None else sys.argv[1:])},
        "options": {"variants": variants, "cycles": args.cycles, "det_clients": args.det_clients, "ocr_clients": args.ocr_clients,
                    "duration_s": args.duration, "warmup": args.warmup, "target_p99_ratio": TARGET_P99_RATIO,
                    "detector_images": [len(b) for b in scenes], "ocr_images": [len(b) for b in pages]},
        "runs": {},
    }
    warning = check_quiet(None)
    if warning:
        log(f"WARNING: {warning}")
        doc["meta"]["warning"] = warning
    log("== fairness")
    starts: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / "fairness.json"
    for cycle in range(args.cycles):
        for name in variants:
            log(f"== {name}, start {cycle + 1}/{args.cycles}")
            starts[name].append(run_variant(name, args, scenes, pages))
            # written after every start, so a run cut short keeps what it measured
            doc["runs"] = {n: summarize_variant(n, starts[n]) for n in variants if starts[n]}
            doc["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            doc["meta"]["loadavg_at_end"] = list(os.getloadavg())
            doc["meta"]["complete"] = cycle == args.cycles - 1 and name == variants[-1]
            out.write_text(json.dumps(doc, indent=1))
    plot(doc, args.results_dir / "fairness.png")
    log(f"wrote {out} and fairness.png")
    return out


if __name__ == "__main__":
    main()
