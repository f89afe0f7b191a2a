"""FairScheduler on its own: who runs next, the per-model cap, errors, shutdown, the executor API.

Run times come from a fake clock that each job advances by its cost, so every order below is
exact; nothing here depends on how fast the machine is (the waits are generous deadlines).
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serve_app.serving.batcher import TensorBatcher
from serve_app.serving.scheduler import FairScheduler, inference_executor, run_as
from serve_app.settings import Settings

WAIT_S = 30.0  # a deadline for "this happens at all", never a speed requirement


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Jobs that log their name and advance the fake clock by their cost."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.order: list[str] = []
        self.lock = threading.Lock()

    def job(self, name: str, cost: float, gate: threading.Event | None = None, then=None):
        def run() -> str:
            if gate is not None:
                assert gate.wait(WAIT_S)
            with self.lock:
                self.order.append(name)
            self.clock.now += cost
            if then is not None:
                then()
            return name
        return run


def one_worker() -> tuple[FairScheduler, Recorder]:
    clock = FakeClock()
    return FairScheduler(workers=1, clock=clock), Recorder(clock)


def test_equal_costs_interleave_models_instead_of_first_come_first_served():
    pool, rec = one_worker()
    gate = threading.Event()
    futures = [pool.submit_to("a", rec.job("a0", 1, gate))]
    futures += [pool.submit_to("a", rec.job(f"a{i}", 1)) for i in (1, 2, 3)]
    futures += [pool.submit_to("b", rec.job(f"b{i}", 1)) for i in (1, 2, 3)]
    gate.set()
    assert [f.result(WAIT_S) for f in futures] == ["a0", "a1", "a2", "a3", "b1", "b2", "b3"]
    assert rec.order == ["a0", "b1", "a1", "b2", "a2", "b3", "a3"]  # FIFO would have run every a first
    pool.shutdown()


def test_the_least_served_model_goes_first_so_cheap_requests_pass_an_expensive_model():
    pool, rec = one_worker()
    gate = threading.Event()
    futures = [pool.submit_to("slow", rec.job("s0", 10, gate))]
    futures += [pool.submit_to("slow", rec.job(f"s{i}", 10)) for i in (1, 2)]
    futures += [pool.submit_to("fast", rec.job(f"f{i}", 1)) for i in range(1, 6)]
    gate.set()
    for f in futures:
        f.result(WAIT_S)
    # after s0 (10 s of service) the fast model runs until it has had as much: all five of its 1 s calls
    assert rec.order == ["s0", "f1", "f2", "f3", "f4", "f5", "s1", "s2"]
    pool.shutdown()


def test_a_model_returning_from_idle_is_level_with_the_others_not_in_debt():
    pool, rec = one_worker()
    for i in range(5):  # "a" is served 50 s, then goes idle
        pool.submit_to("a", rec.job(f"old{i}", 10)).result(WAIT_S)
    rec.order.clear()
    gate = threading.Event()
    futures = [pool.submit_to("b", rec.job("b0", 1, gate))]
    futures += [pool.submit_to("a", rec.job(f"a{i}", 1)) for i in (1, 2)]  # a re-enters level with b (0 s)
    futures += [pool.submit_to("b", rec.job(f"b{i}", 1)) for i in (1, 2)]
    gate.set()
    for f in futures:
        f.result(WAIT_S)
    assert rec.order == ["b0", "a1", "a2", "b1", "b2"]  # with its 50 s held against it, a would run last
    pool.shutdown()


def test_a_newcomer_gets_no_credit_for_the_service_others_had_before_it_came():
    pool, rec = one_worker()
    gate = threading.Event()
    submitted: list = []

    def newcomer_arrives() -> None:  # during b1, when b has been charged 10 s (b0)
        submitted.extend(pool.submit_to("c", rec.job(f"c{i}", 1)) for i in range(15))

    futures = [pool.submit_to("b", rec.job("b0", 10, gate)), pool.submit_to("b", rec.job("b1", 10, then=newcomer_arrives))]
    futures += [pool.submit_to("b", rec.job(f"b{i}", 10)) for i in (2, 3)]
    gate.set()
    for f in futures:
        f.result(WAIT_S)
    for f in submitted:
        f.result(WAIT_S)
    # c enters at 10 s (b's service then): ten 1 s calls bring it level with b's 20, then they alternate
    assert rec.order == ["b0", "b1", *[f"c{i}" for i in range(10)], "b2", *[f"c{i}" for i in range(10, 15)], "b3"]
    pool.shutdown()


def test_one_model_never_holds_more_than_its_share_and_the_others_get_the_rest():
    pool = FairScheduler(workers=3, per_model=2)
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocked() -> str:
        started.release()
        assert release.wait(WAIT_S)
        return "slow"

    slow = [pool.submit_to("slow", blocked) for _ in range(4)]
    assert started.acquire(timeout=WAIT_S) and started.acquire(timeout=WAIT_S)
    # two slow calls hold two of the three threads; the other two wait although a thread is free
    fast = [pool.submit_to("fast", lambda i=i: i) for i in range(10)]
    assert [f.result(WAIT_S) for f in fast] == list(range(10))  # all ran on the third thread meanwhile
    state = pool.describe()["models"]["slow"]
    assert (state["running"], state["queued"]) == (2, 2)
    assert sum(f.done() for f in slow) == 0
    release.set()
    assert [f.result(WAIT_S) for f in slow] == ["slow"] * 4
    assert pool.describe()["models"]["slow"]["calls"] == 4
    pool.shutdown()


def test_default_share_is_all_threads_but_one():
    pool = FairScheduler(workers=2)
    assert (pool.workers, pool.per_model) == (2, 1)
    pool.shutdown()
    with pytest.raises(ValueError):
        FairScheduler(workers=0)
    with pytest.raises(ValueError):
        FairScheduler(workers=2, per_model=3)


def test_an_exception_reaches_its_own_caller_and_the_workers_go_on():
    pool = FairScheduler(workers=2, per_model=1)

    def boom() -> None:
        raise KeyError("bad input")

    failing = pool.submit_to("a", boom)
    fine = [pool.submit_to(m, lambda m=m: m.upper()) for m in ("a", "b", "c")]
    with pytest.raises(KeyError, match="bad input"):
        failing.result(WAIT_S)
    assert [f.result(WAIT_S) for f in fine] == ["A", "B", "C"]
    assert pool.submit_to("a", lambda: 1).result(WAIT_S) == 1
    pool.shutdown()


def test_run_in_executor_is_charged_to_the_model_named_by_run_as_and_errors_propagate():
    pool = FairScheduler(workers=2)

    async def request(model_id: str, value: int) -> int:
        run_as(model_id)  # each task has its own context: no request sees another's model
        await asyncio.sleep(0)
        if value < 0:
            return await asyncio.get_running_loop().run_in_executor(pool, lambda: 1 // 0)
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: value * 2)

    async def main() -> list:
        return await asyncio.gather(*(request(m, v) for m, v in [("a", 1), ("b", 2), ("a", 3), ("b", -1)]),
                                    return_exceptions=True)

    got = asyncio.run(main())
    assert got[:3] == [2, 4, 6] and isinstance(got[3], ZeroDivisionError)
    models = pool.describe()["models"]
    assert (models["a"]["calls"], models["b"]["calls"]) == (2, 2) and "" not in models
    pool.shutdown()


def test_the_batcher_runs_on_the_scheduler_charged_to_its_model():
    pool = FairScheduler(workers=2)
    batcher = TensorBatcher(lambda x: [x * 2], max_batch=8, max_wait_s=0.001, executor=pool)

    async def main() -> list:
        run_as("det/1")
        return await asyncio.gather(*(batcher.submit(np.full((1, 2), i, np.float32)) for i in range(5)))

    outs = asyncio.run(main())
    assert [o[0].tolist() for o in outs] == [[[2 * i, 2 * i]] for i in range(5)]
    assert set(pool.describe()["models"]) == {"det/1"}
    pool.shutdown()


def test_shutdown_runs_what_was_queued_then_refuses_new_calls():
    pool, rec = one_worker()
    gate = threading.Event()
    futures = [pool.submit_to("a", rec.job("a0", 1, gate)), pool.submit_to("b", rec.job("b0", 1))]
    gate.set()
    pool.shutdown(wait=True)
    assert [f.result(0) for f in futures] == ["a0", "b0"]
    assert not any(t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit_to("a", lambda: None)


def test_shutdown_with_cancel_futures_drops_the_queue():
    pool, rec = one_worker()
    gate = threading.Event()
    began = threading.Event()
    running = pool.submit_to("a", lambda: began.set() or rec.job("a0", 1, gate)())
    queued = [pool.submit_to(m, rec.job(m, 1)) for m in ("a", "b", "c")]
    assert began.wait(WAIT_S)
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert running.result(WAIT_S) == "a0"
    assert all(f.cancelled() for f in queued)
    for t in pool._threads:
        t.join(WAIT_S)
    assert rec.order == ["a0"]


def test_a_call_cancelled_while_queued_never_runs():
    pool, rec = one_worker()
    gate = threading.Event()
    first = pool.submit_to("a", rec.job("a0", 1, gate))
    dropped = pool.submit_to("b", rec.job("b0", 1))
    kept = pool.submit_to("b", rec.job("b1", 1))
    assert dropped.cancel()
    gate.set()
    assert (first.result(WAIT_S), kept.result(WAIT_S)) == ("a0", "b1")
    assert rec.order == ["a0", "b1"]
    pool.shutdown()


def test_inference_executor_follows_the_settings():
    s = Settings()
    assert (s.inference_scheduler, s.inference_threads, s.inference_model_threads) == ("fair", 0, 0)
    fifo_cpu = inference_executor("fifo", 0, 0, gpu=False)
    fifo_gpu = inference_executor("fifo", 0, 0, gpu=True)
    assert isinstance(fifo_cpu, ThreadPoolExecutor) and (fifo_cpu._max_workers, fifo_gpu._max_workers) == (1, 2)
    fair_cpu = inference_executor("fair", 0, 0, gpu=False)
    fair_gpu = inference_executor("fair", 0, 0, gpu=True)
    fair_set = inference_executor("fair", 4, 1, gpu=False)
    assert [(p.workers, p.per_model) for p in (fair_cpu, fair_gpu, fair_set)] == [(2, 1), (3, 2), (4, 1)]
    fair_one = inference_executor("fair", 1, 0, gpu=False)
    assert fair_one.per_model == 1  # one thread: per-model queues only, no thread left over
    for p in (fifo_cpu, fifo_gpu, fair_cpu, fair_gpu, fair_set, fair_one):
        p.shutdown()
    with pytest.raises(ValueError, match="inference_scheduler"):
        inference_executor("lifo", 0, 0, gpu=False)
