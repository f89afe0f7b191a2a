"""Text detection for PP-OCR: DB (Differentiable Binarization) pre- and post-processing.

The detector takes a normalised BGR image whose sides are multiples of 32 and returns a
per-pixel text probability map of the same size. ``db_postprocess`` turns that map into
quadrilaterals in original-image pixels:

1. binarise at ``thresh`` and dilate with a 2x2 kernel;
2. for each contour take the minimum-area rectangle; drop it if its short side < 3;
3. score it by the mean probability inside the rectangle; drop it below ``box_thresh``;
4. "unclip": offset the rectangle outward by ``area * unclip_ratio / perimeter`` with round
   corners on whole pixels, as PP-OCR does with Clipper (``unclip``; no pyclipper needed), and
   take the minimum-area rectangle of the result: the rectangle grown by that distance on
   every side, up to the integer rounding that ``unclip`` reproduces;
5. drop it if the grown short side < 5, map to original pixels, round, clip, and drop boxes
   whose sides are 3 pixels or less.

>>> tensor, ratio = det_preprocess(np.zeros((100, 200, 3), np.uint8), 736, "min")
>>> tensor.shape, ratio
((1, 3, 736, 1472), (7.36, 7.36))
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from serve_app.errors import InvalidImage, InvalidParameter, ModelLoadError

Quad = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]
LIMIT_TYPES = ("min", "max")
MIN_BOX_SIDE = 3  # PP-OCR's min_size, in probability-map pixels
READING_ORDER_TOLERANCE = 10.0  # pixels: boxes whose tops differ by less share a row


@dataclass(frozen=True)
class TextBox:
    """A detected text region: corners clockwise from top-left (x, y pixels) and DB score.

    >>> TextBox(((0, 0), (10, 0), (10, 5), (0, 5)), 0.9).bbox_xyxy
    (0.0, 0.0, 10.0, 5.0)
    """

    quad: Quad
    score: float

    def __post_init__(self) -> None:
        if len(self.quad) != 4 or any(len(p) != 2 for p in self.quad):
            raise InvalidParameter(f"a text quad needs 4 (x, y) points, got {self.quad!r}")

    def points(self) -> np.ndarray:
        """The corners as a (4, 2) float32 array."""
        return np.asarray(self.quad, dtype=np.float32)

    @property
    def bbox_xyxy(self) -> tuple[float, float, float, float]:
        """The axis-aligned box around the quad."""
        pts = self.points()
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


def _round_to_32(size: float) -> int:
    return max(32, round(int(size) / 32) * 32)


def det_input_size(
    height: int, width: int, limit_side_len: int, limit_type: str, max_side_len: int | None = None
) -> tuple[int, int]:
    """PP-OCR's detector input size: scale, then round each side to a multiple of 32.

    ``limit_type="min"`` upscales until the short side reaches ``limit_side_len`` (never
    downscales); ``"max"`` downscales until the long side fits. Before that, an image whose
    long side exceeds ``max_side_len`` is first scaled down to it (and rounded to multiples of
    32), as rapidocr does with its ``max_side_len``.

    >>> det_input_size(240, 640, 736, "min"), det_input_size(1000, 3000, 960, "max")
    ((736, 1952), (320, 960))
    >>> det_input_size(260, 720, 736, "min", max_side_len=2000)
    (736, 2048)
    """
    if limit_type not in LIMIT_TYPES:
        raise InvalidParameter(f"limit_type must be one of {LIMIT_TYPES}, got {limit_type!r}")
    if limit_side_len <= 0:
        raise InvalidParameter(f"limit_side_len must be positive, got {limit_side_len}")
    if max_side_len is not None and max(height, width) > max_side_len:
        pre = max_side_len / max(height, width)
        height, width = _round_to_32(height * pre), _round_to_32(width * pre)
    if limit_type == "min":
        scale = limit_side_len / min(height, width) if min(height, width) < limit_side_len else 1.0
    else:
        scale = limit_side_len / max(height, width) if max(height, width) > limit_side_len else 1.0
    return _round_to_32(height * scale), _round_to_32(width * scale)


def det_preprocess(
    image_bgr: np.ndarray,
    limit_side_len: int = 736,
    limit_type: str = "min",
    *,
    max_side_len: int | None = None,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize (see ``det_input_size``) and normalise ``(x / 255 - mean) / std`` to NCHW float32.

    Returns the tensor and ``(ratio_h, ratio_w)``: detector pixels per original pixel.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or min(image_bgr.shape[:2]) < 1:
        raise InvalidImage(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
    h, w = image_bgr.shape[:2]
    rh, rw = det_input_size(h, w, limit_side_len, limit_type, max_side_len)
    resized = cv2.resize(image_bgr, (rw, rh))
    scaled = resized.astype(np.float32) / np.float32(255.0)
    normalised = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return normalised.transpose(2, 0, 1)[None].astype(np.float32), (rh / h, rw / w)


def order_quad(points: np.ndarray) -> np.ndarray:
    """Order 4 points top-left, top-right, bottom-right, bottom-left.

    The two left-most points are the left side (the upper one is top-left), the others the
    right side.

    >>> order_quad(np.array([[5, 5], [0, 0], [0, 5], [5, 0]], np.float32)).tolist()
    [[0.0, 0.0], [5.0, 0.0], [5.0, 5.0], [0.0, 5.0]]
    """
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.stack([left[0], right[0], right[1], left[1]]).astype(np.float32)


def _round_half_away(values: np.ndarray) -> np.ndarray:
    return np.where(values < 0, np.ceil(values - 0.5), np.floor(values + 0.5))


def unclip(quad: np.ndarray, unclip_ratio: float, arc_tolerance: float = 0.25) -> np.ndarray:
    """Grow a convex polygon by ``area * unclip_ratio / perimeter`` with round corners.

    Works like Clipper's offset (``JT_ROUND``), which PP-OCR uses: vertices are truncated to
    whole pixels, each edge moves outward along its normal, each corner becomes an arc of
    points at most ``arc_tolerance`` pixels from the true circle, and the result's vertices
    are rounded to whole pixels. Returns (K, 2) int32 vertices.

    >>> unclip(np.float32([[0, 0], [20, 0], [20, 10], [0, 10]]), 1.5).min(axis=0).tolist()
    [-5, -5]
    """
    q = np.asarray(quad, dtype=np.float64)
    following = np.roll(q, -1, axis=0)
    perimeter = float(np.linalg.norm(following - q, axis=1).sum())
    area = abs(float(np.sum(q[:, 0] * following[:, 1] - following[:, 0] * q[:, 1]))) / 2
    pts = np.trunc(q)
    pts = pts[np.any(pts != np.roll(pts, -1, axis=0), axis=1)]
    delta = area * unclip_ratio / perimeter if perimeter > 0 else 0.0
    if delta <= 0 or len(pts) < 3:
        return pts.astype(np.int32)
    following = np.roll(pts, -1, axis=0)
    if np.sum(pts[:, 0] * following[:, 1] - following[:, 0] * pts[:, 1]) < 0:
        pts = pts[::-1]  # orient so that (dy, -dx) points outward
    edges = np.roll(pts, -1, axis=0) - pts
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / np.linalg.norm(edges, axis=1)[:, None]
    tolerance = min(arc_tolerance, delta * 0.25)
    steps_per_turn = min(math.pi / math.acos(1 - tolerance / delta), delta * math.pi)
    step_sin, step_cos = math.sin(2 * math.pi / steps_per_turn), math.cos(2 * math.pi / steps_per_turn)
    out: list[np.ndarray] = []
    for j in range(len(pts)):
        before, after = normals[j - 1], normals[j]
        sin_a = before[0] * after[1] - after[0] * before[1]
        cos_a = before[0] * after[0] + before[1] * after[1]
        if abs(sin_a * delta) < 1.0 and cos_a > 0:  # nearly straight: one point is enough
            out.append(pts[j] + before * delta)
            continue
        if sin_a * delta < 0:  # concave corner (not for rectangles)
            out.extend((pts[j] + before * delta, pts[j], pts[j] + after * delta))
            continue
        steps = max(int(_round_half_away(np.float64(steps_per_turn / (2 * math.pi) * abs(math.atan2(sin_a, cos_a))))), 1)
        x, y = before
        for _ in range(steps):
            out.append(pts[j] + np.array([x, y]) * delta)
            x, y = x * step_cos - step_sin * y, x * step_sin + y * step_cos
        out.append(pts[j] + after * delta)
    return _round_half_away(np.array(out)).astype(np.int32)


def mean_inside(prob: np.ndarray, quad: np.ndarray) -> float:
    """Mean of ``prob`` over the pixels inside ``quad`` (DB's "fast" box score)."""
    h, w = prob.shape
    x0 = int(np.clip(math.floor(quad[:, 0].min()), 0, w - 1))
    x1 = int(np.clip(math.ceil(quad[:, 0].max()), 0, w - 1))
    y0 = int(np.clip(math.floor(quad[:, 1].min()), 0, h - 1))
    y1 = int(np.clip(math.ceil(quad[:, 1].max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    cv2.fillPoly(mask, [(quad - np.float32([x0, y0])).astype(np.int32)], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def db_postprocess(
    prob_map: np.ndarray,
    *,
    thresh: float,
    box_thresh: float,
    unclip_ratio: float,
    ratio: tuple[float, float],
    original_shape: tuple[int, int],
    max_candidates: int = 1000,
    use_dilation: bool = True,
) -> list[TextBox]:
    """Text quads in original pixels from a DB probability map (1x1xHxW, 1xHxW or HxW).

    ``ratio`` is ``(ratio_h, ratio_w)`` from ``det_preprocess``; ``original_shape`` is
    ``(height, width)`` of the image the boxes are clipped to.

    >>> prob = np.zeros((64, 64), np.float32); prob[20:30, 10:50] = 0.9
    >>> [b.quad for b in db_postprocess(prob, thresh=0.3, box_thresh=0.5, unclip_ratio=1.5,
    ...     ratio=(1.0, 1.0), original_shape=(64, 64))]
    [((4.0, 14.0), (56.0, 14.0), (56.0, 36.0), (4.0, 36.0))]
    """
    prob = np.asarray(prob_map, dtype=np.float32)
    while prob.ndim > 2 and prob.shape[0] == 1:
        prob = prob[0]
    if prob.ndim != 2:
        raise ModelLoadError(f"the text detector must output one HxW map, got shape {np.shape(prob_map)}")
    mask = (prob > thresh).astype(np.uint8)
    if use_dilation:
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
    contours = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)[-2]
    ratio_h, ratio_w = ratio
    height, width = original_shape
    boxes = []
    for contour in contours[:max_candidates]:
        rect = cv2.minAreaRect(contour)
        if min(rect[1]) < MIN_BOX_SIDE:
            continue
        quad = order_quad(cv2.boxPoints(rect))
        score = mean_inside(prob, quad)
        if score < box_thresh:
            continue
        grown = cv2.minAreaRect(unclip(quad, unclip_ratio))
        if min(grown[1]) < MIN_BOX_SIDE + 2:
            continue
        quad = order_quad(cv2.boxPoints(grown)).astype(np.float64)
        quad[:, 0] = np.clip(np.round(quad[:, 0] / ratio_w), 0, width - 1)
        quad[:, 1] = np.clip(np.round(quad[:, 1] / ratio_h), 0, height - 1)
        quad = order_quad(quad)
        if int(np.linalg.norm(quad[0] - quad[1])) <= 3 or int(np.linalg.norm(quad[0] - quad[3])) <= 3:
            continue
        boxes.append(TextBox(tuple((float(x), float(y)) for x, y in quad), score))  # type: ignore[arg-type]
    return boxes


def sort_reading_order(boxes: Sequence[TextBox], tolerance: float = READING_ORDER_TOLERANCE) -> list[TextBox]:
    """PP-OCR's reading order: by top-left corner (y, then x), then left-to-right within a row.

    After the sort each box moves left past its predecessors while their top-left corners are
    less than ``tolerance`` pixels apart vertically and it lies further left.

    >>> a = TextBox(((50, 12), (90, 12), (90, 30), (50, 30)), 1.0)
    >>> b = TextBox(((0, 15), (40, 15), (40, 30), (0, 30)), 1.0)
    >>> [box.quad[0][0] for box in sort_reading_order([a, b])]
    [0, 50]
    """
    ordered = sorted(boxes, key=lambda b: (b.quad[0][1], b.quad[0][0]))
    for i in range(1, len(ordered)):
        j = i
        while j > 0:
            prev, cur = ordered[j - 1], ordered[j]
            if abs(cur.quad[0][1] - prev.quad[0][1]) < tolerance and cur.quad[0][0] < prev.quad[0][0]:
                ordered[j - 1], ordered[j] = cur, prev
                j -= 1
            else:
                break
    return ordered
