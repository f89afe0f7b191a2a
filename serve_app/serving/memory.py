"""Measuring the memory a model really takes, on the host or on the GPU, and a replica's budget.

A load is measured as the growth of what the device reports around the session build and its
warm-up inference: anonymous resident memory of this process on the host (``/proc/self/statm``,
resident less shared: the artifacts are views of Ray's object store), used
memory of the device on a GPU (``cudaMemGetInfo`` through the CUDA runtime, loaded with ctypes;
no CUDA library, no device or no GPU provider: the host is measured instead).

Two habits keep the host figure honest. glibc keeps freed memory in its heap, so a model loaded
after an eviction would reuse it and measure as nothing: :func:`trim_heap` returns free heap to
the system before each measurement. And ONNX Runtime on the CPU holds about twice a file's size
(its parsed graph and the initializers' own copies: 60 MiB for a 30 MiB file, measured), so a
model never measured before is estimated at ``factor x`` its artifact bytes.

>>> probe = HostMemory()
>>> probe.device, probe.used_bytes() > 0
('host', True)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

import filelock

log = logging.getLogger(__name__)
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class MemoryProbe(Protocol):
    device: str  # "host" or "gpu"

    def used_bytes(self) -> int:
        """What the measured thing uses now: this process's resident memory, or the device's."""

    def total_bytes(self) -> int | None:
        """The device's capacity (host memory or GPU memory), if known."""

    def exclusive(self) -> AbstractContextManager:
        """Held around a measured load: whatever else changes what the probe sees waits meanwhile."""


def host_rss_bytes(anonymous: bool = True) -> int:
    """This process's resident memory, from ``/proc/self/statm`` (0 where there is none).

    ``anonymous``: without file-backed and shared pages. A model's artifacts arrive as views of
    Ray's object store (shared memory), and reading them maps their pages into this process: they
    would count as the model's memory though the store holds them, and go when the view goes.
    """
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        pages = int(fields[1]) - (int(fields[2]) if anonymous else 0)
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def host_total_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


_libc: ctypes.CDLL | None | bool = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else False
            if _libc and not hasattr(_libc, "malloc_trim"):
                _libc = False
        except OSError:
            _libc = False
    return _libc or None


def trim_heap() -> None:
    """Give free heap memory back to the system (glibc ``malloc_trim``); a no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def steady_allocator(mmap_threshold: int = 8 * 2**20, trim_threshold: int = 256 * 2**20) -> bool:
    """Make glibc serve blocks of ``mmap_threshold`` bytes and more from their own mappings, always.

    By default glibc raises that threshold after the first large block is freed, and later large
    blocks (the copies of weights a session build makes) come from the heap and stay there after
    they are freed: the next model's build reuses them and measures 16 MiB too little, or leaves
    them and measures 16 MiB too much (seen with 16 MiB test models: 16, 32 and 48 MiB for the
    same model; with this, 32.1 every time). Fixing the mmap threshold also fixes the trim
    threshold (at 128 KiB), which would give the heap's top back on every large free (0.13 ms ->
    0.5 ms for a 640x640 float image): ``trim_threshold`` keeps it, and :func:`trim_heap` trims
    before each measurement instead. Returns whether glibc took both.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


class HostMemory:
    device = "host"

    def used_bytes(self) -> int:
        return host_rss_bytes()

    def total_bytes(self) -> int | None:
        return host_total_bytes()

    def exclusive(self) -> AbstractContextManager:
        return nullcontext()  # this process's own memory: the cache's build lock is enough


class GpuMemory:
    """Device memory in use on the current CUDA device, as the CUDA runtime reports it.

    The figure is device-wide: replicas sharing a GPU would count each other's loads, so a load
    is measured under a lock file per physical device (:meth:`exclusive`) that every replica on
    the node takes; inference arenas still growing elsewhere can add a little.
    """

    device = "gpu"
    lock_timeout_s = 120.0

    def __init__(self, cudart: ctypes.CDLL) -> None:
        self._cudart = cudart

    def exclusive(self) -> AbstractContextManager:
        return device_lock(os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0] or "0", self.lock_timeout_s)

    @classmethod
    def open(cls) -> "GpuMemory | None":
        """A probe on the current device, or None where no CUDA runtime or no device is usable."""
        for name in _cudart_candidates():
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            count = ctypes.c_int(0)
            if lib.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value < 1:
                log.info("CUDA runtime %s found, but no usable device", name)
                return None
            probe = cls(lib)
            try:
                probe._info()
            except RuntimeError as exc:
                log.info("CUDA runtime %s cannot report memory: %s", name, exc)
                return None
            return probe
        return None

    def _info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        rc = self._cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
        if rc != 0:
            raise RuntimeError(f"cudaMemGetInfo returned {rc}")
        return free.value, total.value

    def used_bytes(self) -> int:
        free, total = self._info()
        return total - free

    def total_bytes(self) -> int | None:
        return self._info()[1]


@contextmanager
def device_lock(device: str, timeout_s: float, folder: str | None = None) -> Iterator[bool]:
    """A lock file for one physical GPU, shared by the processes of a node; yields whether it was
    taken (after ``timeout_s`` the measurement goes on without it, and says so in the log).

    >>> with device_lock("test", 1.0) as held:
    ...     held
    True
    """
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in device)
    lock = filelock.FileLock(os.path.join(folder or tempfile.gettempdir(), f"serve_app-gpu-{name}.lock"))
    try:
        lock.acquire(timeout=timeout_s)
    except filelock.Timeout:
        log.warning("GPU %s: another load held the measurement lock for %.0f s; measuring without it", device,
                    timeout_s)
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _cudart_candidates() -> list[str]:
    names = []
    found = ctypes.util.find_library("cudart")
    if found:
        names.append(found)
    for base in sys.path:  # the CUDA runtime that pip's nvidia-cuda-runtime packages bring
        names += sorted(glob.glob(os.path.join(base, "nvidia", "cuda_runtime", "lib", "libcudart.so*")), reverse=True)
        names += sorted(glob.glob(os.path.join(base, "nvidia", "cu*", "lib", "libcudart.so*")), reverse=True)
    names += ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]
    return list(dict.fromkeys(names))


def probe_for(providers: tuple, available: list[str] | None = None) -> MemoryProbe:
    """The GPU probe when a GPU provider is asked for, this onnxruntime has it and a device
    answers; else the host probe."""
    wanted = [p if isinstance(p, str) else p[0] for p in providers]
    if not any(p in GPU_PROVIDERS for p in wanted):
        return HostMemory()
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if not any(p in GPU_PROVIDERS and p in available for p in wanted):
        return HostMemory()
    gpu = GpuMemory.open()
    if gpu is None:
        log.info("a GPU provider is configured but no CUDA device answers: measuring host memory")
        return HostMemory()
    return gpu


def default_budget(probe: MemoryProbe, fraction: float, share: float = 1.0) -> int | None:
    """A GPU replica's default budget: ``fraction`` of its ``share`` of the device's memory.

    On the host there is no default (``None``: only the count cap applies), because several
    replicas and the object store share one machine's memory and only the operator knows the
    split; ``replica_memory_budget_bytes`` sets it.
    """
    if probe.device != "gpu":
        return None
    total = probe.total_bytes()
    return int(total * fraction * min(max(share, 0.0), 1.0)) if total else None
