"""JPEG decode on the GPU (nvImageCodec, ``gpu_jpeg_decode``) against the CPU decoders, in one process.

    python -m benchmarks.gpu_decode --out DIR [--images .cache/bench/images] [--seconds 3]

For the replica's decode step (``images.decode_image_bytes``: Pillow reads the header, then the
pixels) with the CPU decoders (simplejpeg, libjpeg-turbo) and with the GPU decoder first, and for
the bare decoders: at 1, 4 and 16 threads for ``--seconds`` each, images decoded per second
(counted only inside the window), the median latency, and CPU time per image (the process's CPU
time over the images). Then the pixel difference of the GPU's decode from the CPU's. Writes
``DIR/gpu_decode.json`` with the machine (``benchmarks/gpu_machine.py``) after every step.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_machine import machine
from serve_app.pipeline.images import ImageLimits, decode_image_bytes

Decode = Callable[[bytes], Any]


def drive(decode: Decode, images: list[bytes], threads: int, seconds: float) -> dict[str, float]:
    """``threads`` threads decoding ``images`` in turn for ``seconds``, started together."""
    go, stop_at = threading.Event(), [0.0]
    done: list[list[float]] = [[] for _ in range(threads)]

    def worker(k: int) -> None:
        go.wait()
        i = k
        while True:
            t = time.perf_counter()
            decode(images[i % len(images)])
            end = time.perf_counter()
            if end > stop_at[0]:
                return
            done[k].append(end - t)
            i += threads

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    cpu0 = time.process_time()
    stop_at[0] = time.perf_counter() + seconds
    go.set()
    for t in pool:
        t.join()
    cpu = time.process_time() - cpu0
    lat = np.array([x for d in done for x in d]) * 1e3
    n = len(lat)
    return {"threads": threads, "images": n, "img_per_s": n / seconds, "p50_ms": float(np.median(lat)) if n else None,
            "cpu_ms_per_image": cpu / n * 1e3 if n else None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=Path, default=Path(".cache/bench/images"))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", default="1,4,16")
    ap.add_argument("--decoders", type=int, default=2, help="nvImageCodec decoders in the pool (the replica's)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = [p.read_bytes() for p in sorted(args.images.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg")]
    result: dict[str, Any] = {"machine": machine(os.environ.get("GIT_COMMIT")), "images": len(images),
                              "image_bytes_mean": float(np.mean([len(b) for b in images])), "runs": []}
    path = args.out / "gpu_decode.json"

    def save() -> None:
        path.write_text(json.dumps(result, indent=1))

    import simplejpeg

    from serve_app.pipeline.gpu_jpeg import gpu_jpeg_decoder

    gpu = gpu_jpeg_decoder(0, args.decoders)
    limits = ImageLimits()
    contenders: dict[str, Decode] = {
        "cpu: decode_image_bytes": lambda b: decode_image_bytes(b, limits),
        "cpu: simplejpeg alone": lambda b: simplejpeg.decode_jpeg(b, colorspace="BGR"),
    }
    if gpu is not None:
        contenders["gpu: decode_image_bytes"] = lambda b: decode_image_bytes(b, limits, jpeg_decoder=gpu)
        contenders["gpu: nvImageCodec alone"] = gpu
        first = decode_image_bytes(images[0], limits)
        diffs = [np.abs(decode_image_bytes(b, limits, jpeg_decoder=gpu).astype(np.int16) - decode_image_bytes(b, limits))
                 for b in images]
        result["pixels"] = {"shape": list(first.shape), "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
                            "max_abs_diff": int(max(d.max() for d in diffs)),
                            "p999_abs_diff": float(np.percentile(np.concatenate([d.ravel() for d in diffs]), 99.9))}
    else:
        result["gpu"] = "nvImageCodec did not start (see the log)"
    save()
    for threads in (int(t) for t in args.threads.split(",")):
        for name, fn in contenders.items():
            for b in images[:4]:
                fn(b)  # warm: first calls allocate
            run = {"decoder": name, **drive(fn, images, threads, args.seconds)}
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            save()


if __name__ == "__main__":
    main()
