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

log = logging.getLogger(__name__)
ort.set_default_logger_severity(3)


@dataclass(frozen=True)
class SessionOptions:
    """Execution providers in order of preference, with options, and thread counts.

    ``providers`` entries are names (``"CUDAExecutionProvider"``) or ``(name, {options})``; the ones
    this onnxruntime build lacks are skipped (and logged); CPU is always the last resort.
    """

    providers: tuple[Any, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0  # 0 = onnxruntime's default (one per core)
    inter_op_threads: int = 1
    graph_optimization: str = "all"  # all | extended | basic | disabled
    tensorrt_cache_dir: str | None = None


def _resolve_providers(wanted: tuple[Any, ...]) -> tuple[list[Any], list[str]]:
    available = set(ort.get_available_providers())
    chosen: list[Any] = []
    skipped: list[str] = []
    for entry in wanted:
        name, opts = (entry, None) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        if name not in available:
            skipped.append(name)
            continue
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

    @classmethod
    def from_bytes(cls, data: bytes | memoryview | np.ndarray, options: SessionOptions, label: str = "model") -> "OnnxSession":
        started = time.perf_counter()
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[options.graph_optimization]
        providers, skipped = _resolve_providers(options.providers)
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
        return cls(session, inp.name, list(inp.shape), inp.type, [o.name for o in outs], [list(o.shape) for o in outs],
                   used, meta, elapsed)

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: tensor})

    def warm_up(self, height: int, width: int, channels: int = 3) -> float:
        """Run one inference on zeros; returns seconds taken (the first run pays lazy initialisation)."""
        started = time.perf_counter()
        self.run(np.zeros((1, channels, height, width), np.float32))
        return time.perf_counter() - started
