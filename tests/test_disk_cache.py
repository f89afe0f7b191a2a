"""DiskCache against a real HTTP origin (``ArtifactServer`` from test_artifact_sources)."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
from test_artifact_sources import ARTIFACT, ArtifactServer

from serve_app.artifacts.disk_cache import CachedArtifact, DiskCache
from serve_app.artifacts.sources import SourceOptions, fetch_to_file
from serve_app.errors import ArtifactError

SHA = hashlib.sha256(ARTIFACT).hexdigest()
SIZE = len(ARTIFACT)
OPTIONS = SourceOptions(connect_timeout_s=2.0, read_timeout_s=5.0, retries=3, backoff_s=0.01)


def _from(url: str, size: int | None = SIZE):
    return lambda dest: fetch_to_file(url, dest, OPTIONS, expected_size=size)


@pytest.fixture
def origin():
    server = ArtifactServer()
    yield server
    server.stop()


@pytest.fixture
def cache(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache", lock_timeout_s=20)


def _leftovers(cache: DiskCache) -> list[str]:
    return sorted(p.name for p in (cache.root / "sha256").rglob("*") if p.is_file())


def test_first_call_fetches_from_origin_then_disk_serves(origin, cache):
    url = origin.url("/artifact.bin")
    first = cache.get_or_fetch(SHA, SIZE, _from(url))
    assert first.tier == "origin" and first.size == SIZE and first.seconds >= 0
    assert first.path == cache.path_for(SHA) == cache.root / "sha256" / SHA[:2] / SHA
    assert first.path.read_bytes() == ARTIFACT and Path(os.fspath(first)) == first.path
    second = cache.get_or_fetch(SHA, SIZE, _from(url))
    assert second.tier == "disk" and second.path == first.path
    assert origin.count("/artifact.bin") == 1
    assert cache.contains(SHA) and cache.contains(SHA.upper())
    assert cache.get_or_fetch_bytes(SHA, None, _from(url)) == ARTIFACT
    assert origin.count("/artifact.bin") == 1
    assert _leftovers(cache) == [SHA]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_file_on_disk_is_fetched_again(origin, cache, damage, caplog):
    url = origin.url("/artifact.bin")
    path = cache.get_or_fetch(SHA, SIZE, _from(url)).path
    with open(path, "r+b") as f:
        if damage == "flip":
            f.seek(SIZE // 2)
            byte = f.read(1)
            f.seek(SIZE // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        else:
            f.truncate(SIZE - 1)
    # size=None too: a flipped byte keeps the size, only the digest tells.
    again = cache.get_or_fetch(SHA, None if damage == "flip" else SIZE, _from(url))
    assert again.tier == "origin" and path.read_bytes() == ARTIFACT
    assert origin.count("/artifact.bin") == 2
    assert "corrupt" in caplog.text


def test_wrong_sha256_raises_and_leaves_nothing(origin, cache):
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ArtifactError, match=f"expected sha256 {wrong[:12]}.*got {SHA[:12]}"):
        cache.get_or_fetch(wrong, SIZE, _from(origin.url("/artifact.bin")))
    assert not cache.contains(wrong) and _leftovers(cache) == []


def test_fetch_error_leaves_nothing(origin, cache):
    with pytest.raises(ArtifactError, match="HTTP 404"):
        cache.get_or_fetch(SHA, SIZE, _from(origin.url("/missing")))
    assert _leftovers(cache) == []


def test_invalid_digest_is_refused(cache):
    with pytest.raises(ArtifactError, match="invalid sha256"):
        cache.path_for("../../etc/passwd")


def test_origin_down_still_served_from_disk(origin, cache):
    url = origin.url("/artifact.bin")
    cache.get_or_fetch(SHA, SIZE, _from(url))
    origin.stop()
    hit = cache.get_or_fetch(SHA, SIZE, _from(url))
    assert hit.tier == "disk" and hit.path.read_bytes() == ARTIFACT
    other = hashlib.sha256(b"not cached").hexdigest()
    with pytest.raises(ArtifactError, match="connection refused"):
        cache.get_or_fetch(other, None, lambda d: fetch_to_file(url, d, SourceOptions(retries=0)))


def test_retries_through_the_cache(origin, cache):
    got = cache.get_or_fetch_bytes(SHA, SIZE, _from(origin.url("/flaky/2/a.bin")))
    assert got == ARTIFACT and origin.count("/flaky/2/a.bin") == 3


def _fetch_in_child(root, url, ready, go, results) -> None:
    cache = DiskCache(Path(root), lock_timeout_s=20)
    ready.set()
    go.wait(20)
    found = cache.get_or_fetch(SHA, SIZE, _from(url))
    results.put((found.tier, hashlib.sha256(found.path.read_bytes()).hexdigest()))


def test_concurrent_threads_and_processes_fetch_once(origin, cache):
    url = origin.url("/slow/artifact.bin")  # 0.5 s before the body: the callers overlap
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    procs = [
        ctx.Process(target=_fetch_in_child, args=(str(cache.root), url, r, go, results))
        for r in readies
    ]
    for p in procs:
        p.start()
    try:
        assert all(r.wait(30) for r in readies), "child processes did not start"
        barrier = threading.Barrier(8)
        tiers: list[str] = []

        def in_thread() -> None:
            barrier.wait(10)
            found = cache.get_or_fetch(SHA, SIZE, _from(url))
            assert found.path.read_bytes() == ARTIFACT
            tiers.append(found.tier)

        threads = [threading.Thread(target=in_thread) for _ in range(8)]
        go.set()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        child = [results.get(timeout=30) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    assert len(tiers) == 8 and all(digest == SHA for _, digest in child)
    assert sorted(tiers + [tier for tier, _ in child]).count("origin") == 1
    assert origin.count("/slow/artifact.bin") == 1
    assert _leftovers(cache) == [SHA]


def test_evict_to_removes_least_recently_used(tmp_path):
    blobs = {name: os.urandom(1000) for name in ("old", "mid", "new")}
    cache = DiskCache(tmp_path / "c")
    digests = {}
    for age, (name, data) in enumerate(blobs.items()):
        digest = hashlib.sha256(data).hexdigest()
        digests[name] = digest
        path = cache.get_or_fetch(digest, len(data), lambda f, d=data: f.write(d)).path
        stamp = time.time() - 100 + age
        os.utime(path, (stamp, stamp))
    # A hit touches "old": now "mid" is the least recently used.
    assert cache.get_or_fetch(digests["old"], 1000, lambda f: 0).tier == "disk"
    assert cache.evict_to(2000) == 1000
    assert not cache.contains(digests["mid"])
    assert cache.contains(digests["old"]) and cache.contains(digests["new"])


def test_max_bytes_keeps_the_artifact_just_fetched(tmp_path):
    cache = DiskCache(tmp_path / "c", max_bytes=1500)
    first, second = os.urandom(1000), os.urandom(1000)
    a = cache.get_or_fetch(hashlib.sha256(first).hexdigest(), None, lambda f: f.write(first))
    b = cache.get_or_fetch(hashlib.sha256(second).hexdigest(), None, lambda f: f.write(second))
    assert isinstance(b, CachedArtifact)
    assert not a.path.exists() and b.path.read_bytes() == second
