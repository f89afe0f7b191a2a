"""The built-in shapes models find the right shapes on held-out images they never saw in training.

Scenes come from zoo/shapes.py (the first training generator, narrower than the one the models
now train on); classification frames from zoo/broad_shapes.py; seeds used neither in training nor
for the zoo's own figures.
"""
from __future__ import annotations

import numpy as np
import pytest

from serve_app.tasks.params import InferenceParams
from tests.zoo_models import builtin, mask_iou, match, polygon_mask
from zoo.broad_shapes import broad_single_shape
from zoo.shapes import CLASSES, draw_scene

SEED = 777_001
N_IMAGES = 30
PARAMS = InferenceParams(confidence=0.4, iou_threshold=0.5)


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(SEED)
    return [draw_scene(rng) for _ in range(N_IMAGES)]


def _scores(model_id, scenes, classes=None, min_iou=0.8):
    model = builtin(model_id)
    found = total = predicted = 0
    per_match = []
    for scene in scenes:
        truth = [s for s in scene.shapes if classes is None or s.class_name in classes]
        preds = model.predict([scene.image], PARAMS)[0]["predictions"]
        boxes = np.array([s.box_xyxy for s in truth]).reshape(-1, 4)
        pairs = match(boxes, [s.class_name for s in truth], preds, min_iou)
        found += len(pairs)
        total += len(truth)
        predicted += len(preds)
        per_match.extend((scene, truth[i], preds[j]) for i, j in pairs)
    return found / total, found / max(predicted, 1), per_match


@pytest.mark.parametrize("model_id", ["shapes-det/1", "shapes-det-v5/1", "shapes-seg/1"])
def test_detects_held_out_shapes(model_id, scenes):
    recall, precision, _ = _scores(model_id, scenes)
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)


def test_segmentation_masks_cover_the_shapes(scenes):
    _, _, matched = _scores("shapes-seg/1", scenes)
    ious = []
    for scene, truth, pred in matched:
        hw = scene.image.shape[:2]
        pts = np.array([[p["x"], p["y"]] for p in pred["points"]])
        ious.append(mask_iou(polygon_mask(truth.polygon, hw), polygon_mask(pts, hw)))
    assert np.median(ious) >= 0.85 and np.mean(np.array(ious) >= 0.7) >= 0.9, np.round(ious, 2)


def test_pose_finds_triangle_corners(scenes):
    recall, precision, matched = _scores("shapes-pose/1", scenes, classes={"triangle"})
    assert recall >= 0.9 and precision >= 0.85, (recall, precision)
    good = 0
    for _, truth, pred in matched:
        corners = truth.corners
        kps = np.array([[k["x"], k["y"]] for k in pred["keypoints"]])
        assert len(kps) == 3 and [k["class"] for k in pred["keypoints"]] == ["top", "second_clockwise", "third_clockwise"]
        # as a set: every true corner has a predicted keypoint near it (within 15% of the size)
        d = np.linalg.norm(corners[:, None, :] - kps[None, :, :], axis=2)
        good += bool((d.min(axis=1) <= 0.15 * 2 * truth.radius).all())
    assert good / len(matched) >= 0.85, good / len(matched)


def test_classifier_top1_on_held_out_images():
    """One shape anywhere in a frame of 1:3 to 3:1, small or filling it (the training generator's
    frames, an unseen seed), letterboxed whole by the manifest."""
    rng = np.random.default_rng(SEED)
    model = builtin("shapes-cls/1")
    correct = 0
    n = 60
    for i in range(n):
        name = CLASSES[i % 3]
        result = model.predict([broad_single_shape(rng, name).image])[0]
        correct += result["top"] == name
        assert [p["confidence"] for p in result["predictions"]] == sorted(
            (p["confidence"] for p in result["predictions"]), reverse=True)
    assert correct / n >= 0.95, correct / n


def test_v5_layout_gives_the_same_detections_as_v8(scenes):
    v8, v5 = builtin("shapes-det/1"), builtin("shapes-det-v5/1")
    for scene in scenes[:10]:
        a = v8.predict([scene.image], PARAMS)[0]["predictions"]
        b = v5.predict([scene.image], PARAMS)[0]["predictions"]
        assert [p["class"] for p in a] == [p["class"] for p in b]
        np.testing.assert_allclose([[p["x"], p["y"], p["width"], p["height"], p["confidence"]] for p in a],
                                   [[p["x"], p["y"], p["width"], p["height"], p["confidence"]] for p in b],
                                   rtol=1e-4, atol=1e-3)
