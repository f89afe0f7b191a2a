"""One gate per process between CUDA-graph captures and every other use of the GPU.

ONNX Runtime records a CUDA graph (``cuda_graph: true``, ``pipeline/cuda_graph.py``) in CUDA's
*global* capture mode: while it records, a "potentially unsafe" CUDA call from any other thread of
the process (an allocation, a synchronous copy, nvImageCodec's decode) invalidates the recording
and fails both calls. Measured on the H200: with JPEGs decoded on the GPU while a replica loaded a
model, 6 of 30,000 requests failed with ``cudaErrorStreamCaptureInvalidated`` in a ``Gather`` node
(``benchmarks/results/gpu/gpu_h200_gpujpeg_vs_roboflow.json``). A replica holds many models, so a
new model's capture can meet another model's session call the same way.

So GPU work here is *shared* (any number of threads at once) and a capture is *exclusive*: it
waits for the shared users to finish, and new ones wait while a capture waits or runs (a capture
is one warm-up call per model load, tens of milliseconds). Not reentrant: a thread inside
``shared()`` must not enter ``exclusive()``.

>>> gate = CaptureGate()
>>> with gate.shared():
...     gate.users
1
>>> with gate.exclusive():
...     gate.capturing
True
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CaptureGate:
    """A writer-preferring shared/exclusive lock: ``shared()`` for GPU work, ``exclusive()`` to capture."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.users = 0  # threads inside shared()
        self.capturing = False
        self._waiting = 0  # captures waiting for the users to leave

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self.capturing or self._waiting:
                self._cond.wait()
            self.users += 1
        try:
            yield
        finally:
            with self._cond:
                self.users -= 1
                if not self.users:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self.capturing or self.users:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self.capturing = True
        try:
            yield
        finally:
            with self._cond:
                self.capturing = False
                self._cond.notify_all()


GPU_GATE = CaptureGate()  # CUDA's global capture mode spans the process, so one gate does too
