"""Non-maximum suppression, vectorised NumPy.

>>> boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
>>> nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5).tolist()
[0, 2]
"""
from __future__ import annotations

import numpy as np

MAX_WH = 7680.0  # class offset for class-aware NMS in one pass (as Ultralytics does)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on xyxy boxes; returns kept indices, highest score first.

    Ties in score keep the lower index first (stable sort), so results are deterministic.
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float64)  # float64: class offsets (x 7680) must not cost precision
    x0, y0, x1, y1 = boxes.T
    areas = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
                class_agnostic: bool = False) -> np.ndarray:
    """NMS within each class (boxes of different classes never suppress each other) unless agnostic."""
    if class_agnostic or len(boxes) == 0:
        return nms(boxes, scores, iou_threshold)
    offsets = np.asarray(class_ids, dtype=np.float64)[:, None] * MAX_WH
    return nms(np.asarray(boxes, np.float64) + offsets, scores, iou_threshold)
