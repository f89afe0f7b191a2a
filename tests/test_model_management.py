"""Model management on a real replica: a memory budget, pinning, concurrent and single-flight loads,
remembered failures with backoff, and the metrics Ray exports for them.

One replica (so the order of its cache is the test's to know), a budget that fits three of the
16 MiB test models (each takes about 32 MiB loaded on the CPU provider), a count cap of 8.
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.fixture_models import BLUE, RED, colour_classifier, heavy_classifier, solid_jpeg, write_repository
from tests.servers import OriginServer

pytestmark = pytest.mark.ray
MiB = 2**20
BUDGET = 120 * MiB
HEAVY = [f"heavy-{c}/1" for c in "abcd"]
TOUCHED = [f"t{i:02d}/1" for i in range(20)]
SLOW_DELAY_S = 1.5
BACKOFF_S = 2.0


@pytest.fixture(scope="module")
def slow_origin():
    server = OriginServer({f"/{name}.onnx": colour_classifier(variant=700 + i)
                           for i, name in enumerate(("slow-a", "slow-b", "six"))}, delay_s=SLOW_DELAY_S)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def origin():
    server = OriginServer({"/broken.onnx": colour_classifier(variant=800)})
    server.corrupt_next["/broken.onnx"] = 10_000  # every transfer fails its checksum
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory, slow_origin, origin) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("mm")
    models = {"pin/1": colour_classifier(variant=500), "big/1": heavy_classifier(variant=9, megabytes=64),
              **{m: heavy_classifier(variant=i, megabytes=16) for i, m in enumerate(HEAVY)},
              **{m: colour_classifier(variant=600 + i) for i, m in enumerate(TOUCHED)}}
    remote = {"slow-a/1": slow_origin.url("/slow-a.onnx"), "slow-b/1": slow_origin.url("/slow-b.onnx"),
              "six/1": slow_origin.url("/six.onnx"), "broken/1": origin.url("/broken.onnx")}
    models.update({"slow-a/1": slow_origin.files["/slow-a.onnx"], "slow-b/1": slow_origin.files["/slow-b.onnx"],
                   "six/1": slow_origin.files["/six.onnx"], "broken/1": origin.files["/broken.onnx"]})
    repo = write_repository(tmp / "repo", models, uris=remote)
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(repo)], "max_models_per_replica": 8,
                                           "replica_memory_budget_bytes": BUDGET, "pinned": ["pin/1"],
                                           "load_failure_backoff_s": BACKOFF_S, "load_failure_backoff_max_s": 30,
                                           "metrics_max_model_labels": 16, "load_timeout_s": 20},
                          replicas=1, model_server_extra={"max_ongoing_requests": 16},
                          gateway_extra={"max_ongoing_requests": 32})
    yield deployed
    teardown_app(deployed)


def infer(app: DeployedApp, model: str, colour=RED) -> requests.Response:
    return app.post("/infer", data=solid_jpeg(colour), headers={"serve_multiplexed_model_id": model})


def ok(app: DeployedApp, model: str, colour=RED) -> str:
    r = infer(app, model, colour)
    assert r.status_code == 200, r.text
    assert r.json()["top"] == {RED: "red", BLUE: "blue"}[colour]
    return r.headers["X-Replica"]


def state(app: DeployedApp, settle_s: float = 0.4) -> dict:
    """The one replica's report to the registry (once it has started: pinned model loaded)."""
    import ray

    time.sleep(settle_s)  # reports leave the replica within 0.1 s of a change
    deadline = time.time() + 60
    while True:
        states = ray.get(app.actor("serve_app_registry").replicas.remote())
        live = [s for s in states.values() if s.get("ready")]
        if live or time.time() > deadline:
            break
        time.sleep(0.2)
    assert len(live) == 1, states
    return live[0]


def loads_of(s: dict, model: str) -> list[dict]:
    return [e for e in s["loads"] if e["model_id"] == model]


def test_1_a_budget_for_three_evicts_the_lru_for_the_fourth_and_refuses_a_model_too_big(app):
    import ray

    start = state(app, settle_s=0)
    assert start["ready"] and list(start["models"]) == ["pin/1"] and start["models"]["pin/1"]["pinned"]
    assert len(ray.get(app.actor("serve_app_registry").ready_replicas.remote())) == 1
    assert start["memory"]["budget_bytes"] == BUDGET and start["memory"]["device"] == "host"
    for m in HEAVY[:3]:
        ok(app, m)
    ok(app, HEAVY[0])  # LRU order now: b, c, a
    s = state(app)
    assert set(s["models"]) == {"pin/1", *HEAVY[:3]} and s["evictions"] == [], (s["loads"], s["memory"])
    sizes = {m: s["models"][m]["memory_bytes"] for m in HEAVY[:3]}
    assert all(24 * MiB < b < 40 * MiB for b in sizes.values()), sizes  # measured: about twice the 16 MiB file
    ok(app, HEAVY[3])
    s = state(app)
    assert s["evictions"] == [HEAVY[1]], s["evictions"]
    assert set(s["models"]) == {"pin/1", HEAVY[0], HEAVY[2], HEAVY[3]}
    assert s["memory"]["used_bytes"] <= BUDGET
    # 64 MiB of weights, about 128 MiB loaded: more than the whole budget. Refused, nothing evicted, no download
    for _ in range(2):
        r = infer(app, "big/1")
        assert r.status_code == 507, r.text
        assert r.json()["error"] == "insufficient_memory" and "budget of 120.0 MiB" in r.json()["message"]
    s = state(app)
    assert s["evictions"] == [HEAVY[1]] and set(s["models"]) == {"pin/1", HEAVY[0], HEAVY[2], HEAVY[3]}
    assert loads_of(s, "big/1") == []
    # GET /model/registry shows where each model is, its memory and last use
    view = app.get("/model/registry").json()
    where = {m["model_id"]: m["loaded_on"] for m in view["models"]}
    (entry,) = where[HEAVY[3]]
    assert entry["memory_bytes"] == s["models"][HEAVY[3]]["memory_bytes"] and entry["last_used"] > time.time() - 60
    assert entry["replica"] and where["pin/1"][0]["pinned"] is True
    assert entry["providers"] == ["CPUExecutionProvider"]  # what really ran (CUDA on a GPU: tests/test_gpu.py)


def test_2_loads_of_different_models_overlap_and_six_requests_for_one_new_model_load_it_once(app, slow_origin):
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ok, app, m) for m in ["slow-a/1", "slow-b/1", *["six/1"] * 6]]
        replicas = {f.result() for f in futures}
    took = time.monotonic() - started
    assert len(replicas) == 1
    s = state(app)
    (a,), (b,), (six,) = (loads_of(s, m) for m in ("slow-a/1", "slow-b/1", "six/1"))
    # each load waits SLOW_DELAY_S on the origin; side by side they overlap, one after another they would not
    assert max(a["started"], b["started"]) < min(a["finished"], b["finished"]), (a, b)
    assert took < 2.6 * SLOW_DELAY_S, took
    assert slow_origin.counts["/six.onnx"] == 1 and six["tier"] == "origin"


def test_3_corrupt_weights_fail_once_then_answer_from_the_remembered_failure_until_the_backoff_ends(app, origin):
    r = infer(app, "broken/1")
    failed_at = time.monotonic()
    assert r.status_code == 503 and r.json()["error"] == "artifact_corrupt", r.text
    assert origin.counts["/broken.onnx"] == 2  # one load: a fetch and the artifact cache's one re-fetch
    with ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(lambda _: infer(app, "broken/1"), range(16)))
    assert time.monotonic() - failed_at < BACKOFF_S - 0.3  # the burst ran inside the backoff
    for r in burst:
        assert r.status_code == 503 and r.json()["error"] == "artifact_corrupt", r.text
        wait = float(re.search(r"not retried for another ([\d.]+) s", r.json()["message"]).group(1))
        assert 0 < wait <= BACKOFF_S and "Retry-After" in r.headers
    assert origin.counts["/broken.onnx"] == 2
    time.sleep(max(0.0, failed_at + BACKOFF_S + 0.2 - time.monotonic()))
    r = infer(app, "broken/1")  # the backoff ran out: one more load, which fails again
    assert r.status_code == 503 and "not retried" not in r.json()["message"]
    assert origin.counts["/broken.onnx"] == 4
    r = infer(app, "broken/1")  # and now it is remembered for twice as long
    wait = float(re.search(r"not retried for another ([\d.]+) s", r.json()["message"]).group(1))
    assert BACKOFF_S < wait <= 2 * BACKOFF_S
    assert origin.counts["/broken.onnx"] == 4
    failures = state(app)["failures"]
    assert failures["broken/1"]["attempts"] == 2


def test_4_a_pinned_model_survives_a_workload_of_twenty_others(app):
    loads_before = len(loads_of(state(app, settle_s=0), "pin/1"))
    for m in TOUCHED:
        ok(app, m)
    ok(app, "pin/1", BLUE)
    s = state(app)
    assert "pin/1" in s["models"] and "pin/1" not in s["evictions"]
    assert len(s["models"]) == 8 and len(s["evictions"]) >= 12 + 1
    assert len(loads_of(s, "pin/1")) == loads_before == 1  # loaded once, at start-up, before any request
    assert s["loads"][0]["model_id"] == "pin/1"


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    series = []
    for line in requests.get(url, timeout=10).text.splitlines():
        m = re.match(r"^(ray_serve_app_\w+)\{(.*)\} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            series.append((m.group(1), labels, float(m.group(3))))
    return series


def total(series, name: str, **labels: str) -> float:
    return sum(v for n, ls, v in series if n == name and all(ls.get(k) == want for k, want in labels.items()))


def test_5_metrics_show_requests_latency_loads_evictions_hits_and_memory(app, ray_metrics_url):
    replica = ok(app, "pin/1")
    label = {"replica": replica}

    def check(series) -> None:
        p = "ray_serve_app_"
        assert total(series, p + "model_loads_total", model=HEAVY[1], tier="origin", outcome="ok", **label) == 1
        assert total(series, p + "model_loads_total", model="big/1", outcome="refused", **label) == 1
        assert total(series, p + "model_loads_total", model="broken/1", outcome="failed", **label) == 2
        assert total(series, p + "model_load_latency_ms_count", tier="origin", **label) >= 4 + 1 + 3
        assert total(series, p + "model_evictions_total", model=HEAVY[1], reason="memory", **label) == 1
        assert total(series, p + "evicted_model_age_s_count", age="idle", **label) == \
            total(series, p + "model_evictions_total", **label) >= 13
        # pin/1: loaded at start-up, then hit by each of its requests (tests 4 and 5)
        assert total(series, p + "model_cache_lookups_total", model="pin/1", result="hit", **label) == 2
        assert total(series, p + "model_cache_lookups_total", model="pin/1", result="miss", **label) == 1
        assert total(series, p + "model_requests_total", model="pin/1", outcome="ok", **label) == 2
        for stage in ("queue", "decode", "preprocess", "inference", "postprocess", "total"):
            assert total(series, p + "model_request_latency_ms_count", model="pin/1", stage=stage, **label) == 2, stage
        assert total(series, p + "model_request_latency_ms_count", model="pin/1", stage="load_wait", **label) == 0
        assert total(series, p + "model_cache_lookups_total", model="six/1", result="joined", **label) == 5
        assert total(series, p + "model_cache_lookups_total", model="broken/1", result="failed", **label) == 17
        # bounded labels: 16 model labels (pin, heavy x4, big, slow x2, six, broken, t00-t05), the rest "other"
        models = {ls["model"] for n, ls, v in series if n == p + "model_requests_total" and ls.get("replica") == replica}
        assert len(models - {"other"}) == 16 and "other" in models
        assert total(series, p + "model_cache_lookups_total", model="other", result="miss", **label) == 14
        ratio = total(series, p + "model_cache_hit_ratio", **label)
        assert 0 < ratio < 1
        assert total(series, p + "replica_memory_budget_bytes", device="host", **label) == BUDGET
        used = total(series, p + "replica_memory_used_bytes", device="host", **label)
        assert 0 < used <= BUDGET
        assert total(series, p + "model_memory_bytes", **label) == used
        assert total(series, p + "replica_models", **label) == 8

    # what the earlier tests did, once Ray has exported all of it: its export lags the replica by a
    # report or two, and CI has scraped counters before gauges and one counter before another, so
    # every check is asked again of a fresh scrape until all hold (or 30 s have passed)
    deadline = time.time() + 30
    while True:
        try:
            check(scrape(ray_metrics_url))
            return
        except AssertionError:
            if time.time() > deadline:
                raise
            time.sleep(1)