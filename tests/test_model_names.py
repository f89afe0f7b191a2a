"""Model type names as Roboflow and Ultralytics write them -> the decoders (``tasks/model_names.py``),
and through the server: a manifest that says ``yolov11n`` or ``yolov7`` serves what the same weights
serve under their own names; a name with no decoder is a 400 that lists what is supported."""
from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from serve_app.errors import ManifestError
from serve_app.registry.manifest import FileSpec, Manifest, manifest_from_ultralytics_metadata
from serve_app.tasks.architectures import ARCHITECTURES
from serve_app.tasks.model_names import resolve_architecture, task_of
from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.servers import OriginServer
from tests.zoo_models import MODELS
from zoo.shapes import draw_scene

DET, SEG, CLS, POSE = "object-detection", "instance-segmentation", "classification", "keypoint-detection"

# (task, name) pairs from Roboflow Inference's model registry (inference/models/utils.py), whose output
# layouts this server decodes, and what each maps onto
ROBOFLOW = {
    (DET, "yolov5"): "yolov5", (DET, "yolov5v2s"): "yolov5", (DET, "yolov5v6n"): "yolov5",
    (DET, "yolov5v6x"): "yolov5", (DET, "yolov7"): "yolov5", (DET, "yolov8"): "yolov8", (DET, "yolov8n"): "yolov8",
    (DET, "yolov8x"): "yolov8", (DET, "yolov9"): "yolov8", (DET, "yolov10"): "yolov10", (DET, "yolov10b"): "yolov10",
    (DET, "yolov11n"): "yolov8", (DET, "yolov12s"): "yolov8", (DET, "yolo26"): "yolo26", (DET, "yolo26m"): "yolo26",
    (SEG, "yolov5-seg"): "yolov5-seg", (SEG, "yolov5n-seg"): "yolov5-seg", (SEG, "yolov7-seg"): "yolov5-seg",
    (SEG, "yolact"): "yolact", (SEG, "yolov8"): "yolov8-seg", (SEG, "yolov8n"): "yolov8-seg",
    (SEG, "yolov8x-seg"): "yolov8-seg", (SEG, "yolov11n"): "yolov8-seg", (SEG, "yolov11s-seg"): "yolov8-seg",
    (SEG, "yolo26n"): "yolo26-seg", (SEG, "yolo26x-seg"): "yolo26-seg",
    (CLS, "yolov8"): "yolov8-cls", (CLS, "yolov8n"): "yolov8-cls",
    (POSE, "yolov8"): "yolov8-pose", (POSE, "yolov8n-pose"): "yolov8-pose", (POSE, "yolov11n"): "yolov8-pose",
    (POSE, "yolov11x-pose"): "yolov8-pose", (POSE, "yolo26n"): "yolo26-pose", (POSE, "yolo26l-pose"): "yolo26-pose",
    (DET, "rfdetr-base"): "rf-detr", (DET, "rfdetr-nano"): "rf-detr", (SEG, "rfdetr-seg-preview"): "rf-detr-seg",
}
# Ultralytics' own names (no task: the suffix says it), v5 to 26 with their heads and size letters
ULTRALYTICS = {
    "yolov5nu": "yolov8", "yolov5s6u": "yolov8", "yolov7-tiny": "yolov5", "yolov7x": "yolov5", "yolov7-w6": "yolov5",
    "yolov8n": "yolov8", "yolov8s-seg": "yolov8-seg", "yolov8m-pose": "yolov8-pose", "yolov8l-cls": "yolov8-cls",
    "yolov8x-pose-p6": "yolov8-pose", "yolov9t": "yolov8", "yolov9c": "yolov8", "yolov9e-seg": "yolov8-seg",
    "yolov10n": "yolov10", "yolov10x": "yolov10", "yolo11n": "yolov8", "yolo11s-seg": "yolov8-seg",
    "yolo11m-pose": "yolov8-pose", "yolo11l-cls": "yolov8-cls", "yolo12n": "yolov8", "yolo12x-seg": "yolov8-seg",
    "yolo26n": "yolo26", "yolo26s-seg": "yolo26-seg", "yolo26m-pose": "yolo26-pose", "yolo26l-cls": "yolov8-cls",
    "YOLO11N": "yolov8", " yolov8n ": "yolov8",
}


@pytest.mark.parametrize("task, name", sorted(ROBOFLOW))
def test_roboflow_model_types_map_onto_their_decoders(task, name):
    arch = resolve_architecture(name, task)
    assert arch == ROBOFLOW[(task, name)] and ARCHITECTURES[arch].task == task


@pytest.mark.parametrize("name", sorted(ULTRALYTICS))
def test_ultralytics_names_map_by_their_suffix(name):
    arch = resolve_architecture(name)
    assert arch == ULTRALYTICS[name]
    assert ARCHITECTURES[arch].task == (task_of(name) or DET)


@pytest.mark.parametrize("name, task, says", [
    ("yolov6n", None, "no object-detection decoder"),  # a family with no decoder here
    ("yolov3u", None, "no object-detection decoder"),
    ("rfdetr-base", SEG, "serves"),  # RF-DETR's detection model under the segmentation task
    ("yolo_nas_s", DET, "not one this server decodes"),
    ("vit", CLS, "not one this server decodes"),
    ("yolov8n-obb", None, "oriented boxes"),
    ("yolov10n-seg", None, "no instance-segmentation decoder"),  # YOLOv10 has detection only
    ("yolov7-pose", None, "no keypoint-detection decoder"),
    ("yolov8n-seg", DET, "is a model for instance-segmentation, but the task given is object-detection"),
    ("yolact", DET, "serves"),
    ("yolov8nn", None, "not one this server decodes"),
    ("", DET, "not one this server decodes"),
])
def test_names_without_a_decoder_are_refused_with_what_is_supported(name, task, says):
    with pytest.raises(ManifestError, match=says) as info:
        resolve_architecture(name, task)
    if "serves" not in says and "task given" not in says:
        assert "Supported model types" in info.value.message and "YOLO26" in info.value.message


def _manifest(arch: str, task: str = DET, classes=("circle", "square", "triangle")) -> dict:
    return {"model_id": "n/1", "task": task, "architecture": arch, "classes": list(classes),
            "files": {"weights": {"path": "w.onnx", "sha256": "0" * 64, "size": 1}},
            "input": {"width": 640, "height": 640}}


def test_a_manifest_keeps_the_decoder_its_name_maps_to():
    assert Manifest.from_dict(_manifest("yolov11n")).architecture == "yolov8"
    assert Manifest.from_dict(_manifest("yolov8n", SEG)).architecture == "yolov8-seg"
    for bad in (7, ["yolov8"], "y" * 65):
        with pytest.raises(ManifestError, match="architecture"):
            Manifest.from_dict(_manifest(bad))


@pytest.mark.parametrize("description, task, end2end, arch", [
    ("Ultralytics YOLOv8n model trained on coco.yaml", "detect", "False", "yolov8"),
    ("Ultralytics YOLO11n-seg model", "segment", "False", "yolov8-seg"),
    ("Ultralytics YOLO26n model", "detect", "False", "yolov8"),  # exported without the end-to-end head
    ("Ultralytics YOLO26n model", "detect", "True", "yolo26"),
    ("Ultralytics YOLOv10n model", "detect", "True", "yolov10"),
    ("Ultralytics YOLO26n-seg model", "segment", "True", "yolo26-seg"),
    ("Ultralytics YOLO26n-pose model", "pose", "True", "yolo26-pose"),
    ("", "detect", "True", "yolo26"),
    ("Ultralytics YOLO26n-cls model", "classify", "False", "yolov8-cls"),
])
def test_ultralytics_metadata_picks_the_layout(description, task, end2end, arch):
    meta = {"description": description, "task": task, "end2end": end2end, "names": "{0: 'a', 1: 'b'}",
            "imgsz": "[320, 320]", "kpt_shape": "[3, 3]"}
    m = manifest_from_ultralytics_metadata("u/1", meta, FileSpec(path="w.onnx", sha256="0" * 64, size=1))
    assert m.architecture == arch


# -- through the server -------------------------------------------------------------------------------
WEIGHTS = {"det": (MODELS / "shapes-det" / "1" / "weights.onnx").read_bytes(),
           "v5": (MODELS / "shapes-det-v5" / "1" / "weights.onnx").read_bytes()}
WEIGHTS["refused"] = WEIGHTS["det"]


@pytest.fixture(scope="module")
def origin():
    server = OriginServer({f"/{name}.onnx": data for name, data in WEIGHTS.items()})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    deployed = deploy_app(ray_serve, tmp_path_factory.mktemp("names"))
    yield deployed
    teardown_app(deployed)


def _remote_manifest(origin: OriginServer, model_id: str, arch: str, file: str) -> dict:
    data = WEIGHTS[file]
    builtin = Manifest.from_dict(json.loads((MODELS / "shapes-det" / "1" / "model.json").read_text()))
    return {"model_id": model_id, "task": DET, "architecture": arch, "classes": list(builtin.classes),
            "files": {"weights": {"uri": origin.url(f"/{file}.onnx"), "sha256": hashlib.sha256(data).hexdigest(),
                                  "size": len(data)}},
            "input": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(builtin.input).items()}}


def _predictions(app: DeployedApp, model_id: str, jpeg: bytes) -> list[tuple[str, float]]:
    r = app.post("/infer", data=jpeg, headers={"serve_multiplexed_model_id": model_id})
    assert r.status_code == 200, r.text
    return sorted((p["class"], round(p["x"]), round(p["y"])) for p in r.json()["predictions"])


@pytest.mark.ray
def test_roboflow_names_in_a_manifest_serve_like_the_builtin_model(app, origin):
    scene = draw_scene(np.random.default_rng(5))
    jpeg = cv2.imencode(".jpg", scene.image)[1].tobytes()
    expected = _predictions(app, "shapes-det/1", jpeg)
    assert len(expected) == len(scene.shapes) >= 1
    for model_id, arch, file in (("named-v11/1", "yolov11n", "det"), ("named-v7/1", "yolov7", "v5"),
                                 ("named-v5/1", "yolov5v6n", "v5")):
        r = app.post("/model/add", json={"manifest": _remote_manifest(origin, model_id, arch, file)})
        assert r.status_code == 200, r.text
        entry = next(m for m in r.json()["models"] if m["model_id"] == model_id)
        assert entry["architecture"] == {"det": "yolov8", "v5": "yolov5"}[file]
        assert _predictions(app, model_id, jpeg) == expected, arch


@pytest.mark.ray
@pytest.mark.parametrize("arch, says", [("yolov6n", "no object-detection decoder"),
                                        ("yolo_nas_s", "not one this server decodes"),
                                        ("yolov8n-seg", "task given is object-detection")])
def test_a_name_with_no_decoder_is_a_400_that_lists_what_is_supported(app, origin, arch, says):
    r = app.post("/model/add", json={"manifest": _remote_manifest(origin, "refused/1", arch, "refused")})
    assert r.status_code == 400, r.text
    body = r.json()
    assert says in body["message"]
    if "task given" not in says:
        assert "Supported model types" in body["message"] and "yolov5v2s" in body["message"]
    assert "refused/1" not in [m["model_id"] for m in app.get("/model/registry").json()["models"]]
    assert not origin.counts.get("/refused.onnx"), "a refused manifest must not fetch its weights"


def test_an_architecture_fills_the_input_a_manifest_leaves_out():
    detr = Manifest.from_dict({**_manifest("rfdetr-nano"), "input": {"width": 384, "height": 384}})
    assert (detr.architecture, detr.input.resize, detr.input.mean, detr.input.std) == (
        "rf-detr", "stretch", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    said = Manifest.from_dict({**_manifest("rfdetr-nano"), "input": {"width": 384, "height": 384, "resize": "letterbox"}})
    assert said.input.resize == "letterbox" and said.input.mean == (0.485, 0.456, 0.406)  # the manifest's word wins
    assert Manifest.from_dict(_manifest("yolov8n")).input.mean == (0.0, 0.0, 0.0)  # YOLO: the plain defaults
