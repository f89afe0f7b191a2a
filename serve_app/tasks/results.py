"""Typed results of detection-like tasks and their Roboflow Inference JSON shapes.

Boxes are in original-image pixels; the JSON gives centre x, y, width, height as Roboflow does,
so ``supervision.Detections.from_inference`` and ``sv.KeyPoints.from_inference`` read it.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import numpy as np

from serve_app.tasks.masks import rle_encode


class Point(TypedDict):
    """A polygon vertex, original-image pixels."""

    x: float
    y: float


class ImageSize(TypedDict):
    """The size of the image a result is about (``image`` in every inference answer), in pixels."""

    width: int
    height: int


class RleMask(TypedDict):
    """A COCO run-length mask (``response_mask_format: rle``): ``size`` is ``[height, width]``,
    ``counts`` pycocotools' compressed string."""

    size: list[int]
    counts: str


# "class" is a Python keyword: these two take the functional form
Keypoint = TypedDict("Keypoint", {"x": float, "y": float, "confidence": float, "class_id": int, "class": str})
Keypoint.__doc__ = "One keypoint of a detection, original-image pixels; ``class`` is the keypoint's name."

Prediction = TypedDict("Prediction", {
    "x": float, "y": float, "width": float, "height": float, "confidence": float, "class": str, "class_id": int,
    "detection_id": str, "points": NotRequired[list[Point]], "rle_mask": NotRequired[RleMask],
    "keypoints": NotRequired[list[Keypoint]],
})
Prediction.__doc__ = ("A detection: centre ``x``, ``y``, ``width``, ``height`` in original-image pixels, "
                      "with ``points`` (segmentation polygon), ``rle_mask`` (segmentation, when asked for) "
                      "or ``keypoints`` (pose) by task.")


@dataclass(frozen=True)
class Detections:
    xyxy: np.ndarray  # (N, 4) float, original pixels
    confidence: np.ndarray  # (N,)
    class_id: np.ndarray  # (N,) int
    polygons: tuple[np.ndarray, ...] | None = None  # (K, 2) each, original pixels
    masks: tuple[np.ndarray, ...] | None = None  # full-size boolean masks (only when RLE is asked for)
    keypoints: np.ndarray | None = None  # (N, K, 3): x, y, confidence in original pixels

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        for name in ("confidence", "class_id"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n}")
        for name in ("polygons", "masks", "keypoints"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.xyxy)

    def to_roboflow(self, classes: tuple[str, ...], keypoint_names: tuple[str, ...] = (),
                    keypoint_confidence: float = 0.0) -> list[Prediction]:
        out: list[Prediction] = []
        for i in range(len(self)):
            x0, y0, x1, y1 = (float(v) for v in self.xyxy[i])
            cid = int(self.class_id[i])
            pred: Prediction = {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "width": x1 - x0, "height": y1 - y0,
                                "confidence": float(self.confidence[i]), "class": classes[cid], "class_id": cid,
                                "detection_id": str(uuid.uuid4())}
            if self.polygons is not None:
                pred["points"] = [{"x": float(x), "y": float(y)} for x, y in self.polygons[i]]
            if self.masks is not None:
                pred["rle_mask"] = rle_encode(self.masks[i])
            if self.keypoints is not None:
                pred["keypoints"] = [
                    {"x": float(x), "y": float(y), "confidence": float(c), "class_id": k,
                     "class": keypoint_names[k] if k < len(keypoint_names) else str(k)}
                    for k, (x, y, c) in enumerate(self.keypoints[i]) if c >= keypoint_confidence
                ]
            out.append(pred)
        return out
