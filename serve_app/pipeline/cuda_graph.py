"""Sessions that replay a CUDA graph: one per batch bucket, fed through fixed device buffers.

With the CUDA provider option ``enable_cuda_graph`` a session records its kernel launches once
and replays them on later calls (1.2 ms against 2.8 ms per YOLOv8n batch-1 call with I/O on the
GPU, ``benchmarks/results/gpu/gpu_session_h200.json``). A replayed graph reads and writes the
addresses it was recorded with, and only the shape it was recorded with, so each session here:

- serves one batch size (the server already keeps one session per batch bucket);
- has its input in one device ``OrtValue``, bound once; each call copies the new pixels into it
  (``update_inplace``);
- has its outputs bound to the device buffers its first call produced, then copied to the host.

A call of a batch size without its own session is padded to the next bucket (or run in chunks of
the largest); a lock per bucket keeps two threads from sharing its buffers.

>>> # runner = CudaGraphRunner({1: session_1, 8: session_8}, "images", ["output0"], device_id=0)
>>> # outputs = runner.run(np.zeros((3, 3, 640, 640), np.uint8))  # padded to 8, 3 rows back
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from serve_app.pipeline.chunks import run_in_chunks

PROVIDER_OPTION = "enable_cuda_graph"


@dataclass
class _Bound:
    binding: ort.IOBinding
    input: ort.OrtValue
    shape: tuple[int, ...]
    dtype: np.dtype


class CudaGraphRunner:
    """``run(tensor)`` through the session of ``len(tensor)``'s bucket and its fixed buffers."""

    def __init__(self, sessions: dict[int, ort.InferenceSession], input_name: str, output_names: list[str],
                 device_id: int = 0, device: str = "cuda") -> None:
        self.sessions = dict(sorted(sessions.items()))
        self.input_name = input_name
        self.output_names = list(output_names)
        self.device_id = device_id
        self.device = device  # "cpu" runs the same buffer handling without a graph (tests)
        self._sizes = list(self.sessions)
        self._bound: dict[int, _Bound] = {}
        self._locks = {size: threading.Lock() for size in self.sessions}

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        n = len(tensor)
        if n in self.sessions:
            return self._run_bucket(tensor)
        largest = self._sizes[-1]
        if n > largest:
            return run_in_chunks(self.run, tensor, largest)
        size = self._sizes[bisect.bisect_left(self._sizes, n)]
        padded = np.concatenate([tensor, np.zeros((size - n, *tensor.shape[1:]), tensor.dtype)])
        return [o[:n] for o in self._run_bucket(padded)]

    def _run_bucket(self, tensor: np.ndarray) -> list[np.ndarray]:
        size = len(tensor)
        tensor = np.ascontiguousarray(tensor)
        with self._locks[size]:
            bound = self._bound.get(size)
            if bound is None:
                return self._first_run(size, tensor)
            if tuple(tensor.shape) != bound.shape or tensor.dtype != bound.dtype:
                raise ValueError(f"a CUDA-graph session replays the shape it recorded, {list(bound.shape)}; "
                                 f"got {list(tensor.shape)} {tensor.dtype}")
            bound.input.update_inplace(tensor)
            self.sessions[size].run_with_iobinding(bound.binding)
            return bound.binding.copy_outputs_to_cpu()

    def _first_run(self, size: int, tensor: np.ndarray) -> list[np.ndarray]:
        session = self.sessions[size]
        value = ort.OrtValue.ortvalue_from_numpy(tensor, self.device, self.device_id)
        binding = session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        session.run_with_iobinding(binding)  # onnxruntime runs until it has recorded the graph, into these outputs
        # pin the outputs where this call put them: the recorded graph writes there from now on
        for name, out in zip(self.output_names, binding.get_outputs()):
            binding.bind_ortvalue_output(name, out)
        self._bound[size] = _Bound(binding, value, tuple(tensor.shape), tensor.dtype)
        return binding.copy_outputs_to_cpu()
