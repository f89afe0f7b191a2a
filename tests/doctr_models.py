"""ONNX graphs with DocTR's input and output contract, whose outputs are fixed functions of the
image, for the DocTR pipeline's parity tests: real DocTR weights cannot be had here, and random ones
find nothing (every probability near 0.5). Both take DocTR's normalised NCHW input (its mean and
std undone inside the graph) and have a dynamic batch axis, as DocTR's own exports do.

- ``detector()``: ``logits`` ``[B, 1, H, W]``, positive where the page is ink: grey between 0.05 and
  0.5 (dark text on a light page; the black padding DocTR adds is not ink), dilated by a 9x9 max
  pool so the letters of a word join into one region and words stay apart.
- ``recognizer(vocab)``: ``logits`` ``[B, 32, len(vocab) + 1]``: the image's darkness in 32 column
  bands picks a character per step (white: the CTC blank, the last class), so different words read
  as different strings and repeats and blanks are merged as CTC does.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serve_app.tasks.doctr import DET_MEAN, DET_STD, REC_MEAN, REC_STD


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32), name))


def _grey(mean, std) -> list[onnx.NodeProto]:
    """input (normalised) -> ``grey`` [B, 1, H, W] in [0, 1]."""
    return [
        _const("std", np.reshape(std, (1, 3, 1, 1))), _const("mean", np.reshape(mean, (1, 3, 1, 1))),
        helper.make_node("Mul", ["input", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["rgb"]),
        helper.make_node("ReduceMean", ["rgb"], ["grey"], axes=[1], keepdims=1),
    ]


def _model(nodes, shape_in, shape_out) -> bytes:
    graph = helper.make_graph(nodes, "doctr_contract",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape_out)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def detector(size: int = 1024) -> bytes:
    nodes = _grey(DET_MEAN, DET_STD) + [
        _const("lo", [0.05]), _const("hi", [0.5]), _const("gain", [40.0]),
        helper.make_node("Sub", ["grey", "lo"], ["above"]),
        helper.make_node("Sub", ["hi", "grey"], ["below"]),
        helper.make_node("Min", ["above", "below"], ["ink"]),
        helper.make_node("MaxPool", ["ink"], ["joined"], kernel_shape=[9, 9], pads=[4, 4, 4, 4], strides=[1, 1]),
        helper.make_node("Mul", ["joined", "gain"], ["logits"]),
    ]
    return _model(nodes, ["batch_size", 3, size, size], ["batch_size", 1, size, size])


def recognizer(vocab: str, steps: int = 32) -> bytes:
    v = len(vocab)
    nodes = _grey(REC_MEAN, REC_STD) + [
        helper.make_node("ReduceMean", ["grey"], ["columns"], axes=[2], keepdims=1),  # [B, 1, 1, 128]
        helper.make_node("AveragePool", ["columns"], ["bands"], kernel_shape=[1, 128 // steps],
                         strides=[1, 128 // steps]),  # [B, 1, 1, steps]
        _const("shape", np.array([0, steps, 1])),
        helper.make_node("Cast", ["shape"], ["shape64"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["bands", "shape64"], ["per_step"]),  # [B, steps, 1]: lightness
        _const("scale", [float(v)]), _const("classes", np.arange(v + 1, dtype=np.float32).reshape(1, 1, -1)),
        _const("sharp", [-4.0]),
        helper.make_node("Mul", ["per_step", "scale"], ["target"]),  # white -> v (the blank)
        helper.make_node("Sub", ["target", "classes"], ["offset"]),
        helper.make_node("Mul", ["offset", "offset"], ["squared"]),
        helper.make_node("Mul", ["squared", "sharp"], ["logits"]),
    ]
    return _model(nodes, ["batch_size", 3, 32, 128], ["batch_size", steps, v + 1])
