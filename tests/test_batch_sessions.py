"""Bucket sessions built on demand (``lazy_batch_sessions``), on the CPU provider (forced).

A replica on a GPU gives each batch bucket a session of its own. With ``lazy_batch_sessions``
only batch 1's is built at load (a first request waits for one build and warm-up); batches run
row by row through it until the model has company and ``add_batch_sessions`` builds the rest.
Every path must give each image the answer the model gives it alone.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel
from tests.zoo_models import load_builtin
from zoo.shapes import draw_scene

PARAMS = InferenceParams(confidence=0.3, iou_threshold=0.5)


def load(model_id: str = "shapes-det/1", **options: Any) -> VisionModel:
    return load_builtin(model_id, batch_sizes=(1, 8), force_batch_sessions=True, **options)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(8_008)
    return [draw_scene(rng).image for _ in range(5)]


def answers(predictions: list[dict]) -> list[tuple]:
    """What a detection says (class, box, confidence), rounded below the noise of batched kernels."""
    return [(p["class"], *(round(p[k], 2) for k in ("x", "y", "width", "height")), round(p["confidence"], 3))
            for p in predictions]


def one_by_one(model: VisionModel, images: list[np.ndarray]) -> list[list[tuple]]:
    return [answers(model.predict([image], PARAMS)[0]["predictions"]) for image in images]


def batched(model: VisionModel, images: list[np.ndarray]) -> list[list[tuple]]:
    """As the replica batches: prepare, pad to the buckets ready now, run, decode."""
    from serve_app.serving.batcher import pad_to_bucket

    tensor, transforms = model.prepare(images, PARAMS)
    padded = pad_to_bucket(tensor, model.ready_buckets((1, 8)))
    outputs = [o[:len(images)] for o in model.run(padded)]
    return [answers(r["predictions"]) for r in model.decode(outputs, transforms, PARAMS, images)]


def test_eager_buckets_are_built_at_load_and_answer_as_one_by_one(images):
    model = load()
    assert model.session.batch_sizes == [1, 8] and model.pending_batch_sizes == ()
    assert model.ready_buckets((1, 8)) == (1, 8)
    expected = one_by_one(model, images)
    assert sum(len(p) for p in expected) >= 5  # the scenes hold shapes the model finds
    assert batched(model, images) == expected


def test_lazy_buckets_run_row_by_row_until_built_then_in_their_session(images, caplog):
    eager, lazy = load(), load(lazy_batch_sessions=True)
    assert lazy.session.batch_sizes == [1] and lazy.pending_batch_sizes == (8,)
    assert lazy.ready_buckets((1, 8)) == (1,)  # no padding to a bucket without its session
    expected = one_by_one(eager, images)
    assert one_by_one(lazy, images) == expected
    assert batched(lazy, images) == expected  # 5 rows, one at a time through batch 1's session

    with caplog.at_level(logging.INFO, logger="serve_app.pipeline.session"):
        assert lazy.add_batch_sessions() == [8]
    assert any("session for batch size 8 built and warmed" in r.getMessage() for r in caplog.records)
    assert lazy.session.batch_sizes == [1, 8] and lazy.pending_batch_sizes == ()
    assert lazy.ready_buckets((1, 8)) == (1, 8)
    assert batched(lazy, images) == expected  # padded to 8, in the new session
    assert lazy.add_batch_sessions() == []  # built once


def test_a_size_without_a_session_is_not_fed_to_batch_ones_session(images):
    """Nine images (more than the largest bucket) go through batch 1's session row by row: a new
    input shape would make a CUDA session re-plan its kernels on every such call."""
    model = load()
    tensor, _ = model.prepare(images * 2, PARAMS)
    nine = tensor[:9]
    expected = [model.session.run(nine[i:i + 1]) for i in range(9)]

    class Recording:  # ONNX Runtime's session, with the batch size of each call it gets
        def __init__(self, inner: Any) -> None:
            self.inner, self.sizes = inner, []

        def run(self, names: Any, feeds: dict, run_options: Any = None) -> Any:
            self.sizes.append(len(next(iter(feeds.values()))))
            return self.inner.run(names, feeds, run_options)

    model.session.session = recording = Recording(model.session.session)
    got = model.session.run(nine)
    assert recording.sizes == [1] * 9
    for k, out in enumerate(got):
        np.testing.assert_array_equal(out, np.concatenate([e[k] for e in expected]))


def test_cuda_graph_keeps_its_buckets_eager_and_the_setting_reaches_the_session():
    from serve_app.settings import Settings

    options = Settings.from_args({"lazy_batch_sessions": True}).session_options
    assert options.lazy_batch_sessions
    assert not Settings.from_args({}).session_options.lazy_batch_sessions
    model = load(lazy_batch_sessions=True, cuda_graph=True)  # refused on the CPU: plain lazy sessions
    assert model.session.cuda_graph is None and model.pending_batch_sizes == (8,)


def test_a_failed_bucket_build_leaves_batches_row_by_row_and_is_not_retried(images):
    """A bucket session that cannot be built (on a GPU: out of memory, a CUDA error) raises once;
    the bucket is no longer pending, so the replica does not retry it on every batch, and the
    model's batches keep their answers through batch 1's session."""
    from serve_app.errors import ModelLoadError

    model = load(lazy_batch_sessions=True)
    expected = one_by_one(model, images)

    def fail() -> Any:
        raise ModelLoadError("shapes-det/1: ONNX Runtime cannot load the weights: CUDA failure 2: out of memory")

    model.session._build_session = fail  # what the session factory raises when the device refuses
    with pytest.raises(ModelLoadError, match="out of memory"):
        model.add_batch_sessions()
    assert model.pending_batch_sizes == () and model.session.batch_sizes == [1]
    assert model.add_batch_sessions() == []
    assert batched(model, images) == expected


def test_shrinking_bucket_arenas_keeps_every_answer(images):
    """``shrink_batch_arenas``: the bucket sessions' calls give their arena back to the device (on
    a GPU, a model then holds batch 1's memory only); batch 1's session keeps its arena."""
    from serve_app.pipeline.session import SHRINK_ARENAS
    from serve_app.settings import Settings

    assert Settings.from_args({"shrink_batch_arenas": True}).session_options.shrink_batch_arenas
    expected = one_by_one(load(), images)
    model = load(shrink_batch_arenas=True, lazy_batch_sessions=True)
    assert model.session.shrink is not None
    assert model.session.shrink.get_run_config_entry(SHRINK_ARENAS) == "cpu:0"
    assert model.add_batch_sessions() == [8]
    assert batched(model, images) == expected and batched(model, images) == expected
    assert one_by_one(model, images) == expected


def test_a_quick_start_serves_until_its_tuned_session_takes_over(images):
    """``quick_start``: a cold model's first session takes cuDNN's default algorithms (on the CPU
    provider, forced, the same session options) and ``tune_session`` puts a session that chose
    its kernels per shape in its place, warmed first; every answer is the model's own throughout."""
    assert not load(quick_start=True).tuning_pending  # nothing to gain on the CPU unless forced
    expected = one_by_one(load(), images)
    model = load(quick_start=True, force_quick_start=True, lazy_batch_sessions=True)
    assert model.tuning_pending
    quick = model.session.session
    assert one_by_one(model, images) == expected
    assert model.tune_session() and not model.tuning_pending and model.session.session is not quick
    assert one_by_one(model, images) == expected
    assert not model.tune_session()  # once
    assert model.add_batch_sessions() == [8] and batched(model, images) == expected


def test_a_failed_tuned_build_keeps_the_quick_session(images):
    from serve_app.errors import ModelLoadError

    model = load(quick_start=True, force_quick_start=True)
    expected = one_by_one(model, images)

    def fail() -> Any:
        raise ModelLoadError("shapes-det/1: ONNX Runtime cannot load the weights: CUDA failure 2: out of memory")

    model.session._tuned_builder = fail
    with pytest.raises(ModelLoadError, match="out of memory"):
        model.tune_session()
    assert not model.tuning_pending and not model.tune_session()
    assert one_by_one(model, images) == expected


def test_quick_start_only_changes_cudas_algorithm_search():
    from serve_app.pipeline.session import _quick_providers
    from serve_app.settings import Settings

    assert Settings.from_args({}).session_options.quick_start
    cuda = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "device_id": 1}), "CPUExecutionProvider"]
    assert _quick_providers(cuda) == [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT", "device_id": 1}),
                                      "CPUExecutionProvider"]
    assert _quick_providers([("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT"})]) is None
    assert _quick_providers(["CPUExecutionProvider"]) is None
