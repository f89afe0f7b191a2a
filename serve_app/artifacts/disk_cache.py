"""The per-node disk tier of the artifact cache: files content-addressed by sha256.

Layout under ``root``::

    sha256/<first two hex>/<64 hex>     the verified artifacts, immutable once in place
    sha256/<aa>/.<64 hex>.<random>.part  downloads in progress (same directory: rename is atomic)
    locks/<64 hex>.lock                  one file lock per artifact (never deleted: racy)

A download goes to a temp file, is fsynced, checked for size and sha256, then ``os.replace``d
into place, so readers never see half a file. A per-artifact ``filelock.FileLock`` makes the
replicas of one node (threads or processes) download an artifact once; after taking it we look
again, since the holder before us may have done the work. Every hit is verified against its
sha256 (``verify_on_hit``), and a corrupt or truncated file is deleted and fetched again.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import filelock

from serve_app.errors import ArtifactCorrupt, ArtifactError

logger = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20
_STALE_PART_S = 3600.0

Tier = Literal["disk", "origin"]


@dataclass(frozen=True)
class CachedArtifact:
    """Where an artifact lies on this node, and which tier served it (``seconds``: wall time of
    ``get_or_fetch``, lock wait included). Usable wherever a path is (``os.PathLike``)."""

    path: Path
    tier: Tier
    seconds: float
    size: int

    def __fspath__(self) -> str:
        return os.fspath(self.path)


class DiskCache:
    """Content-addressed artifact files on this node's disk.

    ``fetch`` callables write the artifact into the open binary file they are given (truncating
    it first if they retry) and return the number of bytes written, e.g.
    ``lambda f: fetch_to_file(uri, f, options, expected_size=size)``.

    >>> import tempfile, hashlib
    >>> data = b"weights"
    >>> cache = DiskCache(Path(tempfile.mkdtemp()))
    >>> hit = cache.get_or_fetch(hashlib.sha256(data).hexdigest(), 7, lambda f: f.write(data))
    >>> hit.tier, hit.path.read_bytes()
    ('origin', b'weights')
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int | None = None,
        *,
        lock_timeout_s: float = 900.0,
        verify_on_hit: bool = True,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.lock_timeout_s = lock_timeout_s
        self.verify_on_hit = verify_on_hit
        self._objects = self.root / "sha256"
        self._locks = self.root / "locks"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where the artifact with this digest lives (whether or not it is there yet)."""
        digest = _check_digest(sha256)
        return self._objects / digest[:2] / digest

    def contains(self, sha256: str) -> bool:
        """Whether a file for this digest is in place (not verified: ``get_or_fetch`` does)."""
        return self.path_for(sha256).is_file()

    def get_or_fetch(
        self, sha256: str, size: int | None, fetch: Callable[[BinaryIO], int]
    ) -> CachedArtifact:
        """The verified artifact's path, from disk if there, else fetched once per node.

        Raises ``ArtifactError`` if the fetched bytes do not match ``sha256``/``size`` (nothing
        is left on disk then), if ``fetch`` raises it, or if the lock wait times out.
        """
        started = time.monotonic()
        digest = _check_digest(sha256)
        path = self.path_for(digest)
        if self._valid(path, digest, size, under_lock=False):
            return self._hit(path, started)
        lock = filelock.FileLock(self._locks / f"{digest}.lock", timeout=self.lock_timeout_s)
        try:
            with lock:
                # Another thread or process may have finished (or repaired) it while we waited.
                if self._valid(path, digest, size, under_lock=True):
                    return self._hit(path, started)
                got = self._download(path, digest, size, fetch)
        except filelock.Timeout:
            raise ArtifactError(
                f"timed out after {self.lock_timeout_s:.0f}s waiting for another download of "
                f"artifact {digest[:12]}",
                retry_after=10.0,
            ) from None
        if self.max_bytes is not None:
            self.evict_to(self.max_bytes, keep=(digest,))
        return CachedArtifact(path, "origin", time.monotonic() - started, got)

    def get_or_fetch_bytes(
        self, sha256: str, size: int | None, fetch: Callable[[BinaryIO], int]
    ) -> bytes:
        """Like ``get_or_fetch``, but return the artifact's bytes."""
        for _ in range(2):
            found = self.get_or_fetch(sha256, size, fetch)
            try:
                return found.path.read_bytes()
            except FileNotFoundError:  # evicted by another process between the two calls
                continue
        raise ArtifactError(f"artifact {sha256[:12]} was evicted while being read; retry")

    def evict_to(self, max_bytes: int, keep: Iterable[str] = ()) -> int:
        """Delete least recently used artifacts until at most ``max_bytes`` remain; return the
        bytes freed. Artifacts in ``keep`` and those being fetched (lock held) stay. Also removes
        temp files left by crashed downloads (untouched for an hour)."""
        keep_set = {_check_digest(d) for d in keep}
        entries: list[tuple[float, int, Path]] = []
        total = 0
        now = time.time()
        for path in self._objects.glob("*/*"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if path.name.endswith(".part"):
                if now - st.st_mtime > _STALE_PART_S:
                    path.unlink(missing_ok=True)
                continue
            total += st.st_size
            if _HEX64.fullmatch(path.name) and path.name not in keep_set:
                entries.append((max(st.st_atime, st.st_mtime), st.st_size, path))
        freed = 0
        for _, nbytes, path in sorted(entries):
            if total <= max_bytes:
                break
            lock = filelock.FileLock(self._locks / f"{path.name}.lock", timeout=0)
            try:
                with lock:
                    path.unlink(missing_ok=True)
            except filelock.Timeout:
                continue  # someone is fetching or repairing it right now
            total -= nbytes
            freed += nbytes
            logger.info("evicted artifact %s (%d bytes) from the disk cache", path.name, nbytes)
        return freed

    def _hit(self, path: Path, started: float) -> CachedArtifact:
        try:
            os.utime(path)  # LRU clock: atime is unreliable under noatime/relatime
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1  # evicted just now; the caller's open will tell
        return CachedArtifact(path, "disk", time.monotonic() - started, size)

    def _valid(self, path: Path, digest: str, size: int | None, *, under_lock: bool) -> bool:
        """Whether ``path`` holds the artifact. A corrupt file is deleted, but only under the
        lock: without it we might delete a good file that just replaced the bad one."""
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            return False
        if size is not None and actual_size != size:
            problem = f"size {actual_size}, expected {size}"
        elif not self.verify_on_hit and not under_lock:
            return True
        else:
            try:
                got = sha256_file(path)
            except FileNotFoundError:
                return False
            if got == digest:
                return True
            problem = f"sha256 {got[:12]}, expected {digest[:12]}"
        if under_lock:
            logger.warning("disk cache file %s is corrupt (%s); fetching it again", path, problem)
            path.unlink(missing_ok=True)
        return False

    def _download(
        self, path: Path, digest: str, size: int | None, fetch: Callable[[BinaryIO], int]
    ) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, renamed or deleted
            dir=path.parent, prefix=f".{digest}.", suffix=".part", delete=False
        )
        tmp_path = Path(tmp.name)
        try:
            with tmp:
                fetch(tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            got_size = tmp_path.stat().st_size
            if size is not None and got_size != size:
                raise ArtifactCorrupt(
                    f"artifact {digest[:12]} has {got_size} bytes, expected {size}"
                )
            got = sha256_file(tmp_path)
            if got != digest:
                raise ArtifactCorrupt(
                    f"artifact checksum mismatch: expected sha256 {digest[:12]}…, "
                    f"got {got[:12]}… ({got_size} bytes)"
                )
            os.replace(tmp_path, path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return got_size


def _check_digest(sha256: str) -> str:
    digest = sha256.lower() if isinstance(sha256, str) else ""
    if not _HEX64.fullmatch(digest):
        raise ArtifactError(f"invalid sha256 digest {str(sha256)[:70]!r}: expected 64 hex digits")
    return digest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; best effort (not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
