"""The training generator of the built-in shapes models: broad enough that the models hold up on
shapes images drawn by other code (``zoo/independent_shapes.py`` is one; it is never trained on).

Circles, squares and equilateral triangles at any rotation, drawn with OpenCV (anti-aliased, at
sub-pixel precision) on backgrounds that are flat, noisy, linear or two-way gradients, or blotchy
low-frequency textures, crossed by lines and curves both under and over the shapes:

- frames whose long side is 320-1280 px with aspect ratios from 1:3 to 3:1;
- any colour whose contrast with the background under the shape is enough to see the shape;
- diameters (a circle's, a square's or triangle's circumscribed one) from 16 px to 0.45 of the
  frame's short side, half of them log-uniform so small shapes are common;
- any position that keeps the shape inside the frame, borders included;
- partial occlusion: a shape may be drawn over earlier ones as long as each keeps at least 70% of
  its area visible (labels are the whole shape's outline, as an annotator draws a box);
- blur, sensor noise, and (chosen by the writer) JPEG quality.

``broad_single_shape`` draws a classification frame: one shape anywhere in a frame of 1:3 to 3:1,
from small to filling the short side, which the classifier sees letterboxed whole (nothing cropped
away).

>>> scene = broad_scene(np.random.default_rng(0))
>>> h, w = scene.image.shape[:2]
>>> 320 <= max(h, w) <= 1280 and max(h, w) / min(h, w) <= 3.01 and 1 <= len(scene.shapes) <= 8
True
>>> one = broad_single_shape(np.random.default_rng(1), "triangle")
>>> [s.class_name for s in one.shapes]
['triangle']
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from zoo.shapes import CLASSES, Scene, Shape, draw_shape, shape_polygon

MIN_DIAMETER = 16.0
MAX_DIAMETER_OF_SHORT_SIDE = 0.45
MIN_VISIBLE = 0.7  # share of a shape's area that later shapes may not cover


def frame_size(rng: np.random.Generator, long_side: tuple[int, int] = (320, 1280),
               max_aspect: float = 3.0, min_aspect: float = 1.0) -> tuple[int, int]:
    """(width, height): the long side uniform, the aspect ratio log-uniform in [min_aspect, max_aspect]."""
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    aspect = math.exp(rng.uniform(math.log(min_aspect), math.log(max_aspect)))
    short = max(int(round(long / aspect)), 48)
    return (long, short) if rng.random() < 0.5 else (short, long)


def _any_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A float32 HxWx3 background: flat, noisy, a gradient at any angle, a four-corner gradient or blotches."""
    kind = str(rng.choice(["flat", "noisy", "gradient", "corners", "blotches"], p=[0.2, 0.2, 0.25, 0.15, 0.2]))
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:] = _any_colour(rng)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        canvas += t[..., None] * (_any_colour(rng) - canvas[0, 0])
    elif kind == "corners":
        corners = np.stack([_any_colour(rng) for _ in range(4)]).reshape(2, 2, 3)
        canvas = cv2.resize(corners, (w, h), interpolation=cv2.INTER_LINEAR)
    elif kind == "blotches":
        cells = rng.uniform(0, 255, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3)).astype(np.float32)
        canvas = cv2.resize(cells, (w, h), interpolation=cv2.INTER_CUBIC)
    if kind != "flat":
        canvas += rng.normal(0, rng.uniform(3, 16), canvas.shape).astype(np.float32)
    return canvas


def _contrasting(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A colour of any hue, saturation and value that stands out from ``under`` (mean BGR)."""
    luma = np.array([0.114, 0.587, 0.299])
    for _ in range(200):
        r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0, 1))
        colour = np.array([b, g, r]) * 255
        if np.linalg.norm(colour - under) > 120 or abs(float(luma @ (colour - under))) > 65:
            return int(colour[0]), int(colour[1]), int(colour[2])
    return tuple(int(v) for v in (255 - under))  # type: ignore[return-value]


def _lines(image: np.ndarray, rng: np.random.Generator, count: int, max_width: int) -> None:
    """Lines across the frame, short segments and open curves, in random colours."""
    h, w = image.shape[:2]
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        width = int(rng.integers(1, max_width + 1))
        kind = rng.random()
        if kind < 0.45:  # across the whole frame
            if rng.random() < 0.5:
                p0, p1 = (0, int(rng.integers(0, h))), (w - 1, int(rng.integers(0, h)))
            else:
                p0, p1 = (int(rng.integers(0, w)), 0), (int(rng.integers(0, w)), h - 1)
            cv2.line(image, p0, p1, colour, width, cv2.LINE_AA)
        elif kind < 0.8:  # a segment
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(image, p0, p1, colour, width, cv2.LINE_AA)
        else:  # an open curve (an arc of a large ellipse: no closed outline a model could call a circle)
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(w // 4 + 1, w + 2)), int(rng.integers(h // 4 + 1, h + 2)))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), start, start + float(rng.uniform(30, 120)),
                        colour, width, cv2.LINE_AA)


def diameter(rng: np.random.Generator, short_side: int, smallest: float = MIN_DIAMETER,
             largest: float = MAX_DIAMETER_OF_SHORT_SIDE) -> float:
    """A shape's diameter: half log-uniform (small shapes common), half uniform, from ``smallest``
    pixels to ``largest`` of the short side."""
    largest = max(smallest + 1.0, largest * short_side)
    if rng.random() < 0.5:
        return float(math.exp(rng.uniform(math.log(smallest), math.log(largest))))
    return float(rng.uniform(smallest, largest))


def _mask(shape: Shape, hw: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    if shape.class_name == "circle":
        cx, cy = shape.centre
        cv2.circle(mask, (round(cx * 16), round(cy * 16)), round(shape.radius * 16), 1, -1, cv2.LINE_8, shift=4)
    else:
        cv2.fillPoly(mask, [np.round(shape.polygon * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 1.5)))
    image = image + rng.normal(0, rng.uniform(0, 12), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def broad_scene(rng: np.random.Generator, *, max_shapes: int = 8, size: tuple[int, int] | None = None,
                classes: tuple[str, ...] = CLASSES) -> Scene:
    """One training image with 1..max_shapes shapes and their exact outlines."""
    w, h = size or frame_size(rng)
    canvas = background(rng, w, h)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    _lines(image, rng, int(rng.integers(0, 9)), 4)
    shapes: list[Shape] = []
    visible: list[np.ndarray] = []  # each shape's pixels not covered by later ones
    areas: list[int] = []
    wanted = int(rng.integers(1, max_shapes + 1))
    allow_overlap = rng.random() < 0.35
    for _ in range(wanted * 40):
        if len(shapes) == wanted:
            break
        d = diameter(rng, min(w, h))
        radius = d / 2
        margin = radius + 1
        if w <= 2 * margin or h <= 2 * margin:
            continue
        centre = (float(rng.uniform(margin, w - margin)), float(rng.uniform(margin, h - margin)))
        if not allow_overlap and any(math.dist(centre, s.centre) < radius + s.radius + 2 for s in shapes):
            continue
        class_name = str(rng.choice(classes))
        shape = Shape(class_name, shape_polygon(class_name, centre, radius, float(rng.uniform(0, 2 * math.pi))),
                      centre, float(radius))
        mask = _mask(shape, (h, w))
        area = int(mask.sum())
        if area == 0:
            continue
        left = [v & ~mask for v in visible]
        if any(l.sum() < MIN_VISIBLE * a for l, a in zip(left, areas)):
            continue
        under = image[mask].mean(axis=0)
        draw_shape(image, shape, _contrasting(rng, under))
        shapes.append(shape)
        visible = [*left, mask]
        areas.append(area)
    _lines(image, rng, int(rng.integers(0, 4)), 2)  # thin lines over the shapes too
    return Scene(_finish(image.astype(np.float32), rng), tuple(shapes))


def broad_single_shape(rng: np.random.Generator, class_name: str, *, long_side: tuple[int, int] = (240, 1280),
                       max_aspect: float = 3.0, largest: float = 0.9) -> Scene:
    """A classification frame: one ``class_name`` shape anywhere, from 4% of the long side up to
    ``largest`` of the short one (a photo of one shape may be filled by it)."""
    w, h = frame_size(rng, long_side, max_aspect)
    image = np.clip(background(rng, w, h), 0, 255).astype(np.uint8)
    _lines(image, rng, int(rng.integers(0, 7)), 4)
    d = diameter(rng, min(w, h), smallest=max(MIN_DIAMETER, 0.04 * max(w, h)), largest=largest)
    d = min(d, min(w, h) - 4.0)
    radius = d / 2
    centre = (float(rng.uniform(radius + 1, w - radius - 1)), float(rng.uniform(radius + 1, h - radius - 1)))
    shape = Shape(class_name, shape_polygon(class_name, centre, radius, float(rng.uniform(0, 2 * math.pi))),
                  centre, float(radius))
    draw_shape(image, shape, _contrasting(rng, image[_mask(shape, (h, w))].mean(axis=0)))
    _lines(image, rng, int(rng.integers(0, 3)), 2)
    return Scene(_finish(image.astype(np.float32), rng), (shape,))
