"""The object-store tier: verified artifact blobs held as ``np.uint8`` arrays in Ray's object store.

:class:`ArtifactStore` is a plain class (its ``put`` is ``ray.put`` inside the actor) that keeps an
LRU of object refs bounded in bytes and makes one fetch per artifact however many callers miss at
once (single flight). Below it is the node's :class:`DiskCache`, below that the origin.
The actor itself must do the ``put`` so that it owns the objects: they outlive the replica that
asked first, and are freed when the LRU drops them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from serve_app.artifacts.disk_cache import DiskCache
from serve_app.artifacts.sources import SourceOptions, fetch_to_file, redact_uri
from serve_app.errors import ArtifactCorrupt, ArtifactError

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    ref: Any
    size: int


class ArtifactStore:
    def __init__(self, disk: DiskCache, options: SourceOptions, max_bytes: int,
                 put: Callable[[np.ndarray], Any]) -> None:
        self._disk = disk
        self._options = options
        self._max_bytes = max_bytes
        self._put = put
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self.stats = {"object_store": 0, "disk": 0, "origin": 0, "evicted": 0}

    @property
    def held_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    async def get(self, files: dict[str, dict]) -> dict[str, dict]:
        """``{name: {"uri", "sha256", "size"}}`` -> ``{name: {"ref": [ObjectRef], "tier", "seconds"}}``.

        The ref is wrapped in a list so Ray hands it over as a reference, not its value.
        """
        names = list(files)
        got = await asyncio.gather(*(self._get_one(files[n]) for n in names))
        return {n: {"ref": [ref], "tier": tier, "seconds": secs} for n, (ref, tier, secs) in zip(names, got)}

    async def _get_one(self, spec: dict) -> tuple[Any, str, float]:
        started = time.perf_counter()
        sha = spec["sha256"]
        entry = self._entries.get(sha)
        if entry is not None:
            self._entries.move_to_end(sha)
            self.stats["object_store"] += 1
            return entry.ref, "object_store", time.perf_counter() - started
        pending = self._inflight.get(sha)
        if pending is not None:  # someone is fetching it: wait for that one fetch
            ref = await asyncio.shield(pending)
            self.stats["object_store"] += 1
            return ref, "object_store", time.perf_counter() - started
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[sha] = future
        try:
            ref, tier = await asyncio.to_thread(self._fetch_and_put, spec)
            self._entries[sha] = _Entry(ref, int(spec.get("size") or 0))
            self._evict()
            future.set_result(ref)
            self.stats[tier] += 1
            return ref, tier, time.perf_counter() - started
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        finally:
            self._inflight.pop(sha, None)

    def _fetch_and_put(self, spec: dict) -> tuple[Any, str]:
        uri, sha, size = spec["uri"], spec["sha256"], spec.get("size")
        fetch = lambda f: fetch_to_file(uri, f, self._options, expected_size=size)  # noqa: E731
        try:
            cached = self._disk.get_or_fetch(sha, size, fetch)
        except ArtifactCorrupt as exc:  # a bad transfer or a bad mirror: one more try, then give up
            log.warning("artifact %s from %s failed verification (%s); fetching again", sha[:12], redact_uri(uri),
                        exc.message)
            cached = self._disk.get_or_fetch(sha, size, fetch)
        blob = np.fromfile(cached.path, dtype=np.uint8)
        if size is not None and blob.size != size:
            raise ArtifactError(f"artifact {sha[:12]} changed on disk while being read; retry")
        log.info("artifact %s (%s, %d bytes) from %s in %.0f ms", sha[:12], redact_uri(uri), blob.size, cached.tier,
                 cached.seconds * 1e3)
        return self._put(blob), cached.tier

    def _evict(self) -> None:
        while self.held_bytes > self._max_bytes and len(self._entries) > 1:
            sha, entry = self._entries.popitem(last=False)
            self.stats["evicted"] += 1
            log.info("artifact %s dropped from the object store tier (%d bytes)", sha[:12], entry.size)

    def forget(self, sha256: str) -> None:
        self._entries.pop(sha256, None)

    def describe(self) -> dict:
        return {"held_bytes": self.held_bytes, "max_bytes": self._max_bytes, "artifacts": len(self._entries),
                **self.stats}
