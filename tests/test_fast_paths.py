"""The request path's fast paths: JPEG decoding by libjpeg-turbo (simplejpeg) and JSON answers
rendered by orjson, each checked against the path it replaces (OpenCV's decoder, Starlette's
``json.dumps`` rendering), including the inputs where the old path must keep deciding."""
from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.responses import JSONResponse

from serve_app.errors import InvalidImage
from serve_app.http.json_response import FastJSONResponse, render_json
from serve_app.options import ImageLimits
from serve_app.pipeline import images
from serve_app.pipeline.images import decode_image_bytes
from zoo.shapes import draw_scene

LIMITS = ImageLimits()
OPENCV = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def scene_jpeg(seed: int = 0, size: tuple[int, int] = (640, 480), **kw) -> bytes:
    """A photo-like scene (zoo/shapes.py) encoded by Pillow with ``kw`` (quality, subsampling, ...)."""
    width, height = size
    bgr = draw_scene(np.random.default_rng(seed), size=(width, height)).image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).save(buffer, "JPEG", **kw)
    return buffer.getvalue()


def opencv_decode(data: bytes, flags: int = OPENCV) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def old_path(data: bytes, monkeypatch: pytest.MonkeyPatch, **kw) -> np.ndarray:
    """``decode_image_bytes`` as it was: the fast decoder switched off."""
    with monkeypatch.context() as m:
        m.setattr(images, "simplejpeg", None)
        return decode_image_bytes(data, LIMITS, **kw)


def test_simplejpeg_is_installed() -> None:
    # a declared dependency: without it every JPEG silently takes the slower decoder
    assert images.simplejpeg is not None


@pytest.mark.parametrize("kw", [
    {"quality": 90},
    {"quality": 75, "subsampling": 2},         # 4:2:0, what cameras write
    {"quality": 95, "subsampling": 0},         # 4:4:4
    {"quality": 80, "subsampling": 1},         # 4:2:2
    {"quality": 85, "progressive": True},
    {"quality": 60, "optimize": True},
])
def test_turbo_decode_equals_opencv(kw: dict) -> None:
    data = scene_jpeg(3, (641, 479), **kw)  # odd sizes: partial MCUs at the edges
    fast = images._decode_jpeg_turbo(data)
    assert fast is not None  # the fast path really decoded it
    expected = opencv_decode(data)
    assert fast.shape == expected.shape == (479, 641, 3)
    # the same libjpeg-turbo IDCT and upsampling: equal, and at worst within JPEG's rounding
    assert int(np.abs(fast.astype(np.int16) - expected).max()) <= 1
    assert fast.dtype == np.uint8 and fast.flags.c_contiguous and fast.flags.writeable


def test_decode_image_bytes_takes_the_fast_path_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = images._decode_jpeg_turbo
    monkeypatch.setattr(images, "_decode_jpeg_turbo", lambda data: calls.append(len(data)) or real(data))
    data = scene_jpeg(5, quality=85)
    got = decode_image_bytes(data, LIMITS)
    assert calls == [len(data)]
    np.testing.assert_array_equal(got, opencv_decode(data, cv2.IMREAD_COLOR))


def test_greyscale_jpeg_becomes_three_equal_channels() -> None:
    grey = draw_scene(np.random.default_rng(1), size=(320, 240)).image[..., 1].copy()
    ok, enc = cv2.imencode(".jpg", grey)
    data = enc.tobytes()
    assert images._decode_jpeg_turbo(data) is not None
    got = decode_image_bytes(data, LIMITS)
    np.testing.assert_array_equal(got, opencv_decode(data))
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_same_as_opencv(orientation: int, monkeypatch: pytest.MonkeyPatch) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = scene_jpeg(orientation, (96, 64), quality=90, exif=exif.tobytes())
    oriented = decode_image_bytes(data, LIMITS)
    # cv2.imdecode applies EXIF orientation with IMREAD_COLOR: what Ultralytics sees
    np.testing.assert_array_equal(oriented, opencv_decode(data, cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(oriented, old_path(data, monkeypatch))
    stored = decode_image_bytes(data, LIMITS, auto_orient=False)
    np.testing.assert_array_equal(stored, opencv_decode(data))
    assert stored.shape == (64, 96, 3)


def test_recoverable_corruption_falls_back_to_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(scene_jpeg(7, (200, 150), quality=90))
    middle = len(data) // 2
    data[middle:middle + 40] = b"\x55" * 40  # damaged entropy data: libjpeg warns and goes on
    data = bytes(data)
    assert images._decode_jpeg_turbo(data) is None  # strict: the warning refuses it
    got = decode_image_bytes(data, LIMITS)
    np.testing.assert_array_equal(got, opencv_decode(data, cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(got, old_path(data, monkeypatch))


def jpeg_bad_cases() -> dict[str, bytes]:
    good = scene_jpeg(9, (120, 90), quality=90)
    sof = good.find(b"\xff\xc0")
    corrupt_sof = good[:sof + 5] + b"\x00\x00\x00\x00" + good[sof + 9:]  # 0x0 size
    return {
        "truncated": good[: len(good) // 2],
        "no end marker": good[:-2],
        "header only": good[:sof + 20],
        "zero size in SOF": corrupt_sof,
        "soi eoi only": b"\xff\xd8\xff\xd9",
    }


@pytest.mark.parametrize("name", sorted(jpeg_bad_cases()))
def test_bad_jpegs_get_the_same_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg_bad_cases()[name]
    with pytest.raises(InvalidImage) as new:
        decode_image_bytes(data, LIMITS)
    with pytest.raises(InvalidImage) as old:
        old_path(data, monkeypatch)
    assert str(new.value) == str(old.value)
    assert new.value.status == 400


# -- JSON answers -------------------------------------------------------------------------------
def starlette_body(content) -> bytes:
    return JSONResponse(content).body


ANSWER = {
    "inference_id": None, "time": 0.0123456789, "image": {"width": 640, "height": 480},
    "predictions": [{"x": 10.5, "y": 0.25, "width": 3.0, "height": 1234567.25, "confidence": 0.87654321,
                     "class": "cafetière ☕", "class_id": 2, "detection_id": "a-b",
                     "points": [{"x": 1.0, "y": -0.0}], "keypoints": []}] * 5,
}


def test_answer_renders_byte_for_byte_as_starlette() -> None:
    assert FastJSONResponse(ANSWER).body == starlette_body(ANSWER)
    assert FastJSONResponse([ANSWER, ANSWER]).body == starlette_body([ANSWER, ANSWER])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_renders_as_starlette(value) -> None:
    body, expected = FastJSONResponse(value).body, starlette_body(value)
    assert json.loads(body) == json.loads(expected)  # the same values, floats exactly
    # and the same text, but for a small float's exponent (orjson 1e-7, json.dumps 1e-07)
    assert body.replace(b"e-0", b"e-") == expected.replace(b"e-0", b"e-") or b"e-" in expected


def test_small_floats_differ_only_in_spelling() -> None:
    value = {"confidence": 1e-7, "y": 0.00001}
    assert FastJSONResponse(value).body == b'{"confidence":1e-7,"y":0.00001}'
    assert json.loads(FastJSONResponse(value).body) == json.loads(starlette_body(value)) == value


@pytest.mark.parametrize("content", [
    {"x": float("nan")}, [1, float("inf")], {"deep": [{"y": -float("inf")}]},
])
def test_non_finite_floats_are_refused_as_before(content) -> None:
    assert render_json(content) is None
    with pytest.raises(ValueError):
        starlette_body(content)
    with pytest.raises(ValueError):
        FastJSONResponse(content)


@pytest.mark.parametrize("content", [{1: "a"}, {"n": 2 ** 70}, {"t": (1, 2)}])
def test_what_orjson_renders_otherwise_takes_starlettes_rendering(content) -> None:
    assert FastJSONResponse(content).body == starlette_body(content)
