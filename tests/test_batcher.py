"""Dynamic batching: concurrent requests share session calls, results go back to their owners."""
import asyncio
import threading
import time

import numpy as np
import pytest

from serve_app.serving.batcher import TensorBatcher


class SlowDoubler:
    """A stand-in session: doubles its input, takes 20 ms, records each call's batch size."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            self.calls.append(len(x))
        time.sleep(0.02)
        return [x * 2, x.sum(axis=(1, 2))]


def test_concurrent_requests_are_batched_and_split_back():
    run = SlowDoubler()
    batcher = TensorBatcher(run, max_batch=16, max_wait_s=0.005)

    async def main():
        tensors = [np.full((1 + i % 3, 2, 2), i, np.float32) for i in range(12)]
        outs = await asyncio.gather(*(batcher.submit(t) for t in tensors))
        for t, (doubled, sums) in zip(tensors, outs):
            np.testing.assert_array_equal(doubled, t * 2)
            np.testing.assert_array_equal(sums, t.sum(axis=(1, 2)))
        return tensors

    tensors = asyncio.run(main())
    assert sum(run.calls) >= sum(len(t) for t in tensors)
    assert set(run.calls) <= {1, 16}  # batches padded to the default buckets: 1 and max_batch
    assert len(run.calls) < len(tensors)  # fewer session calls than requests
    assert max(run.calls) <= 16


def test_max_batch_is_respected():
    run = SlowDoubler()
    batcher = TensorBatcher(run, max_batch=4, max_wait_s=0.005)

    async def main():
        await asyncio.gather(*(batcher.submit(np.ones((1, 1, 1))) for _ in range(10)))

    asyncio.run(main())
    assert max(run.calls) <= 4 and sum(run.calls) >= 10


def test_an_error_reaches_every_request_of_its_batch_and_the_batcher_goes_on():
    calls = []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("session failed")
        return [x]

    batcher = TensorBatcher(flaky, max_batch=8, max_wait_s=0.01)

    async def main():
        results = await asyncio.gather(*(batcher.submit(np.ones((1, 1))) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert (await batcher.submit(np.ones((1, 1))))[0].tolist() == [[1.0]]

    asyncio.run(main())


def test_lone_request_waits_at_most_max_wait():
    batcher = TensorBatcher(lambda x: [x], max_batch=8, max_wait_s=0.005)

    async def main():
        started = time.perf_counter()
        await batcher.submit(np.ones((1, 1)))
        return time.perf_counter() - started

    assert asyncio.run(main()) < 0.2


def test_bad_max_batch():
    with pytest.raises(ValueError, match="max_batch"):
        TensorBatcher(lambda x: [x], max_batch=0, max_wait_s=0)


def test_batches_are_padded_to_the_smallest_bucket_that_holds_them():
    run = SlowDoubler()
    batcher = TensorBatcher(run, max_batch=8, max_wait_s=0.005, buckets=(1, 4, 8))

    async def main():
        outs = await asyncio.gather(*(batcher.submit(np.full((1, 1, 1), i, np.float32)) for i in range(3)))
        assert [o[0].item() for o in outs] == [0.0, 2.0, 4.0]  # padding never leaks into results

    asyncio.run(main())
    assert run.calls[-1] == 4


def test_no_wait_when_no_other_request_of_the_model_is_in_flight():
    """A lone request (in flight: itself) goes straight to the session; with others in flight it
    waits up to max_wait for them."""
    def timed(in_flight: int) -> float:
        batcher = TensorBatcher(lambda x: [x], max_batch=8, max_wait_s=0.3, in_flight=lambda: in_flight)

        async def main():
            started = time.perf_counter()
            await batcher.submit(np.ones((1, 1)))
            return time.perf_counter() - started

        return asyncio.run(main())

    assert timed(1) < 0.1
    assert timed(3) >= 0.29


def test_reused_batch_buffers_hold_only_the_batch_and_zero_padding():
    """Batches of varying sizes go through the batcher's reused buffers: every call sees exactly
    its requests' rows, then zeros (no row left from an earlier, larger batch), and every request
    gets back its own rows."""
    calls: list[np.ndarray] = []

    def run(x: np.ndarray) -> list[np.ndarray]:
        calls.append(x.copy())
        return [x * 2]

    batcher = TensorBatcher(run, max_batch=8, max_wait_s=0.002, buckets=(1, 4, 8))
    rng = np.random.default_rng(7)
    sizes_seen: set[int] = set()

    async def wave(sizes: list[int]) -> None:
        calls.clear()
        tensors = [np.full((n, 2, 3), i + 1, np.uint8) for i, n in enumerate(sizes)]  # request i's rows hold i + 1
        outs = await asyncio.gather(*(batcher.submit(t) for t in tensors))
        for t, (doubled,) in zip(tensors, outs):
            np.testing.assert_array_equal(doubled, t * 2)
        rows_by_request: dict[int, int] = {}
        for x in calls:
            sizes_seen.add(len(x))
            values = x.reshape(len(x), -1)[:, 0]
            used = int((values > 0).sum())
            assert (values[used:] == 0).all() and (values[:used] > 0).all()  # its rows first, then zeros
            for v in values[:used].tolist():
                rows_by_request[v] = rows_by_request.get(v, 0) + 1
        assert rows_by_request == {i + 1: n for i, n in enumerate(sizes)}  # each request's rows, once

    async def main():
        for _ in range(40):  # large waves and small ones alternate: stale rows must be zeroed
            await wave([int(n) for n in rng.integers(1, 4, size=int(rng.integers(1, 6)))])

    asyncio.run(main())
    assert sizes_seen >= {4, 8}
