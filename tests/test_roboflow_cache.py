"""A Roboflow Inference model cache (MODEL_CACHE_DIR) listed in ``repositories`` serves its models unchanged.

The caches here are written by :func:`write_roboflow_model` file for file as Roboflow Inference
writes them (each file's comment names the Roboflow source it follows), with the built-in shapes
models' weights under Roboflow names. Their answers, through the legacy route and inference-sdk,
must equal the built-in models' on the same images. The built-in models are required: a missing
one fails these tests.
"""
from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from serve_app.errors import ManifestError, ModelNotFound
from serve_app.registry.catalog import ModelCatalog
from serve_app.registry.manifest import Manifest
from serve_app.registry.roboflow_cache import (discover_roboflow_models, manifest_from_roboflow_folder,
                                               map_preprocessing)
from tests.conftest import ROOT, DeployedApp, deploy_app, teardown_app

MODELS = ROOT / "configs" / "models"
GREY_640 = {"auto-orient": {"enabled": True}, "resize": {"enabled": True, "format": "Fit (grey edges) in",
                                                         "width": 640, "height": 640}}
# shapes-seg/1 is served at 1152 (its README entry says why): its copy says so, as a Roboflow project would
GREY_1152 = {"auto-orient": {"enabled": True}, "resize": {"enabled": True, "format": "Fit (grey edges) in",
                                                          "width": 1152, "height": 1152}}
GREY_256 = {"auto-orient": {"enabled": True}, "resize": {"enabled": True, "format": "Fit (grey edges) in",
                                                         "width": 256, "height": 256}}
CROP_128 = {"auto-orient": {"enabled": True}, "resize": {"enabled": True, "format": "Fill (with center crop) in",
                                                         "width": 128, "height": 128}}
POSE_POINTS = ["top", "second_clockwise", "third_clockwise"]


# -- a cache written the way Roboflow Inference writes it ----------------------------------------------
def built_in(model_id: str) -> tuple[dict, bytes]:
    """The built-in model's manifest and weights (a missing one fails the test, never skips it)."""
    folder = MODELS / model_id
    assert (folder / "model.json").is_file() and (folder / "weights.onnx").is_file(), f"{model_id} is missing"
    return json.loads((folder / "model.json").read_text()), (folder / "weights.onnx").read_bytes()


def write_roboflow_model(cache: Path, model_id: str, *, task: str, model_type: str, weights: bytes,
                         classes: list[str], preprocessing: dict | str, colors: dict | None = None,
                         keypoints: list[dict] | None = None, class_names_file: bool = True,
                         multiclass: bool | None = None) -> Path:
    """One model folder of a Roboflow MODEL_CACHE_DIR, as Roboflow Inference leaves it after a download.

    Follows inference/core/models/roboflow.py::RoboflowInferenceModel.download_model_artifacts_from_roboflow_api
    and inference/core/registries/roboflow.py::_save_model_metadata_in_cache; the folder is
    ``<cache>/<dataset>/<version>`` (inference/core/cache/model_artifacts.py::get_cache_dir with a
    portable id, get_model_id_cache_path)."""
    folder = cache / model_id
    folder.mkdir(parents=True)
    if class_names_file:
        # save_text_lines_in_cache(content=api_data["classes"], file="class_names.txt") -> dump_text_lines:
        # the lines joined by "\n", no trailing newline
        (folder / "class_names.txt").write_text("\n".join(classes))
    # save_bytes_in_cache(content=model_weights_response.content, file=self.weights_file): "weights.onnx"
    (folder / "weights.onnx").write_bytes(weights)
    # environment = get_from_url(api_data["environment"]): the API's environment, PREPROCESSING a JSON string;
    # environment["COLORS"] = api_data["colors"]; save_json_in_cache -> json.dump with no indent
    preproc = preprocessing if isinstance(preprocessing, str) else json.dumps(preprocessing)
    environment: dict = {"PREPROCESSING": preproc,
                         "CLASS_MAP": {str(i): name for i, name in enumerate(classes)}}
    if multiclass is not None:
        environment["MULTICLASS"] = multiclass
    if colors is not None:
        environment["COLORS"] = colors
    (folder / "environment.json").write_text(json.dumps(environment))
    if keypoints is not None:
        # save_json_in_cache(content=api_data["keypoints_metadata"], file="keypoints_metadata.json")
        (folder / "keypoints_metadata.json").write_text(json.dumps(keypoints))
    # _save_model_metadata_in_cache: dump_json_atomic(..., indent=4) of these three keys
    (folder / "model_type.json").write_text(json.dumps(
        {"project_task_type": task, "model_type": model_type, "model_id": model_id}, indent=4))
    return folder


def pose_keypoints() -> list[dict]:
    """keypoints_metadata as the Roboflow API gives it (parse_keypoints_metadata; edges as inference-models reads)."""
    return [{"object_class_id": 0, "keypoints": {str(i): n for i, n in enumerate(POSE_POINTS)},
             "edges": [{"from": 0, "to": 1}, {"from": 1, "to": 2}, {"from": 2, "to": 0}]}]


def write_shapes_cache(cache: Path) -> dict[str, str]:
    """Copies of the built-in shapes models under Roboflow names; returns Roboflow id -> built-in id."""
    copies = {
        "shapes-dataset/3": ("shapes-det/1", "object-detection", "yolov8n", GREY_640),
        "shapes-dataset/5": ("shapes-det-v5/1", "object-detection", "yolov5v6n", GREY_640),
        "shapes-dataset-seg/2": ("shapes-seg/1", "instance-segmentation", "yolov8n", GREY_1152),
        "triangle-corners/1": ("shapes-pose/1", "keypoint-detection", "yolov8n-pose", GREY_640),
        "dominant-shape/4": ("shapes-cls/1", "classification", "yolov8n", GREY_256),
    }
    for rf_id, (native, task, model_type, pre) in copies.items():
        manifest, weights = built_in(native)
        write_roboflow_model(cache, rf_id, task=task, model_type=model_type, weights=weights,
                             classes=manifest["classes"], preprocessing=pre, colors=manifest["class_colors"],
                             keypoints=pose_keypoints() if task == "keypoint-detection" else None)
    return {k: v[0] for k, v in copies.items()}


def write_broken_models(cache: Path, weights: bytes) -> dict[str, str]:
    """Caches Roboflow could leave half-written or that this server cannot serve; id -> words of the reason."""
    common = {"task": "object-detection", "model_type": "yolov8n", "weights": weights,
              "classes": ["circle", "square", "triangle"], "preprocessing": GREY_640}
    (write_roboflow_model(cache, "no-weights/1", **common) / "weights.onnx").unlink()
    (write_roboflow_model(cache, "bad-json/1", **common) / "environment.json").write_text('{"PREPROCESSING": ')
    write_roboflow_model(cache, "unknown-type/1", **{**common, "model_type": "yolo_nas_s"})
    write_roboflow_model(cache, "reflect-edges/1", **{**common, "preprocessing": {
        "resize": {"enabled": True, "format": "Fit (reflect edges) in", "width": 640, "height": 640}}})
    (write_roboflow_model(cache, "not-onnx/1", **common) / "weights.onnx").write_bytes(b"not an onnx file")
    return {"no-weights/1": "weights.onnx is missing", "bad-json/1": "environment.json is not valid JSON",
            "unknown-type/1": "yolo_nas_s", "reflect-edges/1": "reflect", "not-onnx/1": "not a readable ONNX"}


# -- the mapping of PREPROCESSING ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt,mode,pad", [
    ("Stretch to", "stretch", None), ("Fit (black edges) in", "letterbox", (0, 0, 0)),
    ("Fit (grey edges) in", "letterbox", (114, 114, 114)), ("Fit (white edges) in", "letterbox", (255, 255, 255)),
    ("Fill (with center crop) in", "center-crop", None),
])
def test_resize_formats(fmt, mode, pad):
    fields, pre = map_preprocessing({"resize": {"enabled": True, "format": fmt, "width": 416, "height": 320}},
                                    "object-detection")
    assert fields["resize"] == mode and fields.get("pad_color") == pad
    assert (fields["channel_order"], fields["scale"]) == ("rgb", 1 / 255) and "mean" not in fields
    assert pre == {"auto_orient": False}  # no "auto-orient" key: Roboflow does not orient (preproc_image)


def test_no_resize_is_roboflows_stretch():
    assert map_preprocessing({}, "object-detection")[0]["resize"] == "stretch"
    assert map_preprocessing({"resize": {"enabled": True, "width": 64, "height": 64}}, "object-detection")[0][
        "resize"] == "stretch"  # no format: "Stretch to"


@pytest.mark.parametrize("fmt,words", [("Fit (reflect edges) in", "reflect"), ("Fit within", "varying size"),
                                       ("Squash", "unknown resize format")])
def test_resize_formats_without_an_equivalent_are_refused(fmt, words):
    with pytest.raises(ManifestError, match=words):
        map_preprocessing({"resize": {"enabled": True, "format": fmt, "width": 64, "height": 64}}, "object-detection")


def test_static_crop_contrast_grayscale_and_orient():
    pre = {"auto-orient": {"enabled": True}, "static-crop": {"enabled": True, "x_min": 10, "y_min": 20, "x_max": 90,
                                                             "y_max": 75},
           "contrast": {"enabled": True, "type": "Contrast Stretching"}, "grayscale": {"enabled": True}}
    assert map_preprocessing(pre, "object-detection")[1] == {
        "auto_orient": True, "static_crop": (10.0, 20.0, 90.0, 75.0), "contrast": "stretching", "grayscale": True}
    off = {k: {**v, "enabled": False} for k, v in pre.items()}
    # steps switched off are not applied (prepare's *_should_be_applied); auto-orient goes by the key alone
    assert map_preprocessing(off, "object-detection")[1] == {"auto_orient": True}


@pytest.mark.parametrize("kind,words", [("Histogram Equalization", "grayscale copy"),
                                        ("Adaptive Equalization", "clip limit"), ("Sharpen", "unknown contrast")])
def test_contrast_without_an_equivalent_is_refused(kind, words):
    with pytest.raises(ManifestError, match=words):
        map_preprocessing({"contrast": {"enabled": True, "type": kind}}, "object-detection")


def test_malformed_steps_are_refused():
    with pytest.raises(ManifestError, match="enabled"):
        map_preprocessing({"grayscale": True}, "object-detection")
    with pytest.raises(ManifestError, match="x_min"):
        map_preprocessing({"static-crop": {"enabled": True, "x_min": 1}}, "object-detection")


def test_classification_gets_roboflows_normalisation():
    fields, _ = map_preprocessing(CROP_128, "classification")
    assert fields["mean"] == (0.5, 0.5, 0.5) and fields["std"] == (0.5, 0.5, 0.5)


# -- folders -> manifests, per task ------------------------------------------------------------------
def test_each_task_reads_as_the_built_in_manifest(tmp_path):
    copies = write_shapes_cache(tmp_path)
    entries = {e.model_id: e for e in discover_roboflow_models(tmp_path)}
    assert set(entries) == set(copies) and all(e.reason is None for e in entries.values())
    for rf_id, native_id in copies.items():
        native = Manifest.from_dict(built_in(native_id)[0]).to_dict()
        got = entries[rf_id].manifest.to_dict()
        assert got["model_id"] == rf_id and got["files"]["weights"]["path"] == "weights.onnx"
        for key in ("task", "architecture", "files", "classes", "class_colors", "preprocessing", "keypoints"):
            assert got.get(key) == native.get(key), (rf_id, key)
        if native_id == "shapes-cls/1":  # Roboflow normalises classification inputs to [-1, 1]
            assert got["input"] == {**native["input"], "mean": [0.5] * 3, "std": [0.5] * 3}
        else:
            assert got["input"] == native["input"], rf_id
    assert entries["triangle-corners/1"].manifest.keypoints.skeleton == ((0, 1), (1, 2), (2, 0))


def test_class_map_multiclass_and_input_size(tmp_path):
    _, weights = built_in("shapes-cls/1")
    folder = write_roboflow_model(tmp_path, "tags/1", task="classification", model_type="yolov8s", weights=weights,
                                  classes=["circle", "square", "triangle"], class_names_file=False, multiclass=True,
                                  preprocessing={"resize": {"format": "Stretch to", "width": 999, "height": 999}})
    m = manifest_from_roboflow_folder(folder, "tags/1")
    assert m.classes == ("circle", "square", "triangle") and m.multi_label and m.architecture == "yolov8-cls"
    # the built-in weights' input is dynamic: PREPROCESSING's size (OnnxRoboflowInferenceModel.initialize_model)
    assert (m.input.width, m.input.height, m.input.resize) == (999, 999, "stretch")
    assert m.class_colors == {}
    # ...but a fixed ONNX input size wins over PREPROCESSING's
    import onnx

    model = onnx.load_from_string(weights)
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = 160
    (folder / "weights.onnx").write_bytes(model.SerializeToString())
    m = manifest_from_roboflow_folder(folder, "tags/1")
    assert (m.input.width, m.input.height) == (160, 160)


def test_keypoints_that_differ_by_class_are_refused(tmp_path):
    _, weights = built_in("shapes-pose/1")
    points = pose_keypoints() + [{"object_class_id": 1, "keypoints": {"0": "a"}}]
    folder = write_roboflow_model(tmp_path, "kp/1", task="keypoint-detection", model_type="yolov8n", weights=weights,
                                  classes=["triangle", "other"], preprocessing=GREY_640, keypoints=points)
    with pytest.raises(ManifestError, match="different keypoints"):
        manifest_from_roboflow_folder(folder, "kp/1")
    (folder / "keypoints_metadata.json").unlink()
    with pytest.raises(ManifestError, match="keypoints_metadata.json is missing"):
        manifest_from_roboflow_folder(folder, "kp/1")


def test_slugged_folder_takes_its_id_from_model_type(tmp_path):
    _, weights = built_in("shapes-det/1")
    folder = write_roboflow_model(tmp_path, "x", task="object-detection", model_type="yolov8n", weights=weights,
                                  classes=["circle", "square", "triangle"], preprocessing=GREY_640)
    slugged = folder.rename(tmp_path / "~My-Dataset-3-0123456789abcdef0123456789abcdef")
    (slugged / "model_type.json").write_text(json.dumps(
        {"project_task_type": "object-detection", "model_type": "yolov8n", "model_id": "My.Dataset/3"}, indent=4))
    (tmp_path / "_file_locks" / "a").mkdir(parents=True)
    (tmp_path / "_file_locks" / "a" / "model_type.json").write_text("{}")  # a reserved folder: not a model
    assert [(e.model_id, e.reason) for e in discover_roboflow_models(tmp_path)] == [("My.Dataset/3", None)]
    # an unslugged folder whose model_type.json names another model is not believed
    (tmp_path / "other" / "1").mkdir(parents=True)
    for name in ("weights.onnx", "environment.json", "class_names.txt", "model_type.json"):
        (tmp_path / "other" / "1" / name).write_bytes((slugged / name).read_bytes())
    reasons = {e.model_id: e.reason for e in discover_roboflow_models(tmp_path)}
    assert "names model 'My.Dataset/3'" in reasons["other/1"]


def test_broken_folders_are_skipped_with_their_reason(tmp_path, caplog):
    cache = tmp_path / "cache"
    copies = write_shapes_cache(cache)
    broken = write_broken_models(cache, built_in("shapes-det/1")[1])
    with caplog.at_level(logging.ERROR, logger="serve_app.registry.catalog"):
        catalog = ModelCatalog([str(cache), str(MODELS)], {}, tmp_path / "state.json")
    assert set(copies) | set(copies.values()) <= set(catalog.describe()["models"])
    for model_id, words in broken.items():
        assert words in caplog.text
        with pytest.raises(ModelNotFound, match="Roboflow cache folder was skipped") as err:
            catalog.resolve(model_id)
        assert words in str(err.value) and str(cache) not in str(err.value)  # the reason, not the server's paths
    assert catalog.resolve("shapes-dataset/3").weights.uri.startswith("file://")


# -- served: the legacy route and inference-sdk give the built-in models' answers ----------------------
@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("rfcache")
    cache = tmp / "MODEL_CACHE_DIR"
    copies = write_shapes_cache(cache)
    broken = write_broken_models(cache, built_in("shapes-det/1")[1])
    # the same classifier weights added natively, with the normalisation Roboflow gives classification
    native = tmp / "native"
    manifest, weights = built_in("shapes-cls/1")
    (native / "shapes-cls-rf" / "1").mkdir(parents=True)
    (native / "shapes-cls-rf" / "1" / "weights.onnx").write_bytes(weights)
    manifest = {**manifest, "model_id": "shapes-cls-rf/1",
                "input": {**manifest["input"], "mean": [0.5] * 3, "std": [0.5] * 3}}
    (native / "shapes-cls-rf" / "1" / "model.json").write_text(json.dumps(manifest))
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(MODELS), str(cache), str(native)]})
    deployed.copies, deployed.broken = copies, broken
    yield deployed
    teardown_app(deployed)


def scenes(count: int = 3, seed: int = 17, classes: tuple[str, ...] | None = None) -> list[np.ndarray]:
    from zoo.shapes import draw_scene

    rng = np.random.default_rng(seed)
    kw = {"classes": classes} if classes else {}
    return [draw_scene(rng, size=(512, 384), max_shapes=3, min_extent=80, max_extent=150, **kw).image
            for _ in range(count)]


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def same_answers(a: dict, b: dict) -> None:
    """Equal predictions (the ids differ: detection_id is per answer)."""
    assert a["image"] == b["image"]
    if "top" in a:
        assert (a["top"], a["confidence"]) == (b["top"], pytest.approx(b["confidence"], abs=1e-6))
        assert [(p["class"], p["confidence"]) for p in a["predictions"]] == [
            (p["class"], pytest.approx(p["confidence"], abs=1e-6)) for p in b["predictions"]]
        return
    assert len(a["predictions"]) == len(b["predictions"])
    for p, q in zip(a["predictions"], b["predictions"]):
        assert p["class"] == q["class"] and p["class_id"] == q["class_id"]
        for k in ("x", "y", "width", "height", "confidence"):
            assert p[k] == pytest.approx(q[k], abs=1e-4), (k, p, q)
        assert len(p.get("points", [])) == len(q.get("points", []))
        for u, v in zip(p.get("points", []), q.get("points", [])):
            assert (u["x"], u["y"]) == (pytest.approx(v["x"], abs=1e-3), pytest.approx(v["y"], abs=1e-3))
        assert [k["class"] for k in p.get("keypoints", [])] == [k["class"] for k in q.get("keypoints", [])]
        for u, v in zip(p.get("keypoints", []), q.get("keypoints", [])):
            assert (u["x"], u["y"], u["confidence"]) == (pytest.approx(v["x"], abs=1e-3),
                                                         pytest.approx(v["y"], abs=1e-3),
                                                         pytest.approx(v["confidence"], abs=1e-4))


def images_for(native_id: str) -> list[np.ndarray]:
    if native_id == "shapes-cls/1":
        from zoo.shapes import draw_dominant_shape

        rng = np.random.default_rng(4)
        return [draw_dominant_shape(rng, name).image for name in ("circle", "square", "triangle")]
    return scenes(classes=("triangle",) if native_id == "shapes-pose/1" else None)


def reference_id(native_id: str) -> str:
    """What a Roboflow copy must answer like: the built-in model (the classifier: its native twin with
    Roboflow's normalisation, see docs/roboflow_cache.md)."""
    return "shapes-cls-rf/1" if native_id == "shapes-cls/1" else native_id


def test_registry_lists_the_roboflow_models(app):
    r = app.get("/model/registry")
    assert r.status_code == 200
    available = {m["model_id"] for m in r.json()["available"]}
    assert set(app.copies) <= available and not set(app.broken) & available


@pytest.mark.parametrize("rf_id", ["shapes-dataset/3", "shapes-dataset/5", "shapes-dataset-seg/2",
                                   "triangle-corners/1", "dominant-shape/4"])
def test_legacy_route_answers_as_the_built_in_model(app, rf_id):
    native_id = app.copies[rf_id]
    found = 0
    for image in images_for(native_id):
        body = base64.b64encode(jpeg(image))
        answers = [app.post(f"/{m}?confidence=25&overlap=45", data=body) for m in (rf_id, reference_id(native_id))]
        assert all(r.status_code == 200 for r in answers), [r.text[:300] for r in answers]
        a, b = (r.json() for r in answers)
        same_answers(a, b)
        found += len(a["predictions"]) if "top" not in a else 1
    assert found >= 3, "the models found nothing to compare"


@pytest.mark.parametrize("rf_id", ["shapes-dataset/3", "shapes-dataset/5", "shapes-dataset-seg/2",
                                   "triangle-corners/1", "dominant-shape/4"])
def test_inference_sdk_answers_as_the_built_in_model(app, rf_id):
    from inference_sdk import InferenceConfiguration, InferenceHTTPClient

    client = InferenceHTTPClient(api_url=app.url, api_key=None)
    client.configure(InferenceConfiguration(api_key_transport="header", confidence_threshold=0.25,
                                            iou_threshold=0.45, keypoint_confidence_threshold=0.0))
    assert client.client_mode.value == "v1"
    native_id = app.copies[rf_id]
    images = images_for(native_id)
    got, want = client.infer(images, model_id=rf_id), client.infer(images, model_id=reference_id(native_id))
    assert len(got) == len(want) == len(images)
    for a, b in zip(got, want):
        same_answers(a, b)


def test_broken_cache_folders_answer_404_with_the_reason(app):
    image = base64.b64encode(jpeg(scenes(1)[0]))
    for model_id, words in app.broken.items():
        r = app.post(f"/{model_id}", data=image)
        assert r.status_code == 404 and r.json()["error"] == "model_not_found", r.text
        assert words in r.json()["message"] and "Roboflow cache folder was skipped" in r.json()["message"]
