"""Roboflow's own clients against the server, with the API key on: inference-sdk (v1 and v0) and supervision.

Predictions of the built-in shapes models are checked against the exact ground truth of
``zoo.shapes``; a shapes model whose folder is not in configs/models yet is skipped.
"""
from __future__ import annotations

import base64
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from tests.conftest import ROOT, DeployedApp, deploy_app, teardown_app
from tests.fixture_models import BLUE, GREEN, RED, colour_classifier, solid_jpeg, write_repository

import supervision as sv  # noqa: E402  (requirements-clients.txt; inference_sdk is imported where used)

pytestmark = pytest.mark.ray
MODELS = ROOT / "configs" / "models"
KEY = "test-key-7f3a9c"
WRONG = "wrong-key-d41d8c"


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("clients")
    repo = write_repository(tmp / "repo", {"colour/1": colour_classifier()})
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(MODELS), str(repo)], "api_key": KEY})
    r = deployed.get("/model/registry", headers={"Authorization": f"Bearer {KEY}"})
    deployed.available = {m["model_id"] for m in r.json()["available"]}
    yield deployed
    teardown_app(deployed)


def client(app: DeployedApp, transport: str = "legacy", **config):
    from inference_sdk import InferenceConfiguration, InferenceHTTPClient

    c = InferenceHTTPClient(api_url=app.url, api_key=KEY)
    c.configure(InferenceConfiguration(api_key_transport=transport, **config))
    assert c.client_mode.value == "v1"  # any server but Roboflow's hosted API: the /infer/{task} routes
    return c


def needs(app: DeployedApp, model_id: str) -> None:
    if model_id not in app.available:
        pytest.fail(f"{model_id} is not in configs/models: the project ships it")


def scenes(count: int = 4, seed: int = 11):
    from zoo.shapes import draw_scene

    rng = np.random.default_rng(seed)
    return [draw_scene(rng, size=(512, 384), max_shapes=3, min_extent=70, max_extent=150) for _ in range(count)]


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matches(scene, detections) -> list[tuple[object, int]]:
    """(ground-truth shape, index of the best detection by IoU >= 0.5 with the same class) per found shape."""
    found = []
    for shape in scene.shapes:
        best = max(range(len(detections)), key=lambda i: iou(shape.box_xyxy, detections.xyxy[i]), default=None)
        if best is not None and iou(shape.box_xyxy, detections.xyxy[best]) >= 0.5 \
                and detections.data["class_name"][best] == shape.class_name:
            found.append((shape, best))
    return found


# -- inference-sdk v1 + supervision -----------------------------------------------------------------
@pytest.mark.parametrize("model_id", ["shapes-det/1", "shapes-det-v5/1", "shapes-seg/1"])
def test_sdk_detections_match_the_drawn_shapes(app, model_id):
    needs(app, model_id)
    c = client(app)
    total = found = 0
    for scene in scenes():
        result = c.infer(scene.image, model_id=model_id)
        assert result["image"] == {"width": 512, "height": 384}
        detections = sv.Detections.from_inference(result)
        pairs = matches(scene, detections)
        total, found = total + len(scene.shapes), found + len(pairs)
        if model_id == "shapes-seg/1":
            assert detections.mask is not None and detections.mask.shape[1:] == (384, 512)
            for shape, i in pairs:
                truth = np.zeros((384, 512), np.uint8)
                cv2.fillPoly(truth, [np.round(shape.polygon).astype(np.int32)], 1)
                inter = np.logical_and(truth, detections.mask[i]).sum()
                assert inter / np.logical_or(truth, detections.mask[i]).sum() > 0.7, shape.class_name
    assert found / total >= 0.75, f"{found} of {total} shapes found"


def test_yolov5_layout_gives_the_yolov8_answers(app):
    needs(app, "shapes-det/1")
    needs(app, "shapes-det-v5/1")
    c = client(app)
    image = scenes(1, seed=5)[0].image
    a, b = (c.infer(image, model_id=m)["predictions"] for m in ("shapes-det/1", "shapes-det-v5/1"))
    assert len(a) == len(b) and a
    for p, q in zip(a, b):
        assert p["class"] == q["class"] and p["x"] == pytest.approx(q["x"], abs=0.05)
        assert p["confidence"] == pytest.approx(q["confidence"], abs=1e-4)


def test_sdk_keypoints_on_triangle_corners(app):
    needs(app, "shapes-pose/1")
    from zoo.shapes import draw_scene

    c = client(app, keypoint_confidence_threshold=0.0)
    rng = np.random.default_rng(21)
    checked = 0
    for _ in range(4):
        scene = draw_scene(rng, size=(512, 384), max_shapes=3, min_extent=90, max_extent=150, classes=("triangle",))
        result = c.infer(scene.image, model_id="shapes-pose/1")
        keypoints = sv.KeyPoints.from_inference(result)
        detections = sv.Detections.from_inference(result)
        for shape, i in matches(scene, detections):
            error = np.linalg.norm(keypoints.xy[i] - shape.corners, axis=1)
            assert error.mean() < 0.2 * shape.radius + 3, (error, shape.radius)
            checked += 1
    assert checked >= 4


def test_sdk_classification_and_batching(app):
    needs(app, "shapes-cls/1")
    from zoo.broad_shapes import broad_single_shape

    c = client(app, max_batch_size=8)
    rng = np.random.default_rng(8)
    classes = ["circle", "square", "triangle"] * 2
    images = [broad_single_shape(rng, name).image for name in classes]  # one shape anywhere, any frame
    results = c.infer(images, model_id="shapes-cls/1")  # one request holding the six images
    assert len(results) == 6 and all("top" in r and len(r["predictions"]) == 3 for r in results)
    # each image of the batch gets the answer it gets alone, in order
    singles = [c.infer(image, model_id="shapes-cls/1") for image in images]
    for batched, alone in zip(results, singles):
        assert batched["top"] == alone["top"]
        assert [p["confidence"] for p in batched["predictions"]] == pytest.approx(
            [p["confidence"] for p in alone["predictions"]], abs=1e-5)
    # and the classifier reads them (about 96% right on these frames: 4 of these 6 are the least a
    # working model gives here, chance gives 2)
    assert sum(r["top"] == name for r, name in zip(results, classes)) >= 4


def test_sdk_against_the_colour_classifier_v1_header_transport_and_v0(app):
    c = client(app, transport="header", max_batch_size=4)
    tops = [r["top"] for r in c.infer([cv2.imdecode(np.frombuffer(solid_jpeg(col), np.uint8), cv2.IMREAD_COLOR)
                                       for col in (RED, GREEN, BLUE)], model_id="colour/1")]
    assert tops == ["red", "green", "blue"]
    deadline = time.time() + 5  # replicas report what they hold within about a second, without blocking requests
    listed = {m.model_id: m for m in c.list_loaded_models().models}
    while "colour/1" not in listed and time.time() < deadline:
        time.sleep(0.2)
        listed = {m.model_id: m for m in c.list_loaded_models().models}
    assert listed["colour/1"].task_type == "classification" and listed["colour/1"].input_width == 32
    v0 = client(app).select_api_v0()  # the legacy /{dataset}/{version} route, key in the query
    image = cv2.imdecode(np.frombuffer(solid_jpeg(GREEN), np.uint8), cv2.IMREAD_COLOR)
    assert v0.infer(image, model_id="colour/1")["top"] == "green"


def test_sdk_with_an_alias_and_visualization(app):
    needs(app, "shapes-det/1")
    from inference_sdk import InferenceConfiguration, InferenceHTTPClient

    c = InferenceHTTPClient(api_url=app.url, api_key=KEY)
    c.configure(InferenceConfiguration(api_key_transport="both", visualize_predictions=True,
                                       output_visualisation_format="numpy"))
    scene = scenes(1)[0]
    result = c.infer(scene.image, model_id="shapes")
    assert result["visualization"].shape == scene.image.shape
    assert sv.Detections.from_inference(result).xyxy.shape[1] == 4


# -- the API key -------------------------------------------------------------------------------------
def _image_body() -> dict:
    return {"model_id": "colour/1", "image": {"type": "base64", "value": base64.b64encode(solid_jpeg(RED)).decode()}}


def test_probes_are_open_and_everything_else_needs_the_key(app):
    assert app.get("/healthz").status_code == 200 and app.get("/readiness").status_code == 200
    calls = [("get", "/info", {}), ("get", "/model/registry", {}), ("post", "/model/clear", {}),
             ("post", "/model/add", {"json": {"model_id": "colour/1"}}), ("post", "/model/remove", {"json": {}}),
             ("post", "/infer/classification", {"json": _image_body()}),
             ("post", "/colour/1", {"data": solid_jpeg(RED)}),
             ("post", "/infer", {"data": solid_jpeg(RED), "headers": {"serve_multiplexed_model_id": "colour/1"}}),
             ("post", "/infer/classification", {"data": b"{not json"})]
    for method, path, kw in calls:
        r = getattr(app, method)(path, **kw)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"] == "unauthorized" and r.headers["WWW-Authenticate"] == "Bearer"


def test_wrong_keys_are_refused_without_echo_and_right_keys_pass(app):
    wrong = [app.post(f"/colour/1?api_key={WRONG}", data=solid_jpeg(RED)),
             app.post("/infer/classification", json={**_image_body(), "api_key": WRONG}),
             app.get("/model/registry", headers={"Authorization": f"Bearer {WRONG}"}),
             app.get("/info", headers={"Authorization": f"Basic {WRONG}"})]
    for r in wrong:
        assert r.status_code == 401, r.text
        assert WRONG not in r.text and KEY not in r.text and WRONG not in str(r.headers)
    right = [app.post(f"/colour/1?api_key={KEY}", data=solid_jpeg(RED)),
             app.post("/infer/classification", json={**_image_body(), "api_key": KEY}),
             app.post("/infer", data=solid_jpeg(RED), headers={"serve_multiplexed_model_id": "colour/1",
                                                               "Authorization": f"Bearer {KEY}"}),
             app.get("/info", headers={"Authorization": f"Bearer {KEY}"})]
    for r in right:
        assert r.status_code == 200, r.text
    from inference_sdk import InferenceConfiguration, InferenceHTTPClient
    from inference_sdk.http.errors import HTTPCallErrorError

    wrong_client = InferenceHTTPClient(api_url=app.url, api_key=WRONG)
    wrong_client.configure(InferenceConfiguration(api_key_transport="legacy"))
    with pytest.raises(HTTPCallErrorError) as info:
        wrong_client.select_api_v0().infer(
            cv2.imdecode(np.frombuffer(solid_jpeg(RED), np.uint8), cv2.IMREAD_COLOR), model_id="colour/1")
    assert info.value.status_code == 401


def test_keys_never_reach_the_logs(app):
    """Runs after the requests above (file order): no log file of this Ray session holds either key."""
    import ray

    app.post(f"/colour/1?api_key={WRONG}", data=solid_jpeg(RED))
    app.post("/infer/classification", json={**_image_body(), "api_key": WRONG})
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    deadline = time.time() + 10
    while True:  # log lines reach their files a moment after the response
        leaks, access_lines = _scan_logs(logs)
        if access_lines or time.time() > deadline:
            break
        time.sleep(0.5)
    assert not leaks, leaks
    assert access_lines, "the gateway's access log was not among the files read"
    assert requests.get(app.url + "/healthz", timeout=10).status_code == 200


def _scan_logs(logs: Path) -> tuple[list[str], int]:
    leaks, access_lines = [], 0
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 50 * 2**20:
            text = path.read_bytes()
            leaks += [f"{path.name}: {k}" for k in (WRONG, KEY) if k.encode() in text]
            access_lines += text.count(b"POST /{dataset}/{version} 401")
    return leaks, access_lines
