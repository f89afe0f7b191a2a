"""Output formats without a trained model in the zoo, decoded end to end through VisionModel on
ONNX graphs whose outputs are constants we construct: YOLACT, YOLOv5-seg (and the same object in
YOLOv8-seg's layout), and multi-label classification (probabilities and raw logits)."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from serve_app.pipeline.session import SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel

SIZE = 64  # model input; images are 128x128, so everything maps back at scale 2


def constant_model(outputs: dict[str, np.ndarray]) -> bytes:
    """A graph taking images [B,3,64,64] and returning the given constant tensors."""
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name + "_v"))
             for name, value in outputs.items()]
    graph = helper.make_graph(
        nodes, "constants", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
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
