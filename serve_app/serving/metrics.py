"""A replica's model metrics, exported through Ray's metrics (Prometheus at each node's export port).

Series (Ray adds ``ray_`` in front, ``_total`` to counters, and the ``application``,
``deployment`` and ``replica`` labels):

- ``serve_app_model_requests{model, outcome}``: requests answered (``ok``) or failed (``error``).
- ``serve_app_model_request_latency_ms{model, stage}``: ``queue`` (waiting for the replica's
  inference thread), ``load_wait`` (waiting for the model to load: misses only), ``decode``,
  ``preprocess``, ``inference``, ``postprocess`` and ``total`` (the replica's whole handling).
- ``serve_app_model_cache_lookups{model, result}``: ``hit``, ``miss``, ``joined`` (a load was
  under way), ``failed`` (a remembered failure), ``refused`` (known not to fit);
  ``serve_app_model_cache_hit_ratio``: hits over hits, misses and joins, since the replica started.
- ``serve_app_model_loads{model, tier, outcome}`` and ``serve_app_model_load_latency_ms{tier}``.
- ``serve_app_model_evictions{model, reason}`` (``memory``, ``count``, ``request``) and
  ``serve_app_evicted_model_age_s{age}``: how long the evicted model had been ``resident`` and ``idle``.
- ``serve_app_model_memory_bytes{model}``, ``serve_app_replica_memory_budget_bytes{device}``,
  ``serve_app_replica_memory_used_bytes{device}``, ``serve_app_replica_models``.

Label cardinality is bounded: the first ``max_model_labels`` model ids (pinned ones first) get
their own ``model`` label, every later one is counted under ``other``.
"""
from __future__ import annotations

import logging
from typing import Any

from serve_app.serving.model_cache import CacheEvents, ModelCache

log = logging.getLogger(__name__)
PREFIX = "serve_app_"
OTHER = "other"
LATENCY_BUCKETS_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
LOAD_BUCKETS_MS = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000]
AGE_BUCKETS_S = [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600]
STAGES = ("queue", "load_wait", "decode", "preprocess", "inference", "postprocess", "total")


class ModelLabels:
    """Model id -> label, at most ``limit`` distinct labels besides ``other``.

    >>> labels = ModelLabels(2)
    >>> [labels(m) for m in ("a/1", "b/1", "c/1", "a/1")]
    ['a/1', 'b/1', 'other', 'a/1']
    """

    def __init__(self, limit: int, first: tuple[str, ...] = ()) -> None:
        self._limit = max(0, limit)
        self._labels: dict[str, str] = {}
        for model_id in first:
            self(model_id)

    def __call__(self, model_id: str) -> str:
        model_id = model_id.partition("@")[0]  # a model key: one label per model, whatever its weights
        label = self._labels.get(model_id)
        if label is None:
            if len(self._labels) >= self._limit:
                return OTHER
            label = self._labels[model_id] = model_id
        return label


class ReplicaMetrics(CacheEvents):
    """The cache's events and the request timings, as Ray metrics. ``factory`` is ``ray.serve.metrics``
    (or anything with ``Counter``, ``Histogram`` and ``Gauge`` of the same signatures)."""

    def __init__(self, factory: Any, max_model_labels: int, pinned: tuple[str, ...] = ()) -> None:
        self.labels = ModelLabels(max_model_labels, pinned)
        self._cache: ModelCache | None = None
        self._memory_labels: set[str] = set()
        c, h, g = factory.Counter, factory.Histogram, factory.Gauge
        self.requests = c(PREFIX + "model_requests", description="Requests per model and outcome.",
                          tag_keys=("model", "outcome"))
        self.latency = h(PREFIX + "model_request_latency_ms", description="Replica latency per model and stage.",
                         boundaries=LATENCY_BUCKETS_MS, tag_keys=("model", "stage"))
        self.lookups = c(PREFIX + "model_cache_lookups", description="Model cache lookups by result.",
                         tag_keys=("model", "result"))
        self.hit_ratio = g(PREFIX + "model_cache_hit_ratio",
                           description="Hits over hits, misses and joined loads since the replica started.")
        self.loads = c(PREFIX + "model_loads", description="Model loads by tier and outcome.",
                       tag_keys=("model", "tier", "outcome"))
        self.load_latency = h(PREFIX + "model_load_latency_ms", description="Model load latency by tier.",
                              boundaries=LOAD_BUCKETS_MS, tag_keys=("tier",))
        self.evictions = c(PREFIX + "model_evictions", description="Model evictions by reason.",
                           tag_keys=("model", "reason"))
        self.evicted_age = h(PREFIX + "evicted_model_age_s", description="Age of evicted models: resident and idle.",
                             boundaries=AGE_BUCKETS_S, tag_keys=("age",))
        self.model_memory = g(PREFIX + "model_memory_bytes", description="Memory a model holds on this replica.",
                              tag_keys=("model",))
        self.budget = g(PREFIX + "replica_memory_budget_bytes", description="The replica's model memory budget.",
                        tag_keys=("device",))
        self.used = g(PREFIX + "replica_memory_used_bytes", description="Model memory the replica holds.",
                      tag_keys=("device",))
        self.models = g(PREFIX + "replica_models", description="Models the replica holds.")
        self._hits = 0
        self._lookups = 0

    def attach(self, cache: ModelCache) -> None:
        self._cache = cache
        self.changed()

    # -- requests ---------------------------------------------------------------------------------
    def request(self, model_id: str, ok: bool, stages: dict[str, float]) -> None:
        label = self.labels(model_id)
        self.requests.inc(tags={"model": label, "outcome": "ok" if ok else "error"})
        for stage, seconds in stages.items():
            if stage in STAGES:
                self.latency.observe(seconds * 1e3, tags={"model": label, "stage": stage})

    # -- cache events -------------------------------------------------------------------------------
    def lookup(self, model_id: str, result: str) -> None:
        self.lookups.inc(tags={"model": self.labels(model_id), "result": result})
        if result in ("hit", "miss", "joined"):
            self._lookups += 1
            self._hits += result == "hit"
            self.hit_ratio.set(self._hits / self._lookups)

    def loaded(self, model_id: str, tier: str, seconds: float, memory_bytes: int) -> None:
        self.loads.inc(tags={"model": self.labels(model_id), "tier": tier, "outcome": "ok"})
        self.load_latency.observe(seconds * 1e3, tags={"tier": tier})

    def load_failed(self, model_id: str, outcome: str, seconds: float) -> None:
        self.loads.inc(tags={"model": self.labels(model_id), "tier": "none", "outcome": outcome})

    def evicted(self, model_id: str, reason: str, resident_s: float, idle_s: float, memory_bytes: int) -> None:
        self.evictions.inc(tags={"model": self.labels(model_id), "reason": reason})
        self.evicted_age.observe(resident_s, tags={"age": "resident"})
        self.evicted_age.observe(idle_s, tags={"age": "idle"})

    def refresh(self) -> None:
        """Set every gauge again to its current value. Called with each heartbeat: a gauge set once
        (the budget at start-up, the hit ratio at the last lookup) went missing from Ray's export in
        CI while the counters beside it were there."""
        if self._lookups:
            self.hit_ratio.set(self._hits / self._lookups)
        self.changed()

    def changed(self) -> None:
        cache = self._cache
        if cache is None:
            return
        per_label: dict[str, int] = {}
        for model_id, loaded in cache.held().items():
            label = self.labels(model_id)
            per_label[label] = per_label.get(label, 0) + loaded.memory_bytes
        for label in self._memory_labels - set(per_label):
            self.model_memory.set(0, tags={"model": label})
        for label, held in per_label.items():
            self.model_memory.set(held, tags={"model": label})
        self._memory_labels = set(per_label)
        device = {"device": cache.device}
        self.budget.set(cache.policy.budget_bytes or 0, tags=device)
        self.used.set(cache.held_bytes, tags=device)
        self.models.set(len(cache.held()))


class NoMetrics(ReplicaMetrics):
    """Metrics that go nowhere (outside a Ray replica)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(_NullFactory(), 0)


class _Null:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def inc(self, *args: Any, **kwargs: Any) -> None:
        pass

    def observe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set(self, *args: Any, **kwargs: Any) -> None:
        pass


class _NullFactory:
    Counter = Histogram = Gauge = _Null

