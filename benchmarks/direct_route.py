"""Gateway hop or not: the header route through the Gateway against ModelServer as the ingress.

    .venv/bin/python -m benchmarks.direct_route [--requests 150] [--clients 4] [--duration 10]

Both start from serve_config.yaml (built-in repository, shapes-det/1, CPU provider), differing
only in ``direct_ingress``; each is started, driven with raw JPEG bodies (one client, then
``--clients`` threads), and stopped in turn. Writes benchmarks/results/direct_route.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import requests
import yaml

from benchmarks.servers import ManagedProcess, free_port
from zoo.shapes import draw_scene

ROOT = Path(__file__).resolve().parents[1]


def _serve(direct: bool, work: Path) -> tuple[ManagedProcess, str]:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(direct_ingress=direct, providers=["CPUExecutionProvider"], cache_dir=str(work / "cache"),
                       state_dir=str(work / "state"))
    if direct:
        app["deployments"] = [d for d in app["deployments"] if d["name"] != "Gateway"]
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray"), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = ManagedProcess("serve", [str(Path(sys.executable).parent / "serve"), "run", str(work / "config.yaml")],
                          cwd=ROOT, env=env, log_path=work / "serve.log", marker=str(work / "ray"))
    return proc, f"http://127.0.0.1:{port}"


def _measure(url: str, body: bytes, n: int, clients: int, duration: float) -> dict:
    headers = {"serve_multiplexed_model_id": "shapes-det/1", "content-type": "image/jpeg"}
    s = requests.Session()
    for _ in range(10):
        assert s.post(url, data=body, headers=headers, timeout=60).status_code == 200
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        r = s.post(url, data=body, headers=headers, timeout=60)
        lat.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    end = time.time() + duration
    done = []

    def client(_: int) -> None:
        c = requests.Session()
        while time.time() < end:
            t = time.perf_counter()
            ok = c.post(url, data=body, headers=headers, timeout=60).status_code == 200
            done.append((ok, time.perf_counter() - t))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    conc = [d for ok, d in done if ok]
    return {"sequential_p50_ms": float(np.percentile(lat, 50) * 1e3), "sequential_p99_ms": float(np.percentile(lat, 99) * 1e3),
            f"throughput_{clients}_clients_rps": len(conc) / duration,
            f"p50_{clients}_clients_ms": float(np.percentile(conc, 50) * 1e3), "errors": sum(not ok for ok, _ in done)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args()
    image = draw_scene(np.random.default_rng(5), size=(640, 480), max_shapes=4).image
    body = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    results = {}
    for name, direct, path in (("gateway", False, "/infer"), ("direct", True, "/"), ("gateway_again", False, "/infer")):
        work = Path(tempfile.mkdtemp(prefix="dr", dir=ROOT / ".cache"))
        proc, url = _serve(direct, work)
        try:
            deadline = time.time() + 180
            while True:
                try:
                    h = {"serve_multiplexed_model_id": "shapes-det/1"}
                    if requests.post(url + path, data=body, headers=h, timeout=30).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.time() < deadline and proc.alive(), proc.tail()
                time.sleep(1)
            results[name] = _measure(url + path, body, args.requests, args.clients, args.duration)
            print(name, json.dumps(results[name]), flush=True)
        finally:
            proc.stop()
    out = ROOT / "benchmarks" / "results" / "direct_route.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
