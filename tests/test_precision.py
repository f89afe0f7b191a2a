"""The opt-in GPU session features on the CPU: float16 graphs, CUDA graphs, the shared arena.

On the CPU provider ONNX Runtime runs a float16 graph by inserting casts around the nodes it has
no float16 kernel for (most of them, on x86), so these tests check the conversion (which nodes
stay float32, the float32 inputs and outputs, the weights rounded to float16) rather than float16
arithmetic; ``benchmarks/gpu_precision.py`` compares the answers on a GPU. CUDA graphs and a
shared CUDA arena cannot run here: the tests check they are refused or harmless on the CPU, and
the fixed-buffer runner that feeds a CUDA graph is checked with host buffers.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from serve_app.errors import ManifestError
from serve_app.pipeline.cuda_graph import CudaGraphRunner
from serve_app.pipeline.graph import prepend_uint8_normalization
from serve_app.pipeline.precision import PREFIX_OUTPUT, convert_to_fp16, fp32_nodes
from serve_app.pipeline.session import SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.settings import Settings
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel
from tests.zoo_models import MODELS, builtin, match, pred_boxes
from zoo.shapes import CLASSES, draw_dominant_shape, draw_scene

PARAMS = InferenceParams(confidence=0.4, iou_threshold=0.5)
MARGIN = 0.02  # confidences may differ by this much; a box this close to the threshold may come or go


@lru_cache(maxsize=None)
def load(model_id: str, **options: Any) -> VisionModel:
    manifest = Manifest.from_dict(json.loads((MODELS / model_id / "model.json").read_text()))
    files = {name: (MODELS / model_id / spec.path).read_bytes() for name, spec in manifest.files.items()}
    return VisionModel.load(manifest, files, SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=2,
                                                            **options))


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(424_242)
    return [draw_scene(rng) for _ in range(6)]


def assert_same_detections(ref: list[dict], got: list[dict], min_iou: float = 0.98) -> None:
    """Each box of one list above the threshold's margin has a same-class box in the other with
    IoU >= ``min_iou`` and a confidence within ``MARGIN``."""
    for a, b in ((ref, got), (got, ref)):
        sure = [p for p in a if p["confidence"] >= PARAMS.confidence + MARGIN]
        pairs = match(pred_boxes(sure), [p["class"] for p in sure], b, min_iou=min_iou)
        assert len(pairs) == len(sure), f"{len(sure) - len(pairs)} of {len(sure)} boxes unmatched"
        for i, j in pairs:
            assert abs(sure[i]["confidence"] - b[j]["confidence"]) <= MARGIN


def answer(model: VisionModel, image: np.ndarray) -> list[dict]:
    """The predictions without their random ``detection_id``."""
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in model.predict([image], PARAMS)[0]["predictions"]]


def uint8_graph(model_id: str) -> onnx.ModelProto:
    raw = (MODELS / model_id / "weights.onnx").read_bytes()
    return onnx.load_from_string(prepend_uint8_normalization(raw, 1 / 255))


def test_conversion_keeps_the_input_prefix_the_tail_and_float32_outputs():
    source = uint8_graph("shapes-det/1")
    converted = onnx.load_from_string(convert_to_fp16(source.SerializeToString()))
    inputs = [i.type.tensor_type.elem_type for i in converted.graph.input]
    outputs = [o.type.tensor_type.elem_type for o in converted.graph.output]
    assert inputs == [onnx.TensorProto.UINT8] and outputs == [onnx.TensorProto.FLOAT]
    def elements(model: onnx.ModelProto, dtype: int) -> int:
        return sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == dtype)

    # the convolutions' weights: nearly all of them
    assert elements(converted, onnx.TensorProto.FLOAT16) > 0.97 * elements(source, onnx.TensorProto.FLOAT)
    kept = {n.name: n for n in converted.graph.node if n.name in fp32_nodes(converted.graph)}
    types = {n.op_type for n in kept.values()}
    assert {"Cast", "Resize", "Softmax", "Sigmoid"} <= types  # the class sigmoid of the tail, not every SiLU
    prefix = [n for n in converted.graph.node if PREFIX_OUTPUT in n.output]
    assert prefix and prefix[0].name in kept
    gain = next(i for i in converted.graph.initializer if i.name == "input_gain")
    assert gain.data_type == onnx.TensorProto.FLOAT  # 1/255 in float32: pixels scaled before any float16


@pytest.mark.parametrize("model_id", ["shapes-det/1", "shapes-seg/1", "shapes-pose/1"])
def test_fp16_forced_on_the_cpu_gives_the_fp32_detections(model_id, scenes):
    fp32, fp16 = builtin(model_id), load(model_id, precision="fp16", force_precision=True)
    assert fp16.session.precision == "fp16" and fp32.session.precision == "fp32"
    for scene in scenes:
        ref = fp32.predict([scene.image], PARAMS)[0]["predictions"]
        got = fp16.predict([scene.image], PARAMS)[0]["predictions"]
        assert_same_detections(ref, got)


def test_fp16_classifier_gives_the_same_top_class():
    rng = np.random.default_rng(5)
    fp32, fp16 = builtin("shapes-cls/1"), load("shapes-cls/1", precision="fp16", force_precision=True)
    assert fp16.session.precision == "fp16"
    for name in CLASSES:
        image = draw_dominant_shape(rng, name).image
        a, b = fp32.predict([image])[0], fp16.predict([image])[0]
        assert a["top"] == b["top"] and abs(a["confidence"] - b["confidence"]) <= MARGIN


def test_fp16_is_not_applied_on_the_cpu_unless_forced(scenes, caplog):
    with caplog.at_level(logging.WARNING, logger="serve_app.pipeline.session"):
        model = load("shapes-det/1", precision="fp16")
    assert model.session.precision == "fp32"
    assert any("fp16 applies on CUDA/TensorRT only" in r.getMessage() for r in caplog.records)
    image = scenes[0].image
    assert answer(model, image) == answer(builtin("shapes-det/1"), image)


def test_cuda_graph_is_refused_on_the_cpu_and_changes_nothing(scenes, caplog):
    with caplog.at_level(logging.WARNING, logger="serve_app.pipeline.session"):
        model = load("shapes-det/1", cuda_graph=True, batch_sizes=(1, 8))
    assert model.session.cuda_graph is None
    assert any("cuda_graph needs the CUDA provider" in r.getMessage() for r in caplog.records)
    plain = builtin("shapes-det/1")
    for scene in scenes[:3]:
        assert answer(model, scene.image) == answer(plain, scene.image)


def test_shared_arena_gives_the_same_answers(scenes):
    shared = [load(m, shared_arena=True) for m in ("shapes-det/1", "shapes-seg/1")]
    assert all(m.session.shared_arena for m in shared)
    for model in shared:
        plain = builtin(model.manifest.model_id)
        for scene in scenes[:3]:
            assert answer(model, scene.image) == answer(plain, scene.image)


def test_fixed_buffer_runner_pads_chunks_and_refreshes_its_input():
    """The CUDA-graph runner's buffer handling, on host buffers: each call's own answer."""
    data = uint8_graph("shapes-cls/1").SerializeToString()
    sessions = {b: ort.InferenceSession(data, providers=["CPUExecutionProvider"]) for b in (1, 4)}
    name = sessions[1].get_inputs()[0].name
    runner = CudaGraphRunner(sessions, name, [o.name for o in sessions[1].get_outputs()], device="cpu")
    spec = builtin("shapes-cls/1").manifest.input
    rng = np.random.default_rng(0)
    for n in (1, 4, 2, 1, 4, 3, 9):  # buckets, padded sizes, more than the largest bucket
        x = rng.integers(0, 255, (n, 3, spec.height, spec.width), dtype=np.uint8)
        want = sessions[1].run(None, {name: x})[0]
        got = runner.run(x)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="replays the shape it recorded"):
        runner.run(np.zeros((1, 3, spec.height + 32, spec.width), np.uint8))


def test_settings_carry_the_features_to_session_options():
    options = Settings.from_args({"precision": "fp16", "cuda_graph": True, "shared_arena": True,
                                  "max_models_per_replica": 1, "inference_threads": 1}).session_options
    assert (options.precision, options.cuda_graph, options.shared_arena) == ("fp16", True, True)
    default = Settings.from_args({}).session_options
    assert (default.precision, default.cuda_graph, default.shared_arena) == ("fp32", False, False)
    with pytest.raises(ManifestError, match="precision"):
        Settings.from_args({"precision": "int8"})
    # a CUDA graph records in CUDA's global capture mode: other GPU work in the replica must not exist
    for other in ({}, {"max_models_per_replica": 4}, {"max_models_per_replica": 1, "gpu_jpeg_decode": True}):
        with pytest.raises(ManifestError, match="cuda_graph needs max_models_per_replica: 1"):
            Settings.from_args({"cuda_graph": True, **other})
    # a session built while another runs on the shared arena broke the replica's GPU context
    one = {"max_models_per_replica": 1, "inference_threads": 1}
    for other in ({}, {**one, "max_models_per_replica": 4}, {**one, "lazy_batch_sessions": True},
                  {**one, "inference_threads": 2}, {"max_models_per_replica": 1}):
        with pytest.raises(ManifestError, match="shared_arena needs max_models_per_replica: 1"):
            Settings.from_args({"shared_arena": True, **other})
    assert Settings.from_args({"shared_arena": True, **one}).shared_arena
    with pytest.raises(ValueError, match="precision"):
        SessionOptions(precision="half")
