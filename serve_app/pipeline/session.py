"""ONNX Runtime session wrapper: built from bytes, providers from configuration, honest logs.

Three opt-in GPU features (``SessionOptions``), each logged and ignored where it cannot apply:
``precision="fp16"`` (the graph converted at load, ``pipeline/precision.py``; CUDA/TensorRT
only), ``cuda_graph`` (the batch-1 session replays a CUDA graph, ``pipeline/cuda_graph.py``;
CUDA only) and ``shared_arena`` (the process's sessions share one arena per device,
``pipeline/arena.py``).

Loads: with a :class:`SavedGraph` the first session writes the optimised graph to the node's
:class:`~serve_app.pipeline.graph_cache.GraphCache` and later loads build from it; with
``quick_start`` (CUDA) the main session first runs cuDNN's default algorithms and :meth:`OnnxSession.tune`
later swaps in one that chose them per shape; with ``shrink_batch_arenas`` the bucket sessions give
their arena back after each call.

>>> # OnnxSession.from_bytes(open("w.onnx", "rb").read(), SessionOptions(providers=("CPUExecutionProvider",)))
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from serve_app.errors import ModelLoadError
from serve_app.options import SessionOptions
from serve_app.pipeline.candidates import DEFAULT_FEEDS
from serve_app.pipeline.chunks import run_in_chunks
from serve_app.pipeline.arena import USE_ENV_ALLOCATORS, share_allocators
from serve_app.pipeline.cuda_graph import PROVIDER_OPTION as CUDA_GRAPH_OPTION
from serve_app.pipeline.cuda_graph import CudaGraphRunner
from serve_app.pipeline.graph_cache import GraphCache
from serve_app.pipeline.precision import convert_to_fp16

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


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _name(entry: Any) -> str:
    return entry if isinstance(entry, str) else entry[0]


def _create(payload: bytes, so: ort.SessionOptions, providers: list[Any], label: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(payload, sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise ModelLoadError(f"{label}: ONNX Runtime cannot load the weights: {str(exc).splitlines()[0][:300]}") from None


def _ort_options(options: SessionOptions, shared_arena: bool, optimized: bool = False) -> ort.SessionOptions:
    """ONNX Runtime's options for ``options``; ``optimized``: the graph is one ONNX Runtime already
    optimised (a :class:`SavedGraph` hit), so no optimisation runs again."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    if not options.allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if shared_arena:
        so.add_session_config_entry(USE_ENV_ALLOCATORS, "1")
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }["disabled" if optimized else options.graph_optimization]
    return so


@dataclass(frozen=True)
class SavedGraph:
    """A model's optimised graph in a :class:`GraphCache`. ``hit``: the bytes handed to
    :meth:`OnnxSession.from_bytes` are that graph; else its first session saves it there."""

    cache: GraphCache
    key: str
    hit: bool = False


def graph_cache_applies(options: SessionOptions) -> bool:
    """Whether loads under ``options`` keep optimised graphs: float32 graphs without CUDA graphs or
    TensorRT (whose compiled nodes ONNX Runtime cannot write out)."""
    names = {_name(p) for p in options.providers}
    return bool(options.graph_cache_dir) and options.precision == "fp32" and not options.cuda_graph \
        and "TensorrtExecutionProvider" not in names


def _create_saving(payload: bytes, options: SessionOptions, shared: bool, providers: list[Any], label: str,
                   saved: SavedGraph) -> ort.InferenceSession:
    """A session that writes its optimised graph to ``saved``'s cache, kept only when every asked
    provider started (a graph optimised for the CPU fallback must not be served to CUDA later)."""
    so = _ort_options(options, shared)
    temporary = saved.cache.temporary(saved.key)
    so.optimized_model_filepath = temporary
    try:
        session = _create(payload, so, providers, label)
    except BaseException:
        saved.cache.abandon(temporary)
        raise
    if [_name(p) for p in providers] == session.get_providers() and os.path.exists(temporary):
        saved.cache.commit(temporary, saved.key)
        log.info("%s: optimised graph kept for later loads", label)
    else:
        saved.cache.abandon(temporary)
    return session


def _fp16_weights(payload: bytes, options: SessionOptions, provider: str, label: str) -> bytes | None:
    """The float16 graph when ``options`` ask for it and it applies to ``provider``; None: float32."""
    if options.precision != "fp16":
        return None
    if provider not in GPU_PROVIDERS and not options.force_precision:
        log.warning("%s: precision fp16 applies on CUDA/TensorRT only; float32 on %s (force_precision overrides)",
                    label, provider)
        return None
    try:
        return convert_to_fp16(payload)
    except Exception as exc:  # noqa: BLE001 - the converter raises whatever onnx or its graph walk raises
        log.warning("%s: float16 conversion failed, keeping float32: %s", label, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
        return None


def _with_cuda_graph(providers: list[Any]) -> list[Any]:
    """The providers with CUDA's ``enable_cuda_graph`` on (unchanged when CUDA does not come first)."""
    if _name(providers[0]) != "CUDAExecutionProvider":
        return providers
    first = providers[0]
    opts = {} if isinstance(first, str) else dict(first[1])
    return [("CUDAExecutionProvider", {**opts, CUDA_GRAPH_OPTION: "1"}), *providers[1:]]


QUICK_SEARCH = "DEFAULT"


def _quick_providers(providers: list[Any]) -> list[Any] | None:
    """``providers`` with CUDA's cuDNN algorithm search set to its default algorithms (chosen
    without looking at the shapes); None where CUDA does not come first or already does that."""
    first = providers[0]
    if _name(first) != "CUDAExecutionProvider":
        return None
    opts = {} if isinstance(first, str) else dict(first[1])
    if opts.get("cudnn_conv_algo_search") == QUICK_SEARCH:
        return None
    return [("CUDAExecutionProvider", {**opts, "cudnn_conv_algo_search": QUICK_SEARCH}), *providers[1:]]


def _cuda_device(providers: list[Any]) -> int:
    first = providers[0]
    return 0 if isinstance(first, str) else int(first[1].get("device_id", 0))


SHRINK_ARENAS = "memory.enable_memory_arena_shrinkage"


def _shrinking(used: list[str], providers: list[Any]) -> ort.RunOptions:
    """Run options that give the arena's free memory back to the device at the end of each call."""
    ro = ort.RunOptions()
    ro.add_run_config_entry(SHRINK_ARENAS, f"gpu:{_cuda_device(providers)}" if used[0] in GPU_PROVIDERS else "cpu:0")
    return ro


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
    # one session per batch bucket: a size without its own session runs row by row through batch 1's
    per_batch_size: bool = False
    pending_batch_sizes: tuple[int, ...] = ()  # buckets whose sessions add_batch_session builds later
    _build_session: Callable[[], ort.InferenceSession] | None = field(default=None, repr=False)
    _grow_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _tuned_builder: Callable[[], ort.InferenceSession] | None = field(default=None, repr=False)  # quick_start
    precision: str = "fp32"  # what the graph really runs in
    cuda_graph: CudaGraphRunner | None = None  # set when the batch-1 session replays a CUDA graph
    shared_arena: bool = False  # whether its sessions take their memory from the process's shared arenas
    graph_cache_hit: bool = False  # built from the optimised graph an earlier load kept (SavedGraph)
    shrink: ort.RunOptions | None = None  # the bucket sessions' calls give their arena back (shrink_batch_arenas)
    # what every call feeds the inputs after the image unless it says otherwise (a graph edit's, such
    # as the candidate filter's score floor: pipeline/candidates.py)
    fixed_feeds: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview | np.ndarray, options: SessionOptions, label: str = "model",
                   saved: SavedGraph | None = None) -> "OnnxSession":
        """``saved``: where the model's optimised graph is kept (see :class:`SavedGraph`); ignored
        where :func:`graph_cache_applies` says no. A hit that ONNX Runtime cannot load raises
        :class:`ModelLoadError` (the caller discards it and loads the weights)."""
        started = time.perf_counter()
        providers, skipped = _resolve_providers(options.providers, options.tensorrt_cache_dir)
        if skipped:
            log.warning("%s: providers not available in this onnxruntime build: %s", label, skipped)
        saved = saved if saved is not None and graph_cache_applies(options) else None
        shared = bool(options.shared_arena and share_allocators(providers))
        so = _ort_options(options, shared, optimized=saved is not None and saved.hit)
        payload = bytes(data) if not isinstance(data, bytes) else data
        fp16 = _fp16_weights(payload, options, _name(providers[0]), label)
        weights = fp16 or payload
        graphs = options.cuda_graph and cls._cuda_graph_wanted(options, _name(providers[0]), label)
        if graphs:
            try:
                session = _create(weights, so, _with_cuda_graph(providers), label)
            except ModelLoadError as exc:  # a graph is recorded only when every node runs on CUDA
                log.warning("%s: no CUDA graph (%s); plain sessions", label, exc.message)
                graphs = False
        quick = None
        if not graphs and options.quick_start:  # (a CUDA graph is recorded once, in the session it has)
            quick = _quick_providers(providers) or (providers if options.force_quick_start else None)
        if not graphs:
            first = quick or providers
            if saved is not None and not saved.hit:
                session = _create_saving(weights, options, shared, first, label, saved)
            else:
                session = _create(weights, so, first, label)
        used = session.get_providers()
        unusable = [p for p in (_name(p) for p in providers) if p not in used]
        if unusable:
            log.warning("%s: providers %s could not start here (no GPU or missing CUDA/TensorRT libraries); "
                        "running on %s", label, unusable, used)
        on_gpu = used[0] in GPU_PROVIDERS
        if fp16 is not None and not on_gpu and not options.force_precision:
            log.warning("%s: CUDA/TensorRT did not start: float32 on %s", label, used[0])
            fp16, weights = None, payload
            session = _create(weights, so, providers, label)
        graphs = graphs and used[0] == "CUDAExecutionProvider"
        inp, outs = session.get_inputs()[0], session.get_outputs()
        loaded = cls(session, inp.name, list(inp.shape), inp.type, [o.name for o in outs], [list(o.shape) for o in outs],
                     used, dict(session.get_modelmeta().custom_metadata_map), io_binding=options.io_binding and on_gpu,
                     precision="fp16" if fp16 is not None else "fp32", shared_arena=shared)
        loaded.graph_cache_hit = saved is not None and saved.hit
        loaded.fixed_feeds = {i.name: DEFAULT_FEEDS[i.name] for i in session.get_inputs()[1:] if i.name in DEFAULT_FEEDS}
        if quick is not None and (on_gpu or options.force_quick_start):
            loaded._tuned_builder = lambda: _create(weights, so, providers, label)
        if options.shrink_batch_arenas and not shared:  # (a shared arena is the process's, not the session's)
            loaded.shrink = _shrinking(used, providers)
        if (on_gpu or options.force_batch_sessions) and options.session_per_batch_size and loaded.dynamic_batch:
            # the main session serves batch 1 (its warm-up shape); each other bucket gets its own
            sizes = tuple(sorted(set(options.batch_sizes) - {1}))
            loaded.per_batch_size = bool(options.batch_sizes)
            if options.lazy_batch_sessions and not graphs:  # a graph's recording must not meet a build
                loaded.pending_batch_sizes = sizes
                loaded._build_session = lambda: _create(weights, so, providers, label)
            else:
                for size in sizes:
                    loaded.by_batch_size[size] = _create(weights, so, providers, label)
            if sizes:
                log.info("%s: one session per batch size %s%s", label, [1, *sizes],
                         f" ({list(sizes)} built on first concurrent use)" if loaded.pending_batch_sizes else "")
        if graphs:
            # the batch-1 session only: there the launches are most of the call (YOLOv8n on an H200
            # 3.5 -> 1.6 ms), and its copies are small; a replay's copies hold the GIL (update_inplace,
            # copy_outputs_to_cpu), which at batch 8 (10 MB in, 22 MB out) most likely stalled the replica's other
            # threads for milliseconds and cut throughput under load (results/gpu/gpu_h200_fp16_cuda_graph.json)
            main = 1 if loaded.dynamic_batch else int(loaded.input_shape[0])
            loaded.cuda_graph = CudaGraphRunner({main: session}, inp.name, loaded.output_names, _cuda_device(providers))
        loaded.load_seconds = time.perf_counter() - started
        log.info("%s: session ready in %.0f ms on %s (asked %s)%s%s%s", label, loaded.load_seconds * 1e3, used,
                 [_name(p) for p in options.providers], ", float16" if fp16 is not None else "",
                 ", CUDA graphs" if graphs else "", ", shared arena" if shared else "")
        if loaded.tuning_pending:
            log.info("%s: quick start (cuDNN's default algorithms); the tuned session follows", label)
        return loaded

    @staticmethod
    def _cuda_graph_wanted(options: SessionOptions, provider: str, label: str) -> bool:
        """CUDA graphs need the CUDA provider first and one session per batch bucket: a graph replays
        one shape. Sessions built without buckets (OCR's, whose pages vary in size) get none."""
        if provider != "CUDAExecutionProvider":
            log.warning("%s: cuda_graph needs the CUDA provider; ignored on %s", label, provider)
            return False
        if not (options.batch_sizes and options.session_per_batch_size):
            log.info("%s: no batch buckets (batch_sizes, session_per_batch_size): no CUDA graph", label)
            return False
        return True

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

    @property
    def tuning_pending(self) -> bool:
        """The main session is a quick start's (``SessionOptions.quick_start``): :meth:`tune` is due."""
        return self._tuned_builder is not None

    def tune(self, warm_input: np.ndarray) -> bool:
        """Replace a quick start's main session by one whose kernels were chosen per shape, run on
        ``warm_input`` (batch 1) before any request reaches it; False when nothing was due. Calls
        already running finish on the old session. A failed build raises once, and the quick
        session stays (slower, not wrong)."""
        with self._grow_lock:
            builder, self._tuned_builder = self._tuned_builder, None
            if builder is None:
                return False
            started = time.perf_counter()
            session = builder()
            session.run(self.output_names, self._feeds(warm_input))
            self.session = session
            log.info("tuned main session built and warmed in %.0f ms", (time.perf_counter() - started) * 1e3)
            return True

    def add_batch_session(self, size: int, warm_input: np.ndarray) -> bool:
        """Build the pending session of bucket ``size`` and run ``warm_input`` (``size`` rows)
        through it before any request can reach it; False when ``size`` is not pending.
        A failed build raises, and the bucket is no longer pending: its batches go on row by row."""
        with self._grow_lock:
            if size not in self.pending_batch_sizes:  # (while any is pending, _build_session is set)
                return False
            self.pending_batch_sizes = tuple(s for s in self.pending_batch_sizes if s != size)
            builder = self._build_session
            if not self.pending_batch_sizes:
                self._build_session = None  # the weights it holds go with it
            started = time.perf_counter()
            session = builder()
            session.run(self.output_names, self._feeds(warm_input), self.shrink)
            self.by_batch_size = {**self.by_batch_size, size: session}  # readers see the old or the new dict
            log.info("session for batch size %d built and warmed in %.0f ms", size, (time.perf_counter() - started) * 1e3)
            return True

    def run(self, tensor: np.ndarray, feeds: dict[str, np.ndarray] | None = None,
            outputs: list[str] | None = None) -> list[np.ndarray]:
        """The ``outputs`` (all by default) for the image batch ``tensor``; ``feeds`` for the other
        inputs (their :attr:`fixed_feeds` where left out). Row by row, an output's rows are joined
        in order (a per-image output, or rows of images one after another)."""
        if self.cuda_graph is not None and len(tensor) not in self.by_batch_size:
            # the main session replays batch 1's graph, so no other shape may reach it: sizes
            # without a bucket session of their own replay it row by row
            return self.cuda_graph.run(tensor)
        if self.per_batch_size and len(tensor) > 1 and len(tensor) not in self.by_batch_size:
            # a size without its own session (not built yet, or no bucket) would make batch 1's
            # session re-plan its kernels for a new shape: it runs row by row instead
            return run_in_chunks(lambda row: self._run_on(self.session, row, feeds, outputs), tensor, 1)
        return self._run_on(self.by_batch_size.get(len(tensor), self.session), tensor, feeds, outputs)

    def _feeds(self, tensor: np.ndarray, feeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        return {self.input_name: tensor, **self.fixed_feeds, **(feeds or {})}

    def _run_on(self, session: ort.InferenceSession, tensor: np.ndarray, feeds: dict[str, np.ndarray] | None = None,
                outputs: list[str] | None = None) -> list[np.ndarray]:
        shrink = self.shrink if session is not self.session else None  # bucket sessions only
        names = outputs or self.output_names
        if not self.io_binding:
            return session.run(names, self._feeds(tensor, feeds), shrink)
        binding = session.io_binding()
        for name, value in self._feeds(tensor, feeds).items():
            binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding, shrink)
        return binding.copy_outputs_to_cpu()
