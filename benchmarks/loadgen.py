"""The load generator: client processes, each a ``requests.Session`` loop that records every
request's intended start, start, end, HTTP status and number of predictions.

Clients run in their own processes (``spawn``), so the process that starts and watches the
servers never competes with them for the GIL. They all start on one signal; a progress bar on
stderr (tqdm) shows completed requests, errors, the rate and the time left while they run.

Closed loop (``interval_s`` None): each client sends its next request when the previous answer
arrives. Open loop (``interval_s`` set): each client sends on a fixed schedule, and latency is
measured from the scheduled time, so a server that falls behind is charged for the queueing it
causes (no coordinated omission).
"""
from __future__ import annotations

import base64
import json
import multiprocessing as mp
import queue
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RECORD = np.dtype([("client", "i2"), ("seq", "i4"), ("model", "i4"), ("intended", "f8"), ("start", "f8"),
                   ("end", "f8"), ("status", "i2"), ("predictions", "i4"), ("server_s", "f4")])
STATUS_CONNECTION_ERROR = -1
STATUS_TIMEOUT = -2
STATUS_BAD_BODY = -3


@dataclass(frozen=True)
class Target:
    """How to send one inference request to one contender.

    ``style`` "json": a Roboflow-style JSON body ``{model_id, image: {type: base64, value}, ...extra}``;
    "raw": the JPEG bytes as the body, the model id in the ``header`` header (our header route).
    """

    name: str
    url: str
    style: str = "json"
    extra: dict[str, Any] = field(default_factory=dict)
    header: str = "serve_multiplexed_model_id"


@dataclass(frozen=True)
class ClientPlan:
    target: Target
    model_ids: tuple[str, ...]        # the distinct ids this plan may send
    sequence: tuple[int, ...]         # indices into model_ids, one per request, in order
    images: tuple[bytes, ...]
    deadline_s: float                 # stop sending after this long (from the start signal)
    interval_s: float | None = None   # open loop: one request every interval_s
    offset_s: float = 0.0             # open loop: this client's first send time
    image_offset: int = 0
    timeout_s: float = 60.0


def client_main(plan: ClientPlan, index: int, ready: Any, go: Any, go_at: Any, done: Any, errors: Any,
                out: Any) -> None:
    """One client process: send ``plan``'s requests, then put the records (and error samples) on ``out``."""
    import requests

    session = requests.Session()
    encoded = [base64.b64encode(img).decode("ascii") for img in plan.images]
    records = np.zeros(len(plan.sequence), RECORD)
    samples: list[str] = []
    ready.release()
    go.wait()
    t0 = go_at.value
    n = 0
    for seq, model_index in enumerate(plan.sequence):
        if time.monotonic() - t0 > plan.deadline_s:
            break
        intended = time.monotonic()
        if plan.interval_s is not None:
            intended = t0 + plan.offset_s + seq * plan.interval_s
            delay = intended - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        image_index = (plan.image_offset + seq) % len(plan.images)
        model_id = plan.model_ids[model_index]
        if plan.target.style == "raw":
            kwargs: dict[str, Any] = {"data": plan.images[image_index],
                                      "headers": {plan.target.header: model_id, "Content-Type": "image/jpeg"}}
        else:
            body = {"model_id": model_id, "image": {"type": "base64", "value": encoded[image_index]},
                    **plan.target.extra}
            kwargs = {"data": json.dumps(body), "headers": {"Content-Type": "application/json"}}
        predictions, server_s = -1, np.nan
        start = time.monotonic()
        try:
            response = session.post(plan.target.url, timeout=plan.timeout_s, **kwargs)
            status = response.status_code
            end = time.monotonic()
            if status == 200:
                try:
                    answer = response.json()
                    predictions = len(answer["predictions"])
                    server_s = float(answer.get("time") or np.nan)  # the server's own timing, both servers
                except (ValueError, KeyError, TypeError):
                    status = STATUS_BAD_BODY
            if status != 200 and len(samples) < 5:
                samples.append(f"{model_id}: HTTP {status}: {response.text[:300]}")
        except requests.Timeout:
            end, status = time.monotonic(), STATUS_TIMEOUT
        except requests.RequestException as exc:
            end, status = time.monotonic(), STATUS_CONNECTION_ERROR
            if len(samples) < 5:
                samples.append(f"{model_id}: {type(exc).__name__}: {str(exc)[:200]}")
        records[n] = (index, seq, model_index, intended, start, end, status, predictions, server_s)
        n += 1
        with done.get_lock():
            done.value += 1
        if status != 200:
            with errors.get_lock():
                errors.value += 1
    out.put((index, records[:n].tobytes(), samples))
    session.close()


@dataclass
class RunResult:
    records: np.ndarray     # RECORD rows, times relative to the start signal
    wall_s: float
    error_samples: list[str]
    model_ids: tuple[str, ...]

    @property
    def ok(self) -> np.ndarray:
        return self.records[self.records["status"] == 200]

    @property
    def latencies(self) -> np.ndarray:
        """Seconds from the intended start to the answer, of the successful requests, in send order."""
        ok = self.ok
        ok = ok[np.argsort(ok["intended"], kind="stable")]
        return ok["end"] - ok["intended"]


def run_clients(plans: list[ClientPlan], label: str, progress: bool = True, grace_s: float = 120.0) -> RunResult:
    """Run every plan in its own process, all starting together; show progress on stderr."""
    ctx = mp.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    go_at = ctx.Value("d", 0.0)
    done = ctx.Value("i", 0)
    errors = ctx.Value("i", 0)
    out = ctx.Queue()
    total = sum(len(p.sequence) for p in plans)
    deadline = max(p.deadline_s for p in plans)
    procs = [ctx.Process(target=client_main, args=(p, i, ready, go, go_at, done, errors, out), daemon=True)
             for i, p in enumerate(plans)]
    for p in procs:
        p.start()
    bar = _progress_bar(label, progress)
    try:
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError(f"{label}: a client process did not start in 120 s")
        go_at.value = time.monotonic() + 0.05
        go.set()
        parts: dict[int, tuple[bytes, list[str]]] = {}
        last_shown = 0.0
        hard_stop = go_at.value + deadline + grace_s
        while len(parts) < len(procs):
            try:
                index, data, samples = out.get(timeout=0.25)
                parts[index] = (data, samples)
            except queue.Empty:
                pass
            now = time.monotonic()
            if progress and now - last_shown >= 0.5:
                last_shown = now
                _show(bar, done.value, errors.value, total, now - go_at.value, deadline)
            if now > hard_stop:
                raise RuntimeError(f"{label}: clients still running {grace_s:.0f} s after the deadline")
            if len(parts) < len(procs) and not any(p.is_alive() for p in procs) and out.empty():
                time.sleep(0.5)
                if out.empty():
                    raise RuntimeError(f"{label}: a client process died without reporting")
        wall = time.monotonic() - go_at.value
        if progress:
            _show(bar, done.value, errors.value, total, wall, deadline, finished=True)
    finally:
        bar.close()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    records = np.concatenate([np.frombuffer(parts[i][0], RECORD) for i in sorted(parts)]) if parts else np.zeros(0, RECORD)
    records = records.copy()
    for key in ("intended", "start", "end"):
        records[key] -= go_at.value
    samples = [s for i in sorted(parts) for s in parts[i][1]]
    model_ids = plans[0].model_ids if plans else ()
    return RunResult(records, wall, samples[:10], model_ids)


PROGRESS_STEPS = 1000


def _progress_bar(label: str, enabled: bool) -> Any:
    """A run's bar on stderr: a run ends at its deadline or when its requests are sent, whichever comes
    first, so the bar shows the further along of the two and tqdm's ETA follows it."""
    from tqdm import tqdm

    return tqdm(total=PROGRESS_STEPS, desc=f"  {label}", disable=not enabled, file=sys.stderr, mininterval=0.5,
                bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {elapsed}<{remaining}{postfix}")


def _show(bar: Any, done: int, errors: int, total: int, elapsed: float, deadline: float,
          finished: bool = False) -> None:
    rate = done / elapsed if elapsed > 0 else 0.0
    fraction = 1.0 if finished else max(min(elapsed / deadline, 1.0) if deadline > 0 else 0.0,
                                        done / total if total else 0.0)
    bar.set_postfix_str(f"{done}/{total} requests, {errors} errors, {rate:5.1f} req/s", refresh=False)
    bar.update(max(0, round(fraction * PROGRESS_STEPS) - bar.n))


def split_sequence(sequence: list[int] | tuple[int, ...], clients: int) -> list[tuple[int, ...]]:
    """Deal one global request sequence out to ``clients`` clients, round-robin by position.

    >>> split_sequence([0, 1, 2, 3, 4], 2)
    [(0, 2, 4), (1, 3)]
    """
    return [tuple(sequence[c::clients]) for c in range(clients)]
