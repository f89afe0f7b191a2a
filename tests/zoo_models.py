"""The built-in models for the tests (``zoo/matching.py``): a missing one fails the test that needs it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from serve_app.tasks.vision_model import VisionModel
from zoo import matching
from zoo.matching import MODELS, mask_iou, match, polygon_mask, pred_boxes

__all__ = ["MODELS", "builtin", "load_builtin", "mask_iou", "match", "polygon_mask", "pred_boxes"]


def builtin(model_id: str) -> VisionModel:
    """The process's shared copy of a built-in model."""
    return _shipped(matching.builtin, model_id)


def load_builtin(model_id: str, **options: Any) -> VisionModel:
    """A new copy of a built-in model, loaded with ``options`` (for tests that change or compare loads)."""
    return _shipped(matching.load_builtin, model_id, **options)


def _shipped(load: Callable[..., VisionModel], model_id: str, **options: Any) -> VisionModel:
    try:
        return load(model_id, **options)
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}: the project ships it, so its tests must not pass without it")
