"""Loading the built-in models through the public Python API, and matching predictions to truth:
shared by the accuracy tests and the zoo's evaluations."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from serve_app.pipeline.geometry import box_iou
from serve_app.pipeline.session import SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.tasks.vision_model import VisionModel

MODELS = Path(__file__).resolve().parents[1] / "configs" / "models"


@lru_cache(maxsize=None)
def builtin(model_id: str) -> VisionModel:
    """A built-in model loaded on the CPU once per process (shared: not for tests that change it)."""
    return load_builtin(model_id)


def load_builtin(model_id: str, **options: Any) -> VisionModel:
    """A built-in model loaded on the CPU, a new one each call (``options``: more SessionOptions
    fields); FileNotFoundError when the repository lacks it."""
    folder = MODELS / model_id
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"built-in model {model_id} is not in {MODELS}")
    manifest = Manifest.from_dict(json.loads((folder / "model.json").read_text()))
    files = {name: (folder / spec.path).read_bytes() for name, spec in manifest.files.items()}
    return VisionModel.load(manifest, files, SessionOptions(**{"providers": ("CPUExecutionProvider",),
                                                               "intra_op_threads": 2, **options}))


def pred_boxes(preds: list[dict]) -> np.ndarray:
    return np.array([[p["x"] - p["width"] / 2, p["y"] - p["height"] / 2, p["x"] + p["width"] / 2,
                      p["y"] + p["height"] / 2] for p in preds], dtype=float).reshape(-1, 4)


def match(truth_boxes: np.ndarray, truth_classes: list[str], preds: list[dict], min_iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of same-class boxes by IoU; returns (truth index, prediction index)."""
    if not len(truth_boxes) or not preds:
        return []
    iou = box_iou(truth_boxes, pred_boxes(preds))
    for i, c in enumerate(truth_classes):
        for j, p in enumerate(preds):
            if p["class"] != c:
                iou[i, j] = 0
    pairs = []
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < min_iou:
            return pairs
        pairs.append((int(i), int(j)))
        iou[i, :] = 0
        iou[:, j] = 0


def polygon_mask(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    if len(points) >= 3:
        cv2.fillPoly(mask, [np.round(np.asarray(points) * 4).astype(np.int32)], 1, shift=2)
    return mask.astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
