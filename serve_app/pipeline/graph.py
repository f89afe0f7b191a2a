"""ONNX graph edits done at load time.

:func:`prepend_uint8_normalization` makes a float-input image model take ``uint8`` pixels:
the cast, scale and mean/std run inside the session (on the GPU when it runs there), so clients
and replicas ship a quarter of the bytes and NumPy does no float work. With ``channels_last``
the input is the decoded images themselves, stacked ``N x H x W x 3`` in OpenCV's BGR order:
the transpose to NCHW and, with ``reverse_channels``, BGR to RGB run in the session too (a
strided NumPy copy of 0.5-1 ms per 640x640 image otherwise).

>>> # bytes_out = prepend_uint8_normalization(model_bytes, scale=1/255)
>>> # nhwc_bgr = prepend_uint8_normalization(model_bytes, 1/255, channels_last=True, reverse_channels=True)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from serve_app.errors import ModelLoadError


def prepend_uint8_normalization(model_bytes: bytes, scale: float, mean: Sequence[float] = (0, 0, 0),
                                std: Sequence[float] = (1, 1, 1), *, channels_last: bool = False,
                                reverse_channels: bool = False) -> bytes:
    """Return the model with a uint8 input feeding ``(cast(x) * scale - mean) / std`` into the old input.

    ``channels_last``: the new input is ``N x H x W x C`` (the old one ``N x C x H x W``), transposed
    inside; ``reverse_channels``: its channels come in the opposite order (BGR for an RGB model).
    """
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
    if channels_last:
        dims = new_input.type.tensor_type.shape.dim
        if len(dims) != 4:
            raise ModelLoadError(f"a channels-last input needs a 4-d image input, this one has {len(dims)} dims")
        n, c, h, w = [_copy_dim(d) for d in dims]
        for slot, dim in zip(dims, (n, h, w, c)):
            slot.CopyFrom(dim)
    graph.input.remove(old)
    graph.input.insert(0, new_input)
    mean_a = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    std_a = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    # (x * scale - mean) / std  ==  x * (scale / std) + (-mean / std)
    graph.initializer.extend([numpy_helper.from_array((np.float32(scale) / std_a).astype(np.float32), "input_gain"),
                              numpy_helper.from_array((-mean_a / std_a).astype(np.float32), "input_bias")])
    nodes, pixels = [], new_name
    if channels_last:
        nodes.append(helper.make_node("Transpose", [pixels], ["input_nchw"], perm=[0, 3, 1, 2]))
        pixels = "input_nchw"
    if reverse_channels:
        channels = int(mean_a.size)
        graph.initializer.append(numpy_helper.from_array(np.arange(channels - 1, -1, -1, dtype=np.int64), "input_channel_order"))
        nodes.append(helper.make_node("Gather", [pixels, "input_channel_order"], ["input_reordered"], axis=1))
        pixels = "input_reordered"
    nodes += [helper.make_node("Cast", [pixels], ["input_float"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["input_float", "input_gain"], ["input_scaled"]),
              helper.make_node("Add", ["input_scaled", "input_bias"], ["normalised_input"])]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return model.SerializeToString()


def _copy_dim(dim: Any) -> Any:
    """An onnx ``TensorShapeProto.Dimension``, detached from its shape."""
    from onnx import TensorShapeProto

    out = TensorShapeProto.Dimension()
    out.CopyFrom(dim)
    return out
