"""Drawing Roboflow-shaped results: colours from the manifest, masks blended, keypoints, labels, JPEG."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from serve_app.http.visualize import PALETTE, DrawOptions, class_colour, draw_result, encode_jpeg, hex_to_bgr

COLOURS = {"circle": "#FF0000", "square": "#00FF00", "triangle": "#0000FF"}


def _box(x0, y0, x1, y1, name="circle", class_id=0, **extra) -> dict:
    return {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "width": x1 - x0, "height": y1 - y0, "class": name,
            "class_id": class_id, "confidence": 0.87, **extra}


def test_hex_colours_and_fallback_palette():
    assert hex_to_bgr("#FF8000") == (0, 128, 255) and hex_to_bgr("00ff00") == (0, 255, 0)
    with pytest.raises(ValueError, match="RRGGBB"):
        hex_to_bgr("red")
    assert class_colour("circle", 0, COLOURS) == (0, 0, 255)
    assert class_colour("other", 1, COLOURS) == hex_to_bgr(PALETTE[1])
    assert class_colour("broken", 2, {"broken": "nope"}) == hex_to_bgr(PALETTE[2])


def test_box_drawn_in_the_class_colour_without_touching_the_input():
    image = np.full((100, 160, 3), 50, np.uint8)
    result = {"predictions": [_box(20, 30, 120, 80, "square", 1)]}
    drawn = draw_result(image, result, COLOURS, options=DrawOptions(labels=False, stroke=2))
    assert (image == 50).all()
    assert drawn[30, 70].tolist() == [0, 255, 0] and drawn[80, 70].tolist() == [0, 255, 0]
    assert drawn[55, 70].tolist() == [50, 50, 50]  # inside a box without a mask stays as it was
    assert drawn[5, 5].tolist() == [50, 50, 50]


def test_polygon_mask_is_filled_semi_transparent():
    image = np.zeros((100, 100, 3), np.uint8)
    points = [{"x": x, "y": y} for x, y in ((20, 20), (80, 20), (80, 80), (20, 80))]
    result = {"predictions": [_box(20, 20, 80, 80, "circle", 0, points=points)]}
    drawn = draw_result(image, result, COLOURS, options=DrawOptions(labels=False, stroke=2, mask_opacity=0.5))
    b, g, r = drawn[50, 50].tolist()
    assert b == 0 and g == 0 and 120 <= r <= 135  # half of pure red over black
    assert drawn[5, 5].tolist() == [0, 0, 0]


def test_keypoints_and_skeleton():
    image = np.zeros((120, 120, 3), np.uint8)
    keypoints = [{"x": 20.0, "y": 20.0, "confidence": 0.9, "class_id": 0, "class": "top"},
                 {"x": 100.0, "y": 20.0, "confidence": 0.9, "class_id": 1, "class": "second"},
                 {"x": 60.0, "y": 100.0, "confidence": 0.9, "class_id": 2, "class": "third"}]
    result = {"predictions": [_box(10, 10, 110, 110, "triangle", 2, keypoints=keypoints)]}
    drawn = draw_result(image, result, COLOURS, skeleton=[(0, 1), (1, 2), (2, 0)],
                        options=DrawOptions(labels=False, stroke=2))
    assert drawn[20, 20].tolist() == [255, 255, 255]  # keypoint centres are white dots
    b, g, r = drawn[20, 60].tolist()
    assert b > 200 and g == r == 0  # the 0-1 edge, in the triangle's blue
    no_skeleton = draw_result(image, result, COLOURS, options=DrawOptions(labels=False, stroke=2))
    assert no_skeleton[20, 60].tolist() == [0, 0, 0]


def test_labels_are_written_above_the_box_in_its_colour():
    image = np.zeros((100, 200, 3), np.uint8)
    result = {"predictions": [_box(40, 50, 160, 90, "circle", 0)]}
    with_labels = draw_result(image, result, COLOURS, options=DrawOptions(labels=True, stroke=2))
    without = draw_result(image, result, COLOURS, options=DrawOptions(labels=False, stroke=2))
    above = (slice(25, 49), slice(40, 100))
    assert (with_labels[above] != without[above]).any()
    assert (with_labels[above] == [0, 0, 255]).all(axis=-1).mean() > 0.3  # the red label box


def test_ocr_text_and_classification_are_drawn():
    image = np.full((80, 200, 3), 255, np.uint8)
    quad = [{"x": 10, "y": 20}, {"x": 150, "y": 20}, {"x": 150, "y": 60}, {"x": 10, "y": 60}]
    ocr = {"result": "HI", "predictions": [_box(10, 20, 150, 60, "text", 0, text="HI ünïcode", points=quad)]}
    assert (draw_result(image, ocr, {"text": "#00C2FF"}) != image).any()
    cls = {"top": "square", "confidence": 0.9, "predictions": [{"class": "square", "class_id": 1, "confidence": 0.9}]}
    drawn = draw_result(image, cls, COLOURS, options=DrawOptions(stroke=2))
    assert (drawn[2:10, 2:20] == [0, 255, 0]).all(axis=-1).mean() > 0.3  # top-left label in square's green
    multi = {"predicted_classes": ["circle"], "predictions": {"circle": {"confidence": 0.8, "class_id": 0},
                                                               "square": {"confidence": 0.1, "class_id": 1}}}
    assert (draw_result(image, multi, COLOURS) != image).any()


def test_empty_result_and_jpeg_round_trip():
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    drawn = draw_result(image, {"predictions": []}, COLOURS)
    assert (drawn == image).all()
    decoded = cv2.imdecode(np.frombuffer(encode_jpeg(drawn), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape
