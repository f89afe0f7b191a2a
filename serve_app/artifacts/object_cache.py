"""The object-store tier: verified artifact blobs held as ``np.uint8`` arrays in Ray's object store.

:class:`ArtifactStore` is a plain class (its ``put`` is ``ray.put`` inside the actor) that keeps an
LRU of object refs bounded in bytes and makes one fetch per artifact however many callers miss at
once (single flight). Below it is the node's :class:`DiskCache`, below that the origin.
The actor itself must do the ``put`` so that it owns the objects: they outlive the replica that
asked first, and are freed when the LRU drops them.

Each file spec names the fetch policy its URI is fetched under (``"policy": "operator"`` for the
operator's repositories, ``"client"`` for models added at run time; a spec without one is fetched
as a client's). :meth:`ArtifactStore.get_uri` fetches a file whose digest is not known yet (the
weights of ``/model/add``): the registry reads the model's metadata from the blob it returns, and
the replicas that load the model later find the same blob, so the origin is read once.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from serve_app.artifacts.disk_cache import DiskCache
from serve_app.artifacts.sources import SourceOptions, fetch_to_file, redact_uri
from serve_app.errors import ArtifactCorrupt, ArtifactError
from serve_app.fetch_policy import OPERATOR_POLICY, FetchPolicy

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    ref: Any
    size: int


class ArtifactStore:
    def __init__(self, disk: DiskCache, options: SourceOptions, max_bytes: int,
                 put: Callable[[np.ndarray], Any], client_policy: FetchPolicy) -> None:
        self._disk = disk
        self._options = options
        self._policies = {"operator": OPERATOR_POLICY, "client": client_policy}
        self._max_bytes = max_bytes
        self._put = put
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self._uri_inflight: dict[str, asyncio.Future] = {}
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

    def policy(self, name: str | None) -> FetchPolicy:
        """The named policy; anything but ``"operator"`` is a client's."""
        return self._policies["operator" if name == "operator" else "client"]

    async def get_uri(self, uri: str, policy: str | None = "client") -> dict:
        """Fetch ``uri`` (digest unknown), keep it by its digest: ``{"sha256", "size", "ref": [ref], "tier"}``.

        Single flight per URI; the blob then serves :meth:`get` for that digest like any other.
        """
        pending = self._uri_inflight.get(uri)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._uri_inflight[uri] = future
        try:
            sha, size = await asyncio.to_thread(self._fetch_unknown, uri, self.policy(policy))
            ref, tier, _ = await self._get_one({"uri": uri, "sha256": sha, "size": size, "policy": policy})
            answer = {"sha256": sha, "size": size, "ref": [ref], "tier": "origin" if tier == "disk" else tier}
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            self._uri_inflight.pop(uri, None)

    def _fetch_unknown(self, uri: str, policy: FetchPolicy) -> tuple[str, int]:
        """Download to a temp file beside the disk cache, then into the cache under its digest."""
        self._disk.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._disk.root, prefix=".by-uri.", suffix=".part")
        try:
            with os.fdopen(fd, "w+b") as f:
                size = fetch_to_file(uri, f, self._options, policy=policy)
                f.seek(0)
                digest = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            sha = digest.hexdigest()

            def copy(dest: Any) -> int:
                with open(tmp, "rb") as src:
                    while chunk := src.read(1 << 20):
                        dest.write(chunk)
                return size

            self._disk.get_or_fetch(sha, size, copy)
            return sha, size
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _fetch_and_put(self, spec: dict) -> tuple[Any, str]:
        uri, sha, size = spec["uri"], spec["sha256"], spec.get("size")
        policy = self.policy(spec.get("policy"))
        fetch = lambda f: fetch_to_file(uri, f, self._options, expected_size=size, policy=policy)  # noqa: E731
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
