"""Typed results of detection-like tasks and their Roboflow Inference JSON shapes.

Boxes are in original-image pixels; the JSON gives centre x, y, width, height as Roboflow does,
so ``supervision.Detections.from_inference`` and ``sv.KeyPoints.from_inference`` read it.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from serve_app.tasks.masks import rle_encode


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
                    keypoint_confidence: float = 0.0) -> list[dict]:
        out = []
        for i in range(len(self)):
            x0, y0, x1, y1 = (float(v) for v in self.xyxy[i])
            cid = int(self.class_id[i])
            pred = {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "width": x1 - x0, "height": y1 - y0,
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
