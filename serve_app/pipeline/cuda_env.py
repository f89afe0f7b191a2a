"""What a replica sets before its first CUDA session: cuBLAS' workspace per handle (through the
environment) and how its threads wait for the GPU (the primary contexts' scheduling flag).

ONNX Runtime's CUDA provider gives every session its own cuBLAS and cuBLASLt handles, and cuBLAS
gives each handle a workspace of its default size: about 120 MiB of GPU memory per session,
measured on an H200 (YOLOv8n, shared arena: 292 MiB per model with two bucket sessions, 52 MiB with
the workspaces at 4 MiB; ``benchmarks/results/gpu/gpu_memory_h200.json``). A convolutional
detector hardly uses cuBLAS; a transformer's matrix products may want more room (each handle
then finds slower kernels, never wrong ones). cuBLAS reads these variables when a handle is made,
so a replica sets them before it loads anything; a value already in the environment wins.

>>> env = {}
>>> limit_cublas_workspace(4096, env)
{'CUBLAS_WORKSPACE_CONFIG': ':4096:1', 'CUBLASLT_WORKSPACE_SIZE': '4096'}
>>> limit_cublas_workspace(4096, {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
{'CUBLASLT_WORKSPACE_SIZE': '4096'}
>>> limit_cublas_workspace(0, {})
{}
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, MutableMapping

CU_CTX_SCHED_BLOCKING_SYNC = 0x04


def limit_cublas_workspace(kib: int, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Give each cuBLAS (one buffer) and cuBLASLt handle ``kib`` KiB of workspace, where the
    environment does not say already; 0 leaves cuBLAS' defaults. Returns what it set."""
    env = os.environ if environ is None else environ
    if kib <= 0:
        return {}
    wanted = {"CUBLAS_WORKSPACE_CONFIG": f":{kib}:1", "CUBLASLT_WORKSPACE_SIZE": str(kib)}
    set_now = {k: v for k, v in wanted.items() if k not in env}
    env.update(set_now)
    return set_now


def blocking_sync(load: Callable[[str], ctypes.CDLL] = ctypes.CDLL) -> int:
    """Make every visible device's primary CUDA context wait for the GPU by sleeping on an OS
    primitive instead of spinning a core; returns how many devices took the flag (0 without a
    CUDA driver, so on a machine without a GPU this does nothing).

    With fewer CUDA contexts than cores, CUDA's default (``CU_CTX_SCHED_AUTO``) spins: a thread in
    ``session.run`` burns a whole core until its kernels are done, also while they wait behind
    other replicas' kernels on a shared GPU, and the replicas' decoding and Ray's messaging wait
    for those cores. ONNX Runtime's CUDA provider runs on the primary context of its device, so the
    flag is set on it through the driver before the first session makes it current.

    >>> def no_driver(name):
    ...     raise OSError(name + ": cannot open shared object file")
    >>> blocking_sync(no_driver)
    0
    """
    try:
        cuda = load("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    # the _v2 entry point may change the flags of a context that is already active; the first may not
    set_flags = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    done = 0
    for ordinal in range(count.value):
        device = ctypes.c_int(0)
        if cuda.cuDeviceGet(ctypes.byref(device), ordinal) == 0 and set_flags(device, CU_CTX_SCHED_BLOCKING_SYNC) == 0:
            done += 1
    return done


def primary_context_flags(ordinal: int = 0) -> int | None:
    """The scheduling flags of device ``ordinal``'s primary context (None without a CUDA driver)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, flags, active = ctypes.c_int(0), ctypes.c_uint(0), ctypes.c_int(0)
    if (cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(device), ordinal) != 0
            or cuda.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active)) != 0):
        return None
    return flags.value
