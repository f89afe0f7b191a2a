"""Multiplexing on 2 replicas with a cap of 2: stickiness, LRU eviction, one origin fetch per artifact."""
from __future__ import annotations

import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.fixture_models import BLUE, RED, colour_classifier, solid_jpeg, write_repository
from tests.servers import OriginServer

pytestmark = pytest.mark.ray
MODELS = [f"m{i}/1" for i in range(6)]


@pytest.fixture(scope="module")
def origin():
    server = OriginServer({f"/{m}.onnx": colour_classifier(variant=i) for i, m in enumerate(MODELS)}, delay_s=0.2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory, origin) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("mux")
    repo = write_repository(tmp / "repo", {m: colour_classifier(variant=i) for i, m in enumerate(MODELS)},
                            uris={m: origin.url(f"/{m}.onnx") for m in MODELS})
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(repo)], "max_models_per_replica": 2,
                                           "aliases": {"tiny": "m0/1"}}, replicas=2, model_server_cpus=0.4)
    yield deployed
    teardown_app(deployed)


def infer(app: DeployedApp, model: str, colour=RED) -> tuple[str, str]:
    r = app.post("/infer", data=solid_jpeg(colour), headers={"serve_multiplexed_model_id": model})
    assert r.status_code == 200, r.text
    assert r.json()["top"] == {RED: "red", BLUE: "blue"}[colour]
    return r.headers["X-Model-Id"], r.headers["X-Replica"]


def replica_states(app: DeployedApp, settle_s: float = 1.5) -> dict[str, dict]:
    import ray

    time.sleep(settle_s)  # reports are sent without waiting; let them land
    return ray.get(app.actor("serve_app_registry").replicas.remote())


def loads_of(states: dict, model: str) -> list[tuple[str, str]]:
    return [(rid, e["tier"]) for rid, s in states.items() for e in s["loads"] if e["model_id"] == model]


def test_1_alias_and_target_load_once_and_requests_stick(app):
    model, replica = infer(app, "tiny")
    assert model == "m0/1"
    for _ in range(8):
        assert infer(app, "m0/1") == ("m0/1", replica)
        assert infer(app, "tiny", BLUE) == ("m0/1", replica)
    assert loads_of(replica_states(app), "m0/1") == [(replica, "origin")]


def test_2_concurrent_clients_fetch_each_artifact_once(app, origin):
    wanted = MODELS[1:5]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: infer(app, wanted[i % 4]), range(48)))
    assert {m for m, _ in results} == set(wanted)
    for m in MODELS[:5]:
        assert origin.counts[f"/{m}.onnx"] == 1, origin.counts
    # 5 models on 2 replicas x 2 slots: keep cycling so models move between replicas
    for _ in range(2):
        for m in MODELS[:5]:
            infer(app, m)
    states = replica_states(app)
    tiers = [tier for m in MODELS[:5] for _, tier in loads_of(states, m)]
    assert tiers.count("origin") == 5, tiers
    assert tiers.count("object_store") >= 1, tiers  # reloads and the other replica read the object store
    assert "disk" not in tiers
    assert {m: origin.counts[f"/{m}.onnx"] for m in MODELS[:5]} == {m: 1 for m in MODELS[:5]}


def test_3_eviction_follows_lru_order(app):
    start = replica_states(app)
    # each replica's LRU as it stands: loaded models by last use, oldest first
    lru = {rid: OrderedDict((m, None) for m in sorted(s["models"], key=lambda m: s["models"][m]["last_used"]))
           for rid, s in start.items()}
    before = {rid: len(s["evictions"]) for rid, s in start.items()}
    seen = [infer(app, m) for m in ["m1/1", "m2/1", "m3/1", "m4/1", "m5/1", "m2/1", "m1/1", "m5/1", "m3/1", "m4/1"]]
    states = replica_states(app, settle_s=1.5)
    expected: dict[str, list[str]] = {rid: [] for rid in states}
    for model, rid in seen:  # replay through a cap-2 LRU per replica
        cache = lru.setdefault(rid, OrderedDict())
        if model in cache:
            cache.move_to_end(model)
            continue
        if len(cache) >= 2:
            expected[rid].append(cache.popitem(last=False)[0])
        cache[model] = None
    for rid, state in states.items():
        assert state["evictions"][before.get(rid, 0):] == expected[rid], (rid, seen)
        assert list(state["models"]) and set(state["models"]) == set(lru[rid])
    assert sum(len(e) for e in expected.values()) >= 3  # the sequence really evicted
