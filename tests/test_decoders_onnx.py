"""Output formats without a trained model in the zoo, decoded end to end through VisionModel on
ONNX graphs whose outputs are constants we construct: YOLACT, YOLOv5-seg (and the same object in
YOLOv8-seg's layout), and multi-label classification (probabilities and raw logits)."""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from serve_app.pipeline.session import SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel

SIZE = 64  # model input; images are 128x128, so everything maps back at scale 2


def constant_model(outputs: dict[str, np.ndarray], input_name: str = "images") -> bytes:
    """A graph taking ``input_name`` [1,3,64,64] and returning the given constant tensors."""
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name + "_v"))
             for name, value in outputs.items()]
    graph = helper.make_graph(
        nodes, "constants", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(v.shape)) for name, v in outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def load(data: bytes, task: str, architecture: str, classes: list[str]) -> VisionModel:
    manifest = Manifest.from_dict({
        "model_id": "constructed/1", "task": task, "architecture": architecture, "classes": classes,
        "files": {"weights": {"path": "w.onnx", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
        "input": {"width": SIZE, "height": SIZE, "resize": "letterbox"}})
    return VisionModel.load(manifest, {"weights": data}, SessionOptions(providers=("CPUExecutionProvider",)))


def image() -> np.ndarray:
    return np.zeros((128, 128, 3), np.uint8)


def protos_with_rectangle_channel(p: int = 2, m: int = 16) -> np.ndarray:
    protos = np.zeros((p, m, m), np.float32)
    protos[0] = 1.0  # channel 0 positive everywhere: the box crop alone shapes the mask
    return protos


def assert_one_rectangle(pred: dict, cls: str, conf: float) -> None:
    assert pred["class"] == cls and pred["confidence"] == pytest.approx(conf, abs=1e-5)
    # input box (24, 16)-(40, 48) -> original (48, 32)-(80, 96)
    assert (pred["x"], pred["y"], pred["width"], pred["height"]) == pytest.approx((64, 64, 32, 64), abs=1e-3)
    xs = [p["x"] for p in pred["points"]]
    ys = [p["y"] for p in pred["points"]]
    assert min(xs) == pytest.approx(48, abs=2.5) and max(xs) == pytest.approx(80, abs=2.5)
    assert min(ys) == pytest.approx(32, abs=2.5) and max(ys) == pytest.approx(96, abs=2.5)


def test_yolact():
    priors = np.array([[0.5, 0.5, 0.25, 0.5], [0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]], np.float32)
    loc = np.zeros((3, 4), np.float32)  # no offsets: the boxes are the priors
    conf = np.array([[0.05, 0.9, 0.05], [0.98, 0.01, 0.01], [0.98, 0.01, 0.01]], np.float32)  # col 0: background
    coef = np.array([[10, 0], [10, 0], [10, 0]], np.float32)
    proto = protos_with_rectangle_channel().transpose(1, 2, 0)  # YOLACT: [mh, mw, P]
    data = constant_model({"loc": loc[None], "conf": conf[None], "mask": coef[None], "priors": priors[None],
                           "proto": proto[None]})
    model = load(data, "instance-segmentation", "yolact", ["ring", "plate"])
    preds = model.predict([image()], InferenceParams(confidence=0.5))[0]["predictions"]
    assert len(preds) == 1
    assert_one_rectangle(preds[0], "ring", 0.9)


def _seg_rows() -> np.ndarray:
    # one object: centre (32, 32), 16 x 32, class 1 with confidence 0.9, mask coefficients (10, 0)
    return np.array([[32, 32, 16, 32, 0.0, 0.9, 10, 0], [10, 10, 4, 4, 0.01, 0.02, 10, 0]], np.float32)


def test_yolov5_seg_and_yolov8_seg_layouts():
    rows = _seg_rows()
    obj = rows[:, 4:6].max(axis=1, keepdims=True)
    v5 = np.concatenate([rows[:, :4], obj, rows[:, 4:6] / obj, rows[:, 6:]], axis=1)  # [N, 5 + C + P]
    protos = protos_with_rectangle_channel()[None]
    m5 = load(constant_model({"output0": v5[None], "output1": protos}), "instance-segmentation", "yolov5-seg",
              ["circle", "square"])
    m8 = load(constant_model({"output0": rows.T[None], "output1": protos}), "instance-segmentation", "yolov8-seg",
              ["circle", "square"])
    for model in (m5, m8):
        preds = model.predict([image()], InferenceParams(confidence=0.25))[0]["predictions"]
        assert len(preds) == 1
        assert_one_rectangle(preds[0], "square", 0.9)
    rle = m8.predict([image()], InferenceParams(confidence=0.25, mask_format="rle"))[0]["predictions"][0]["rle_mask"]
    from serve_app.tasks.masks import rle_decode

    mask = rle_decode(rle)
    ys, xs = np.nonzero(mask)
    assert mask.shape == (128, 128) and (xs.min(), xs.max(), ys.min(), ys.max()) == (48, 79, 32, 95)


@pytest.mark.parametrize("scores", [[0.9, 0.2, 0.7], [2.1972, -1.3863, 0.8473]])  # probabilities, then logits
def test_multi_label_classification(scores):
    model = load(constant_model({"output0": np.array([scores], np.float32)}), "classification", "multi-label",
                 ["cat", "dog", "hat"])
    result = model.predict([image()], InferenceParams(confidence=0.5))[0]
    assert result["predicted_classes"] == ["cat", "hat"]
    assert result["predictions"]["cat"]["confidence"] == pytest.approx(0.9, abs=1e-3)
    assert result["predictions"]["dog"] == {"confidence": pytest.approx(0.2, abs=1e-3), "class_id": 1}


def test_single_label_from_logits_gets_a_softmax():
    model = load(constant_model({"output0": np.array([[1.0, 3.0, 0.0]], np.float32)}), "classification",
                 "yolov8-cls", ["a", "b", "c"])
    result = model.predict([image()])[0]
    e = np.exp([1.0, 3.0, 0.0])
    assert result["top"] == "b" and result["confidence"] == pytest.approx(e[1] / e.sum(), abs=1e-5)
    assert [p["class"] for p in result["predictions"]] == ["b", "a", "c"]


# -- end-to-end heads (YOLOv10, YOLO26): [K, 6 (+E)] rows of x1, y1, x2, y2, score, class, extras ---------------
def _end2end_rows(extra: list[float] | None = None) -> np.ndarray:
    """Three boxes as an end-to-end head writes them (best first, then padding rows of score 0): two
    overlapping squares (IoU 0.6, which NMS at 0.5 would merge: an end-to-end head has already chosen
    both), a circle below the threshold, and a row whose class index is not the model's."""
    e = extra or []
    return np.array([[24, 16, 40, 48, 0.9, 1, *e], [24, 22, 40, 48, 0.8, 1, *e], [0, 0, 8, 8, 0.1, 0, *e],
                     [0, 0, 8, 8, 0.95, 7, *e], [0, 0, 0, 0, 0.0, 0, *e]], np.float32)


@pytest.mark.parametrize("architecture", ["yolo26", "yolov10", "yolo26n", "yolov10n"])
def test_end2end_detection_keeps_the_heads_choice_without_nms(architecture):
    model = load(constant_model({"output0": _end2end_rows()[None]}), "object-detection", architecture,
                 ["circle", "square"])
    preds = model.predict([image()], InferenceParams(confidence=0.25, iou_threshold=0.5))[0]["predictions"]
    assert [(p["class"], round(p["confidence"], 3)) for p in preds] == [("square", 0.9), ("square", 0.8)]
    # input (24, 16)-(40, 48) -> original (48, 32)-(80, 96): scale 2
    assert (preds[0]["x"], preds[0]["y"], preds[0]["width"], preds[0]["height"]) == pytest.approx((64, 64, 32, 64))
    low = model.predict([image()], InferenceParams(confidence=0.05, class_filter=("circle",)))[0]["predictions"]
    assert [(p["class"], round(p["confidence"], 3)) for p in low] == [("circle", 0.1)]
    one = model.predict([image()], InferenceParams(confidence=0.25, max_detections=1))[0]["predictions"]
    assert len(one) == 1 and one[0]["confidence"] == pytest.approx(0.9)


def test_yolo26_exported_without_end2end_is_read_in_yolov8s_layout():
    rows = np.array([[32, 32, 16, 32, 0.05, 0.9], [32, 34, 16, 30, 0.05, 0.85]], np.float32)  # NMS merges these
    model = load(constant_model({"output0": rows.T[None]}), "object-detection", "yolo26", ["circle", "square"])
    preds = model.predict([image()], InferenceParams(confidence=0.25))[0]["predictions"]
    assert len(preds) == 1
    assert preds[0]["class"] == "square" and preds[0]["confidence"] == pytest.approx(0.9)


def test_end2end_segmentation():
    rows = _end2end_rows([10, 0])[:1]
    model = load(constant_model({"output0": rows[None], "output1": protos_with_rectangle_channel()[None]}),
                 "instance-segmentation", "yolo26-seg", ["circle", "square"])
    preds = model.predict([image()], InferenceParams(confidence=0.25))[0]["predictions"]
    assert len(preds) == 1
    assert_one_rectangle(preds[0], "square", 0.9)


def test_end2end_keypoints():
    kps = [30, 20, 0.9, 36, 40, 0.8, 26, 44, 0.2]  # input pixels -> original x2
    rows = _end2end_rows(kps)[:2]
    data = constant_model({"output0": rows[None]})
    manifest = Manifest.from_dict({
        "model_id": "constructed/1", "task": "keypoint-detection", "architecture": "yolo26n-pose",
        "classes": ["circle", "square"], "keypoints": {"names": ["a", "b", "c"], "skeleton": [[0, 1]]},
        "files": {"weights": {"path": "w.onnx", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
        "input": {"width": SIZE, "height": SIZE, "resize": "letterbox"}})
    assert manifest.architecture == "yolo26-pose"
    model = VisionModel.load(manifest, {"weights": data}, SessionOptions(providers=("CPUExecutionProvider",)))
    preds = model.predict([image()], InferenceParams(confidence=0.25, keypoint_confidence=0.5))[0]["predictions"]
    assert len(preds) == 2  # overlapping, both kept
    points = [(k["class"], k["x"], k["y"]) for k in preds[0]["keypoints"]]
    assert points == [("a", pytest.approx(60), pytest.approx(40)), ("b", pytest.approx(72), pytest.approx(80))]


@pytest.mark.parametrize("architecture, outputs, expected", [
    ("yolo26", {"output0": np.zeros((1, 300, 7), np.float32)}, "[B, K, 6] (end-to-end) or [B, 6, N]"),
    ("yolov10", {"output0": np.zeros((1, 9, 100), np.float32)}, "[B, K, 6] (end-to-end) or [B, 6, N]"),
    ("yolo26-seg", {"output0": np.zeros((1, 300, 38), np.float32)}, "two outputs"),
])
def test_end2end_outputs_that_fit_no_layout_are_refused_at_load(architecture, outputs, expected):
    from serve_app.errors import ModelLoadError

    task = "instance-segmentation" if architecture.endswith("seg") else "object-detection"
    with pytest.raises(ModelLoadError, match=re.escape(expected)):
        load(constant_model(outputs), task, architecture, ["circle", "square"])
