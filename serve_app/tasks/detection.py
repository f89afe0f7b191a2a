"""Object detection: YOLOv8/YOLO11 (``[4+C(+E), N]``), YOLOv5/YOLOv7 (``[N, 5+C(+E)]``) and the
end-to-end heads of YOLOv10 and YOLO26 (``[K, 6(+E)]``, no NMS needed) outputs.

The decoders return the same thing: candidate boxes (xyxy, input pixels), per-class scores and
the extra columns (mask coefficients, keypoints) that ride along with each box.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.pipeline.geometry import xywh_to_xyxy
from serve_app.tasks.nms import batched_nms


@dataclass(frozen=True)
class Candidates:
    """A head's candidate boxes. ``coords`` are as the head wrote them: corners, or with
    ``centre_size`` centre x, y, width, height, turned into corners only for the rows a selection
    keeps (:meth:`boxes_at`; converting YOLOv8's 8,400 strided rows cost more than the rest of the
    selection).

    >>> c = Candidates(np.array([[10, 10, 4, 2]], np.float32), np.ones((1, 1)), np.zeros((1, 0)), centre_size=True)
    >>> c.boxes.tolist(), c.boxes_at(np.array([0])).tolist()
    ([[8.0, 9.0, 12.0, 11.0]], [[8.0, 9.0, 12.0, 11.0]])
    """
    coords: np.ndarray  # (N, 4) input pixels: xyxy, or centre x, y, w, h with centre_size
    scores: np.ndarray  # (N, C) class confidences
    extra: np.ndarray  # (N, E)
    centre_size: bool = False

    @property
    def boxes(self) -> np.ndarray:
        """Every candidate's box, xyxy."""
        return self.boxes_at(slice(None))

    def boxes_at(self, rows: np.ndarray | slice) -> np.ndarray:
        """The boxes of ``rows``, xyxy."""
        picked = self.coords[rows]
        return xywh_to_xyxy(picked) if self.centre_size else picked


@dataclass(frozen=True)
class Selected:
    boxes: np.ndarray  # (M, 4) xyxy, input pixels
    confidence: np.ndarray  # (M,)
    class_id: np.ndarray  # (M,) int
    extra: np.ndarray  # (M, E)


def decode_yolov8(output: np.ndarray, num_classes: int) -> Candidates:
    """One image's ``[4 + C + E, N]`` output (centre x, y, w, h; class scores; extras)."""
    if output.ndim != 2 or output.shape[0] < 4 + num_classes:
        raise ValueError(f"YOLOv8 output must be [4+{num_classes}+E, N], got {list(output.shape)}")
    rows = output.T
    return Candidates(rows[:, :4], rows[:, 4:4 + num_classes], rows[:, 4 + num_classes:], centre_size=True)


def decode_yolov5(output: np.ndarray, num_classes: int) -> Candidates:
    """One image's ``[N, 5 + C + E]`` output; confidence = objectness x class probability."""
    if output.ndim != 2 or output.shape[1] < 5 + num_classes:
        raise ValueError(f"YOLOv5 output must be [N, 5+{num_classes}+E], got {list(output.shape)}")
    scores = output[:, 5:5 + num_classes] * output[:, 4:5]
    return Candidates(output[:, :4], scores, output[:, 5 + num_classes:], centre_size=True)


def decode_end2end(output: np.ndarray, num_classes: int) -> Candidates:
    """One image's ``[K, 6 + E]`` end-to-end output (YOLOv10, YOLO26 exported with ``end2end``): x1, y1,
    x2, y2 (input pixels), score, class index, extras. The head has already chosen one class per box,
    so each row's score sits in its class's column of the score matrix (zeros elsewhere): thresholds
    and class filters then work as for the other layouts. A class index outside the model's classes
    scores zero.

    >>> c = decode_end2end(np.array([[1, 2, 3, 4, 0.9, 1], [0, 0, 1, 1, 0.8, 7]], np.float32), 2)
    >>> c.boxes[0].tolist(), c.scores.astype(float).round(2).tolist(), c.extra.shape
    ([1.0, 2.0, 3.0, 4.0], [[0.0, 0.9], [0.0, 0.0]], (2, 0))
    """
    if output.ndim != 2 or output.shape[1] < 6:
        raise ValueError(f"an end-to-end output must be [K, 6+E], got {list(output.shape)}")
    class_id = np.rint(output[:, 5]).astype(np.int64)
    valid = np.flatnonzero((class_id >= 0) & (class_id < num_classes))
    scores = np.zeros((len(output), num_classes), np.float32)
    scores[valid, class_id[valid]] = output[valid, 4]
    return Candidates(np.ascontiguousarray(output[:, :4]), scores, output[:, 6:])


def select(c: Candidates, *, confidence: float, iou_threshold: float, class_agnostic: bool = False,
           class_ids_allowed: np.ndarray | None = None, max_detections: int = 300, max_candidates: int = 3000,
           nms: bool = True) -> Selected:
    """Threshold, keep the best class per box, filter classes, cut to ``max_candidates``, NMS (unless the
    head is end-to-end: ``nms`` False keeps every box above the threshold, best first), cut."""
    scores = c.scores
    # rows with any class above the threshold first (a max along rows is ~10x cheaper than an argmax
    # over YOLOv8's transposed [N, C] view): a superset of the rows that pass with a class filter,
    # rows whose max is NaN included (a NaN in a filtered-out class must not hide an allowed one)
    rows = np.flatnonzero(~(scores.max(axis=1) <= confidence))
    sub = scores[rows]
    if class_ids_allowed is not None:
        masked = np.full_like(sub, -1.0)
        masked[:, class_ids_allowed] = sub[:, class_ids_allowed]
        sub = masked
    class_id = sub.argmax(axis=1)
    conf = sub[np.arange(len(sub)), class_id]
    passed = np.flatnonzero(conf > confidence)
    keep, conf, class_id = rows[passed], conf[passed], class_id[passed]
    if keep.size > max_candidates:
        order = np.argsort(-conf, kind="stable")[:max_candidates]
        keep, conf, class_id = keep[order], conf[order], class_id[order]
    boxes = c.boxes_at(keep)
    if nms:
        kept = batched_nms(boxes, conf, class_id, iou_threshold, class_agnostic)[:max_detections]
    else:
        kept = np.argsort(-conf, kind="stable")[:max_detections]
    return Selected(boxes[kept], conf[kept], class_id[kept].astype(np.int64), c.extra[keep][kept])
