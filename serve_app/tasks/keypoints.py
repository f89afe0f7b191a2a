"""Keypoint detection: YOLOv8-pose output ``[4 + C + K*3, N]`` (x, y, visibility per keypoint)."""
from __future__ import annotations

import numpy as np

from serve_app.pipeline.geometry import ImageTransform


def keypoints_from_extra(extra: np.ndarray, num_keypoints: int) -> np.ndarray:
    """The extra columns of selected detections -> ``(M, K, 3)`` x, y (input px), confidence."""
    if extra.shape[1] != num_keypoints * 3:
        raise ValueError(f"expected {num_keypoints} keypoints x 3 values per box, got {extra.shape[1]} columns")
    return extra.reshape(len(extra), num_keypoints, 3)


def keypoints_to_original(keypoints: np.ndarray, transform: ImageTransform) -> np.ndarray:
    out = keypoints.astype(np.float64).copy()
    out[..., :2] = transform.points_to_original(out[..., :2])
    return out
