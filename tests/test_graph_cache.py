"""Optimised graphs kept on disk (pipeline/graph_cache.py): a later load starts from the graph an
earlier one kept, answers exactly as a load from the weights does, and a broken or missing file
only costs the optimisation it would have saved."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from serve_app.options import SessionOptions
from serve_app.pipeline.graph_cache import GraphCache, graph_key
from serve_app.registry.manifest import Manifest
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "configs" / "models" / "shapes-det" / "1"
IMAGE = ROOT / "serve_app" / "http" / "static" / "sample-shapes.jpg"


@pytest.fixture(scope="module")
def shapes():
    manifest = Manifest.from_dict(json.loads((MODEL / "model.json").read_text()))
    return manifest, (MODEL / "weights.onnx").read_bytes()


def _options(folder: Path | None, **kw) -> SessionOptions:
    return SessionOptions(intra_op_threads=1, graph_cache_dir=str(folder) if folder else None, **kw)


def _raw(model: VisionModel) -> list[np.ndarray]:
    """The session's raw outputs for the sample image (no decoding in between)."""
    image = cv2.imread(str(IMAGE))
    tensor, _ = model.prepare([image], InferenceParams())
    return model.session.run(tensor)


def test_a_second_load_starts_from_the_kept_graph_and_answers_the_same(shapes, tmp_path):
    manifest, weights = shapes
    first = VisionModel.load(manifest, {"weights": weights}, _options(tmp_path), manifest.weights.sha256)
    assert not first.graph_cache_hit
    kept = list(tmp_path.iterdir())
    assert len(kept) == 1 and kept[0].suffix == ".onnx" and kept[0].stat().st_size > 0.5 * len(weights)
    second = VisionModel.load(manifest, {"weights": weights}, _options(tmp_path), manifest.weights.sha256)
    assert second.graph_cache_hit and second.channels_last == first.channels_last
    assert first.candidate_filter and second.candidate_filter  # the kept graph has the filter's outputs too
    plain = VisionModel.load(manifest, {"weights": weights}, _options(None), manifest.weights.sha256)
    assert not plain.graph_cache_hit
    for a, b, c in zip(_raw(first), _raw(second), _raw(plain)):
        assert a.shape == b.shape == c.shape
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert set(second.load_phases) == {"graph", "session", "warmup"}
    assert all(v >= 0 for v in second.load_phases.values())
    # what a client sees: the same boxes, classes and confidences (detection ids are per answer)
    image = cv2.imread(str(IMAGE))
    strip = lambda preds: [{k: v for k, v in p.items() if k != "detection_id"} for p in preds]  # noqa: E731
    got = [strip(m.predict([image])[0]["predictions"]) for m in (first, second)]
    assert got[0] == got[1] and {p["class"] for p in got[0]} == {"circle", "square", "triangle"}


def test_a_broken_kept_graph_is_dropped_and_the_weights_load(shapes, tmp_path):
    manifest, weights = shapes
    VisionModel.load(manifest, {"weights": weights}, _options(tmp_path), manifest.weights.sha256)
    (kept,) = tmp_path.iterdir()
    kept.write_bytes(b"not an onnx graph")
    model = VisionModel.load(manifest, {"weights": weights}, _options(tmp_path), manifest.weights.sha256)
    assert not model.graph_cache_hit
    assert kept.exists() and kept.stat().st_size > len(b"not an onnx graph")  # the good graph again
    again = VisionModel.load(manifest, {"weights": weights}, _options(tmp_path), manifest.weights.sha256)
    assert again.graph_cache_hit
    assert all(np.array_equal(a, b) for a, b in zip(_raw(model), _raw(again)))


def test_graphs_are_kept_per_weights_and_options(shapes, tmp_path):
    manifest, weights = shapes
    sha = manifest.weights.sha256
    VisionModel.load(manifest, {"weights": weights}, _options(tmp_path), sha)
    # another edit of the input, other providers' options, other weights: each a graph of its own
    assert not VisionModel.load(manifest, {"weights": weights}, _options(tmp_path, uint8_input=False), sha).graph_cache_hit
    assert not VisionModel.load(manifest, {"weights": weights}, _options(tmp_path, graph_optimization="basic"),
                                sha).graph_cache_hit
    assert len(list(tmp_path.iterdir())) == 3
    # no digest, fp16 or a CUDA graph: nothing kept, nothing read
    VisionModel.load(manifest, {"weights": weights}, _options(tmp_path), None)
    VisionModel.load(manifest, {"weights": weights}, _options(tmp_path, precision="fp16"), sha)
    assert len(list(tmp_path.iterdir())) == 3
    assert graph_key(sha, providers=["CPUExecutionProvider"]) != graph_key("1" + sha[1:], providers=["CPUExecutionProvider"])


def test_the_folder_keeps_the_most_recently_used_graphs(tmp_path):
    cache = GraphCache(str(tmp_path), max_bytes=250)
    for i, key in enumerate(["a", "b", "c"]):
        tmp = cache.temporary(key)
        Path(tmp).write_bytes(b"x" * 100)
        os.utime(tmp, (time.time() - 100 + i, time.time() - 100 + i))
        cache.commit(tmp, key)
        os.utime(cache.path(key), (time.time() - 100 + i, time.time() - 100 + i))
    # "a" was dropped when "c" came (300 > 250 bytes); a read makes "b" the most recent
    assert cache.get("a") is None and cache.get("b") == b"x" * 100
    tmp = cache.temporary("d")
    Path(tmp).write_bytes(b"y" * 100)
    cache.commit(tmp, "d")
    assert cache.get("c") is None and cache.get("b") is not None and cache.get("d") == b"y" * 100
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_lazy_bucket_sessions_build_from_the_kept_graph(shapes, tmp_path):
    manifest, weights = shapes
    options = _options(tmp_path, batch_sizes=(1, 4), force_batch_sessions=True, lazy_batch_sessions=True)
    VisionModel.load(manifest, {"weights": weights}, options, manifest.weights.sha256)
    model = VisionModel.load(manifest, {"weights": weights}, options, manifest.weights.sha256)
    assert model.graph_cache_hit and model.add_batch_sessions() == [4]
    image = cv2.imread(str(IMAGE))
    tensor, _ = model.prepare([image] * 4, InferenceParams())
    batched = model.run(tensor)
    single = _raw(model)
    assert np.allclose(batched[0][0], single[0][0], atol=1e-4)
