"""The HTTP API on a real Ray Serve app: the header route, health, bad input, the server stays up."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import DeployedApp, deploy_app, teardown_app

pytestmark = pytest.mark.ray
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    deployed = deploy_app(ray_serve, tmp_path_factory.mktemp("api"))
    yield deployed
    teardown_app(deployed)


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def _text_image(text: str) -> np.ndarray:
    image = np.full((120, 520, 3), 255, np.uint8)
    cv2.putText(image, text, (20, 80), cv2.FONT_HERSHEY_DUPLEX, 2.0, (0, 0, 0), 4, cv2.LINE_AA)
    return image


def assert_healthy(app: DeployedApp) -> None:
    assert app.get("/healthz").json() == {"status": "ok"}


def test_health_and_readiness(app):
    assert_healthy(app)
    assert app.get("/readiness").json() == {"status": "ready"}


def test_header_route_reads_text_from_raw_jpeg(app):
    r = app.post("/infer", data=_jpeg(_text_image("HELLO 2026")),
                 headers={"serve_multiplexed_model_id": "ocr/1", "content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == "HELLO 2026"
    assert body["image"] == {"width": 520, "height": 120}
    assert r.headers["X-Model-Id"] == "ocr/1" and body["inference_id"]


def test_header_route_with_json_body(app):
    b64 = base64.b64encode(_jpeg(_text_image("RAY 42"))).decode()
    r = app.post("/infer", json={"image": {"type": "base64", "value": b64}},
                 headers={"serve_multiplexed_model_id": "ocr/1"})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == "RAY 42"


@pytest.mark.parametrize("model_id,status,code", [
    ("no-such-model/1", 404, "model_not_found"),
    ("../x", 400, "invalid_model_id"),
    ("a" * 200, 400, "invalid_model_id"),
    ("bad id with spaces", 400, "invalid_model_id"),
])
def test_bad_model_ids(app, model_id, status, code):
    r = app.post("/infer", data=_jpeg(_text_image("X")), headers={"serve_multiplexed_model_id": model_id})
    assert r.status_code == status, r.text
    assert r.json()["error"] == code
    assert_healthy(app)


def test_missing_model_id_is_422(app):
    r = app.post("/infer", data=_jpeg(_text_image("X")))
    assert r.status_code == 422 and "serve_multiplexed_model_id" in r.json()["message"]


@pytest.mark.parametrize("body,content_type,status,fragment", [
    (b"\x89PNG\r\n\x1a\n garbage that is not a png", "image/png", 400, "image"),
    (b"\xff\xd8\xff\xe0" + bytes(100), "image/jpeg", 400, "image"),
    (b"", "image/jpeg", 422, "empty"),
    (b"{not json", "application/json", 422, "JSON"),
    (json.dumps({"image": {"type": "numpy", "value": "gASV"}}).encode(), "application/json", 400, "pickle"),
    (json.dumps({"image": {"type": "base64", "value": "!!!not base64!!!"}}).encode(), "application/json", 400, "base64"),
    (json.dumps({"confidence": 0.5}).encode(), "application/json", 422, "image"),
    (json.dumps({"image": {"type": "base64", "value": "aGVsbG8="}, "confidence": 7}).encode(), "application/json", 422,
     "confidence"),
])
def test_bad_images_and_bodies(app, body, content_type, status, fragment):
    r = app.post("/infer", data=body, headers={"serve_multiplexed_model_id": "ocr/1", "content-type": content_type})
    assert r.status_code == status, r.text
    assert fragment.lower() in r.json()["message"].lower()
    assert_healthy(app)


def test_registry_lists_models_and_aliases(app):
    view = app.get("/model/registry").json()
    ids = {m["model_id"] for m in view["available"]}
    assert "ocr/1" in ids
    assert view["aliases"]["shapes"] == "shapes-det/1"


def _timings(response) -> dict[str, float]:
    """Server-Timing's entries, in ms."""
    parts = (p.strip().partition(";dur=") for p in response.headers.get("Server-Timing", "").split(","))
    return {name: float(dur) for name, _, dur in parts if dur}


def _replica_entry(app: DeployedApp, model_id: str) -> dict:
    deadline = time.time() + 15  # replicas report their loads without waiting; let the report land
    while time.time() < deadline:
        models = {m["model_id"]: m for m in app.get("/model/registry").json()["models"]}
        if models.get(model_id, {}).get("loaded_on"):
            return models[model_id]["loaded_on"][0]
        time.sleep(0.3)
    raise AssertionError(f"{model_id} is not reported loaded")


def _cleared(app: DeployedApp) -> None:
    assert app.post("/model/clear").status_code == 200
    deadline = time.time() + 15
    while app.get("/model/registry").json()["models"] and time.time() < deadline:
        time.sleep(0.3)


def test_a_first_request_shows_its_load_and_a_reload_starts_from_the_kept_graph(app):
    """The request that waited for a load says where the load's time went (Server-Timing's
    ``load_*`` entries); once the model is unloaded, its next load builds from the optimised graph
    the earlier one kept (``<cache_dir>/graphs``) and gives the same answer."""
    image = (Path(__file__).resolve().parents[1] / "serve_app/http/static/sample-shapes.jpg").read_bytes()
    headers = {"serve_multiplexed_model_id": "shapes-det/1", "content-type": "image/jpeg"}
    answers, timings, entries = [], [], []
    for _ in range(2):
        _cleared(app)
        r = app.post("/infer", data=image, headers=headers)
        assert r.status_code == 200, r.text
        answers.append([{k: v for k, v in p.items() if k != "detection_id"} for p in r.json()["predictions"]])
        timings.append(_timings(r))
        entries.append(_replica_entry(app, "shapes-det/1"))  # (a clear reaches the loads reported)
    entry = entries[-1]
    assert entries[0]["loaded_at"] < entry["loaded_at"]
    assert entry["graph_cache_hit"] is True
    assert entry["candidate_filter"] is False  # a CPU replica's models choose their candidates on the host
    assert answers[0] == answers[1] and {p["class"] for p in answers[0]} == {"circle", "square", "triangle"}
    phases = ("load_fetch", "load_room", "load_lock", "load_graph", "load_session", "load_warmup", "load_measure")
    for t in timings:
        assert set(phases) <= set(t) and all(t[p] >= 0 for p in phases)
        assert sum(t[p] for p in phases) <= t["load_wait"] + 1.0  # phases of the load the request waited for
    assert set(entry["load_phases"]) == {p[len("load_"):] for p in phases}
    graphs = Path(app.args["cache_dir"]) / "graphs"
    assert [p.suffix for p in graphs.iterdir()] == [".onnx"]
    # a later request of the loaded model waited for nothing
    r = app.post("/infer", data=image, headers=headers)
    assert r.status_code == 200 and not any(k.startswith("load_") for k in _timings(r))
