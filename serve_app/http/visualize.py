"""Draw a Roboflow-shaped result on its image: boxes, filled masks, keypoints with skeleton, labels.

Colours come from the manifest's ``class_colors`` (``{"circle": "#FF3838"}``); a class without
one takes Roboflow's default palette by class id. Pure functions on BGR ``uint8`` arrays: the
replica draws on the images it decoded for inference (a request's ``draw`` options, see
``http/requests.py``), so no image is decoded twice, and the tests run them without a server.

>>> image = np.zeros((40, 60, 3), np.uint8)
>>> result = {"predictions": [{"x": 30, "y": 20, "width": 20, "height": 10, "class": "a", "class_id": 0,
...                            "confidence": 0.9}]}
>>> drawn = draw_result(image, result, {"a": "#00FF00"}, options=DrawOptions(labels=False, stroke=1))
>>> drawn[15, 30].tolist(), int(image.sum())   # the box's top edge is green; the input is untouched
([0, 255, 0], 0)
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


# Roboflow's default annotation palette (supervision's ColorPalette.ROBOFLOW), as hex RGB.
PALETTE = ("#A351FB", "#FF4040", "#FFA1A0", "#FF7633", "#FFB633", "#D1D435", "#4CFB12", "#94CF1A", "#40DE8A",
           "#1B9640", "#00D6C1", "#2E9CAA", "#00C4FF", "#364797", "#6675FF", "#0019EF", "#863AFF", "#530087",
           "#CD3AFF", "#FF97CA", "#FF39C9")
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class DrawOptions:
    """``labels``: write class and confidence; ``stroke``: line width in pixels (None: by image size)."""

    labels: bool = True
    stroke: int | None = None
    mask_opacity: float = 0.4


def hex_to_bgr(value: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` (or ``RRGGBB``) -> a BGR triple.

    >>> hex_to_bgr("#FF8000")
    (0, 128, 255)
    """
    match = _HEX.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"a colour must be '#RRGGBB', got {value!r}")
    rgb = int(match.group(1), 16)
    return rgb & 0xFF, (rgb >> 8) & 0xFF, rgb >> 16


def class_colour(name: str, class_id: int, class_colors: Mapping[str, str]) -> tuple[int, int, int]:
    """The manifest's colour for ``name``, else the palette's colour for ``class_id``."""
    if name in class_colors:
        try:
            return hex_to_bgr(class_colors[name])
        except ValueError:
            pass
    return hex_to_bgr(PALETTE[class_id % len(PALETTE)])


def auto_stroke(shape: tuple[int, ...]) -> int:
    """A line width that stays visible on large images: 2 px up to 640 px on the short side."""
    return max(2, round(min(shape[:2]) / 320))


def draw_result(image: np.ndarray, result: Mapping[str, Any], class_colors: Mapping[str, str],
                skeleton: Sequence[tuple[int, int]] = (), options: DrawOptions = DrawOptions()) -> np.ndarray:
    """A copy of ``image`` with ``result`` (one Roboflow response) drawn on it."""
    canvas = np.ascontiguousarray(image).copy()
    stroke = options.stroke or auto_stroke(canvas.shape)
    predictions = result.get("predictions")
    if "top" in result or isinstance(predictions, dict):
        _draw_classification(canvas, result, class_colors, stroke)
        return canvas
    predictions = predictions or []
    polygons = [(p, _points(p)) for p in predictions]
    if any(len(pts) >= 3 for _, pts in polygons):
        overlay = canvas.copy()
        for p, pts in polygons:
            if len(pts) >= 3:
                cv2.fillPoly(overlay, [pts], _colour_of(p, class_colors), cv2.LINE_AA)
        cv2.addWeighted(overlay, options.mask_opacity, canvas, 1 - options.mask_opacity, 0, dst=canvas)
    for p, pts in polygons:
        colour = _colour_of(p, class_colors)
        if len(pts) >= 3:
            cv2.polylines(canvas, [pts], True, colour, max(1, stroke // 2), cv2.LINE_AA)
        x0, y0 = round(p["x"] - p["width"] / 2), round(p["y"] - p["height"] / 2)
        x1, y1 = round(p["x"] + p["width"] / 2), round(p["y"] + p["height"] / 2)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, stroke)
        if p.get("keypoints"):
            _draw_keypoints(canvas, p["keypoints"], skeleton, colour, stroke)
    if options.labels:
        for p, _ in polygons:
            text = p["text"] if "text" in p else f"{p.get('class', '')} {float(p.get('confidence', 0)):.2f}"
            x0, y0 = round(p["x"] - p["width"] / 2), round(p["y"] - p["height"] / 2)
            _label(canvas, text, (x0, y0), _colour_of(p, class_colors), stroke)
    return canvas


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not encode a {image.dtype} {image.shape} image as JPEG")
    return data.tobytes()


def _colour_of(p: Mapping[str, Any], class_colors: Mapping[str, str]) -> tuple[int, int, int]:
    return class_colour(str(p.get("class", "")), int(p.get("class_id", 0)), class_colors)


def _points(p: Mapping[str, Any]) -> np.ndarray:
    pts = p.get("points") or ()
    return np.round(np.array([[q["x"], q["y"]] for q in pts], np.float64).reshape(-1, 2)).astype(np.int32)


def _draw_keypoints(canvas: np.ndarray, keypoints: Sequence[Mapping[str, Any]],
                    skeleton: Sequence[tuple[int, int]], colour: tuple[int, int, int], stroke: int) -> None:
    by_id = {int(k.get("class_id", i)): (round(k["x"]), round(k["y"])) for i, k in enumerate(keypoints)}
    for a, b in skeleton:
        if a in by_id and b in by_id:
            cv2.line(canvas, by_id[a], by_id[b], colour, stroke, cv2.LINE_AA)
    radius = max(2, stroke + 1)
    for xy in by_id.values():
        cv2.circle(canvas, xy, radius, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(canvas, xy, radius, colour, max(1, stroke // 2), cv2.LINE_AA)


def _draw_classification(canvas: np.ndarray, result: Mapping[str, Any], class_colors: Mapping[str, str],
                         stroke: int) -> None:
    predictions = result.get("predictions") or []
    if isinstance(predictions, dict):  # multi-label: every predicted class
        names = result.get("predicted_classes") or []
        lines = [(n, predictions[n]["class_id"], predictions[n]["confidence"]) for n in names if n in predictions]
    else:
        lines = [(p["class"], p["class_id"], p["confidence"]) for p in predictions[:1]]
    y = 0
    for name, class_id, confidence in lines:
        y = _label(canvas, f"{name} {float(confidence):.2f}", (0, y), class_colour(name, int(class_id), class_colors),
                   stroke, below=True)


def _label(canvas: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int], stroke: int,
           below: bool = False) -> int:
    """Write ``text`` on a filled box above ``corner`` (below it when ``below`` or no room); return its bottom."""
    text = text.encode("ascii", "replace").decode()  # Hershey fonts draw ASCII only
    scale = max(0.4, stroke / 4)
    thickness = max(1, stroke // 2)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    h, w = canvas.shape[:2]
    x = min(max(corner[0], 0), max(w - tw - 4, 0))
    top = corner[1] if below or corner[1] - th - base - 4 < 0 else corner[1] - th - base - 4
    bottom = top + th + base + 4
    cv2.rectangle(canvas, (x, top), (x + tw + 4, bottom), colour, -1)
    luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 2, bottom - base - 2), _FONT, scale, ink, thickness, cv2.LINE_AA)
    return bottom


def render(originals: Sequence[np.ndarray], results: Sequence[Mapping[str, Any]], class_colors: Mapping[str, str],
           skeleton: Sequence[tuple[int, int]], options: DrawOptions) -> list[bytes]:
    """One JPEG per image with its result drawn."""
    return [encode_jpeg(draw_result(image, result, class_colors, skeleton, options))
            for image, result in zip(originals, results)]
