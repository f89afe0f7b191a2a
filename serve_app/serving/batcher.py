"""Per-model dynamic batching: the input tensors of concurrent requests go to the session together.

While one batch runs, new requests queue; when it ends they all go in the next call (up to
``max_batch`` images). A batch waits at most ``max_wait_s`` for company, and only when more
requests for the model are in flight than are queued (``in_flight``): a lone request pays nothing.
One batch runs at a time per model. Batches are padded to a few fixed sizes (``buckets``), so the
runtime sees few input shapes (on a GPU each has a session of its own, see SessionOptions).
A batch of several requests, or a padded one, is assembled in a buffer the batcher keeps per
bucket (:class:`BatchBuffers`): joining and padding with fresh arrays cost a replica about 1.4 of
its 9 core-ms per answer on the H200 (the pages of ~10 MB allocated, faulted in and freed per batch).
A request may bring a score ``floor`` (``VisionModel.score_floor``): its batch runs with the lowest
of them (``run(tensor, floor)``). Outputs are split by request as arrays are, ``output[start:stop]``
(the candidate filter's :class:`~serve_app.pipeline.candidates.CandidateRows` slices so too).

>>> import asyncio
>>> b = TensorBatcher(lambda x: [x * 2], max_batch=8, max_wait_s=0.001)
>>> asyncio.run(b.submit(np.ones((1, 2))))[0].tolist()
[[2.0, 2.0]]
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.options import batch_buckets

RunFn = Callable[..., list[Any]]  # run(tensor) or, for requests that bring a floor, run(tensor, floor)


@dataclass
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future = field(repr=False)
    floor: Any = None


class TensorBatcher:
    def __init__(self, run: RunFn, max_batch: int, max_wait_s: float, executor: Executor | None = None,
                 buckets: Sequence[int] | Callable[[], Sequence[int]] | None = None,
                 in_flight: Callable[[], int] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._run = run
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._executor = executor
        # the sizes batches are padded to; a callable is asked at every batch (buckets built later)
        if callable(buckets):
            self._buckets: Callable[[], Sequence[int]] = buckets
        else:
            fixed = tuple(buckets or batch_buckets(max_batch))
            self._buckets = lambda: fixed
        self._in_flight = in_flight
        self._buffers = BatchBuffers()
        self._queue: list[_Pending] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # recent batch sizes, for metrics and tests

    async def submit(self, tensor: np.ndarray, floor: Any = None) -> list[Any]:
        """Run ``tensor`` (N images) with whatever else is queued; returns this request's N outputs."""
        loop = asyncio.get_running_loop()
        item = _Pending(tensor, loop.create_future(), floor)
        self._queue.append(item)
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await item.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._images_queued() < self._max_batch and self._max_wait_s > 0 and self._company_expected():
                await asyncio.sleep(self._max_wait_s)  # let concurrent requests join
            batch, images = [], 0
            while self._queue and (not batch or images + len(self._queue[0].tensor) <= self._max_batch):
                item = self._queue.pop(0)
                batch.append(item)
                images += len(item.tensor)
            tensor = self._buffers.assemble([b.tensor for b in batch], self._buckets())
            floors = [b.floor for b in batch]
            args = (tensor,) if any(f is None for f in floors) else (tensor, min(floors))
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, *args)
            except BaseException as exc:  # every waiter of this batch gets the error
                for b in batch:
                    if not b.future.done():
                        b.future.set_exception(exc)
                continue
            self.batch_sizes = (self.batch_sizes + [images])[-1000:]
            start = 0
            for b in batch:
                n = len(b.tensor)
                if not b.future.done():
                    b.future.set_result([o[start:start + n] for o in outputs])
                start += n

    def _images_queued(self) -> int:
        return sum(len(p.tensor) for p in self._queue)

    def _company_expected(self) -> bool:
        """More requests for this model are in flight than queued: some may join the batch."""
        return self._in_flight is None or self._in_flight() > len(self._queue)


class BatchBuffers:
    """The requests' tensors of one batch, joined and padded with zero rows up to the smallest
    bucket that holds them (or left at their own size when none does), in a buffer kept per
    (bucket, row shape, dtype) and reused by the next batch of that size. The buffer is the
    batch until the next :meth:`assemble`: the batcher runs one batch at a time. A lone request
    that fills its bucket goes as it is.

    >>> b = BatchBuffers()
    >>> x = b.assemble([np.ones((2, 1)), np.full((1, 1), 2.0)], (1, 8))
    >>> x.ravel().tolist()
    [1.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    >>> b.assemble([np.full((1, 1), 3.0)], (1, 8)).ravel().tolist(), b.assemble([np.ones((9, 1))], (1, 8)).shape
    ([3.0], (9, 1))
    >>> b.assemble([np.full((2, 1), 4.0)], (1, 8)) is x, x.ravel().tolist()  # the stale third row zeroed
    (True, [4.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, np.ndarray] = {}
        self._used: dict[tuple, int] = {}  # rows of each buffer the last batch wrote (the rest are zero)

    def assemble(self, tensors: Sequence[np.ndarray], buckets: Sequence[int]) -> np.ndarray:
        rows = sum(len(t) for t in tensors)
        bucket = min((b for b in buckets if b >= rows), default=rows)
        first = tensors[0]
        if len(tensors) == 1 and bucket == rows:
            return first
        if any(t.shape[1:] != first.shape[1:] or t.dtype != first.dtype for t in tensors):
            return pad_to_bucket(np.concatenate(tensors), buckets)  # NumPy's own error or promotion
        key = (bucket, first.shape[1:], first.dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = np.zeros((bucket, *first.shape[1:]), first.dtype)
        start = 0
        for t in tensors:
            buffer[start:start + len(t)] = t
            start += len(t)
        if self._used.get(key, 0) > rows:
            buffer[rows:self._used[key]] = 0
        self._used[key] = rows
        return buffer


def pad_to_bucket(tensor: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """Pad the batch with zero images up to the smallest bucket that holds it (or leave it when
    none does); the padded rows' outputs are ignored.

    >>> pad_to_bucket(np.ones((5, 1)), (1, 8)).shape, pad_to_bucket(np.ones((1, 1)), (1, 8)).shape
    ((8, 1), (1, 1))
    >>> pad_to_bucket(np.ones((3, 1)), (1, 2, 4, 8)).shape, pad_to_bucket(np.ones((9, 1)), (1, 8)).shape
    ((4, 1), (9, 1))
    """
    n = len(tensor)
    bucket = min((b for b in buckets if b >= n), default=n)
    if bucket == n:
        return tensor
    pad = np.zeros((bucket - n, *tensor.shape[1:]), tensor.dtype)
    return np.concatenate([tensor, pad])
