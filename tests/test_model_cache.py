"""The replica's model cache without Ray: memory-aware LRU, count cap, pinning, single flight,
concurrent loads, remembered failures, leases and draining; and the metrics it feeds."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pytest

from serve_app.errors import InsufficientMemory, ModelLoadError, Overloaded
from serve_app.serving.metrics import OTHER, ModelLabels, ReplicaMetrics
from serve_app.serving.model_cache import CachePolicy, ModelCache, Prepared

MB = 2**20


class FakeProbe:
    device = "host"

    def __init__(self) -> None:
        self.used = 100 * MB

    def used_bytes(self) -> int:
        return self.used

    def total_bytes(self) -> int:
        return 1000 * MB

    def exclusive(self):
        return nullcontext()


class FakeSource:
    """Models whose build grows the probe by ``takes[id]`` (default: twice the artifact bytes)."""

    def __init__(self, probe: FakeProbe, artifact: dict[str, int], takes: dict[str, int] | None = None,
                 delay_s: float = 0.0, failing: set[str] | None = None) -> None:
        self.probe, self.artifact, self.takes = probe, artifact, takes or {}
        self.delay_s = delay_s
        self.failing = failing if failing is not None else set()
        self.prepared: Counter[str] = Counter()
        self.built: Counter[str] = Counter()
        self.windows: dict[str, tuple[float, float]] = {}

    async def prepare(self, model_id: str, admit) -> Prepared:
        started = time.monotonic()
        admit(self.artifact[model_id])
        self.prepared[model_id] += 1
        await asyncio.sleep(self.delay_s)
        self.windows[model_id] = (started, time.monotonic())
        if model_id in self.failing:
            raise ModelLoadError(f"model {model_id!r}: ONNX Runtime cannot load the weights")
        size = self.artifact[model_id]

        def build() -> str:
            self.built[model_id] += 1
            self.probe.used += self.takes.get(model_id, 2 * size)
            return f"session:{model_id}"

        return Prepared(model_id, size, "disk", build)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(artifact: dict[str, int], *, policy: CachePolicy, **source_kw) -> tuple[ModelCache, FakeSource, Clock]:
    probe = FakeProbe()
    source = FakeSource(probe, artifact, **source_kw)
    clock = Clock()
    return ModelCache(source, policy, probe=probe, clock=clock), source, clock


async def touch(cache: ModelCache, *ids: str) -> None:
    for model_id in ids:
        async with cache.lease(model_id) as loaded:
            assert loaded.model == f"session:{model_id}"


def run(coro):
    return asyncio.run(coro)


def test_budget_for_three_evicts_the_least_recently_used_for_the_fourth():
    async def main():
        cache, source, _ = make({m: 15 * MB for m in "abcd"}, policy=CachePolicy(max_models=8, budget_bytes=100 * MB))
        await touch(cache, "a", "b", "c", "a")
        assert list(cache.held()) == ["b", "c", "a"] and cache.held_bytes == 90 * MB
        await touch(cache, "d")
        assert list(cache.held()) == ["c", "a", "d"]
        assert [(e["model_id"], e["reason"]) for e in cache.evictions] == [("b", "memory")]
        assert cache.held()["d"].memory_bytes == 30 * MB  # measured: the probe grew by 30 MiB

    run(main())


def test_a_model_bigger_than_the_budget_is_refused_and_nothing_is_evicted():
    async def main():
        cache, source, _ = make({"a": 15 * MB, "b": 15 * MB, "big": 60 * MB},
                                policy=CachePolicy(max_models=8, budget_bytes=100 * MB))
        await touch(cache, "a", "b")
        for _ in range(3):
            with pytest.raises(InsufficientMemory) as caught:
                await touch(cache, "big")
            assert caught.value.status == 507 and "120.0 MiB" in caught.value.message
        assert list(cache.held()) == ["a", "b"] and cache.evictions == []
        assert source.prepared["big"] == 0  # refused before fetching, then from memory
        assert cache.stats["refused"] == 2

    run(main())


def test_a_model_measured_bigger_than_estimated_evicts_more_after_its_load():
    async def main():
        cache, source, _ = make({"a": 15 * MB, "b": 15 * MB, "c": 10 * MB},
                                takes={"c": 60 * MB}, policy=CachePolicy(max_models=8, budget_bytes=100 * MB))
        await touch(cache, "a", "b", "c")  # c reserved 20 MiB, took 60: a goes after the load
        assert list(cache.held()) == ["b", "c"] and cache.held_bytes == 90 * MB
        await touch(cache, "a")  # next time c is known at 60 MiB
        assert list(cache.held()) == ["c", "a"]

    run(main())


def test_count_cap_alone_is_a_plain_lru():
    async def main():
        cache, _, _ = make({m: MB for m in "abcde"}, policy=CachePolicy(max_models=2))
        await touch(cache, "a", "b", "a", "c", "d", "a", "e")
        assert [e["model_id"] for e in cache.evictions] == ["b", "a", "c", "d"]
        assert list(cache.held()) == ["a", "e"]
        assert {e["reason"] for e in cache.evictions} == {"count"}

    run(main())


def test_pinned_models_survive_twenty_others_and_count_against_the_budget():
    async def main():
        ids = [f"m{i}" for i in range(20)]
        cache, _, _ = make({"pin": 20 * MB, "big": 35 * MB, **{m: 5 * MB for m in ids}},
                           policy=CachePolicy(max_models=4, budget_bytes=100 * MB))
        await cache.preload("pin", pin=True)
        await touch(cache, *ids, *ids[:5])
        assert "pin" in cache and cache.held()["pin"].pinned
        assert len(cache.held()) == 4 and not any(e["model_id"] == "pin" for e in cache.evictions)
        with pytest.raises(InsufficientMemory) as caught:  # 70 MiB fits 100, not beside the pinned 40
            await touch(cache, "big")
        assert "pinned" in caught.value.message

    run(main())


def test_concurrent_requests_for_one_model_load_it_once_and_different_models_load_together():
    async def main():
        cache, source, _ = make({"x": MB, "y": MB, "z": MB}, policy=CachePolicy(max_models=8), delay_s=0.3)
        started = time.monotonic()
        await asyncio.gather(*(touch(cache, "x") for _ in range(6)), touch(cache, "y"), touch(cache, "z"))
        took = time.monotonic() - started
        assert source.prepared == Counter({"x": 1, "y": 1, "z": 1}) and source.built == source.prepared
        assert cache.stats["miss"] == 3 and cache.stats["joined"] == 5
        assert took < 0.6, took  # three 0.3 s loads side by side, not one after another
        (x0, x1), (y0, y1) = source.windows["x"], source.windows["y"]
        assert max(x0, y0) < min(x1, y1)

    run(main())


def test_a_failed_model_is_remembered_with_backoff_then_retried():
    async def main():
        failing = {"bad"}
        cache, source, clock = make({"bad": MB}, policy=CachePolicy(backoff_s=2.0, backoff_max_s=5.0), failing=failing)
        with pytest.raises(ModelLoadError):
            await touch(cache, "bad")
        for _ in range(50):
            with pytest.raises(ModelLoadError) as caught:
                await touch(cache, "bad")
        assert "not retried for another 2.0 s" in caught.value.message and caught.value.retry_after == 2.0
        assert source.prepared["bad"] == 1
        clock.now += 2.1
        with pytest.raises(ModelLoadError):
            await touch(cache, "bad")
        assert source.prepared["bad"] == 2
        assert cache.describe()["failures"]["bad"]["retry_in_s"] == 4.0  # doubled
        clock.now += 10
        with pytest.raises(ModelLoadError):
            await touch(cache, "bad")
        assert cache.describe()["failures"]["bad"]["retry_in_s"] == 5.0  # capped
        failing.clear()  # fixed at the origin
        clock.now += 5.1
        await touch(cache, "bad")
        assert source.prepared["bad"] == 4 and cache.describe()["failures"] == {}

    run(main())


def test_an_evicted_model_in_use_is_released_when_its_request_ends_and_loads_wait_for_its_memory():
    async def main():
        cache, source, _ = make({"a": 30 * MB, "b": 30 * MB}, policy=CachePolicy(max_models=8, budget_bytes=100 * MB))
        held = await cache.acquire("a")  # a request is using a
        load_b = asyncio.create_task(touch(cache, "b"))
        await asyncio.sleep(0.05)
        assert not held.closed and held.closing and "a" not in cache
        assert source.built["b"] == 0 and cache.held_bytes == 60 * MB  # b waits: a's memory is still taken
        held.release()
        await load_b
        assert held.closed and held.model is None and list(cache.held()) == ["b"]
        assert cache.held_bytes == 60 * MB

    run(main())


def test_a_load_that_takes_too_long_fails_with_a_503():
    async def main():
        cache, _, _ = make({"slow": MB}, policy=CachePolicy(load_timeout_s=0.1), delay_s=1.0)
        with pytest.raises(ModelLoadError) as caught:
            await touch(cache, "slow")
        assert "longer than 0.1 s" in caught.value.message and caught.value.status == 503
        assert cache.model_ids() == []

    run(main())


def test_recently_used_models_are_protected_from_eviction_when_asked():
    async def main():
        cache, _, _ = make({"a": MB, "b": MB}, policy=CachePolicy(max_models=1, protect_recent_s=30))
        await touch(cache, "a")
        with pytest.raises(Overloaded):
            await touch(cache, "b")
        assert list(cache.held()) == ["a"]

    run(main())


class Recorder:
    """A stand-in for ``ray.serve.metrics``: keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict]] = []
        recorder = self

        class Metric:
            def __init__(self, name: str, **kwargs) -> None:
                self.name = name

            def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
                recorder.calls.append(("inc", self.name, value, tags or {}))

            def observe(self, value: float, tags: dict | None = None) -> None:
                recorder.calls.append(("observe", self.name, value, tags or {}))

            def set(self, value: float, tags: dict | None = None) -> None:
                recorder.calls.append(("set", self.name, value, tags or {}))

        self.Counter = self.Histogram = self.Gauge = Metric

    def total(self, kind: str, name: str, **tags) -> float:
        return sum(v if kind == "inc" else 1 for k, n, v, t in self.calls
                   if k == kind and n == name and all(t.get(a) == b for a, b in tags.items()))

    def last(self, name: str, **tags) -> float:
        return [v for k, n, v, t in self.calls
                if k == "set" and n == name and all(t.get(a) == b for a, b in tags.items())][-1]


def test_metrics_count_lookups_loads_evictions_and_memory_with_bounded_labels():
    async def main():
        recorder = Recorder()
        metrics = ReplicaMetrics(recorder, max_model_labels=2)
        probe = FakeProbe()
        source = FakeSource(probe, {m: 10 * MB for m in "abc"})
        cache = ModelCache(source, CachePolicy(max_models=2, budget_bytes=100 * MB), probe=probe, events=metrics)
        metrics.attach(cache)
        await touch(cache, "a", "a", "b", "c")  # c is the third model: labelled "other"; a evicted by count
        metrics.request("a", True, {"inference": 0.01, "bogus": 1.0})
        p = "serve_app_"
        assert recorder.total("inc", p + "model_cache_lookups", model="a", result="hit") == 1
        assert recorder.total("inc", p + "model_cache_lookups", result="miss") == 3
        assert recorder.total("inc", p + "model_cache_lookups", model=OTHER) == 1
        assert recorder.last(p + "model_cache_hit_ratio") == 0.25
        assert recorder.total("inc", p + "model_loads", tier="disk", outcome="ok") == 3
        assert recorder.total("observe", p + "model_load_latency_ms", tier="disk") == 3
        assert recorder.total("inc", p + "model_evictions", model="a", reason="count") == 1
        assert recorder.total("observe", p + "evicted_model_age_s", age="idle") == 1
        assert recorder.last(p + "model_memory_bytes", model="a") == 0
        assert recorder.last(p + "model_memory_bytes", model=OTHER) == 20 * MB
        assert recorder.last(p + "replica_memory_used_bytes", device="host") == 40 * MB
        assert recorder.last(p + "replica_memory_budget_bytes", device="host") == 100 * MB
        assert recorder.total("observe", p + "model_request_latency_ms", stage="inference") == 1
        assert recorder.total("observe", p + "model_request_latency_ms", stage="bogus") == 0

    run(main())


def test_model_labels_keep_pinned_models_first():
    labels = ModelLabels(2, first=("pin/1",))
    assert [labels(m) for m in ("x/1", "y/1", "pin/1")] == ["x/1", OTHER, "pin/1"]


def test_a_model_is_not_evicted_before_the_requests_that_waited_for_it_take_it():
    async def main():
        # cap 1, two models wanted at once by several requests each: without protection the second
        # load would evict the first before its waiters resume, and they would load it again
        cache, source, _ = make({"a": MB, "b": MB}, policy=CachePolicy(max_models=1), delay_s=0.05)
        held: list[str] = []

        async def use(model_id: str) -> None:
            async with cache.lease(model_id) as loaded:
                held.append(loaded.model_id)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(use(m) for m in ["a", "b"] * 4))
        assert sorted(held) == ["a"] * 4 + ["b"] * 4
        assert source.built == Counter({"a": 1, "b": 1})

    run(main())


def test_a_gpu_load_is_measured_under_the_devices_lock_which_other_processes_share(tmp_path):
    """Replicas sharing a GPU measure loads as the device's growth: each build runs inside the
    probe's exclusive(), a lock file per device, so another process's load waits for it."""
    import subprocess
    import sys
    from contextlib import contextmanager

    from serve_app.serving.memory import device_lock

    inside: list[bool] = []

    class LockedProbe(FakeProbe):
        device = "gpu"
        held = False

        @contextmanager
        def exclusive(self):
            with device_lock("7", 5.0, folder=str(tmp_path)):
                LockedProbe.held = True
                yield
                LockedProbe.held = False

    probe = LockedProbe()
    source = FakeSource(probe, {"a": MB})
    build = source.prepare

    async def prepare(model_id, admit):
        prepared = await build(model_id, admit)
        inner = prepared.build

        def checked():
            inside.append(LockedProbe.held)
            return inner()

        return Prepared(prepared.model_id, prepared.artifact_bytes, prepared.tier, checked)

    source.prepare = prepare
    cache = ModelCache(source, CachePolicy(max_models=2), probe=probe, clock=Clock())
    # another process (another replica) holds the device's lock for 1 s: our load waits for it
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from serve_app.serving.memory import device_lock\n"
        "with device_lock('7', 5.0, folder=sys.argv[2]):\n    print('held', flush=True); time.sleep(1.0)"),
        str(Path(__file__).resolve().parents[1]), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        run(touch(cache, "a"))
        waited = time.monotonic() - started
    finally:
        holder.wait(10)
    assert inside == [True] and waited >= 0.7, (inside, waited)


def test_a_held_model_grows_measured_and_over_budget_evicts_the_least_recent_other():
    """``grow`` (a model's deferred bucket sessions) is measured as a load is and counts as the
    model's memory; past the budget the least recently used other model goes."""
    cache, source, clock = make({"a": 10 * MB, "b": 10 * MB}, policy=CachePolicy(budget_bytes=60 * MB))

    async def main():
        a = await cache.acquire("a")
        a.release()
        clock.now += 1
        b = await cache.acquire("b")
        b.release()
        assert cache.held_bytes == 40 * MB

        def more() -> None:
            source.probe.used += 25 * MB

        assert await cache.grow(b, more) == 25 * MB
        assert b.memory_bytes == 45 * MB and cache.model_ids() == ["b"]  # a (older) evicted: 65 > 60 MiB
        built: list[int] = []
        b.close()
        assert await cache.grow(b, lambda: built.append(1)) == 0 and built == []  # closed: nothing runs

    run(main())
