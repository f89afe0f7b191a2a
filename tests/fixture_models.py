"""Tiny real ONNX models for exercising the serving machinery without heavy weights.

``colour_classifier``: averages each colour channel and classifies the image as red, green or
blue, so a solid red image must come back ``top == "red"``. ``variant`` changes the file's bytes
(a metadata entry) without changing its answers, to make distinct artifacts.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ["red", "green", "blue"]


def colour_classifier(variant: int = 0, size: int = 32) -> bytes:
    weights = numpy_helper.from_array((np.eye(3) * 10).astype(np.float32), "w")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "colour_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="serve_app-tests")
    model.ir_version = 8
    for key, value in {"variant": str(variant), "task": "classify", "names": str(dict(enumerate(CLASSES))),
                       "imgsz": f"[{size}, {size}]"}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return model.SerializeToString()


def classifier_manifest(model_id: str, data: bytes, *, uri: str | None = None, path: str | None = None) -> dict:
    files = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    files.update({"uri": uri} if uri else {"path": path or "weights.onnx"})
    return {"model_id": model_id, "task": "classification", "architecture": "yolov8-cls", "files": {"weights": files},
            "classes": CLASSES, "input": {"width": 32, "height": 32, "resize": "stretch"}}


def write_repository(root: Path, models: dict[str, bytes], uris: dict[str, str] | None = None) -> Path:
    """A model repository with ``models`` (id -> ONNX bytes); with ``uris``, manifests point there."""
    for model_id, data in models.items():
        folder = root / model_id
        folder.mkdir(parents=True, exist_ok=True)
        if uris and model_id in uris:
            manifest = classifier_manifest(model_id, data, uri=uris[model_id])
        else:
            (folder / "weights.onnx").write_bytes(data)
            manifest = classifier_manifest(model_id, data)
        (folder / "model.json").write_text(json.dumps(manifest))
    return root


def solid_jpeg(bgr: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    import cv2

    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[:] = bgr
    return cv2.imencode(".png", image)[1].tobytes()


RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)


def heavy_classifier(variant: int = 0, megabytes: float = 16, size: int = 32) -> bytes:
    """:func:`colour_classifier`'s answers from a file of about ``megabytes`` MiB.

    The weight is a ``[rows, 3]`` table that the graph really reads (a ``Gather`` at an index
    computed from the image, always 0, times 0), so ONNX Runtime can neither fold nor drop it:
    a loaded session holds it, and the replica's measured memory grows with it (about twice the
    file on the CPU provider).
    """
    rows = max(1, int(megabytes * 2**20) // 12)
    table = numpy_helper.from_array(np.full((rows, 3), variant * 1e-6, np.float32), "table")
    weights = numpy_helper.from_array((np.eye(3) * 10).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "w"], ["logits"]),
        helper.make_node("ReduceMean", ["means"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["mean0"]),
        helper.make_node("Cast", ["mean0"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["row"], axis=0),
        helper.make_node("Mul", ["row", "zero"], ["row0"]),
        helper.make_node("Add", ["logits", "row0"], ["biased"]),
        helper.make_node("Softmax", ["biased"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "heavy_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weights, zero, table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="serve_app-tests")
    model.ir_version = 8
    for key, value in {"variant": str(variant), "task": "classify", "names": str(dict(enumerate(CLASSES))),
                       "imgsz": f"[{size}, {size}]"}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return model.SerializeToString()
