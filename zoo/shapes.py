"""Synthetic shapes images with exact ground truth.

Solid circles, squares and triangles in saturated colours on noisy, cluttered backgrounds.
Used to train the built-in shapes models and, with another seed, to test them.

>>> scene = draw_scene(np.random.default_rng(0))
>>> scene.image.shape[2], len(scene.shapes) >= 1
(3, True)
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
CIRCLE_POLYGON_POINTS = 48


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its class, outline polygon (x, y pixels) and corners (triangles)."""

    class_name: str
    polygon: np.ndarray  # (K, 2) float32, outline in pixel coordinates
    centre: tuple[float, float]
    radius: float  # circumradius in pixels

    @property
    def class_id(self) -> int:
        return CLASSES.index(self.class_name)

    @property
    def box_xyxy(self) -> tuple[float, float, float, float]:
        x0, y0 = self.polygon.min(axis=0)
        x1, y1 = self.polygon.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def corners(self) -> np.ndarray:
        """Triangle corners in canonical order: topmost first, then clockwise on screen."""
        if self.class_name != "triangle":
            raise ValueError(f"only triangles have corners, this is a {self.class_name}")
        return canonical_corner_order(self.polygon)


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # HxWx3 uint8, BGR
    shapes: tuple[Shape, ...]


def canonical_corner_order(corners: np.ndarray) -> np.ndarray:
    """Order three corners: the topmost (smallest y) first, then clockwise as seen on screen."""
    centre = corners.mean(axis=0)
    angles = np.arctan2(corners[:, 1] - centre[1], corners[:, 0] - centre[0])
    order = list(np.argsort(angles))  # increasing angle == clockwise with y pointing down
    top = int(np.argmin(corners[:, 1]))
    start = order.index(top)
    return corners[order[start:] + order[:start]].astype(np.float32)


def _saturated_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    h = rng.uniform(0, 1)
    s = rng.uniform(0.65, 1.0)
    v = rng.uniform(0.6, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(b * 255), int(g * 255), int(r * 255)


def _background_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    h = rng.uniform(0, 1)
    s = rng.uniform(0.0, 0.6)
    v = rng.uniform(0.1, 0.95)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(b * 255), int(g * 255), int(r * 255)


def _distinct_colour(rng: np.random.Generator, background: tuple[int, int, int]) -> tuple[int, int, int]:
    for _ in range(100):
        colour = _saturated_colour(rng)
        if np.abs(np.subtract(colour, background)).sum() > 160:
            return colour
    return tuple(255 - c for c in background)  # type: ignore[return-value]


def shape_polygon(class_name: str, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Outline of a shape with circumradius ``radius`` rotated by ``angle`` radians."""
    if class_name == "circle":
        n, angle = CIRCLE_POLYGON_POINTS, 0.0
    elif class_name == "square":
        n = 4
    elif class_name == "triangle":
        n = 3
    else:
        raise ValueError(f"unknown shape class {class_name!r}; expected one of {CLASSES}")
    t = angle + np.arange(n) * 2 * math.pi / n
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1).astype(np.float32)


def draw_shape(image: np.ndarray, shape: Shape, colour: tuple[int, int, int]) -> None:
    if shape.class_name == "circle":
        cx, cy = shape.centre
        cv2.circle(image, (round(cx * 16), round(cy * 16)), round(shape.radius * 16), colour, -1, cv2.LINE_AA, shift=4)
    else:
        pts = np.round(shape.polygon * 16).astype(np.int32)
        cv2.fillPoly(image, [pts], colour, cv2.LINE_AA, shift=4)


def _clutter(image: np.ndarray, rng: np.random.Generator, count: int) -> None:
    h, w = image.shape[:2]
    for _ in range(count):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(image, p0, p1, colour, int(rng.integers(1, 3)), cv2.LINE_AA)


def draw_scene(
    rng: np.random.Generator,
    *,
    size: tuple[int, int] | None = None,
    max_shapes: int = 6,
    min_extent: float = 24,
    max_extent: float = 160,
    classes: tuple[str, ...] = CLASSES,
) -> Scene:
    """Draw one image with 1..max_shapes non-overlapping shapes; extent = shape's diameter in px."""
    if size is None:
        w, h = int(rng.integers(320, 1025)), int(rng.integers(320, 1025))
    else:
        w, h = size
    background = _background_colour(rng)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = background
    _clutter(image, rng, int(rng.integers(0, 6)))
    shapes: list[Shape] = []
    wanted = int(rng.integers(1, max_shapes + 1))
    for _ in range(wanted * 30):
        if len(shapes) == wanted:
            break
        class_name = str(rng.choice(classes))
        radius = rng.uniform(min_extent, max_extent) / 2
        margin = radius + 2
        if w <= 2 * margin or h <= 2 * margin:
            continue
        centre = (float(rng.uniform(margin, w - margin)), float(rng.uniform(margin, h - margin)))
        if any(math.dist(centre, s.centre) < radius + s.radius + 4 for s in shapes):
            continue
        polygon = shape_polygon(class_name, centre, radius, float(rng.uniform(0, 2 * math.pi)))
        shapes.append(Shape(class_name, polygon, centre, float(radius)))
    for shape in shapes:
        draw_shape(image, shape, _distinct_colour(rng, background))
    noise = rng.normal(0, rng.uniform(2, 10), image.shape)
    image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return Scene(image, tuple(shapes))


def draw_dominant_shape(rng: np.random.Generator, class_name: str, size: int = 160) -> Scene:
    """A classification image: one large shape of ``class_name`` and clutter."""
    background = _background_colour(rng)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    _clutter(image, rng, int(rng.integers(0, 4)))
    radius = float(rng.uniform(0.25, 0.45) * size)
    margin = radius + 1
    centre = (float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin)))
    shape = Shape(class_name, shape_polygon(class_name, centre, radius, float(rng.uniform(0, 2 * math.pi))), centre, radius)
    draw_shape(image, shape, _distinct_colour(rng, background))
    noise = rng.normal(0, rng.uniform(2, 10), image.shape)
    image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return Scene(image, (shape,))
