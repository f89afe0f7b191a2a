"""Which replica serves a model: what replicas tell Serve's router, and how a hot model spreads.

Serve's router learns the model keys a replica holds from ``record_request_routing_info`` (what
``@serve.multiplexed`` calls; :class:`RoutingReport` does the same for the replica's own cache).
Its default router sends a model's requests to the replicas holding it and spills to another
replica only when every holder is *full* (``max_ongoing_requests``). The autoscaler, meanwhile,
adds replicas when the ongoing requests per replica pass ``target_ongoing_requests``, which is
lower: measured on a two-node cluster (target 4, max 16, 8 clients on one model), the replicas
it added served 0% of that model's requests.

:class:`ModelAwareRouter` (the default since then; ``hot_model_routing: false`` turns it off)
spreads a model by the same number the autoscaler uses. While every holder of the model has at
least ``spread_at_ongoing`` requests in flight (set it to the autoscaling target), the rank of
the holders also holds the best replica that does not have the model yet, and the least busy
of them gets the request: so a model is on about ``ceil(its ongoing requests / target)``
replicas, which for one hot model is what the autoscaler scales to, and an added replica starts
taking its share at the first request that finds the holders busy. A model below the target
stays on the replicas that have it (cold models stay packed); when the load falls, the extra
copies get fewer requests and fade out of their replicas' LRU as room is needed.

The replica a new copy goes to ("best" above, and where a model nobody holds is loaded) is the
one where loading costs least: a free slot and free memory first, else the one whose least
recently used model has been idle longest, never one whose only victims are pinned; then the
less busy. Replicas report this in ``record_routing_stats`` (:func:`routing_stats`), polled by
Serve every ``request_routing_stats_period_s``.
"""
from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
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
    # with room nothing is evicted, so how idle the would-be victim is does not matter
    return (0 if has_room else 2 if no_victim else 1, 0.0 if has_room else -(victim_idle or 0.0),
            stats.get("utilization", 0.0), models_held)


def rank_for_model(key: str, candidates: list[Any], queue_len: Callable[[Any], int | None],
                   spread_at: float) -> list[list[Any]]:
    """The ranks for a request of model ``key`` (see the module docstring); Serve takes the least
    busy replica of the first rank that has room, then tries the next rank.

    ``queue_len(replica)``: requests in flight on it as the router last saw (None: unknown, taken
    as idle).
    """
    holders, others = [], []
    for r in candidates:
        (holders if key in r.multiplexed_model_ids else others).append(r)
    others.sort(key=lambda r: (spill_cost(r.routing_stats or {}, len(r.multiplexed_model_ids)),
                               queue_len(r) or 0))
    if not holders:
        return [rank for rank in (others[:1], others[1:]) if rank]
    busy = all((queue_len(h) or 0) >= spread_at for h in holders)
    if busy and others:
        return [rank for rank in (holders + others[:1], others[1:]) if rank]
    return [rank for rank in (holders, others[:1], others[1:]) if rank]


class ModelAwareRouter(FIFOMixin, MultiplexMixin, RequestRouter):
    """Routes by :func:`rank_for_model`.

    ``request_router_kwargs``: ``spread_at_ongoing`` (default 4): the requests in flight per holder
    from which a model spreads to one more replica; the autoscaling config's
    ``target_ongoing_requests`` (the two must agree: the shipped configs and the README say so).
    """

    spread_at_ongoing = 4.0

    def initialize_state(self, spread_at_ongoing: float = 4.0, **kwargs: Any) -> None:
        self.spread_at_ongoing = float(spread_at_ongoing)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        key = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        if not key:
            return [candidate_replicas]
        cache = self.replica_queue_len_cache
        candidate_replicas = random.sample(candidate_replicas, len(candidate_replicas))  # ties broken at random
        ranks = rank_for_model(key, candidate_replicas, lambda r: cache.get(r.replica_id), self.spread_at_ongoing)
        if ranks and len(ranks[0]) > 2:
            # two at random, the shorter queue wins (Serve picks it): the queue lengths this router
            # knows are a little stale, and "the shortest of all" herds requests onto one replica
            ranks[0] = random.sample(ranks[0], 2)
        return ranks
