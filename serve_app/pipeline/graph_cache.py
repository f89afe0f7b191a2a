"""ONNX Runtime's optimised graphs kept on the node's disk: a model's later loads skip the graph
rewrite and ONNX Runtime's optimisation passes.

A session built with ``optimized_model_filepath`` writes the graph ONNX Runtime really runs
(fusions, folded constants, provider-specific nodes); a session built from that file with
optimisations off starts from there (H200, YOLOv8n: build 105-130 -> 74-85 ms, and the uint8
rewrite's 12-15 ms, ``benchmarks/results/gpu/gpu_cold_h200.json``). Such a graph is valid only
for the ONNX Runtime, providers and options that made it and, on the CPU, the same instruction
set: :func:`graph_key` covers all of them.

A file is written under a temporary name and renamed into place, so a reader finds a whole file
or none; the folder is kept under ``max_bytes`` by dropping the least recently used files. A file
ONNX Runtime cannot load is removed by its caller (:meth:`GraphCache.discard`), which then builds
from the weights.

>>> import tempfile
>>> cache = GraphCache(tempfile.mkdtemp(), max_bytes=10)
>>> key = graph_key("ab" * 32, providers=["CPUExecutionProvider"])
>>> cache.get(key) is None
True
>>> tmp = cache.temporary(key); _ = open(tmp, "wb").write(b"graph")
>>> cache.commit(tmp, key); cache.get(key)
b'graph'
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import threading
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)
SUFFIX = ".onnx"


@functools.lru_cache(maxsize=1)
def cpu_identity() -> str:
    """The host's architecture, CPU model and instruction-set flags (an optimised CPU graph uses them)."""
    fields = {"machine": platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "flags", "Features") and name not in fields:
                    fields[name] = value.strip()
    except OSError:
        pass
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def graph_key(weights_sha256: str, **parts: Any) -> str:
    """What an optimised graph depends on: the weights, ONNX Runtime's version, the CPU, and ``parts``
    (providers and their options, the graph edits made before the build).

    >>> graph_key("00" * 32, providers=["CPUExecutionProvider"]) == graph_key("00" * 32, providers=["CPUExecutionProvider"])
    True
    >>> graph_key("00" * 32, uint8=True) == graph_key("00" * 32, uint8=False)
    False
    """
    described = {"weights": weights_sha256, "onnxruntime": ort.__version__, "cpu": cpu_identity(), **parts}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class GraphCache:
    folder: str
    max_bytes: int = 2 * 2**30

    def path(self, key: str) -> str:
        return os.path.join(self.folder, key + SUFFIX)

    def get(self, key: str) -> bytes | None:
        """The saved graph of ``key``, or None; a hit counts as a use (least recently used go first)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
            os.utime(path)
        except OSError:
            return None
        return data

    def temporary(self, key: str) -> str:
        """A name to have ONNX Runtime write ``key``'s graph to, then :meth:`commit` (or :meth:`abandon`)."""
        os.makedirs(self.folder, exist_ok=True)
        return f"{self.path(key)}.{os.getpid()}.{threading.get_ident()}.tmp"

    def commit(self, temporary: str, key: str) -> None:
        """Put a written graph in place (atomically: readers see the old state or the whole file)."""
        try:
            os.replace(temporary, self.path(key))
        except OSError as exc:
            log.warning("optimised graph %s not kept: %s", key, exc)
            self.abandon(temporary)
            return
        self.prune()

    @staticmethod
    def abandon(temporary: str) -> None:
        try:
            os.remove(temporary)
        except OSError:
            pass

    def discard(self, key: str) -> None:
        """Remove ``key``'s graph (ONNX Runtime could not load it)."""
        self.abandon(self.path(key))

    def prune(self) -> None:
        """Drop the least recently used graphs until the folder holds at most ``max_bytes``."""
        entries = []
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    if e.name.endswith(SUFFIX):
                        try:
                            st = e.stat()
                        except OSError:
                            continue
                        entries.append((st.st_mtime, st.st_size, e.path))
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            self.abandon(path)
            total -= size
