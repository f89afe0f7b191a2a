"""The option objects that the layers take, built by ``settings.py`` and passed down.

A base module: it imports no layer, so ``settings.py`` can build these without importing the
pipeline, the artifact sources or the serving code, and each layer imports only its own option
type from here (re-exported where it used to live: ``pipeline.images.ImageLimits``,
``pipeline.session.SessionOptions``, ``artifacts.sources.SourceOptions``,
``serving.batcher.batch_buckets``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serve_app.fetch_policy import normalise_host_pattern

_MIB = 1024 * 1024
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied to every client image; build once from settings and pass down.

    ``max_pixels`` bounds decoded width x height (decompression bombs). Pillow refuses anything
    above twice its own ``Image.MAX_IMAGE_PIXELS`` (179 M pixels by default) whatever this says.
    ``url_allowed_hosts`` holds host names (``images.example.com``) or wildcards
    (``*.example.com``: subdomains only); empty means any public host. With
    ``allow_private_urls`` False, hosts resolving to loopback, private, link-local, reserved or
    multicast addresses are refused, on every redirect too.

    >>> ImageLimits(max_pixels=1_000_000).max_file_bytes
    20971520
    >>> ImageLimits(url_allowed_hosts=["CDN.Example.com."]).url_allowed_hosts
    ('cdn.example.com',)
    """

    max_file_bytes: int = 20 * _MIB
    max_pixels: int = 40_000_000
    url_timeout_s: float = 10.0
    url_max_bytes: int = 20 * _MIB
    url_allowed_hosts: tuple[str, ...] = ()
    allow_private_urls: bool = False

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_pixels", "url_max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ImageLimits.{name} must be a positive integer; got {value!r}")
        if not self.url_timeout_s > 0:
            raise ValueError(f"ImageLimits.url_timeout_s must be > 0; got {self.url_timeout_s!r}")
        if isinstance(self.url_allowed_hosts, str):
            raise ValueError("ImageLimits.url_allowed_hosts must be a sequence of host names")
        hosts = tuple(normalise_host_pattern(h) for h in self.url_allowed_hosts)
        object.__setattr__(self, "url_allowed_hosts", hosts)


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
    uint8_input: bool = True  # feed uint8 pixels; cast and scale run inside the session
    io_binding: bool = False  # bind inputs/outputs explicitly (pays on CUDA, not on CPU)
    allow_spinning: bool = False  # ORT's idle threads busy-wait by default, stealing the cores the proxy needs
    # On a GPU, one session per batch size the batcher makes (its buckets): a CUDA session whose
    # input shape changes from call to call re-plans its convolutions every call (see
    # benchmarks/results/gpu/gpu_session_h200.json), a session that always sees one shape plans once.
    batch_sizes: tuple[int, ...] = ()
    session_per_batch_size: bool = True
    # Only the batch-1 session is built at load; the other buckets' sessions are built when the
    # model first has concurrent requests (OnnxSession.add_batch_session), and batches meanwhile run
    # row by row through batch 1: a first request waits for one session build and warm-up, and a
    # model asked one request at a time holds one session. Not with cuda_graph (its recording).
    lazy_batch_sessions: bool = False
    force_batch_sessions: bool = False  # the bucket sessions on the CPU provider too (tests, dry runs)
    # Opt-in GPU features (issue 14), each ignored with a log line where it cannot apply:
    # "fp16": the graph converted to float16 at load (pipeline/precision.py), on CUDA/TensorRT only
    # (the CPU provider has few float16 kernels and runs them slower) unless force_precision says so.
    precision: str = "fp32"
    force_precision: bool = False
    # On CUDA with batch buckets: the batch-1 session captures and replays a CUDA graph, fed
    # through fixed device buffers (pipeline/cuda_graph.py). Refused on any other provider.
    cuda_graph: bool = False
    # The process's sessions share one arena per device (ONNX Runtime's environment allocators)
    # instead of one per session (pipeline/arena.py).
    shared_arena: bool = False
    # Where a model's optimised graph is kept (pipeline/graph_cache.py): its later loads build from
    # it with ONNX Runtime's optimisations off and skip the uint8 rewrite. None: every load optimises.
    graph_cache_dir: str | None = None
    graph_cache_max_bytes: int = 2 * 2**30
    # The bucket sessions (batch > 1) give their arena's free memory back to the device after
    # each call: a model holds its batch-1 session's memory only, at the cost of allocating a
    # batch's memory on each batched call.
    shrink_batch_arenas: bool = False
    # On CUDA: a model's first session takes cuDNN's default convolution algorithms (no per-shape
    # choice: its warm-up is shorter, its calls slower), and a session that chose them per shape
    # replaces it in the background (OnnxSession.tune): a cold model answers sooner.
    quick_start: bool = False
    force_quick_start: bool = False  # the same on any provider (tests, dry runs)
    # YOLOv8-style heads ([N, 4 + C + E, A]): the graph picks the rows whose best class score is
    # above the batch's lowest confidence, and only those leave the session (pipeline/candidates.py):
    # not 2.8 MB per image from a GPU, nor NumPy's class maximum over every row. Not with fp16 or
    # cuda_graph (a recorded graph replays fixed shapes; the filter's output varies). A replica
    # whose models run on the CPU turns it off (serving/model_server.py: it costs more there).
    candidate_filter: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"SessionOptions.precision must be one of {PRECISIONS}; got {self.precision!r}")


@dataclass(frozen=True)
class SourceOptions:
    """How to reach origins. One instance per deployment, built from settings.

    ``retries`` counts retries after the first attempt: ``retries=3`` makes at most 4 attempts.
    ``backoff_s`` is the first delay; it doubles per retry, times a jitter factor in [0.5, 1).
    ``s3_endpoint_override`` may carry a scheme (``"http://127.0.0.1:9000"``) or not
    (``"minio:9000"``, then HTTPS).
    """

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.2
    s3_endpoint_override: str | None = None
    s3_region: str | None = None
    s3_anonymous: bool = False
    gcs_endpoint_override: str | None = None
    gcs_anonymous: bool = False

    def __post_init__(self) -> None:
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError(
                f"timeouts must be > 0, got connect={self.connect_timeout_s} "
                f"read={self.read_timeout_s}"
            )
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {self.backoff_s}")


def batch_buckets(max_batch: int, sizes: Sequence[int] = ()) -> tuple[int, ...]:
    """The batch sizes batches are padded to: ``sizes`` (up to ``max_batch``) with 1 and
    ``max_batch``; by default just those two (on a GPU a padded row costs far less than the
    session and memory another shape would need).

    >>> batch_buckets(8), batch_buckets(8, (2, 4, 16)), batch_buckets(1)
    ((1, 8), (1, 2, 4, 8), (1,))
    """
    return tuple(sorted({1, max_batch, *(s for s in sizes if 1 <= s <= max_batch)}))
