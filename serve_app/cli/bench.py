"""``serve-app bench``: a short closed-loop benchmark of one model on a running server.

For each client count: one warm-up request (the model loads outside the window), then N client
threads, each with its own HTTP session, released at one instant; each sends its next request as
soon as the previous answer arrives, for D seconds. Only answers that complete inside the window
count (a request still in flight at its end is dropped, not charged to the next level), so req/s is
answers / D. A progress bar (tqdm, on stderr) shows the window's time left, answers and errors.

Threads, not processes: a client spends its time waiting on the socket, and the load generator has
to start in a second. On a box of few cores the clients share them with the server; the
``benchmarks/`` harness (client processes, several servers, plots) is the tool for figures to publish.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from serve_app.cli.client import CliError, ServerClient

PERCENTILES = (50, 95, 99)
MAX_ERROR_SAMPLES = 5


@dataclass
class ClientTally:
    """What one client thread saw inside the window."""

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    late: int = 0  # answers that arrived after the window closed (not counted)
    samples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LevelResult:
    """One client count's run: the answers completed inside ``duration_s``."""

    clients: int
    duration_s: float
    latencies_s: tuple[float, ...]
    errors: int
    late: int
    error_samples: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        """``answers``, ``req_s`` and ``p50_ms``/``p95_ms``/``p99_ms`` (None without answers), ``errors``.

        >>> LevelResult(2, 2.0, (0.01, 0.02, 0.03, 0.04), 1, 0, ()).summary()["req_s"]
        2.0
        """
        import numpy as np

        out: dict[str, Any] = {"clients": self.clients, "duration_s": self.duration_s,
                               "answers": len(self.latencies_s), "req_s": round(len(self.latencies_s) / self.duration_s, 2)}
        lat = np.asarray(self.latencies_s) * 1e3
        for p in PERCENTILES:
            out[f"p{p}_ms"] = round(float(np.percentile(lat, p)), 1) if lat.size else None
        out.update(errors=self.errors, late=self.late)
        return out


def run_level(client: ServerClient, model: str, image: bytes, clients: int, duration_s: float,
              progress: bool = True) -> LevelResult:
    """``clients`` threads against ``model`` for ``duration_s`` seconds, all released together."""
    import requests
    from tqdm import tqdm

    tallies = [ClientTally() for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    window: list[float] = []  # [start, end], set before the barrier opens

    def loop(tally: ClientTally) -> None:
        with requests.Session() as session:
            barrier.wait()
            start, end = window
            time.sleep(max(0.0, start - time.monotonic()))
            while time.monotonic() < end:
                sent = time.monotonic()
                error = None
                try:
                    client.infer(image, model, session=session)
                except CliError as exc:
                    error = exc.message
                done = time.monotonic()
                if done > end:
                    tally.late += 1
                    break
                if error is None:
                    tally.latencies_s.append(done - sent)
                else:
                    tally.errors += 1
                    if len(tally.samples) < MAX_ERROR_SAMPLES:
                        tally.samples.append(error)

    threads = [threading.Thread(target=loop, args=(t,), name=f"bench-client-{i}", daemon=True)
               for i, t in enumerate(tallies)]
    for t in threads:
        t.start()
    start = time.monotonic() + 0.05
    window.extend([start, start + duration_s])
    barrier.wait()
    bar = tqdm(total=duration_s, desc=f"{clients} client{'s' if clients != 1 else ''}", unit="s", disable=not progress,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} s [{remaining} left{postfix}]")
    with bar:
        while any(t.is_alive() for t in threads) and time.monotonic() < start + duration_s:
            time.sleep(0.2)
            elapsed = min(duration_s, max(0.0, time.monotonic() - start))
            answers, errors = sum(len(t.latencies_s) for t in tallies), sum(t.errors for t in tallies)
            bar.set_postfix_str(f"{answers} answers, {errors} errors, {answers / max(elapsed, 1e-9):.1f} req/s",
                                refresh=False)
            bar.update(elapsed - bar.n)
        bar.update(duration_s - bar.n)  # the window is over: the bar ends full
    for t in threads:
        t.join(client.timeout_s + 5)
    return LevelResult(clients, duration_s, tuple(x for t in tallies for x in t.latencies_s),
                       sum(t.errors for t in tallies), sum(t.late for t in tallies),
                       tuple(s for t in tallies for s in t.samples)[:MAX_ERROR_SAMPLES])


def default_image() -> bytes:
    """A 640x480 JPEG with a circle, a square and a triangle on grey (the built-in shapes models' kind of scene)."""
    import cv2
    import numpy as np

    image = np.full((480, 640, 3), 128, np.uint8)
    cv2.circle(image, (150, 160), 60, (56, 56, 255), -1)
    cv2.rectangle(image, (330, 90), (450, 210), (168, 153, 44), -1)
    cv2.fillPoly(image, [np.array([[320, 420], [440, 250], [560, 420]], np.int32)], (29, 178, 255))
    return cv2.imencode(".jpg", image)[1].tobytes()
