"""A model held by a replica: in-flight accounting so eviction never closes it under a request.

The replica's :class:`~serve_app.serving.model_cache.ModelCache` evicts a model while requests may
still be using it, and Python may call ``__del__`` again at collection. So ``close`` is idempotent
and deferred: the model is released when the last request using it ends. A request takes a lease
with :meth:`try_acquire` (or ``with model.use()``) and gives it back with :meth:`release`.

>>> m = LoadedModel("m/1", model=object(), tier="disk", load_seconds=0.1)
>>> with m.use():
...     m.close()            # evicted while in use: nothing released yet
...     m.closed
False
>>> m.closed
True
>>> m.try_acquire()          # a released model hands out no more leases
False
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger(__name__)


class LoadedModel:
    def __init__(self, model_id: str, model: Any, tier: str, load_seconds: float,
                 on_close: Any = None, memory_bytes: int = 0, pinned: bool = False) -> None:
        self.model_id = model_id
        self.model = model
        self.tier = tier
        self.load_seconds = load_seconds
        self.memory_bytes = memory_bytes
        self.pinned = pinned
        self.loaded_at = time.time()
        self.last_used = self.loaded_at
        self.requests = 0
        self.phases: dict[str, float] = {}  # seconds per phase of its load (ModelCache._load)
        self._in_flight = 0
        self._close_requested = False
        self._closed = False
        self._lock = threading.Lock()
        self._on_close = on_close

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def closing(self) -> bool:
        """Eviction asked for it: no new leases, released when the last one ends."""
        return self._close_requested

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        """Take a lease for one request; False once eviction has asked to close the model."""
        with self._lock:
            if self._close_requested:
                return False
            self._in_flight += 1
            self.requests += 1
            self.last_used = time.time()
            return True

    def release(self) -> None:
        """Give a lease back; the last one out of an evicted model releases it."""
        with self._lock:
            self._in_flight -= 1
            release = self._close_requested and self._in_flight == 0 and not self._closed
            if release:
                self._closed = True
        if release:
            self._release()

    @contextmanager
    def use(self) -> Iterator[Any]:
        with self._lock:  # a request already admitted may finish on a model being closed
            if self._closed:
                raise RuntimeError(f"model {self.model_id} was already released")
            self._in_flight += 1
            self.requests += 1
            self.last_used = time.time()
        try:
            yield self.model
        finally:
            self.release()

    def close(self) -> None:
        """Ask to release; happens now if idle, else when the last request finishes. Idempotent."""
        with self._lock:
            if self._close_requested:
                return
            self._close_requested = True
            release = self._in_flight == 0
            if release:
                self._closed = True
        if release:
            self._release()
        else:
            log.info("model %s evicted with %d request(s) in flight; releasing when they finish",
                     self.model_id, self._in_flight)

    def _release(self) -> None:
        log.info("model %s released after %d request(s), %.0f s loaded", self.model_id, self.requests,
                 time.time() - self.loaded_at)
        self.model = None
        if self._on_close is not None:
            try:
                self._on_close(self)
            except Exception:  # a reporting hook must never break eviction
                log.exception("on_close hook failed for %s", self.model_id)

    def __del__(self) -> None:  # Python calls it at collection; closing again is a no-op
        try:
            self.close()
        except Exception:
            pass
