"""A second generator of shapes images, for evaluation only: never used in training.

It draws what the issue's user drew, by other means and with other parameters than
``zoo/shapes.py``: Pillow instead of OpenCV, colours picked in HSV with a contrast test against
the background, flat, noisy or gradient backgrounds crossed by 2-8 lines that run across the
whole image, 360-900 px frames of any aspect ratio, shapes 40-140 px across (a circle's diameter,
a square's or triangle's circumscribed diameter) at any position that keeps them inside the frame,
and no overlaps. Truth is what was drawn: class, bounding box, outline polygon, triangle corners
(top first, then clockwise on screen).

>>> s = independent_scene(np.random.default_rng(0))
>>> 360 <= s.image.shape[0] <= 900 and 360 <= s.image.shape[1] <= 900 and 1 <= len(s.shapes) <= 5
True
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class DrawnShape:
    class_name: str
    polygon: np.ndarray  # (K, 2) outline, pixels
    corners: np.ndarray | None  # (3, 2) for triangles: top, then clockwise
    diameter: float

    @property
    def box_xyxy(self) -> tuple[float, float, float, float]:
        (x0, y0), (x1, y1) = self.polygon.min(axis=0), self.polygon.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


@dataclass(frozen=True)
class IndependentScene:
    image: np.ndarray  # BGR, as cv2 and the server read images
    shapes: tuple[DrawnShape, ...]


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _vivid(rng: np.random.Generator, against: tuple[int, int, int]) -> tuple[int, int, int]:
    """A saturated colour far enough from ``against`` (in RGB distance or brightness) to be seen."""
    for _ in range(100):
        r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.75, 1), rng.uniform(0.65, 1))
        colour = (int(r * 255), int(g * 255), int(b * 255))
        if math.dist(colour, against) > 140 or abs(_luma(colour) - _luma(against)) > 70:
            return colour
    return (255 - against[0], 255 - against[1], 255 - against[2])


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    kind = rng.choice(["flat", "noisy", "gradient"])
    base = tuple(int(v) for v in rng.integers(0, 256, 3))
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = base
    if kind == "gradient":
        other = rng.integers(0, 256, 3).astype(np.float32)
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        ramp = t[None, :, None] if len(t) == w else t[:, None, None]
        canvas = canvas * (1 - ramp) + other * ramp
    if kind != "flat":
        canvas += rng.normal(0, rng.uniform(4, 14), canvas.shape)
    mean = tuple(int(v) for v in np.clip(canvas.reshape(-1, 3).mean(axis=0), 0, 255))
    return np.clip(canvas, 0, 255).astype(np.uint8), mean


def _outline(class_name: str, cx: float, cy: float, diameter: float, turn: float) -> np.ndarray:
    r = diameter / 2
    n = {"circle": 96, "square": 4, "triangle": 3}[class_name]
    t = turn + np.arange(n) * 2 * math.pi / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _top_then_clockwise(corners: np.ndarray) -> np.ndarray:
    centre = corners.mean(axis=0)
    angle = np.arctan2(corners[:, 1] - centre[1], corners[:, 0] - centre[0])  # y down: increasing = clockwise
    order = list(np.argsort(angle))
    first = order.index(int(np.argmin(corners[:, 1])))
    return corners[order[first:] + order[:first]]


def independent_scene(rng: np.random.Generator, *, max_shapes: int = 5, sizes: tuple[float, float] = (40, 140),
                      frame: tuple[int, int] = (360, 900), min_aspect: float = 1.0) -> IndependentScene:
    """One image with 1..max_shapes shapes; ``min_aspect`` > 1 forces a non-square frame."""
    while True:
        w, h = (int(v) for v in rng.integers(frame[0], frame[1] + 1, 2))
        if max(w, h) / min(w, h) >= min_aspect:
            break
    pixels, mean = _background(rng, w, h)
    picture = Image.fromarray(pixels)
    pen = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(2, 9))):  # lines that cross the whole frame
        if rng.random() < 0.5:
            a, b = (0, float(rng.uniform(0, h))), (w, float(rng.uniform(0, h)))
        else:
            a, b = (float(rng.uniform(0, w)), 0), (float(rng.uniform(0, w)), h)
        pen.line([a, b], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 5)))
    shapes: list[DrawnShape] = []
    wanted = int(rng.integers(1, max_shapes + 1))
    for _ in range(200):
        if len(shapes) == wanted:
            break
        diameter = float(rng.uniform(*sizes))
        r = diameter / 2
        if w < diameter + 4 or h < diameter + 4:
            continue
        cx, cy = float(rng.uniform(r + 1, w - r - 1)), float(rng.uniform(r + 1, h - r - 1))
        if any(math.dist((cx, cy), s.polygon.mean(axis=0)) < r + s.diameter / 2 + 3 for s in shapes):
            continue
        class_name = str(rng.choice(CLASSES))
        outline = _outline(class_name, cx, cy, diameter, float(rng.uniform(0, 2 * math.pi)))
        colour = _vivid(rng, mean)
        if class_name == "circle":
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            pen.polygon([tuple(p) for p in outline], fill=colour)
        corners = _top_then_clockwise(outline) if class_name == "triangle" else None
        shapes.append(DrawnShape(class_name, outline.astype(np.float32), corners, diameter))
    bgr = np.ascontiguousarray(np.asarray(picture)[:, :, ::-1])
    return IndependentScene(bgr, tuple(shapes))
