"""Which replica serves a model: what replicas tell Serve's router, and where a hot model spills.

Serve's router learns the model ids a replica holds from ``record_request_routing_info`` (what
``@serve.multiplexed`` calls; :class:`RoutingReport` does the same for the replica's own cache).
Its default router (power of two choices) sends a model's requests to the replicas holding it,
the shorter queue first, and when they are all full (``max_ongoing_requests``) -- the model is
hotter than its holders serve -- to the replica holding the *fewest models*, which loads it too.
That is hot-model spreading, and it comes back down by itself: a copy that gets fewer requests
looks older to its replica's LRU and goes when the room is needed.

Two things it does not weigh. The spill goes to the replica holding the fewest models, whatever
it must evict to make room. And it does not wait long for a holder: within its matching timeout
it retries "holders, then fewest models", and with two replicas the fewest-models one is often
the holder itself -- so whether a model spills depends on model counts, not on how long its
requests wait. :class:`ModelAwareRouter` sends a request to its model's holders for up to
``spill_after_s`` (a second copy is worth it only for a model whose requests keep waiting longer
than a load takes), and then to the replica where loading it costs least: one with a free slot
and free memory first, else the one whose least recently used model has been idle longest,
never one whose only victims are pinned, then the less busy. Replicas report this in
``record_routing_stats`` (:func:`routing_stats`), polled by Serve every
``request_routing_stats_period_s``. A request for a model no replica holds goes where loading
costs least, the same way.

Measured on 2 replicas x 160 MiB, 50 models, Zipf (``benchmarks/model_management.py``; figures in
``benchmarks/results/model_management*.json``): spilling as soon as the holders are full made
more copies of the top models (1.9 replicas on average instead of 1.1) and more loads; two other
orders were tried and dropped: a *primary holder first* (extra copies get only overflow, so they
fade sooner) loaded more, because the primary's queue fills and everything it holds spills; and
spilling only when holders report their inference thread busy never spilled at all on a CPU
replica whose time goes to request overhead rather than inference.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from ray.serve.request_router import FIFOMixin, MultiplexMixin, PendingRequest, RequestRouter, RunningReplica

log = logging.getLogger(__name__)
RATE_WINDOW_S = 10.0
BUSY_WINDOW_S = 3.0  # how busy a replica's inference thread was lately: a spill-cost tie-breaker
RATES_REPORTED = 32  # the busiest models per replica in its routing stats


class RoutingReport:
    """Tells Serve's router the model ids this replica holds or is loading.

    This is what ``@serve.multiplexed`` does in Ray 2.60 (``ray/serve/multiplex.py``,
    ``_push_model_ids_info``), through Serve's client, a private API: if it is missing, requests
    are routed without model affinity and a warning is logged once.
    """

    def __init__(self) -> None:
        self._replica_id = None
        try:
            from ray.serve.context import _get_internal_replica_context

            context = _get_internal_replica_context()
            self._replica_id = context.replica_id if context is not None else None
        except Exception:
            log.warning("no Serve replica context: model ids are not reported to the router")
        self._warned = False

    def push(self, model_ids: list[str]) -> None:
        if self._replica_id is None:
            return
        try:
            from ray.serve._private.common import RequestRoutingInfo
            from ray.serve.context import _get_global_client

            _get_global_client().record_request_routing_info(
                RequestRoutingInfo(replica_id=self._replica_id, multiplexed_model_ids=list(model_ids)))
        except Exception as exc:
            if not self._warned:
                log.warning("could not report model ids to Serve's router (%s); requests are routed without them", exc)
                self._warned = True


class BusyTime:
    """The fraction of the last ``window_s`` seconds a worker spent working (intervals it reports).

    >>> busy = BusyTime(window_s=10, clock=lambda: 100.0)
    >>> busy.add(95.0, 97.5); busy.add(99.0, 100.0)
    >>> busy.utilization()
    0.35
    """

    def __init__(self, window_s: float = BUSY_WINDOW_S, clock=time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._intervals: deque = deque()

    def add(self, start: float, end: float) -> None:
        self._intervals.append((start, end))

    def utilization(self) -> float:
        cutoff = self._clock() - self._window_s
        while self._intervals and self._intervals[0][1] < cutoff:
            self._intervals.popleft()
        busy = sum(end - max(start, cutoff) for start, end in self._intervals)
        return round(min(1.0, busy / self._window_s), 3)


class RequestRates:
    """Requests per model over the last ``window_s`` seconds (a deque of arrival times per model).

    >>> rates = RequestRates(window_s=10, clock=lambda: 100.0)
    >>> for _ in range(5): rates.add("a/1")
    >>> rates.top(1)
    {'a/1': 0.5}
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, clock=time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._times: dict[str, deque] = {}

    def add(self, model_id: str) -> None:
        self._times.setdefault(model_id, deque()).append(self._clock())

    def top(self, n: int) -> dict[str, float]:
        cutoff = self._clock() - self._window_s
        for model_id in list(self._times):
            times = self._times[model_id]
            while times and times[0] < cutoff:
                times.popleft()
            if not times:
                del self._times[model_id]
        busiest = sorted(self._times.items(), key=lambda kv: -len(kv[1]))[:n]
        return {m: round(len(t) / self._window_s, 3) for m, t in busiest}


def routing_stats(cache_description: dict, rates: dict[str, float], utilization: float = 0.0) -> dict[str, Any]:
    """What a replica tells the router: room for one more model, the idlest victim, its busiest
    models and how busy it is."""
    d = cache_description
    held = d["models"]
    free_slots = d["max_models"] - len(held) - len(d["loading"])
    budget = d["budget_bytes"]
    free_bytes = None if budget is None else budget - d["used_bytes"] - d["reserved_bytes"]
    evictable = [info["idle_s"] for info in held.values() if not info["pinned"]]
    return {"free_slots": free_slots, "free_bytes": free_bytes, "victim_idle_s": max(evictable, default=None),
            "models": len(held), "rates": rates, "utilization": utilization}


def spill_cost(stats: dict[str, Any], models_held: int) -> tuple:
    """Lower is cheaper: free room first; then the idlest victim; then the less busy; then fewer models."""
    free_slots = stats.get("free_slots")
    free_bytes = stats.get("free_bytes")
    has_room = free_slots is not None and free_slots > 0 and (free_bytes is None or free_bytes > 0)
    victim_idle = stats.get("victim_idle_s")
    no_victim = not has_room and victim_idle is None and bool(stats)  # only pinned models: it would refuse
    return (0 if has_room else 2 if no_victim else 1, -(victim_idle or 0.0), stats.get("utilization", 0.0),
            models_held)


class ModelAwareRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    """The model's holders (Serve takes the shortest queue that is not full) for ``spill_after_s``;
    after that, also the replica where loading it costs least, then the rest. When every rank is
    full Serve backs off and asks again.

    ``request_router_kwargs``: ``spill_after_s`` (default 1.0): how long a request waits for a
    replica that holds its model before one that does not may load it -- a spill costs a load and
    an eviction, so only a model whose requests keep waiting that long is worth a second copy.
    """

    spill_after_s = 1.0

    def initialize_state(self, spill_after_s: float = 1.0, **kwargs: Any) -> None:
        self.spill_after_s = spill_after_s

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        model_id = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        if not model_id:
            return [candidate_replicas]
        holders, others = [], []
        for r in candidate_replicas:
            (holders if model_id in r.multiplexed_model_ids else others).append(r)
        waited = time.time() - getattr(pending_request, "created_at", time.time())
        if holders and waited < getattr(self, "spill_after_s", ModelAwareRouter.spill_after_s):
            return [holders]
        others.sort(key=lambda r: spill_cost(r.routing_stats or {}, len(r.multiplexed_model_ids)))
        return [rank for rank in (holders, others[:1], others[1:]) if rank]
