"""cuBLAS' workspace per handle, set through the environment before a process's first CUDA session.

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

import os
from collections.abc import MutableMapping


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
