"""Autoscaling on a two-node cluster: added replicas take their share of a hot model, and a
scale-down fails no request (issue 11, items 1, 2 and 7).

Two ``ray start`` nodes (tests/cluster.py), the app from serve_config.yaml with its autoscaling
ModelServer (delays shortened so the test takes about two minutes): one client sends
``shapes-det/1`` the whole time; eight more join for the step. Shares are counted from the
``X-Replica`` header of every answer; which replicas are live comes from ``/model/registry``.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import cv2
import numpy as np
import pytest
import requests

from tests.cluster import ROOT, ServeRun
from tests.servers import free_port
from zoo.shapes import draw_scene

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

HOT = "shapes-det/1"
MAX_REPLICAS = 3
TARGET = 2  # autoscaling target_ongoing_requests = spread_at_ongoing
SHARE_AFTER_READY_S = 15.0
SHARE_WINDOW_S = 12.0
# 3 -> 2 -> 1 takes two downscale delays and two graceful drains; a busy 2-core CI box once took
# longer than 120 s over it (it passed alone in 117 s), so the wait has room, the assertions are unchanged
SCALE_DOWN_S = 240


@pytest.fixture(scope="module")
def app(cluster):
    port = free_port()
    config = ServeRun.config_from(
        ROOT / "serve_config.yaml", cluster.root, port,
        args={"spread_at_ongoing": TARGET, "prewarm_models": 1, "request_timeout_s": 60},
        deployments={
            "Gateway": {"num_replicas": 2, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.2}},
            "ModelServer": {"max_ongoing_requests": 8, "graceful_shutdown_timeout_s": 20,
                            "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1,
                                                   "max_replicas": MAX_REPLICAS, "target_ongoing_requests": TARGET,
                                                   "upscale_delay_s": 2, "downscale_delay_s": 8,
                                                   "metrics_interval_s": 1, "look_back_period_s": 2},
                            "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0}},
        })
    with ServeRun(cluster, config, port).running() as run:
        yield run


def live_replicas(app: ServeRun) -> list[dict]:
    try:
        return [r for r in requests.get(app.url + "/model/registry", timeout=10).json()["replicas"] if r["ready"]]
    except (requests.RequestException, ValueError, KeyError):
        return []


def test_added_replicas_serve_the_hot_model_and_scale_down_fails_nothing(cluster, app):
    body = cv2.imencode(".jpg", draw_scene(np.random.default_rng(5), size=(640, 480), max_shapes=4).image)[1].tobytes()
    assert requests.post(app.url + "/infer", data=body, headers={"serve_multiplexed_model_id": HOT},
                         timeout=120).status_code == 200
    results: list[tuple[float, float, str, str]] = []  # (sent, answered, status, replica), s from t0
    lock = threading.Lock()
    step_over = threading.Event()
    all_over = threading.Event()
    t0 = time.time()

    def client(stop: threading.Event) -> None:
        session = requests.Session()
        while not stop.is_set():
            sent = time.time() - t0
            try:
                r = session.post(app.url + "/infer", data=body, headers={"serve_multiplexed_model_id": HOT},
                                 timeout=60)
                outcome, replica = str(r.status_code), r.headers.get("X-Replica", "")
            except requests.RequestException as exc:
                outcome, replica = f"error:{type(exc).__name__}", ""
                session = requests.Session()
            with lock:
                results.append((sent, time.time() - t0, outcome, replica))

    background = threading.Thread(target=client, args=(all_over,), daemon=True)
    step = [threading.Thread(target=client, args=(step_over,), daemon=True) for _ in range(8)]
    background.start()
    for t in step:
        t.start()
    # the step: wait for the autoscaler to add replicas, then watch their shares
    ready_at: dict[str, float] = {}
    deadline = time.time() + 150
    while time.time() < deadline:
        for r in live_replicas(app):
            ready_at.setdefault(r["replica"], time.time() - t0)
        last = max(ready_at.values())
        if len(ready_at) >= MAX_REPLICAS and time.time() - t0 > last + SHARE_AFTER_READY_S + SHARE_WINDOW_S:
            break
        time.sleep(1)
    step_over.set()
    for t in step:
        t.join(90)
    step_end = time.time() - t0
    assert len(ready_at) >= 2, f"the autoscaler added no replica under 9 clients: {ready_at}"
    k = len(ready_at)
    window = (max(ready_at.values()) + SHARE_AFTER_READY_S, step_end)
    answered = [rep for s, a, o, rep in results if window[0] <= a <= window[1] and o == "200"]
    shares = {rid[:8]: round(Counter(answered)[rid] / max(1, len(answered)), 3) for rid in ready_at}
    summary = (f"replicas ready at {ready_at} (s); window {window}; {len(answered)} answers in it; shares {shares}; "
               f"statuses so far {dict(Counter(o for *_, o, _ in results))}")
    print("\n" + summary)
    assert len(answered) >= 20, summary
    # every replica takes a real share (the bug this guards against gave the added ones 0%); a busy
    # 2-core CI box has measured 0.23-0.38 with three replicas
    assert all(share >= 1 / k - 0.15 for share in shares.values()), summary

    # the scale-down: the background client goes on until one replica is left (and a little more)
    down_started = time.time() - t0
    deadline = time.time() + SCALE_DOWN_S
    while time.time() < deadline and len(live_replicas(app)) > 1:
        time.sleep(1)
    left = live_replicas(app)
    time.sleep(3)
    all_over.set()
    background.join(90)
    during = Counter(o for s, a, o, _ in results if a >= down_started)
    summary += f"; scale-down from {down_started:.0f} s: {dict(during)}, left {[r['replica'][:8] for r in left]}"
    print(summary)
    assert len(left) == 1, f"the autoscaler did not scale down to one replica in {SCALE_DOWN_S} s: " + summary
    assert set(during) == {"200"}, "a request failed during the scale-down: " + summary
    assert left[0]["models"] and HOT in left[0]["models"], "the replica left does not hold the hot model: " + summary
