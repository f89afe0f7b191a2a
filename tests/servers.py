"""Real servers on loopback for the tests: an origin that counts requests and can misbehave."""
from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


# Below Linux's ephemeral range (32768-60999), where every outgoing connection and every port Ray
# binds to 0 lands, above Ray's default worker ports (10002-19999) and above the worker ranges
# tests/cluster.py gives its nodes (20000-25999): a port found free here stays free until the test
# binds it, where a kernel-chosen one was taken in between once (a CI run lost 168 tests to
# "Failed to bind" on Serve's proxy).
TEST_PORTS = range(26000, 32768)
_handed_out: set[int] = set()  # a port asked for twice before anything binds it must not come back


def free_port() -> int:
    """A loopback TCP port outside the ranges the kernel and Ray hand out by themselves, not
    handed out before in this process."""
    for _ in range(200):
        port = random.choice(TEST_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free test port in {TEST_PORTS}")


class OriginServer:
    """Serves ``files`` ({path: bytes}) and counts GETs per path.

    ``fail_next[path] = n``: the next n requests get 500. ``corrupt_next[path] = n``: the next n
    get the bytes with one flipped (a checksum failure). ``delay_s``: each answer waits first.
    """

    def __init__(self, files: dict[str, bytes] | None = None, delay_s: float = 0.0) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.counts: Counter[str] = Counter()
        self.fail_next: Counter[str] = Counter()
        self.corrupt_next: Counter[str] = Counter()
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)


def _handler(server: OriginServer) -> type[BaseHTTPRequestHandler]:
    import time

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = unquote(urlsplit(self.path).path)
            with server._lock:
                server.counts[path] += 1
                fail = server.fail_next[path] > 0
                if fail:
                    server.fail_next[path] -= 1
                corrupt = not fail and server.corrupt_next[path] > 0
                if corrupt:
                    server.corrupt_next[path] -= 1
            if server.delay_s:
                time.sleep(server.delay_s)
            body = server.files.get(path)
            if fail:
                status, body = 500, b"injected failure"
            elif body is None:
                status, body = 404, b"not found"
            else:
                status = 200
                if corrupt:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
