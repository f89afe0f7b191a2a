"""Fair sharing of a replica's inference threads between its models.

With one shared FIFO pool a slow model holds a fast one's requests hostage: measured on the
2-core box, ``shapes-det/1``'s p99 went from about 90 ms to about 850 ms beside ``ocr/1``
requests (0.5-1 s each), its requests spending most of their time queued behind OCR.
:class:`FairScheduler` keeps one FIFO queue per model and serves them with ``workers`` threads:

- **a cap per model**: one model runs on at most ``per_model`` threads at once, so with
  ``workers > per_model`` a thread is always left for the other models (on the CPU: 2 threads,
  1 per model, so a fast model runs beside a slow one instead of behind it; a model alone runs
  one call at a time, as the single-thread pool did);
- **least service first**: a free thread takes the head of the queue of the model that has had
  the least run time (seconds, charged when a call ends) among those under their cap, the
  oldest head first on a tie; a model whose queue was empty re-enters level with the least
  served active model, so idle time banks no credit and past service is no debt.

Measured by ``benchmarks/fairness.py`` (``benchmarks/results/fairness.json``).

It is a :class:`concurrent.futures.Executor`, so ``loop.run_in_executor`` and the GPU path's
:class:`~serve_app.serving.batcher.TensorBatcher` use it unchanged: :meth:`submit` charges the
call to the model named by :func:`run_as` in the caller's context (``""`` if none), and
:meth:`submit_to` names it explicitly.

>>> pool = FairScheduler(workers=2, per_model=1)
>>> pool.submit_to("ocr/1", sum, [1, 2]).result()
3
>>> run_as("shapes-det/1"); pool.submit(max, 4, 5).result()
5
>>> pool.shutdown()
"""
from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

SCHEDULERS = ("fair", "fifo")
_current_model: contextvars.ContextVar[str] = contextvars.ContextVar("serve_app_inference_model", default="")


def run_as(model_id: str) -> None:
    """Charge the executor calls this context makes from now on (``submit``) to ``model_id``.

    An asyncio task copies its context when it is created, so a task started after this call
    (such as a model's batcher) is charged to the same model.
    """
    _current_model.set(model_id)


@dataclass
class _Job:
    seq: int
    future: Future
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict


@dataclass
class _Flow:
    """One model's queue, its calls running now and the run time it has been charged."""

    queue: deque[_Job] = field(default_factory=deque)
    running: int = 0
    service_s: float = 0.0
    calls: int = 0

    @property
    def active(self) -> bool:
        return bool(self.queue) or self.running > 0


class FairScheduler(Executor):
    """Per-model FIFO queues served by ``workers`` threads; see the module docstring."""

    def __init__(self, workers: int, per_model: int | None = None, *, thread_name_prefix: str = "infer",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        per_model = per_model or max(1, workers - 1)
        if not 1 <= per_model <= workers:
            raise ValueError(f"per_model must be in [1, workers={workers}], got {per_model}")
        self.workers = workers
        self.per_model = per_model
        self._clock = clock
        self._flows: dict[str, _Flow] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._shutdown = False
        self._threads = [threading.Thread(target=self._worker, name=f"{thread_name_prefix}_{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    # -- submitting ---------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker, charged to the model set by :func:`run_as`."""
        return self.submit_to(_current_model.get(), fn, *args, **kwargs)

    def submit_to(self, model_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)`` behind ``model_id``'s earlier calls; its future."""
        future: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            flow = self._flows.get(model_id)
            if flow is None:
                flow = self._flows[model_id] = _Flow()
            if not flow.active:  # (re-)entering: level with the least served active model
                others = [f.service_s for m, f in self._flows.items() if m != model_id and f.active]
                flow.service_s = min(others, default=0.0)
            flow.queue.append(_Job(next(self._seq), future, fn, args, kwargs))
            self._work.notify()
        return future

    # -- running ------------------------------------------------------------------------------------
    def _next(self) -> tuple[str, _Job] | None:
        """The job to run next (lock held): least served model under its cap, oldest head on a tie."""
        best: tuple[float, int, str] | None = None
        for model_id, flow in self._flows.items():
            if flow.queue and flow.running < self.per_model:
                key = (flow.service_s, flow.queue[0].seq, model_id)
                if best is None or key < best:
                    best = key
        if best is None:
            return None
        flow = self._flows[best[2]]
        flow.running += 1
        return best[2], flow.queue.popleft()

    def _worker(self) -> None:
        while True:
            with self._lock:
                picked = self._next()
                while picked is None:
                    if self._shutdown and not any(f.queue for f in self._flows.values()):
                        return
                    self._work.wait()
                    picked = self._next()
            model_id, job = picked
            started = self._clock()
            run = job.future.set_running_or_notify_cancel()
            result: Any = None
            error: BaseException | None = None
            if run:
                try:
                    result = job.fn(*job.args, **job.kwargs)
                except BaseException as exc:  # as ThreadPoolExecutor: the caller gets it, the worker goes on
                    error = exc
            # the books first, then the caller: one who sees the answer sees it counted (and the
            # model under its cap again)
            elapsed = self._clock() - started
            with self._lock:
                flow = self._flows[model_id]
                flow.running -= 1
                flow.service_s += elapsed
                flow.calls += 1
                if not flow.active and len(self._flows) > 64:
                    del self._flows[model_id]  # forget idle models beyond a few dozen
                self._work.notify_all()  # this model may be under its cap again
            if run:
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(result)
            del job, result, error

    # -- stopping and looking -------------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; queued ones still run unless ``cancel_futures``; ``wait`` joins the workers."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for flow in self._flows.values():
                    while flow.queue:
                        flow.queue.popleft().future.cancel()
            self._work.notify_all()
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()

    def describe(self) -> dict[str, Any]:
        """Per model: calls queued and running, calls done and the run time charged."""
        with self._lock:
            return {"workers": self.workers, "per_model": self.per_model,
                    "models": {m: {"queued": len(f.queue), "running": f.running, "calls": f.calls,
                                   "service_s": round(f.service_s, 6)} for m, f in self._flows.items()}}


def inference_executor(scheduler: str, threads: int, model_threads: int, *, gpu: bool) -> Executor:
    """The replica's inference executor.

    ``"fifo"``: one shared pool of ``threads`` (0: 1 on the CPU, where one ONNX Runtime call
    already uses every core, 2 with a GPU), calls in arrival order, as before. ``"fair"``: a
    :class:`FairScheduler` of ``threads`` workers (0: one more than the FIFO pool's default, a
    thread for the other models), ``model_threads`` of them at most per model (0: all but one).
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"inference_scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    base = 2 if gpu else 1
    if scheduler == "fifo":
        return ThreadPoolExecutor(max_workers=threads or base, thread_name_prefix="infer")
    workers = threads or base + 1
    return FairScheduler(workers, min(model_threads, workers) or None)
