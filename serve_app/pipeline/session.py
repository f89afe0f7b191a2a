"""ONNX Runtime session wrapper: built from bytes, providers from configuration, honest logs.

>>> # OnnxSession.from_bytes(open("w.onnx", "rb").read(), SessionOptions(providers=("CPUExecutionProvider",)))
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from serve_app.errors import ModelLoadError
from serve_app.options import SessionOptions

log = logging.getLogger(__name__)
ort.set_default_logger_severity(3)


def _resolve_providers(wanted: tuple[Any, ...], tensorrt_cache_dir: str | None = None) -> tuple[list[Any], list[str]]:
    available = set(ort.get_available_providers())
    chosen: list[Any] = []
    skipped: list[str] = []
    for entry in wanted:
        name, opts = (entry, None) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        if name not in available:
            skipped.append(name)
            continue
        if name == "CUDAExecutionProvider":
            # cuDNN's exhaustive search costs ~0.7 s per new input shape (measured on an H200), and
            # batches of changing size bring new shapes: pick algorithms by heuristic instead
            # and grow the memory arena by what is asked, not to the next power of two: a replica holds
            # many models, each with a session per batch bucket
            opts = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested", **(opts or {})}
        if name == "TensorrtExecutionProvider" and tensorrt_cache_dir:
            # engines take minutes to build: keep them on disk, keyed by model and shapes
            opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": tensorrt_cache_dir,
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": tensorrt_cache_dir, **(opts or {})}
        chosen.append((name, opts) if opts else name)
    if not any((c if isinstance(c, str) else c[0]) == "CPUExecutionProvider" for c in chosen):
        chosen.append("CPUExecutionProvider")
    return chosen, skipped


@dataclass
class OnnxSession:
    """A loaded ONNX model: names and shapes of its inputs/outputs, the providers really in use."""

    session: ort.InferenceSession
    input_name: str
    input_shape: list[Any]
    input_type: str
    output_names: list[str]
    output_shapes: list[list[Any]]
    providers: list[str]
    metadata: dict[str, str] = field(default_factory=dict)
    load_seconds: float = 0.0
    io_binding: bool = False
    by_batch_size: dict[int, ort.InferenceSession] = field(default_factory=dict)  # extra shape-stable sessions

    @classmethod
    def from_bytes(cls, data: bytes | memoryview | np.ndarray, options: SessionOptions, label: str = "model") -> "OnnxSession":
        started = time.perf_counter()
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        if not options.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[options.graph_optimization]
        providers, skipped = _resolve_providers(options.providers, options.tensorrt_cache_dir)
        payload = bytes(data) if not isinstance(data, bytes) else data
        try:
            session = ort.InferenceSession(payload, sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise ModelLoadError(f"{label}: ONNX Runtime cannot load the weights: {str(exc).splitlines()[0][:300]}") from None
        used = session.get_providers()
        if skipped:
            log.warning("%s: providers not available in this onnxruntime build: %s", label, skipped)
        unusable = [p if isinstance(p, str) else p[0] for p in providers]
        unusable = [p for p in unusable if p not in used]
        if unusable:
            log.warning("%s: providers %s could not start here (no GPU or missing CUDA/TensorRT libraries); "
                        "running on %s", label, unusable, used)
        inp = session.get_inputs()[0]
        outs = session.get_outputs()
        elapsed = time.perf_counter() - started
        log.info("%s: session ready in %.0f ms on %s (asked %s)", label, elapsed * 1e3, used,
                 [p if isinstance(p, str) else p[0] for p in options.providers])
        meta = dict(session.get_modelmeta().custom_metadata_map)
        on_gpu = used[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        loaded = cls(session, inp.name, list(inp.shape), inp.type, [o.name for o in outs], [list(o.shape) for o in outs],
                     used, meta, elapsed, io_binding=options.io_binding and on_gpu)
        if on_gpu and options.session_per_batch_size and loaded.dynamic_batch:
            # the main session serves batch 1 (its warm-up shape); each other bucket gets its own
            for size in sorted(set(options.batch_sizes) - {1}):
                loaded.by_batch_size[size] = ort.InferenceSession(payload, sess_options=so, providers=providers)
            if loaded.by_batch_size:
                log.info("%s: one session per batch size %s", label, [1, *loaded.by_batch_size])
        loaded.load_seconds = time.perf_counter() - started
        return loaded

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    @property
    def input_dtype(self) -> type:
        return np.uint8 if self.input_type == "tensor(uint8)" else np.float32

    @property
    def batch_sizes(self) -> list[int]:
        """Batch sizes with a session of their own (1 is the main session's)."""
        return [1, *self.by_batch_size]

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        session = self.by_batch_size.get(len(tensor), self.session)
        if not self.io_binding:
            return session.run(self.output_names, {self.input_name: tensor})
        binding = session.io_binding()
        binding.bind_cpu_input(self.input_name, tensor)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
