"""RF-DETR (Roboflow's DETR-style detector, ``rfdetr`` package) outputs: detection and segmentation.

The ONNX export (``RFDETR.export``) has one input ``input`` ``[B, 3, S, S]`` (RGB, ImageNet mean/std,
a plain square resize: no letterbox) and, in this order, ``dets`` ``[B, Q, 4]`` (centre x, y, width,
height, normalised to the input), ``labels`` ``[B, Q, C + 1]`` (raw class logits: one column per class,
then the no-object slot the head is built with) and, for the segmentation models, ``masks``
``[B, Q, S/4, S/4]`` (mask logits over the whole input). No metadata is written (only an optional
``rfdetr_notes`` when the exporter is given notes), so a manifest must say what the model is.

Decoding follows ``rfdetr``'s own post-processing (``PostProcess`` and its torch-free export decoder):
an independent sigmoid per class (not a softmax), the no-object slot dropped, the top query/class
*pairs* taken over all ``Q x C`` (so one query may give two classes), best first with ties broken
by the lower flattened index, at most ``Q`` of them; then ``score > confidence``. No NMS: the set
prediction has already chosen. A mask is its query's logits resized bilinearly to the original
image, positive = inside.

>>> boxes = np.array([[0.5, 0.5, 0.5, 0.25], [0.25, 0.25, 0.1, 0.1]], np.float32)
>>> logits = np.array([[3.0, -3.0, 9.0], [-9.0, 2.0, 9.0]], np.float32)  # 2 classes + the no-object slot
>>> s = select(boxes, logits, 2, (100, 200), confidence=0.5)
>>> s.class_id.tolist(), s.query.tolist(), [round(float(c), 3) for c in s.confidence]
([0, 1], [0, 1], [0.953, 0.881])
>>> s.boxes[0].tolist()  # input pixels (200 wide, 100 high)
[50.0, 37.5, 150.0, 62.5]
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from serve_app.pipeline.geometry import ImageTransform, xywh_to_xyxy
from serve_app.tasks.masks import sigmoid

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what rfdetr normalises with (RFDETR.means / stds)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DetrSelection:
    """The chosen query/class pairs of one image, best first."""

    boxes: np.ndarray  # (K, 4) xyxy, input pixels
    confidence: np.ndarray  # (K,) sigmoid scores
    class_id: np.ndarray  # (K,) int
    query: np.ndarray  # (K,) the query each pair came from (rows of dets/masks); may repeat


def class_columns(columns: int, num_classes: int) -> str | None:
    """None when a ``labels`` output of ``columns`` columns fits ``num_classes`` classes: ``C + 1`` (rfdetr's
    head: the classes, then its no-object slot) or ``C`` (every column a class, as for the COCO checkpoints'
    91 category ids, placeholders included); else what was expected, in words.

    >>> class_columns(4, 3), class_columns(3, 3), class_columns(5, 3)
    (None, None, '3 + 1 (the no-object slot) or 3 class columns')
    """
    if columns in (num_classes, num_classes + 1):
        return None
    return f"{num_classes} + 1 (the no-object slot) or {num_classes} class columns"


def select(boxes: np.ndarray, logits: np.ndarray, num_classes: int, input_hw: tuple[int, int], *, confidence: float,
           class_ids_allowed: np.ndarray | None = None, max_detections: int = 300) -> DetrSelection:
    """One image's ``dets`` ``(Q, 4)`` and ``labels`` ``(Q, C [+1])`` -> the top query/class pairs.

    Columns past ``num_classes`` (the no-object slot) are dropped before ranking, as rfdetr's export
    decoder does; ``class_ids_allowed`` keeps only those classes (before the cut, so a filter does not
    lose its classes to others); at most ``min(max_detections, Q)`` pairs (rfdetr's ``num_select`` is Q).
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4 or logits.ndim != 2 or len(logits) != len(boxes):
        raise ValueError(f"RF-DETR outputs must be dets [Q, 4] and labels [Q, C+1], got {list(boxes.shape)} "
                         f"and {list(logits.shape)}")
    wrong = class_columns(logits.shape[1], num_classes)
    if wrong:
        raise ValueError(f"RF-DETR labels have {logits.shape[1]} columns, expected {wrong}")
    scores = sigmoid(np.clip(logits[:, :num_classes].astype(np.float32), -88, 88))
    if class_ids_allowed is not None:
        allowed = np.zeros(num_classes, bool)
        allowed[class_ids_allowed] = True
        scores = np.where(allowed[None, :], scores, -1.0)
    flat = scores.reshape(-1)
    above = np.flatnonzero(flat > confidence)  # ascending flat index: a stable sort keeps rfdetr's tie rule
    top = above[np.argsort(-flat[above], kind="stable")][:max(0, min(max_detections, len(boxes)))]
    query, class_id = np.divmod(top, num_classes)
    h, w = input_hw
    xyxy = xywh_to_xyxy(boxes[query].astype(np.float64)) * np.array([w, h, w, h], np.float64)
    return DetrSelection(xyxy, flat[top].astype(np.float32), class_id.astype(np.int64), query.astype(np.int64))


def masks_to_original(mask_logits: np.ndarray, transform: ImageTransform) -> np.ndarray:
    """``(K, mh, mw)`` mask logits over the whole input -> ``(K, H, W)`` boolean masks of the original image.

    Each logit map is resized bilinearly (half-pixel centres, as rfdetr's ``F.interpolate``) onto the
    original-pixel grid the input covers, then cut to the image's content: for rfdetr's stretch resize
    that is the whole map straight to the image size, which is what rfdetr does; padding (letterbox) and
    what a static crop cut away stay empty.

    >>> from serve_app.pipeline.geometry import stretch_transform
    >>> logits = np.full((1, 4, 4), -1.0, np.float32); logits[0, :2, :2] = 1.0  # the top-left quarter
    >>> m = masks_to_original(logits, stretch_transform((10, 20), (16, 16)))
    >>> m.shape, int(m.sum()), bool(m[0, 4, 8]), bool(m[0, 4, 9])  # torch's F.interpolate gives the same
    ((1, 10, 20), 49, True, False)
    """
    t = transform
    out = np.zeros((len(mask_logits), t.original_h, t.original_w), bool)
    # the input's extent in original pixels, and where its top-left corner falls in the original image
    full_w, full_h = max(round(t.input_w / t.scale_x), 1), max(round(t.input_h / t.scale_y), 1)
    x0, y0 = t.crop_x - round(t.pad_x / t.scale_x), t.crop_y - round(t.pad_y / t.scale_y)
    # the image content inside it, clipped to the original image
    xa, ya = max(t.crop_x, x0, 0), max(t.crop_y, y0, 0)
    xb = min(t.crop_x + round(t.resized_w / t.scale_x), x0 + full_w, t.original_w)
    yb = min(t.crop_y + round(t.resized_h / t.scale_y), y0 + full_h, t.original_h)
    if xb <= xa or yb <= ya:
        return out
    for k, logit in enumerate(mask_logits):
        up = cv2.resize(logit.astype(np.float32), (full_w, full_h), interpolation=cv2.INTER_LINEAR)
        out[k, ya:yb, xa:xb] = up[ya - y0:yb - y0, xa - x0:xb - x0] > 0
    return out
