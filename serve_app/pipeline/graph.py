"""ONNX graph edits done at load time.

:func:`prepend_uint8_normalization` makes a float-input image model take ``uint8`` NCHW pixels:
the cast, scale and mean/std run inside the session (on the GPU when it runs there), so clients
and replicas ship a quarter of the bytes and NumPy does no float work.

>>> # bytes_out = prepend_uint8_normalization(model_bytes, scale=1/255)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serve_app.errors import ModelLoadError


def prepend_uint8_normalization(model_bytes: bytes, scale: float, mean: Sequence[float] = (0, 0, 0),
                                std: Sequence[float] = (1, 1, 1)) -> bytes:
    """Return the model with a uint8 input feeding ``(cast(x) * scale - mean) / std`` into the old input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(bytes(model_bytes))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelLoadError(f"uint8 input needs a model with one image input, this one has {len(inputs)}")
    old = inputs[0]
    if old.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelLoadError("uint8 input needs a float32 image input")
    float_name = old.name
    new_name = float_name + "_uint8"
    for node in graph.node:  # rewire every consumer of the old input to the normalised tensor
        for k, name in enumerate(node.input):
            if name == float_name:
                node.input[k] = "normalised_input"
    new_input = helper.make_tensor_value_info(new_name, TensorProto.UINT8, None)
    new_input.type.tensor_type.shape.CopyFrom(old.type.tensor_type.shape)
    graph.input.remove(old)
    graph.input.insert(0, new_input)
    mean_a = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    std_a = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    # (x * scale - mean) / std  ==  x * (scale / std) + (-mean / std)
    graph.initializer.extend([numpy_helper.from_array((np.float32(scale) / std_a).astype(np.float32), "input_gain"),
                              numpy_helper.from_array((-mean_a / std_a).astype(np.float32), "input_bias")])
    nodes = [helper.make_node("Cast", [new_name], ["input_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["input_float", "input_gain"], ["input_scaled"]),
             helper.make_node("Add", ["input_scaled", "input_bias"], ["normalised_input"])]
    for n in reversed(nodes):
        graph.node.insert(0, n)
    return model.SerializeToString()
