"""One memory arena per device for all of a process's ONNX Runtime sessions.

By default every session owns its arenas: a replica holding many models, each with a session per
batch bucket, keeps one CUDA arena per session, each grown to that session's peak and never
shrunk (about 660 MiB per loaded model measured on an H200 with two sessions). With
:func:`share_allocators` the process registers one arena per device in ONNX Runtime's environment
(``create_and_register_allocator`` for the host, ``create_and_register_allocator_v2`` for CUDA),
and sessions built with ``session.use_env_allocators = 1`` (:data:`USE_ENV_ALLOCATORS`) take
their memory from it: what one model's run frees, the next model's run reuses.

Registration is process-wide and happens once per device; a device whose allocator cannot be
registered (no GPU, an onnxruntime without the call) is logged and left with per-session arenas.

>>> # share_allocators([("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"])
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

USE_ENV_ALLOCATORS = "session.use_env_allocators"
K_SAME_AS_REQUESTED = 1  # OrtArenaCfg's arena_extend_strategy: grow by what is asked (the server's CUDA choice)

_lock = threading.Lock()
_registered: dict[tuple[str, int], bool] = {}  # (provider, device id) -> whether registration worked


def _register(provider: str, options: dict[str, Any]) -> bool:
    arena = ort.OrtArenaCfg
    default = ort.OrtMemType.DEFAULT
    if provider == "CPUExecutionProvider":
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, default)
        ort.create_and_register_allocator(info, arena(0, -1, -1, -1))
        return True
    if provider == "CUDAExecutionProvider":
        device = int(options.get("device_id", 0))
        limit = int(options.get("gpu_mem_limit", 0) or 0)
        info = ort.OrtMemoryInfo("Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, device, default)
        ort.create_and_register_allocator_v2(provider, info, {k: str(v) for k, v in options.items()},
                                             arena(limit, K_SAME_AS_REQUESTED, -1, -1))
        return True
    return False


def share_allocators(providers: Sequence[Any]) -> list[str]:
    """Register the shared arenas of ``providers`` (names or ``(name, options)``) once per process;
    returns the providers whose sessions will share one (the others keep their own)."""
    shared = []
    for entry in providers:
        name, opts = (entry, {}) if isinstance(entry, str) else (entry[0], dict(entry[1] or {}))
        key = (name, int(opts.get("device_id", 0)))
        with _lock:
            if key not in _registered:
                try:
                    _registered[key] = _register(name, opts)
                except Exception as exc:  # noqa: BLE001 - no device, or an onnxruntime without the call
                    log.warning("shared arena for %s device %d not registered (%s): its sessions keep their own",
                                name, key[1], str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                    _registered[key] = False
                else:
                    if _registered[key]:
                        log.info("shared arena registered for %s device %d", name, key[1])
            if _registered[key]:
                shared.append(name)
    return shared
