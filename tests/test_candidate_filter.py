"""The candidate filter (pipeline/candidates.py): a YOLOv8 session hands back only the rows some
class scores above the batch's floor, and every answer is the one the host's selection over all
8,400 rows gives: same boxes, classes, confidences and order, whatever the request's threshold,
class filter, NMS mode or candidate cap, alone or batched with requests of other thresholds."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from serve_app.errors import ModelLoadError
from serve_app.pipeline.candidates import (CANDIDATES, COUNTS, DEFAULT_FEEDS, FLOOR, CandidateRows,
                                           append_candidate_filter, score_floor)
from serve_app.serving.batcher import TensorBatcher
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel
from tests.zoo_models import load_builtin
from zoo.shapes import draw_scene


def identity_head(opset: int, classes: int = 3, extra: int = 2, anchors: int = 50) -> bytes:
    """A graph whose output is its input, ``[N, 4 + C + E, A]``: the filter on any values we like."""
    d = 4 + classes + extra
    x = helper.make_tensor_value_info("head", TensorProto.FLOAT, ["n", d, anchors])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["n", d, anchors])
    graph = helper.make_graph([helper.make_node("Identity", ["head"], ["output0"])], "head", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8).SerializeToString()


def host_rows(head: np.ndarray, classes: int, floor: float) -> list[np.ndarray]:
    """Per image, its rows (channels first) the host's selection could pass: max not <= floor."""
    out = []
    for image in head:
        best = image[4:4 + classes].max(axis=0)
        out.append(image[:, np.flatnonzero(~(best <= np.float32(floor)))])
    return out


@pytest.mark.parametrize("opset", [12, 17, 18])  # axes as attributes, ReduceSum's as an input, both as inputs
def test_the_graph_keeps_exactly_the_rows_above_the_floor_in_order(opset):
    rng = np.random.default_rng(opset)
    head = rng.random((3, 9, 50), dtype=np.float32)
    head[1, 4:7] *= 0.1  # image 1: nothing reaches 0.5
    head[2, 5, 7] = np.nan  # a NaN score: kept, as the host keeps it
    head[2, 4:7, 9] = -np.inf
    session = ort.InferenceSession(append_candidate_filter(identity_head(opset), 3), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["head", FLOOR]
    assert [o.name for o in session.get_outputs()] == ["output0", CANDIDATES, COUNTS]
    for floor in (0.0, 0.5, 0.95):
        rows, counts = session.run([CANDIDATES, COUNTS], {"head": head, FLOOR: np.array(floor, np.float32)})
        got = CandidateRows(rows, counts)
        expected = host_rows(head, 3, floor)
        assert counts.tolist() == [e.shape[1] for e in expected]
        for i in range(3):
            np.testing.assert_array_equal(got[i], expected[i])  # the same values, anchors in order
    assert np.isnan(got[2]).any() and got[1].shape == (9, 0)
    rows, counts = session.run([CANDIDATES, COUNTS], {"head": head, **DEFAULT_FEEDS})  # no floor: all but -inf
    assert counts.tolist() == [50, 50, 49]


def test_a_request_share_of_a_batch_is_its_images_rows():
    rows = np.arange(30, dtype=np.float32).reshape(6, 5)
    batch = CandidateRows(rows, np.array([1, 0, 3, 2]))
    share = batch[1:3]
    assert len(share) == 2 and share.counts.tolist() == [0, 3]
    np.testing.assert_array_equal(share[1], rows[1:4].T)
    assert share[0].shape == (5, 0) and batch[4:].rows.shape == (0, 5)
    with pytest.raises(ValueError):
        batch[::2]


def test_the_floor_is_just_below_the_threshold():
    for confidence in (0.0, 0.25, 0.4, 1.0):
        floor = score_floor(confidence)
        assert floor.dtype == np.float32 and floor.shape == ()
        assert floor < np.float32(confidence) and np.nextafter(floor, np.float32(2)) == np.float32(confidence)


def test_graphs_it_cannot_filter_are_refused():
    with pytest.raises(ModelLoadError, match="opset 12"):
        append_candidate_filter(identity_head(11), 3)
    flat = onnx.load_from_string(identity_head(17))
    flat.graph.output[0].type.tensor_type.shape.dim.pop()  # [N, D]: not rows of anchors
    with pytest.raises(ModelLoadError, match="first output"):
        append_candidate_filter(flat.SerializeToString(), 3)
    with pytest.raises(ModelLoadError, match="cannot hold"):
        append_candidate_filter(identity_head(17, classes=3, extra=0), 8)  # 7 rows, 8 classes


# -- through the model --------------------------------------------------------------------------------
def load(model_id: str = "shapes-det/1", **options: Any) -> VisionModel:
    return load_builtin(model_id, batch_sizes=(1, 8), force_batch_sessions=True, **options)


@pytest.fixture(scope="module")
def models() -> tuple[VisionModel, VisionModel]:
    filtered, plain = load(), load(candidate_filter=False)
    assert filtered.candidate_filter and not plain.candidate_filter
    return filtered, plain


def test_keypoint_and_mask_models_answer_as_the_host_selection_too(images):
    """YOLOv8-pose rows carry keypoints, YOLOv8-seg rows mask coefficients (and its prototypes, a
    second output, stay): the same answers, polygons and keypoints included."""
    for model_id in ("shapes-pose/1", "shapes-seg/1"):
        filtered, plain = load(model_id), load(model_id, candidate_filter=False)
        assert filtered.candidate_filter and not plain.candidate_filter
        for params in (PARAMS[0], PARAMS[2], PARAMS[4]):
            got = [answers(r) for r in filtered.predict(images, params)]
            assert got == [answers(r) for r in plain.predict(images, params)], (model_id, params)
        assert sum(len(a) for a in got) >= 3, model_id


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(2_026)
    return [draw_scene(rng).image for _ in range(6)]


def answers(result: dict) -> list[dict]:
    return [{k: v for k, v in p.items() if k != "detection_id"} for p in result["predictions"]]


PARAMS = [InferenceParams(confidence=c, iou_threshold=i, class_agnostic_nms=a, class_filter=f, max_candidates=m)
          for c, i, a, f, m in [(0.4, 0.3, False, None, 3000), (0.01, 0.5, False, None, 3000),
                                (0.25, 0.45, True, None, 3000), (0.3, 0.5, False, ("circle", "triangle"), 3000),
                                (0.05, 0.5, False, None, 7), (0.9, 0.5, False, None, 3000),
                                (0.0, 0.7, True, ("square",), 50)]]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"c{p.confidence}")
def test_a_filtered_model_answers_exactly_as_the_host_selection(models, images, params):
    filtered, plain = models
    got = [answers(r) for r in filtered.predict(images, params)]
    expected = [answers(r) for r in plain.predict(images, params)]
    assert got == expected
    if params.confidence == 0.4:
        assert sum(len(a) for a in got) >= 6  # the scenes hold shapes the model finds


def test_requests_of_other_thresholds_batched_together_each_get_their_own_answer(models, images):
    """As the replica batches on a GPU: each request's floor, the batch run at the lowest, the
    outputs split by request, each decoded with its own parameters."""
    filtered, plain = models
    asks = list(zip(images, [PARAMS[0], PARAMS[1], PARAMS[3], PARAMS[5], PARAMS[2], PARAMS[6]]))
    floors: list[float] = []

    def run(tensor: np.ndarray, floor: np.ndarray | None = None) -> list[Any]:
        floors.append(float(floor))
        return filtered.run(tensor, floor)

    async def ask_all() -> list[list[dict]]:
        batcher = TensorBatcher(run, max_batch=8, max_wait_s=0.05, buckets=(1, 8), in_flight=lambda: len(asks))

        async def ask(image: np.ndarray, params: InferenceParams) -> list[dict]:
            tensor, transforms = filtered.prepare([image], params)
            outputs = await batcher.submit(tensor, filtered.score_floor(params))
            return answers(filtered.decode(outputs, transforms, params, [image])[0])
        return await asyncio.gather(*(ask(image, params) for image, params in asks))

    got = asyncio.run(ask_all())
    assert floors == [float(score_floor(0.0))]  # one batch of six, at the lowest threshold asked
    assert got == [answers(plain.predict([image], params)[0]) for image, params in asks]


def test_models_it_does_not_apply_to_keep_the_full_output():
    assert not load("shapes-det-v5/1").candidate_filter  # YOLOv5's rows carry objectness
    assert not load("shapes-det-26/1").candidate_filter  # YOLO26 may write its end-to-end head
    assert not load(precision="fp16", force_precision=True).candidate_filter
