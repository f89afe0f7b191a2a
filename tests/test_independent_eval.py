"""The figures the README quotes for the independent generator are what the models do today: the
evaluation (``zoo/independent_eval.py``) runs again here, on the same seeded images, and must give
the recorded numbers exactly (CPU provider, deterministic)."""
from __future__ import annotations

import json

import pytest

from zoo import independent_eval
from zoo.independent_shapes import independent_scene


def test_the_generator_draws_what_it_says():
    import numpy as np

    rng = np.random.default_rng(3)
    for _ in range(40):
        scene = independent_scene(rng, min_aspect=1.3)
        h, w = scene.image.shape[:2]
        assert max(h, w) / min(h, w) >= 1.3 and 360 <= min(h, w) and max(h, w) <= 900
        for shape in scene.shapes:
            x0, y0, x1, y1 = shape.box_xyxy
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and 40 <= shape.diameter <= 140
            if shape.class_name == "triangle":
                assert np.argmin(shape.corners[:, 1]) == 0  # top first


@pytest.fixture(scope="module")
def recomputed() -> dict:
    return independent_eval.evaluate()


def test_recorded_independent_figures_are_reproduced(recomputed):
    recorded = json.loads(independent_eval.FIGURES.read_text()).get("independent")
    assert recorded, "configs/models/zoo_figures.json has no 'independent' figures: run python -m zoo.independent_eval"
    assert recomputed == recorded


def test_segmentation_masks_meet_the_issue_target(recomputed):
    """Issue 13: 95% of the drawn objects with mask IoU >= 0.9, on the recomputed figures (shapes-seg/1
    served at 1152, where its 288 px prototypes keep the triangles' corners; 79.9% at 640)."""
    seg = recomputed["shapes-seg/1"]
    assert seg["objects"] == 199 and seg["mask_iou_0.9"] >= 0.95, seg
    assert seg["recall"] >= 0.95 and seg["precision"] >= 0.95, seg  # the detectors' target, for its boxes


@pytest.mark.parametrize("model_id", independent_eval.DETECTORS)
def test_every_builtin_detector_is_evaluated(model_id):
    recorded = json.loads(independent_eval.FIGURES.read_text())["independent"]
    assert model_id in recorded, f"{model_id} has no independent figure"
