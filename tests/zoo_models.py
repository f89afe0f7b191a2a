"""The built-in models for the tests (``zoo/matching.py``): a missing one fails the test that needs it."""
from __future__ import annotations

import pytest

from serve_app.tasks.vision_model import VisionModel
from zoo import matching
from zoo.matching import MODELS, mask_iou, match, polygon_mask, pred_boxes

__all__ = ["MODELS", "builtin", "mask_iou", "match", "polygon_mask", "pred_boxes"]


def builtin(model_id: str) -> VisionModel:
    try:
        return matching.builtin(model_id)
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}: the project ships it, so its tests must not pass without it")
