"""The pixels-in-the-graph input (pipeline/graph.py): a model given the decoded BGR images
stacked channels-last answers exactly what it answers to the float NCHW tensor NumPy builds."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serve_app.errors import ModelLoadError
from serve_app.pipeline.graph import prepend_uint8_normalization
from serve_app.pipeline.preprocess import InputSpec, to_tensor


def conv_model(dims: list, seed: int = 0) -> bytes:
    """A float model: a 3x3 convolution whose weights tell the channels apart, then a sum per channel."""
    w = np.random.default_rng(seed).normal(size=(4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceSum", ["conv"], ["out"], axes=[2, 3], keepdims=0)],
        "probe", [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    return model.SerializeToString()


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("order", ["rgb", "bgr"])
@pytest.mark.parametrize("mean,std", [((0, 0, 0), (1, 1, 1)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_channels_last_bgr_input_gives_the_float_tensors_answer(order, mean, std):
    spec = InputSpec(width=24, height=16, channel_order=order, mean=mean, std=std)
    images = [np.random.default_rng(i).integers(0, 256, (16, 24, 3), dtype=np.uint8) for i in range(3)]
    raw = conv_model(["batch", 3, 16, 24])
    want = run(raw, to_tensor(images, spec))
    graph = prepend_uint8_normalization(raw, spec.scale, mean, std, channels_last=True, reverse_channels=order == "rgb")
    stacked = to_tensor(images, spec, np.uint8, channels_last=True)
    assert stacked.shape == (3, 16, 24, 3) and stacked.dtype == np.uint8
    np.testing.assert_array_equal(stacked[1], images[1])  # the decoded BGR pixels, untouched
    got = run(graph, stacked)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)  # x * gain + bias against (x * scale - mean) / std
    # and the channel order matters: the other order gives another answer
    wrong = prepend_uint8_normalization(raw, spec.scale, mean, std, channels_last=True, reverse_channels=order != "rgb")
    assert np.abs(run(wrong, stacked) - want).max() > 1e-2


def test_channels_last_input_keeps_the_models_sizes_and_batch_dimension():
    import onnx

    graph = onnx.load_from_string(prepend_uint8_normalization(conv_model(["batch", 3, 16, 24]), 1 / 255,
                                                              channels_last=True, reverse_channels=True))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 16, 24, 3]
    assert graph.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8


def test_channels_last_needs_an_image_shaped_input():
    with pytest.raises(ModelLoadError, match="4-d"):
        prepend_uint8_normalization(conv_model(["batch", 3, 16]), 1 / 255, channels_last=True)
