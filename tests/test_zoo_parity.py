"""Parity with the reference implementation: Ultralytics' own predictions on the same ONNX files
and images (recorded by zoo/reference.py), including letterboxed non-square and EXIF-rotated input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serve_app.pipeline.images import ImageLimits, decode_image_bytes
from serve_app.tasks.params import InferenceParams
from tests.zoo_models import builtin, mask_iou, match, polygon_mask

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "reference" / "ultralytics.json"


def _reference() -> dict:
    if not REFERENCE.exists():
        pytest.fail("tests/data/reference/ultralytics.json is missing: python -m zoo.build reference")
    return json.loads(REFERENCE.read_text())


def _cases(model_id):
    ref = _reference()
    params = InferenceParams(confidence=ref["conf"], iou_threshold=ref["iou"])
    for name, expected in ref["models"].get(model_id, {}).items():
        folder = "cls" if model_id == "shapes-cls/1" else "images"
        image = decode_image_bytes((DATA / folder / name).read_bytes(), ImageLimits())
        yield name, image, expected, params


@pytest.mark.parametrize("model_id", ["shapes-det/1", "shapes-seg/1", "shapes-pose/1"])
def test_boxes_and_classes_match_ultralytics(model_id):
    model = builtin(model_id)
    checked = 0
    for name, image, expected, params in _cases(model_id):
        assert list(image.shape[:2]) == expected["shape"], name  # EXIF applied the same way
        preds = model.predict([image], params)[0]["predictions"]
        names = model.manifest.classes
        classes = [names[c] for c in expected["classes"]]
        pairs = match(np.array(expected["boxes"]).reshape(-1, 4), classes, preds, 0.99)
        assert len(pairs) == len(expected["boxes"]) == len(preds), (name, len(pairs), len(expected["boxes"]), len(preds))
        for i, j in pairs:
            assert abs(preds[j]["confidence"] - expected["confidences"][i]) < 0.01
            if "polygons" in expected:
                hw = image.shape[:2]
                ours = np.array([[p["x"], p["y"]] for p in preds[j]["points"]])
                assert mask_iou(polygon_mask(np.array(expected["polygons"][i]), hw), polygon_mask(ours, hw)) >= 0.9
            if "keypoints" in expected:
                kps = np.array([[k["x"], k["y"], k["confidence"]] for k in preds[j]["keypoints"]])
                np.testing.assert_allclose(kps[:, :2], np.array(expected["keypoints"][i])[:, :2], atol=1.0)
                np.testing.assert_allclose(kps[:, 2], np.array(expected["keypoints"][i])[:, 2], atol=0.01)
        checked += 1
    assert checked >= 7


def test_classification_matches_ultralytics():
    model = builtin("shapes-cls/1")
    checked = 0
    for name, image, expected, _ in _cases("shapes-cls/1"):
        result = model.predict([image])[0]
        assert result["predictions"][0]["class_id"] == expected["top"], name
        probs = {p["class_id"]: p["confidence"] for p in result["predictions"]}
        np.testing.assert_allclose([probs[i] for i in range(len(probs))], expected["probs"], atol=0.03)
        checked += 1
    assert checked >= 6
