"""The model-aware router's choices, on stand-ins for Serve's replicas (no Ray cluster)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from serve_app.serving.routing import (BusyTime, ModelAwareRouter, RequestRates, rank_for_model, routing_stats,
                                      spill_cost)


def replica(name: str, models: set[str], **stats) -> SimpleNamespace:
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=name), multiplexed_model_ids=models,
                           routing_stats=stats, name=name)


def choose(replicas, model_id: str, queues: dict[str, int] | None = None, spread_at: float = 4) -> list[list[str]]:
    queues = queues or {}
    ranks = rank_for_model(model_id, replicas, lambda r: queues.get(r.name), spread_at)
    return [[r.name for r in rank] for rank in ranks]


def test_a_model_stays_on_its_holders_until_every_holder_is_at_the_spread_target():
    a = replica("a", {"hot/1"}, free_slots=0, victim_idle_s=1.0)
    b = replica("b", {"hot/1", "x/1"}, free_slots=0, victim_idle_s=2.0)
    c = replica("c", {"y/1"}, free_slots=0, victim_idle_s=30.0)
    d = replica("d", {"z/1"}, free_slots=3, free_bytes=2**30)
    # below the target on some holder: holders first, a spill only if they are all full
    assert choose([a, b, c, d], "hot/1", {"a": 3, "b": 6}) == [["a", "b"], ["d"], ["c"]]
    # every holder at the target: the cheapest other replica joins the holders' rank
    assert choose([a, b, c, d], "hot/1", {"a": 4, "b": 6}) == [["a", "b", "d"], ["c"]]
    assert choose([c, d], "new/1") == [["d"], ["c"]]  # nobody holds it: where a load costs least


def test_an_added_replica_takes_a_hot_models_share_and_cold_models_stay_packed():
    old = replica("old", {"hot/1", "cold/1"}, free_slots=6)
    new = replica("new", set(), free_slots=8)
    assert choose([old, new], "hot/1", {"old": 8, "new": 0})[0] == ["old", "new"]
    assert choose([old, new], "cold/1", {"old": 1, "new": 0})[0] == ["old"]
    both = replica("new", {"hot/1"}, free_slots=7)
    assert choose([old, both], "hot/1", {"old": 4, "new": 4})[0] == ["old", "new"]


def test_a_spill_goes_where_loading_evicts_least():
    full_recent = replica("recent", {"m1"}, free_slots=0, victim_idle_s=0.5)
    full_idle = replica("idle", {"m2"}, free_slots=0, victim_idle_s=120.0)
    only_pinned = replica("pinned", {"p"}, free_slots=0, victim_idle_s=None)
    roomy = replica("roomy", {"m3", "m4"}, free_slots=2, free_bytes=10**9)
    no_memory = replica("no-memory", set(), free_slots=5, free_bytes=0, victim_idle_s=1.0)
    order = choose([only_pinned, full_recent, no_memory, full_idle, roomy], "new/1")
    assert order == [["roomy"], ["idle", "no-memory", "recent", "pinned"]]


def test_without_stats_a_new_model_goes_to_the_replica_with_fewest_models_then_the_idlest():
    assert choose([replica("two", {"a", "b"}), replica("one", {"c"})], "new/1")[0] == ["one"]
    assert choose([replica("p", {"c"}), replica("q", {"d"})], "new/1", {"p": 3, "q": 1})[0] == ["q"]
    assert spill_cost({}, 1) < spill_cost({}, 2)


def test_requests_without_a_model_may_go_anywhere():
    pending = SimpleNamespace(metadata=SimpleNamespace(multiplexed_model_id=""))
    rs = [replica("a", {"m"}), replica("b", set())]
    assert asyncio.run(ModelAwareRouter.choose_replicas(None, rs, pending)) == [rs]


def test_routing_stats_from_a_cache_description():
    d = {"max_models": 4, "budget_bytes": 100, "used_bytes": 60, "reserved_bytes": 10, "loading": ["l"],
         "models": {"p": {"pinned": True, "idle_s": 99.0}, "a": {"pinned": False, "idle_s": 3.0},
                    "b": {"pinned": False, "idle_s": 7.0}}}
    stats = routing_stats(d, {"a": 1.0}, 0.5)
    assert stats == {"free_slots": 0, "free_bytes": 30, "victim_idle_s": 7.0, "models": 3, "rates": {"a": 1.0},
                     "utilization": 0.5}


def test_request_rates_and_busy_time_forget_what_left_the_window():
    now = [0.0]
    rates = RequestRates(window_s=10, clock=lambda: now[0])
    busy = BusyTime(window_s=10, clock=lambda: now[0])
    for t in (0, 1, 2, 11, 12):
        now[0] = t
        rates.add("a")
        busy.add(t - 0.5, t)
    rates.add("b")
    assert rates.top(1) == {"a": 0.3}
    assert busy.utilization() == 0.1  # at 12 the window starts at 2: the 0.5 s ending at 11 and at 12
    now[0] = 30
    assert rates.top(5) == {} and busy.utilization() == 0.0
