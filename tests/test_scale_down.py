"""Scale-down on a real Serve deployment: the replica Serve stops hands the models it alone held
to the replica that stays, before it goes, and its requests in flight finish.

Two replicas, two models each used once (the router puts a model nobody holds on the replica
holding fewest, so they land one per replica); then the deployment is updated to one replica.
Serve picks which one stops (it does not ask us); whichever it is, the replica left must hold
both models when the stop is over, without another request having asked for them, and the
registry's view must list one replica.
"""
from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.fixture_models import RED, colour_classifier, solid_jpeg, write_repository

pytestmark = pytest.mark.ray
MODELS = ["keep-a/1", "keep-b/1"]
EVERYWHERE = "everywhere/1"  # preloaded on every replica: the traffic during the scale-down asks for it only


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("down")
    models = [*MODELS, EVERYWHERE]
    repo = write_repository(tmp / "repo", {m: colour_classifier(variant=40 + i) for i, m in enumerate(models)})
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(repo)], "prewarm_models": 0, "preload": [EVERYWHERE]},
                          replicas=2, model_server_cpus=0.4)
    deployed.repo, deployed.tmp = repo, tmp
    yield deployed
    teardown_app(deployed)


def view(app: DeployedApp) -> dict:
    r = app.get("/model/registry")
    assert r.status_code == 200, r.text
    return r.json()


def holders(app: DeployedApp) -> dict[str, list[str]]:
    return {r["replica"]: [m for m in r["models"] if m != EVERYWHERE] for r in view(app)["replicas"]}


def test_the_stopped_replicas_models_move_to_the_one_left(app, ray_serve):
    from serve_app.app import build_application

    for model in MODELS:
        r = app.post("/infer", data=solid_jpeg(RED), headers={"serve_multiplexed_model_id": model})
        assert r.status_code == 200 and r.json()["top"] == "red", r.text
        time.sleep(2.5)  # the router learns what each replica holds (and its room) within a second or two
    deadline = time.time() + 15
    while len(holders(app)) < 2 or sum(len(m) for m in holders(app).values()) < 2:
        assert time.time() < deadline, holders(app)
        time.sleep(0.5)
    before = holders(app)
    assert sorted(m for models in before.values() for m in models) == sorted(MODELS), before
    # one model per replica: whichever replica Serve stops, it alone held a model used just now
    assert all(len(models) == 1 for models in before.values()), before

    # a client keeps sending during the scale-down: nothing may fail
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            statuses.append(requests.post(app.url + "/infer", data=solid_jpeg(RED), timeout=60,
                                          headers={"serve_multiplexed_model_id": EVERYWHERE}).status_code)

    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    from ray import serve

    serve.run(build_application(app.args, model_server_options={
        "num_replicas": 1, "health_check_period_s": 1, "ray_actor_options": {"num_cpus": 0.4, "runtime_env": {}}},
        gateway_options={"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {}}}), name="vision", route_prefix="/", blocking=False)
    deadline = time.time() + 90
    while True:
        after = holders(app)
        if len(after) == 1:
            break
        assert time.time() < deadline, after
        time.sleep(0.5)
    stop.set()
    sender.join(60)
    (left,) = after.values()
    assert sorted(left) == sorted(MODELS), (before, after)  # handed off: no request asked for them since
    assert statuses and set(statuses) == {200}, statuses
