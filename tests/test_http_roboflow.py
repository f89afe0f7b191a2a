"""The Roboflow-compatible HTTP API on a real Ray Serve app (API key off): /infer/*, legacy, registry.

Routes are exercised with the tiny colour classifier (``colour/1``) and ``ocr/1``; the shapes
models are used where their folders exist and skipped otherwise.
"""
from __future__ import annotations

import base64
import time

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, DeployedApp, deploy_app, teardown_app
from tests.fixture_models import BLUE, GREEN, RED, colour_classifier, solid_jpeg, write_repository
from tests.servers import OriginServer

pytestmark = pytest.mark.ray
MODELS = ROOT / "configs" / "models"


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("roboflow")
    repo = write_repository(tmp / "repo", {"colour/1": colour_classifier()})
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(MODELS), str(repo)],
                                           "aliases": {"shapes": "shapes-det/1", "colour": "colour/1"}})
    deployed.available = {m["model_id"] for m in deployed.get("/model/registry").json()["available"]}
    yield deployed
    teardown_app(deployed)


@pytest.fixture(scope="module")
def origin():
    server = OriginServer({"/red.png": solid_jpeg(RED), "/green.png": solid_jpeg(GREEN)})
    yield server
    server.stop()


def b64(data: bytes) -> dict:
    return {"type": "base64", "value": base64.b64encode(data).decode()}


def needs(app: DeployedApp, model_id: str) -> None:
    if model_id not in app.available:
        pytest.fail(f"{model_id} is not in configs/models: the project ships it")


def shapes_scene(seed: int = 3):
    from zoo.shapes import draw_scene

    return draw_scene(np.random.default_rng(seed), size=(480, 360), max_shapes=4, min_extent=60)


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def decode_b64_jpeg(value: str) -> np.ndarray:
    data = base64.b64decode(value)
    assert data[:3] == b"\xff\xd8\xff"
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


# -- /infer/{task} -----------------------------------------------------------------------------------
def test_classification_single_and_batched(app):
    r = app.post("/infer/classification", json={"model_id": "colour/1", "image": b64(solid_jpeg(RED)), "id": "req-7",
                                                 "unknown_field": {"ignored": True}, "disable_active_learning": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["top"] == "red" and body["inference_id"] == "req-7" and body["time"] > 0
    assert body["image"] == {"width": 64, "height": 48} and "visualization" not in body
    images = [b64(solid_jpeg(c)) for c in (RED, GREEN, BLUE)]
    r = app.post("/infer/classification", json={"model_id": "colour", "image": images})
    assert r.status_code == 200, r.text
    assert [b["top"] for b in r.json()] == ["red", "green", "blue"]
    assert len({b["inference_id"] for b in r.json()}) == 3


def test_ocr_route_and_task_mismatch(app):
    image = np.full((120, 520, 3), 255, np.uint8)
    cv2.putText(image, "ROUTE 66", (20, 80), cv2.FONT_HERSHEY_DUPLEX, 2.0, (0, 0, 0), 4, cv2.LINE_AA)
    r = app.post("/infer/ocr", json={"model_id": "ocr/1", "image": b64(jpeg(image))})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == "ROUTE 66"
    r = app.post("/infer/object_detection", json={"model_id": "colour/1", "image": b64(solid_jpeg(RED))})
    assert r.status_code == 422
    message = r.json()["message"]
    assert "classification" in message and "object-detection" in message and "/infer/classification" in message


def test_unknown_routes_and_methods_are_json_errors(app):
    r = app.post("/infer/segmentation", json={"model_id": "colour/1", "image": b64(solid_jpeg(RED))})
    assert r.status_code == 404 and "/infer/instance_segmentation" in r.json()["message"]
    for path, status in (("/model/registry", 405), ("/healthz/x", 404), ("/info/x", 404), ("/readiness/x", 404)):
        r = app.post(path, data=solid_jpeg(RED))
        assert r.status_code == status, (path, r.text)
        assert r.json()["status"] == status
        if status == 405:  # the legacy route's 405 names the methods, as Starlette's own do
            assert r.headers["allow"] == "GET", r.headers
    assert app.get("/colour/1").status_code == 405
    assert app.get("/a/b/c").status_code == 404


@pytest.mark.parametrize("field,value,status", [
    ("confidence", "abc", 422), ("confidence", 7, 422), ("iou_threshold", -1, 422),
    ("class_agnostic_nms", "maybe", 422),
    ("class_filter", "red", 422), ("max_detections", 0, 422), ("max_candidates", 1.5, 422),
    ("keypoint_confidence", 2, 422), ("disable_preproc_auto_orient", "x", 422), ("response_mask_format", "bitmap", 422),
    ("visualize_predictions", "x", 422), ("visualization_stroke_width", 0, 422), ("id", 5, 422), ("model_id", 5, 422),
    ("image", 5, 422), ("image", [], 422),
])
def test_field_validation_names_the_field(app, field, value, status):
    body = {"model_id": "colour/1", "image": b64(solid_jpeg(RED)), field: value}
    r = app.post("/infer/classification", json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["message"]


@pytest.mark.parametrize("image,fragment", [
    ({"type": "numpy", "value": "gASVAAAA"}, "pickle"),
    ({"type": "pil", "value": "gASVAAAA"}, "pickle"),
    ({"type": "file", "value": "/etc/passwd"}, "path on the server"),
    ({"type": "base64", "value": "!!!"}, "base64"),
])
def test_unsupported_images_are_refused(app, image, fragment):
    r = app.post("/infer/classification", json={"model_id": "colour/1", "image": [b64(solid_jpeg(RED)), image]})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["message"]


def test_visualize_predictions_returns_a_jpeg_per_image(app):
    r = app.post("/infer/classification", json={"model_id": "colour/1", "image": [b64(solid_jpeg(GREEN))] * 2,
                                                 "visualize_predictions": True})
    assert r.status_code == 200, r.text
    for body in r.json():
        assert decode_b64_jpeg(body["visualization"]).shape == (48, 64, 3) and body["top"] == "green"


# -- the legacy route ----------------------------------------------------------------------------------
def test_legacy_route_takes_base64_raw_multipart_and_url(app, origin):
    data = solid_jpeg(RED)
    answers = [
        app.post("/colour/1", data=base64.b64encode(data),
                 headers={"content-type": "application/x-www-form-urlencoded"}),
        app.post("/colour/1?confidence=40&overlap=30", data=data, headers={"content-type": "image/png"}),
        app.post("/colour/1", files={"file": ("red.png", data, "image/png")}),
        app.post("/colour/1", params={"image": origin.url("/red.png")}),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["top"] == "red" and r.json()["image"] == {"width": 64, "height": 48}
    r = app.post("/colour/1", params={"image": origin.url("/green.png"), "format": "image_and_json"})
    assert r.status_code == 200 and r.json()["top"] == "green"
    assert decode_b64_jpeg(r.json()["visualization"]).shape == (48, 64, 3)
    assert origin.counts["/green.png"] == 1  # fetched once, by the gateway, and sent on as bytes


def test_legacy_format_image_is_a_jpeg(app):
    r = app.post("/colour/1?format=image&labels=true&stroke=3", data=solid_jpeg(BLUE))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)


@pytest.mark.parametrize("query,field", [
    ("confidence=150", "confidence"), ("overlap=abc", "overlap"), ("format=png", "format"), ("stroke=0", "stroke"),
    ("labels=maybe", "labels"), ("max_detections=-1", "max_detections"),
])
def test_legacy_query_validation(app, query, field):
    r = app.post(f"/colour/1?{query}", data=solid_jpeg(RED))
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_legacy_route_errors(app):
    assert app.post("/colour/1").json()["error"] == "schema_error"  # no image at all
    assert app.post("/nothere/1", data=solid_jpeg(RED)).status_code == 404
    r = app.post("/colour/1", data=b"\x89PNG\r\n\x1a\n not a png", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "image" in r.json()["message"].lower()


# -- the same image on every route --------------------------------------------------------------------
def _same_predictions(a: dict, b: dict) -> None:
    key = lambda p: (p["class"], round(p["x"]), round(p["y"]))  # noqa: E731
    pa, pb = sorted(a["predictions"], key=key), sorted(b["predictions"], key=key)
    assert [p["class"] for p in pa] == [p["class"] for p in pb]
    for p, q in zip(pa, pb):
        for k in ("x", "y", "width", "height", "confidence"):
            assert p[k] == pytest.approx(q[k], abs=1e-4), (k, p, q)


@pytest.mark.parametrize("model_id", ["colour/1", "shapes-det/1", "shapes-seg/1", "shapes-pose/1"])
def test_legacy_infer_and_header_routes_agree(app, model_id):
    needs(app, model_id)
    route = {"colour/1": "classification", "shapes-det/1": "object_detection", "shapes-seg/1": "instance_segmentation",
             "shapes-pose/1": "keypoints_detection"}[model_id]
    data = solid_jpeg(RED) if model_id == "colour/1" else jpeg(shapes_scene().image)
    dataset, version = model_id.split("/")
    answers = [
        app.post(f"/{dataset}/{version}?confidence=25&overlap=45", data=base64.b64encode(data)),
        app.post(f"/infer/{route}", json={"model_id": model_id, "image": b64(data), "confidence": 0.25,
                                          "iou_threshold": 0.45}),
        app.post("/infer?confidence=0.25&iou_threshold=0.45", data=data,
                 headers={"serve_multiplexed_model_id": model_id}),
        app.post("/infer", json={"image": b64(data), "confidence": 0.25, "iou_threshold": 0.45},
                 headers={"serve_multiplexed_model_id": model_id}),
    ]
    bodies = [r.json() for r in answers]
    assert all(r.status_code == 200 for r in answers), [r.text[:200] for r in answers]
    if model_id == "colour/1":
        assert len({(b["top"], round(b["confidence"], 6)) for b in bodies}) == 1
        return
    assert bodies[0]["predictions"], "the model found nothing in the scene"
    for other in bodies[1:]:
        _same_predictions(bodies[0], other)


def test_detection_visualization_draws_boxes_in_class_colours(app):
    needs(app, "shapes-det/1")
    scene = shapes_scene()
    r = app.post("/infer/object_detection", json={"model_id": "shapes", "image": b64(jpeg(scene.image)),
                                                   "visualize_predictions": True, "visualization_labels": False,
                                                   "visualization_stroke_width": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    drawn = decode_b64_jpeg(body["visualization"]).astype(int)
    colours = {"circle": (0x38, 0x38, 0xFF), "square": (0xA8, 0x99, 0x2C), "triangle": (0x1D, 0xB2, 0xFF)}  # BGR
    boxes = [(p["class"], round(p["x"] - p["width"] / 2), round(p["y"] - p["height"] / 2),
              round(p["x"] + p["width"] / 2), round(p["y"] + p["height"] / 2)) for p in body["predictions"]]
    apart = [b for b in boxes if not any(o is not b and o[1] < b[3] and b[1] < o[3] and o[2] < b[4] and b[2] < o[4]
                                         for o in boxes)]
    assert apart, "no prediction stands apart from the others"
    for name, x0, y0, x1, y1 in apart:  # the left and right edges, away from the corners, are in the class colour
        edges = np.concatenate([drawn[y0 + 8:y1 - 8, x0], drawn[y0 + 8:y1 - 8, x1]])
        close = np.abs(edges - colours[name]).sum(axis=1) < 60
        assert close.mean() > 0.8, name


# -- registry and information ----------------------------------------------------------------------
def test_registry_add_and_info_in_sdk_shapes(app):
    r = app.post("/model/add", json={"model_id": "colour", "api_key": None})
    assert r.status_code == 200, r.text
    models = {m["model_id"]: m for m in r.json()["models"]}
    assert models["colour/1"]["task_type"] == "classification" and models["colour/1"]["input_height"] == 32
    assert models["colour"]["alias_of"] == "colour/1"
    assert "ocr/1" in {m["model_id"] for m in app.get("/model/registry?api_key=None").json()["available"]}
    info = app.get("/info").json()
    assert set(info) == {"name", "version", "uuid"} and info["name"] == "serve_app"
    r = app.post("/model/clear")
    assert r.status_code == 200, r.text
    deadline = time.time() + 10  # replicas report their change without waiting; let it land
    while app.get("/model/registry").json()["models"] and time.time() < deadline:
        time.sleep(0.3)
    assert app.get("/model/registry").json()["models"] == []
    r = app.post("/infer/classification", json={"model_id": "colour/1", "image": {"type": "base64",
                 "value": base64.b64encode(solid_jpeg(RED)).decode()}})
    assert r.status_code == 200 and r.json()["top"] == "red"  # loads again on demand

