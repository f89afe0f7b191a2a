"""direct_ingress: ModelServer as the HTTP ingress answers the header route itself (no Gateway)."""
from __future__ import annotations

import pytest

from tests.conftest import deploy_app, teardown_app
from tests.fixture_models import BLUE, RED, colour_classifier, solid_jpeg, write_repository

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("direct")
    repo = write_repository(tmp / "repo", {"colour/1": colour_classifier()})
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(repo)], "direct_ingress": True,
                                           "aliases": {"colour": "colour/1"}}, ready_path=None)
    yield deployed
    teardown_app(deployed)


def test_header_route_straight_to_the_model_server(app):
    for colour, name in ((RED, "red"), (BLUE, "blue")):
        r = app.post("/", data=solid_jpeg(colour), headers={"serve_multiplexed_model_id": "colour"})
        assert r.status_code == 200, r.text
        assert r.json()["top"] == name and r.headers["X-Model-Id"] == "colour/1"


def test_errors_keep_their_status(app):
    r = app.post("/", data=solid_jpeg(RED), headers={"serve_multiplexed_model_id": "nope/1"})
    assert r.status_code == 404 and r.json()["error"] == "model_not_found"
    r = app.post("/", data=b"not an image", headers={"serve_multiplexed_model_id": "colour/1"})
    assert r.status_code == 400
    r = app.post("/", data=solid_jpeg(RED))
    assert r.status_code == 422


def test_behind_haproxy_a_direct_ingress_keeps_serves_own_router(monkeypatch):
    # Ray 2.60 refuses to deploy an ingress with a custom router behind HAProxy (the app never
    # started: benchmarks/results/gpu/explore/gpu_h200_direct_not_started.json)
    from serve_app.app import build_application

    def router_of(app) -> str:
        return str(app._bound_deployment._deployment_config.request_router_config.request_router_class)

    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    assert "ModelAwareRouter" not in router_of(build_application({"direct_ingress": True}))
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY")
    assert "ModelAwareRouter" in router_of(build_application({"direct_ingress": True}))
