"""A throttled origin: an HTTP file server on loopback that sends every body at a fixed rate.

Stands in for a remote object store or model hub for the cold-start workload (case c)::

    .venv/bin/python -m benchmarks.origin --root .cache/bench/origin --rate-mb 50 --port 0

It prints ``port <n>`` on its first line. The rate is per response (each transfer is paced on
its own), in MB/s of 10**6 bytes.
"""
from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


def paced_chunks(data: bytes, rate_bytes_s: float, chunk: int = CHUNK):
    """Yield ``data`` in chunks no faster than ``rate_bytes_s`` (sleeping between them).

    >>> started = time.monotonic(); parts = list(paced_chunks(b"x" * 1000, 10_000, 100))
    >>> len(parts), round(time.monotonic() - started, 1) >= 0.09
    (10, True)
    """
    started = time.monotonic()
    for offset in range(0, len(data), chunk):
        due = started + offset / rate_bytes_s
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield data[offset:offset + chunk]
    delay = started + len(data) / rate_bytes_s - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def make_handler(root: Path, rate_bytes_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args) -> None:  # one line per transfer, for the run's log
            print(f"origin: {fmt % args}", flush=True)

        def do_GET(self) -> None:  # noqa: N802
            name = unquote(urlsplit(self.path).path).lstrip("/")
            path = (root / name).resolve()
            if root not in path.parents or not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            started = time.monotonic()
            for part in paced_chunks(data, rate_bytes_s):
                self.wfile.write(part)
            print(f"origin: sent {name} ({len(data)} bytes) in {time.monotonic() - started:.3f} s", flush=True)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--rate-mb", type=float, default=50.0, help="MB/s (10**6 bytes) per transfer")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.root.resolve(), args.rate_mb * 1e6))
    server.daemon_threads = True
    print(f"port {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
