"""The one typed settings object, built once from the application's arguments in serve_config.yaml.

No module reads the environment on its own; the few environment variables honoured are read
here (``SERVE_APP_STATE_DIR``, ``SERVE_APP_CACHE_DIR``, ``SERVE_APP_S3_ENDPOINT``, and the keys
``SERVE_APP_API_KEY`` and ``SERVE_APP_ADMIN_KEY``), so tests and deployments can point the state at
a scratch folder, and keep keys out of the YAML, without editing it.

Keys are held as :class:`~serve_app.secret.Secret` digests from the moment the settings are built:
``repr`` and :meth:`Settings.to_args` (what actors and deployments receive) never hold a key.

>>> s = Settings.from_args({"max_models_per_replica": 4})
>>> s.max_models_per_replica, s.repositories[0].endswith("configs/models")
(4, True)
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from serve_app.errors import ManifestError
from serve_app.fetch_policy import FetchPolicy
from serve_app.options import PRECISIONS, ImageLimits, SessionOptions, SourceOptions, batch_buckets
from serve_app.secret import Secret

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    repositories: tuple[str, ...] = (str(PROJECT_ROOT / "configs" / "models"),)
    aliases: dict[str, str] = field(default_factory=lambda: {"shapes": "shapes-det/1"})
    pinned: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    state_dir: str = str(Path.home() / ".cache" / "serve_app" / "state")
    cache_dir: str = str(Path.home() / ".cache" / "serve_app" / "artifacts")
    disk_cache_max_bytes: int = 10 * 2**30
    object_store_cache_bytes: int = 2 * 2**30
    max_models_per_replica: int = 8
    # model memory per replica (see serving/model_cache.py): None = on a GPU, replica_memory_fraction
    # of the replica's share of the device; on the host, no byte budget (the count cap alone)
    replica_memory_budget_bytes: int | None = None
    replica_memory_fraction: float = 0.8
    model_memory_estimate_factor: float = 2.0  # a model never measured: its artifact bytes x this
    eviction_protect_recent_s: float = 0.0     # a model used this recently is not evicted for another
    load_failure_backoff_s: float = 5.0        # a failed load is remembered this long, doubling per failure,
    load_failure_backoff_max_s: float = 300.0  # up to this
    metrics_max_model_labels: int = 64         # more distinct models are counted under model="other"
    hot_model_routing: bool = True             # serving/routing.py's ModelAwareRouter (off: Serve's default router)
    spread_at_ongoing: float = 4.0             # a model spreads to one more replica while every holder has this
                                               # many requests in flight: set it to the autoscaling target
    routing_stats_period_s: float = 1.0        # how often Serve asks replicas for their room and busy models
    prewarm_models: int = 2                    # a new replica loads the cluster's this many hottest models first
    prewarm_timeout_s: float = 30.0            # ...for at most this long before it takes traffic
    replica_report_ttl_s: float = 6.0          # a replica that has not reported this long is gone from the view
    load_timeout_s: float = 60.0
    direct_ingress: bool = False  # ModelServer as the HTTP ingress (no Gateway): measured, not the default
    request_timeout_s: float = 30.0
    providers: tuple[Any, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.002
    batch_buckets: tuple[int, ...] = ()  # batch sizes besides 1 and max_batch_size that batches are padded to
    session_per_batch_size: bool = True  # on a GPU: one session per batch bucket (see SessionOptions)
    lazy_batch_sessions: bool = False  # ...of which only batch 1's is built at load, the rest at first concurrent use
    tensorrt_cache_dir: str | None = None  # TensorRT engines and timing caches; default: <cache_dir>/tensorrt
    precision: str = "fp32"  # "fp16": graphs converted to float16 at load, on CUDA/TensorRT only (see SessionOptions)
    cuda_graph: bool = False  # on CUDA: the batch-1 session replays a CUDA graph from fixed device buffers
    shared_arena: bool = False  # a replica's sessions share one memory arena per device instead of one each
    graph_cache: bool = True  # keep each model's optimised graph under <cache_dir>/graphs: later loads start from it
    graph_cache_max_bytes: int = 2 * 2**30
    shrink_batch_arenas: bool = False  # bucket sessions give their arena back after each call (less memory, slower)
    quick_start: bool = True  # on CUDA: a cold model first serves from a session with cuDNN's default algorithms
    candidate_filter: bool = True  # YOLOv8 on a GPU: only rows scoring above the batch's floor leave the session
    cublas_workspace_kib: int = 0  # cuBLAS workspace per session handle (pipeline/cuda_env.py); 0: cuBLAS' default
    gpu_jpeg_decode: bool = False  # with a GPU: JPEGs decode there (nvImageCodec, pipeline/gpu_jpeg.py), else on the CPU
    inference_threads: int = 0  # session calls in flight per replica; 0 = 1 on the CPU, 2 with a GPU provider
    inference_scheduler: str = "fair"  # per-model queues, one thread more (serving/scheduler.py) | "fifo": one queue
    inference_model_threads: int = 0  # fair: inference threads one model may hold at once; 0 = all but one
    max_body_bytes: int = 30 * 2**20
    image_max_file_bytes: int = 20 * 2**20
    image_max_pixels: int = 40_000_000
    url_timeout_s: float = 10.0
    url_allowed_hosts: tuple[str, ...] = ()
    allow_private_urls: bool = False
    source_retries: int = 3
    source_backoff_s: float = 0.2
    s3_endpoint: str | None = None
    s3_region: str | None = None
    # URIs of models added at run time (POST /model/add): see fetch_policy.py and the README
    model_uri_schemes: tuple[str, ...] = ("https", "http", "s3", "gs")
    model_uri_allowed_hosts: tuple[str, ...] = ()  # http(s) hosts and s3/gs buckets; () = any public host, no bucket
    model_uri_local_roots: tuple[str, ...] = ()    # folders file:// URIs from clients may name; () = none
    model_uri_max_bytes: int = 4 * 2**30
    api_key: Secret | None = None    # inference routes (and the admin routes while no admin_key is set)
    admin_key: Secret | None = None  # /model/add, /model/remove, /model/clear; None: only on a loopback bind
    namespace: str = "serve_app"

    def __post_init__(self) -> None:
        for name in ("api_key", "admin_key"):
            object.__setattr__(self, name, Secret.from_arg(getattr(self, name)))
        if self.precision not in PRECISIONS:
            raise ManifestError(f"precision must be one of {list(PRECISIONS)}; got {self.precision!r}")
        if self.cuda_graph and (self.max_models_per_replica != 1 or self.gpu_jpeg_decode):
            # ONNX Runtime records the graph in CUDA's global capture mode, which fails any other GPU call
            # the process makes meanwhile: a replica loading a model while it served another, or decoding
            # JPEGs on the GPU, failed requests (cudaErrorStreamCaptureInvalidated; H200, 16-213 errors per
            # pass over 3 and 12 models, none without the graph: benchmarks/results/gpu/gpu_h200_graph_spread.json,
            # gpu_h200_plain_spread.json, gpu_h200_gpujpeg_vs_roboflow.json)
            raise ManifestError("cuda_graph needs max_models_per_replica: 1 and gpu_jpeg_decode: false: a CUDA "
                                "graph is recorded in CUDA's global capture mode, where another model's calls or a "
                                "GPU JPEG decode in the same replica fail requests")

        if self.shared_arena and (self.max_models_per_replica != 1 or self.lazy_batch_sessions
                                  or self.inference_threads != 1):
            # one arena for all of a process's sessions: a session built while another ran (a second model
            # loading, a deferred bucket session) failed with an illegal memory access, after which every
            # request of that replica failed (H200, 1,000 of 2,800 requests in one pass over 3 models;
            # benchmarks/results/gpu/gpu_h200_lean_spread.json; none without it: gpu_h200_lazy_spread.json).
            # The arena registered in ONNX Runtime's environment is not known to follow CUDA streams, so
            # two sessions running at once (two inference threads) are refused too: what one stream frees
            # could be handed to the other's kernels while the first's still use it
            raise ManifestError("shared_arena needs max_models_per_replica: 1, lazy_batch_sessions: false and "
                                "inference_threads: 1: a session built while another ran on the shared arena "
                                "failed with an illegal memory access, and the replica's GPU context with it")

    @classmethod
    def from_args(cls, args: dict[str, Any] | None = None) -> "Settings":
        args = dict(args or {})
        env = {"state_dir": "SERVE_APP_STATE_DIR", "cache_dir": "SERVE_APP_CACHE_DIR", "s3_endpoint": "SERVE_APP_S3_ENDPOINT",
               "api_key": "SERVE_APP_API_KEY", "admin_key": "SERVE_APP_ADMIN_KEY"}
        for key, var in env.items():
            if os.environ.get(var) and key not in args:
                args[key] = os.environ[var]
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ManifestError(f"unknown application arguments {unknown}; known: {sorted(known)}")
        for key in ("repositories", "pinned", "preload", "providers", "url_allowed_hosts", "batch_buckets",
                    "model_uri_schemes", "model_uri_allowed_hosts", "model_uri_local_roots"):
            if key in args and args[key] is not None:
                value = args[key]
                args[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        for key in ("state_dir", "cache_dir", "tensorrt_cache_dir"):
            if args.get(key) and not os.path.isabs(args[key]):
                args[key] = str((PROJECT_ROOT / args[key]).resolve())
        if "repositories" in args:
            args["repositories"] = tuple(str((PROJECT_ROOT / r).resolve()) if not os.path.isabs(r) else r
                                         for r in args["repositories"])
        if "providers" in args:
            args["providers"] = tuple(p if isinstance(p, str) else (p[0], dict(p[1])) if isinstance(p, (list, tuple))
                                      else (p["name"], dict(p.get("options", {}))) for p in args["providers"])
        return cls(**args)

    def to_args(self) -> dict[str, Any]:
        """Plain data (lists, dicts) to hand to Ray actors and deployments; keys only as digests."""
        return asdict(self)

    @property
    def client_model_policy(self) -> FetchPolicy:
        """What the URIs of a model added by a client (``/model/add``) may reach."""
        schemes = tuple(self.model_uri_schemes) + (("file",) if self.model_uri_local_roots else ())
        return FetchPolicy(noun="weights", schemes=schemes, allowed_hosts=self.model_uri_allowed_hosts,
                           allow_private=self.allow_private_urls, local_roots=self.model_uri_local_roots,
                           max_bytes=self.model_uri_max_bytes, connect_timeout_s=5.0, read_timeout_s=30.0,
                           deadline_s=None)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_file_bytes=self.image_max_file_bytes, max_pixels=self.image_max_pixels,
                           url_timeout_s=self.url_timeout_s, url_allowed_hosts=self.url_allowed_hosts,
                           allow_private_urls=self.allow_private_urls)

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes the batcher pads to (each gets its own session on a GPU)."""
        return batch_buckets(self.max_batch_size, self.batch_buckets)

    @property
    def session_options(self) -> SessionOptions:
        return SessionOptions(providers=self.providers, intra_op_threads=self.intra_op_threads,
                              inter_op_threads=self.inter_op_threads,
                              batch_sizes=self.buckets if self.max_batch_size > 1 else (),
                              session_per_batch_size=self.session_per_batch_size,
                              lazy_batch_sessions=self.lazy_batch_sessions,
                              precision=self.precision, cuda_graph=self.cuda_graph, shared_arena=self.shared_arena,
                              graph_cache_dir=os.path.join(self.cache_dir, "graphs") if self.graph_cache else None,
                              graph_cache_max_bytes=self.graph_cache_max_bytes,
                              shrink_batch_arenas=self.shrink_batch_arenas, quick_start=self.quick_start,
                              candidate_filter=self.candidate_filter,
                              tensorrt_cache_dir=self.tensorrt_cache_dir or os.path.join(self.cache_dir, "tensorrt"))

    @property
    def source_options(self) -> SourceOptions:
        return SourceOptions(retries=self.source_retries, backoff_s=self.source_backoff_s,
                             s3_endpoint_override=self.s3_endpoint, s3_region=self.s3_region)
