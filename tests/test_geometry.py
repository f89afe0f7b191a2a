"""Letterbox/stretch/crop mappings round-trip exactly; IoU basics."""
import numpy as np
from hypothesis import given, settings, strategies as st

from serve_app.pipeline.geometry import (box_iou, center_crop_transform, letterbox_transform, static_crop_box,
                                         stretch_transform)
from serve_app.pipeline.preprocess import InputSpec, PreprocessingSpec, prepare_image, resize_to_input

sizes = st.tuples(st.integers(1, 4000), st.integers(1, 4000))
inputs = st.tuples(st.integers(32, 1280), st.integers(32, 1280))


@settings(max_examples=300, deadline=None)
@given(sizes, inputs, st.floats(0, 1), st.floats(0, 1))
def test_letterbox_round_trip(image_hw, input_hw, fx, fy):
    t = letterbox_transform(image_hw, input_hw)
    h, w = image_hw
    pt = np.array([[fx * w, fy * h]])
    back = t.points_to_original(t.points_to_input(pt))
    np.testing.assert_allclose(back, pt, atol=1e-6 * max(h, w))
    # content fits inside the input and is centred to within a pixel
    x0, y0, x1, y1 = t.content_box
    assert 0 <= x0 and 0 <= y0 and x1 <= input_hw[1] and y1 <= input_hw[0]
    assert abs((input_hw[1] - x1) - x0) <= 1 and abs((input_hw[0] - y1) - y0) <= 1


@settings(max_examples=200, deadline=None)
@given(sizes, inputs, st.floats(0, 1), st.floats(0, 1))
def test_stretch_and_center_crop_round_trip(image_hw, input_hw, fx, fy):
    h, w = image_hw
    pt = np.array([[fx * w, fy * h]])
    for t in (stretch_transform(image_hw, input_hw), center_crop_transform(image_hw, input_hw)):
        np.testing.assert_allclose(t.points_to_original(t.points_to_input(pt), clip=False), pt, atol=1e-6 * max(h, w))


def test_letterbox_matches_ultralytics_rounding():
    t = letterbox_transform((480, 640), (320, 320))
    assert (t.resized_w, t.resized_h, t.pad_x, t.pad_y) == (320, 240, 0, 40)
    t = letterbox_transform((900, 360), (320, 320))
    assert (t.resized_w, t.resized_h, t.pad_x, t.pad_y) == (128, 320, 96, 0)


def test_letterboxed_pixels_land_where_the_transform_says():
    image = np.zeros((300, 600, 3), np.uint8)
    image[100:150, 400:500] = 255  # a white block
    out, t = resize_to_input(image, InputSpec(width=320, height=320))
    assert out.shape == (320, 320, 3)
    assert (out[:t.pad_y] == 114).all() and (out[t.pad_y + t.resized_h:] == 114).all()
    ys, xs = np.nonzero(out[..., 0] > 200)
    corners = t.points_to_original(np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.max() + 1]], float))
    np.testing.assert_allclose(corners, [[400, 100], [500, 150]], atol=2.5)


@settings(max_examples=100, deadline=None)
@given(st.tuples(st.integers(20, 400), st.integers(20, 400)),
       st.tuples(st.floats(0, 40), st.floats(0, 40), st.floats(60, 100), st.floats(60, 100)),
       st.floats(0, 1), st.floats(0, 1))
def test_static_crop_maps_back_into_the_full_image(hw, crop, fx, fy):
    image = np.zeros((*hw, 3), np.uint8)
    spec = InputSpec(width=64, height=64)
    _, t = prepare_image(image, spec, PreprocessingSpec(static_crop=crop))
    x0, y0, x1, y1 = static_crop_box(hw, crop)
    assert (t.original_w, t.original_h) == (hw[1], hw[0])
    pt_in_crop = np.array([[x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)]])
    np.testing.assert_allclose(t.points_to_original(t.points_to_input(pt_in_crop)), pt_in_crop, atol=1e-6 * 400)


def test_box_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0, 0.0])
