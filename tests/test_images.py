"""Tests for serve_app.pipeline.images and image_urls: real encoders, a real local HTTP server."""
from __future__ import annotations

import base64
import io
import pickle
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from serve_app.errors import ImageFetchError, InvalidImage, PayloadTooLarge
from serve_app.pipeline.image_urls import host_allowed, is_public_address
from serve_app.pipeline.images import (
    ImageLimits,
    _decode_with_pillow_header,
    _plain_jpeg_header,
    decode_base64_image,
    decode_image_bytes,
    decode_npy,
    fetch_image_url,
    load_image,
    load_image_bytes,
)

LIMITS = ImageLimits()
LOCAL = ImageLimits(allow_private_urls=True, url_timeout_s=5.0)
BLUE, RED, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)  # BGR
H, W = 48, 64


def pattern_bgr() -> np.ndarray:
    """Blue 48x64 image, red 16x16 square top-left, green 16x16 square top-right (BGR)."""
    image = np.empty((H, W, 3), np.uint8)
    image[:] = BLUE
    image[:16, :16] = RED
    image[:16, -16:] = GREEN
    return image


def encode(bgr: np.ndarray, fmt: str, *, orientation: int | None = None, **kw) -> bytes:
    """Encode a BGR (or greyscale) array with Pillow, optionally with an EXIF orientation."""
    image = Image.fromarray(bgr[..., ::-1] if bgr.ndim == 3 else bgr)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def cv2_encode(array: np.ndarray, ext: str) -> bytes:
    ok, encoded = cv2.imencode(ext, array)
    assert ok
    return encoded.tobytes()


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def assert_bgr(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.dtype == np.uint8 and image.shape == (*shape, 3)
    assert image.flags.c_contiguous and image.flags.writeable


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------- formats and modes

@pytest.mark.parametrize("fmt, kw", [
    ("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}),
    ("TIFF", {"compression": "tiff_lzw"}), ("GIF", {}),
])
def test_lossless_formats_decode_exactly(fmt: str, kw: dict) -> None:
    image = decode_image_bytes(encode(pattern_bgr(), fmt, **kw), LIMITS)
    assert_bgr(image, (H, W))
    np.testing.assert_array_equal(image, pattern_bgr())


def test_jpeg_decodes_close_and_matches_opencv() -> None:
    data = encode(pattern_bgr(), "JPEG", quality=95)
    image = decode_image_bytes(data, LIMITS)
    assert_bgr(image, (H, W))
    assert np.abs(image[8, 8].astype(int) - RED).max() < 12
    assert np.abs(image[8, -8].astype(int) - GREEN).max() < 12
    assert np.abs(image[40, 32].astype(int) - BLUE).max() < 12
    np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def test_mpo_first_picture() -> None:
    first = Image.fromarray(pattern_bgr()[..., ::-1])
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (W, H), (0, 255, 255))])
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image = decode_image_bytes(data, LIMITS)
    np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    assert np.abs(image[8, 8].astype(int) - RED).max() < 12


def test_gif_first_frame_only() -> None:
    first = Image.fromarray(pattern_bgr()[..., ::-1])
    second = Image.new("RGB", (W, H), (255, 255, 0))
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second], duration=100)
    np.testing.assert_array_equal(decode_image_bytes(buffer.getvalue(), LIMITS), pattern_bgr())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_grayscale_becomes_three_equal_channels(fmt: str) -> None:
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (H, 1))  # 48x64 ramp
    image = decode_image_bytes(encode(gray, fmt), LIMITS)
    assert_bgr(image, (H, W))
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    tolerance = 3 if fmt == "JPEG" else 0
    assert np.abs(image[..., 0].astype(int) - gray).max() <= tolerance


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_16_bit_samples_keep_their_high_byte(ext: str) -> None:
    gray = np.full((4, 5), 0x12FF, np.uint16)  # >> 8 gives 0x12; clipping would give 255
    assert (decode_image_bytes(cv2_encode(gray, ext), LIMITS) == 0x12).all()
    bgr = np.dstack([np.full((4, 5), v, np.uint16) for v in (0x12FF, 0x3480, 0x5601)])
    image = decode_image_bytes(cv2_encode(bgr, ext), LIMITS)
    assert_bgr(image, (4, 5))
    assert image[0, 0].tolist() == [0x12, 0x34, 0x56]


def test_rgba_drops_alpha_like_opencv() -> None:
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = pattern_bgr()[..., ::-1]
    rgba[..., 3] = 0  # fully transparent: colours are kept, not composited
    rgba[:, W // 2:, 3] = 128
    data = encode_rgba(rgba)
    image = decode_image_bytes(data, LIMITS)
    np.testing.assert_array_equal(image, pattern_bgr())
    np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def encode_rgba(rgba: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, fmt)
    return buffer.getvalue()


def test_la_and_rgba_webp_drop_alpha() -> None:
    la = Image.fromarray(np.full((H, W), 77, np.uint8)).convert("LA")
    buffer = io.BytesIO()
    la.save(buffer, "PNG")
    assert (decode_image_bytes(buffer.getvalue(), LIMITS) == 77).all()
    rgba = np.dstack([pattern_bgr()[..., ::-1], np.full((H, W), 10, np.uint8)])
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "WEBP", lossless=True, exact=True)
    np.testing.assert_array_equal(decode_image_bytes(buffer.getvalue(), LIMITS), pattern_bgr())


def test_palette_image_becomes_rgb() -> None:
    palette_image = Image.fromarray(pattern_bgr()[..., ::-1]).quantize(colors=4)
    palette_image.info["transparency"] = 0
    buffer = io.BytesIO()
    palette_image.save(buffer, "PNG", transparency=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "P"
    np.testing.assert_array_equal(decode_image_bytes(buffer.getvalue(), LIMITS), pattern_bgr())


def test_palette_with_per_entry_alpha_and_corrupt_exif_do_not_warn() -> None:
    palette_image = Image.fromarray(pattern_bgr()[..., ::-1]).quantize(colors=4)
    buffer = io.BytesIO()
    palette_image.save(buffer, "PNG", transparency=bytes([0, 128, 255, 255]))
    np.testing.assert_array_equal(decode_image_bytes(buffer.getvalue(), LIMITS), pattern_bgr())
    corrupt_exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x12\x01\x03\x00" * 8
    data = encode(pattern_bgr(), "JPEG", exif=corrupt_exif, quality=95)
    assert decode_image_bytes(data, LIMITS).shape == (H, W, 3)  # filterwarnings=error: no leaks


def test_concurrent_decoding_leaves_warning_filters_alone() -> None:
    before = list(warnings.filters)
    payloads = [encode(pattern_bgr(), "WEBP", lossless=True), encode(pattern_bgr(), "PNG"),
                png_header(10000, 10000)]

    def work(index: int) -> None:
        for _ in range(30):
            try:
                decode_image_bytes(payloads[index % 3], LIMITS)
            except PayloadTooLarge:
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == before


@pytest.mark.parametrize("cmyk, bgr", [
    ((0, 255, 255, 0), RED), ((255, 0, 0, 0), (255, 255, 0)), ((0, 0, 0, 255), (0, 0, 0)),
    ((0, 0, 0, 0), (255, 255, 255)), ((0, 0, 0, 128), (127, 127, 127)),
])
def test_cmyk_jpeg_gives_correct_colours(cmyk: tuple, bgr: tuple) -> None:
    buffer = io.BytesIO()
    Image.new("CMYK", (32, 24), cmyk).save(buffer, "JPEG", quality=95)
    image = decode_image_bytes(buffer.getvalue(), LIMITS)
    assert_bgr(image, (24, 32))
    assert np.abs(image[12, 16].astype(int) - bgr).max() <= 3


# ---------------------------------------------------------------- EXIF orientation

@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_matches_opencv_and_pillow(fmt: str, orientation: int) -> None:
    data = encode(pattern_bgr(), fmt, orientation=orientation, quality=95)
    image = decode_image_bytes(data, LIMITS)
    # OpenCV applies EXIF itself with IMREAD_COLOR: the decoder must agree exactly (Ultralytics).
    np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    # And an independent implementation of the 8 orientations agrees on geometry.
    stored = Image.open(io.BytesIO(data))
    expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))[..., ::-1]
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected).max() <= (12 if fmt == "JPEG" else 0)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt, kw", [("WEBP", {"lossless": True}), ("TIFF", {}),
                                     ("TIFF", {"compression": "tiff_lzw"}), ("PNG", {})])
def test_exif_orientation_on_lossless_formats(fmt: str, kw: dict, orientation: int) -> None:
    data = encode(pattern_bgr(), fmt, orientation=orientation, **kw)
    image = decode_image_bytes(data, LIMITS)
    expected = decode_image_bytes(encode(pattern_bgr(), "PNG", orientation=orientation), LIMITS)
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def test_orientation_6_puts_the_square_where_a_viewer_sees_it() -> None:
    # Stored landscape, red top-left, green top-right; orientation 6 = rotate 90 clockwise
    # to display: red ends top-right, green bottom-right, and the image is portrait.
    image = decode_image_bytes(encode(pattern_bgr(), "PNG", orientation=6), LIMITS)
    assert image.shape == (W, H, 3)
    assert tuple(image[0, -1]) == RED and tuple(image[15, H - 16]) == RED
    assert tuple(image[-1, -1]) == GREEN
    assert tuple(image[0, 0]) == BLUE and tuple(image[-1, 0]) == BLUE


def test_orientation_8_rotates_counter_clockwise() -> None:
    image = decode_image_bytes(encode(pattern_bgr(), "PNG", orientation=8), LIMITS)
    assert image.shape == (W, H, 3)
    assert tuple(image[-1, 0]) == RED and tuple(image[0, 0]) == GREEN


def test_auto_orient_false_keeps_stored_pixels() -> None:
    data = encode(pattern_bgr(), "JPEG", orientation=6, quality=95)
    image = decode_image_bytes(data, LIMITS, auto_orient=False)
    assert image.shape == (H, W, 3)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(data, np.uint8), flags))
    for fmt, kw in [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {}),
                    ("TIFF", {"compression": "tiff_lzw"})]:
        for orientation in range(1, 9):
            data = encode(pattern_bgr(), fmt, orientation=orientation, **kw)
            stored = decode_image_bytes(data, LIMITS, auto_orient=False)
            np.testing.assert_array_equal(stored, pattern_bgr(), err_msg=f"{fmt} {orientation}")


# ---------------------------------------------------------------- bad and oversized images

@pytest.mark.parametrize("size", [(30000, 30000), (10000, 10000), (9000, 5000)])
def test_decompression_bomb_refused_from_the_header(size: tuple[int, int]) -> None:
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image_bytes(png_header(*size), LIMITS)
    assert time.perf_counter() - started < 1.0  # nothing was decoded


def test_pixel_limit_applies_to_real_images() -> None:
    with pytest.raises(PayloadTooLarge, match=r"48 = 3,072 pixels; the limit is 3,000"):
        decode_image_bytes(encode(pattern_bgr(), "PNG"), ImageLimits(max_pixels=3000))


def test_file_too_large() -> None:
    data = encode(pattern_bgr(), "PNG")
    with pytest.raises(PayloadTooLarge, match=f"image file is {len(data):,} bytes; the limit is 100 bytes"):
        decode_image_bytes(data, ImageLimits(max_file_bytes=100))


def test_truncated_jpeg_refused() -> None:
    noise = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8), (5, 5), 2)
    data = cv2_encode(noise, ".jpg")
    for cut in (len(data) // 2, len(data) - 2):
        with pytest.raises(InvalidImage, match="truncated"):
            decode_image_bytes(data[:cut], LIMITS)


def test_jpeg_with_trailing_data_is_accepted() -> None:
    data = encode(pattern_bgr(), "PNG")
    jpeg = cv2_encode(pattern_bgr(), ".jpg")
    trailer = b"\xff\xda\x00\x08" + bytes(range(256)) * 4  # trailer that looks like a scan
    np.testing.assert_array_equal(decode_image_bytes(jpeg + trailer, LIMITS),
                                  decode_image_bytes(jpeg, LIMITS))
    assert decode_image_bytes(data, LIMITS).shape == (H, W, 3)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (np.random.default_rng(1).bytes(5000), "not a recognised image format"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "starts like a PNG file but its header is corrupt"),
    (b"\xff\xd8\xff\xe0\x00", "corrupt"),
    (encode(pattern_bgr(), "PNG")[:120], "corrupt or truncated"),
    (encode(pattern_bgr(), "WEBP")[:60], "corrupt or truncated"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a recognised image format"),
])
def test_bad_bytes_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image_bytes(data, LIMITS)


# ---------------------------------------------------------------- base64

def test_base64_variants() -> None:
    noise = np.random.default_rng(2).integers(0, 255, (20, 30, 3), np.uint8)
    data = encode(noise, "PNG")
    standard = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    assert "-" in urlsafe or "_" in urlsafe
    variants = [
        standard, urlsafe, urlsafe.rstrip("="), base64.encodebytes(data).decode(),
        f"data:image/png;base64,{standard}", f"  DATA:image/png;base64,{urlsafe}\n",
        "\n".join(standard[i:i + 60] for i in range(0, len(standard), 60)) + "\r\n",
    ]
    for text in variants:
        np.testing.assert_array_equal(decode_base64_image(text, LIMITS), noise)


@pytest.mark.parametrize("text, error, message", [
    ("not base64 at all!", InvalidImage, "not valid base64"),
    ("data:image/png,rawdata", InvalidImage, "must be base64-encoded"),
    ("ÿØÿà", InvalidImage, "not valid base64: it contains non-ASCII"),
    ("   \n", InvalidImage, "empty"),
    ("abcde", InvalidImage, "not valid base64"),
    (base64.b64encode(b"hello world, not an image").decode(), InvalidImage, "not a recognised image"),
])
def test_bad_base64_refused(text: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        decode_base64_image(text, LIMITS)


def test_base64_length_checked_before_decoding() -> None:
    text = "A" * 1_000_000  # would decode to 750,000 bytes
    with pytest.raises(PayloadTooLarge, match="base64 image decodes to about 750,000 bytes; the limit is 1,000"):
        decode_base64_image(text, ImageLimits(max_file_bytes=1000))
    with pytest.raises(PayloadTooLarge, match="the limit is 1,000 bytes"):
        decode_base64_image("A" * 10_000_000, ImageLimits(max_file_bytes=1000))
    with pytest.raises(PayloadTooLarge, match="the limit is 1,000 bytes"):
        load_image_bytes(b"QUJD" * 1000, "text/plain", ImageLimits(max_file_bytes=1000))


# ---------------------------------------------------------------- npy

@pytest.mark.parametrize("shape", [(H, W), (H, W, 1), (H, W, 3), (H, W, 4)])
def test_npy_uint8_shapes(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(3).integers(0, 255, shape, np.uint8)
    image = decode_npy(npy_bytes(array), LIMITS)
    assert_bgr(image, (H, W))
    expected = array[..., :3] if len(shape) == 3 and shape[2] >= 3 else np.dstack([array.reshape(H, W)] * 3)
    np.testing.assert_array_equal(image, expected)


def test_npy_fortran_order_becomes_c_contiguous() -> None:
    array = np.asfortranarray(pattern_bgr())
    image = decode_npy(npy_bytes(array), LIMITS)
    assert_bgr(image, (H, W))
    np.testing.assert_array_equal(image, pattern_bgr())


@pytest.mark.parametrize("data, message", [
    (npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True), "pickled data is never accepted"),
    (pickle.dumps(np.zeros((4, 4, 3), np.uint8)), "pickled data is never accepted"),
    (npy_bytes(np.zeros((4, 4, 3), np.float32)), "must have dtype uint8; got float32"),
    (npy_bytes(np.zeros((4, 4, 2), np.uint8)), r"shape HxW, HxWx1, HxWx3 or HxWx4; got \(4, 4, 2\)"),
    (npy_bytes(np.zeros(12, np.uint8)), r"got \(12,\)"),
    (npy_bytes(np.zeros((0, 4, 3), np.uint8)), "empty size"),
    (npy_bytes(np.zeros((40, 40, 3), np.uint8))[:-100], "corrupt or truncated"),
    (b"PK\x03\x04" + b"\x00" * 30, "npz archive"),
    (b"hello", "not a .npy file"),
    (b"", "empty"),
])
def test_bad_npy_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_npy(data, LIMITS)


def test_npy_limits() -> None:
    data = npy_bytes(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(PayloadTooLarge, match="npy image is"):
        decode_npy(data, ImageLimits(max_file_bytes=1000))
    with pytest.raises(PayloadTooLarge, match="10,000 pixels"):
        decode_npy(data, ImageLimits(max_pixels=5000))


# ---------------------------------------------------------------- load_image / load_image_bytes

def test_load_image_types() -> None:
    data = encode(pattern_bgr(), "PNG")
    text = base64.b64encode(data).decode()
    np.testing.assert_array_equal(load_image({"type": "base64", "value": text}, LIMITS), pattern_bgr())
    np.testing.assert_array_equal(load_image(text, LIMITS), pattern_bgr())
    npy_text = base64.b64encode(npy_bytes(pattern_bgr())).decode()
    np.testing.assert_array_equal(load_image({"type": "npy", "value": npy_text}, LIMITS), pattern_bgr())
    oriented = base64.b64encode(encode(pattern_bgr(), "PNG", orientation=6)).decode()
    assert load_image({"type": "base64", "value": oriented}, LIMITS).shape == (W, H, 3)
    assert load_image({"type": "base64", "value": oriented}, LIMITS, auto_orient=False).shape == (H, W, 3)


@pytest.mark.parametrize("spec, message", [
    ({"type": "numpy", "value": "gASV..."},
     "image type 'numpy' is a pickle and is never accepted; send base64, url or npy"),
    ({"type": "pil", "value": "x"}, "image type 'pil' is a pickle and is never accepted"),
    ({"type": "numpy_object", "value": "x"}, "is a pickle"),
    ({"type": "file", "value": "/etc/passwd"}, "path on the server"),
    ({"type": "multipart", "value": "x"}, "image type 'multipart' is not supported; use one of base64, url, npy"),
    ({"type": "base64"}, "has no 'value'"),
    ({"type": "base64", "value": ""}, "has no 'value'"),
    ({"type": "base64", "value": 42}, "must be a string"),
    ({"value": "abc"}, "needs a 'type'"),
    ({"type": "npy", "value": base64.b64encode(pickle.dumps([1])).decode()}, "pickled data is never accepted"),
    (42, "must be an object"),
])
def test_load_image_refusals(spec: object, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        load_image(spec, LIMITS)  # type: ignore[arg-type]


def test_load_image_bytes_tells_bodies_apart() -> None:
    png = encode(pattern_bgr(), "PNG")
    jpeg = encode(pattern_bgr(), "JPEG")
    for body, content_type in [
        (png, "image/png"), (png, None), (base64.b64encode(png), "application/x-www-form-urlencoded"),
        (b"data:image/png;base64," + base64.b64encode(png), "text/plain"),
        (base64.b64encode(png) + b"\n", None),
        (npy_bytes(pattern_bgr()), "application/x-npy"), (npy_bytes(pattern_bgr()), None),
    ]:
        np.testing.assert_array_equal(load_image_bytes(body, content_type, LIMITS), pattern_bgr())
    assert load_image_bytes(jpeg, "application/octet-stream", LIMITS).shape == (H, W, 3)
    with pytest.raises(InvalidImage, match="not a .npy file"):
        load_image_bytes(png, "application/x-npy; charset=binary", LIMITS)
    with pytest.raises(InvalidImage, match="not valid base64"):
        load_image_bytes(b"QUJD" * 300 + "é".encode(), None, LIMITS)
    with pytest.raises(InvalidImage, match="empty"):
        load_image_bytes(b"", None, LIMITS)


def test_limits_are_validated() -> None:
    assert ImageLimits(url_allowed_hosts=["*.Example.com."]).url_allowed_hosts == ("*.example.com",)
    for bad in ({"max_pixels": 0}, {"url_timeout_s": 0}, {"url_allowed_hosts": "example.com"},
                {"url_allowed_hosts": ("https://example.com",)}, {"url_allowed_hosts": ("a.*.com",)}):
        with pytest.raises(ValueError):
            ImageLimits(**bad)


# ---------------------------------------------------------------- URL fetching

PNG_BODY = encode(pattern_bgr(), "PNG")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        self.server.hits.append(url.path)
        route = getattr(self, "route_" + url.path.strip("/").replace("-", "_").replace(".", "_"), None)
        if route is None:
            self.reply(404, b"not found")
        else:
            route(parse_qs(url.query))

    def reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def route_image_png(self, query: dict) -> None:
        self.reply(200, PNG_BODY, {"Content-Type": "image/png"})

    def route_slow(self, query: dict) -> None:
        self.server.stop.wait(3)
        self.reply(200, PNG_BODY)

    def route_drip(self, query: dict) -> None:  # one byte every 0.1 s: each read is quick
        self.send_response(200)
        self.send_header("Content-Length", "10000")
        self.end_headers()
        for _ in range(10000):
            if self.server.stop.wait(0.1):
                return
            self.wfile.write(b"x")
            self.wfile.flush()

    def route_huge(self, query: dict) -> None:
        self.reply(200, b"\0" * 1_000_000)

    def route_huge_unsized(self, query: dict) -> None:  # no length: body ends when closed
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for _ in range(100):
            self.wfile.write(b"\0" * 10_000)

    def route_chunked(self, query: dict) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(PNG_BODY), 100):
            piece = PNG_BODY[start:start + 100]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def route_redirect(self, query: dict) -> None:
        self.reply(302, b"", {"Location": query.get("to", ["/image.png"])[0]})

    def route_loop(self, query: dict) -> None:
        self.reply(302, b"", {"Location": "/loop"})

    def route_error(self, query: dict) -> None:
        self.reply(500, b"boom")

    def route_secret_echo(self, query: dict) -> None:
        self.reply(403, b"", {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[str] = []
        self.stop = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that time out on purpose break pipes


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def base(server: _Server, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}"


def test_fetch_image(server: _Server) -> None:
    assert fetch_image_url(f"{base(server)}/image.png", LOCAL) == PNG_BODY
    assert fetch_image_url(f"{base(server)}/chunked", LOCAL) == PNG_BODY
    np.testing.assert_array_equal(load_image({"type": "url", "value": f"{base(server)}/image.png"}, LOCAL),
                                  pattern_bgr())
    np.testing.assert_array_equal(load_image(f"{base(server)}/image.png?size=1", LOCAL), pattern_bgr())


def test_loopback_refused_by_default(server: _Server) -> None:
    hits = len(server.hits)
    for host in ("127.0.0.1", "localhost", "[::1]"):
        with pytest.raises(ImageFetchError, match="private, loopback, link-local or otherwise non-public"):
            fetch_image_url(f"{base(server, host)}/image.png", ImageLimits())
    with pytest.raises(ImageFetchError, match="non-public"):
        load_image({"type": "url", "value": f"{base(server)}/image.png"}, ImageLimits())
    assert len(server.hits) == hits  # nothing was sent


def test_dns_rebinding_cannot_reach_loopback(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host resolves to a public address when checked and to loopback afterwards: the
    fetcher connects to the address it checked, so the local server never sees a request."""
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["8.8.8.8"])

    def rebinding(host: str, port: object, *args: object, **kwargs: object) -> list:
        if host == "rebind.test":
            address = next(answers, "127.0.0.1")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    hits = len(server.hits)
    with pytest.raises(ImageFetchError, match="timed out|could not connect"):
        fetch_image_url(f"http://rebind.test:{server.server_address[1]}/image.png",
                        ImageLimits(url_timeout_s=0.5))
    assert len(server.hits) == hits


def test_allowlist(server: _Server) -> None:
    allowed = ImageLimits(allow_private_urls=True, url_allowed_hosts=("localhost",))
    assert fetch_image_url(f"{base(server, 'LOCALHOST')}/image.png", allowed) == PNG_BODY
    with pytest.raises(ImageFetchError, match="image host '127.0.0.1' is not allowed; allowed hosts: localhost"):
        fetch_image_url(f"{base(server)}/image.png", allowed)
    wildcard = ImageLimits(url_allowed_hosts=("*.example.com",))
    with pytest.raises(ImageFetchError, match="'example.com' is not allowed"):
        fetch_image_url("https://example.com/a.jpg", wildcard)


def test_host_matching_and_public_addresses() -> None:
    assert host_allowed("a.b.example.com.", ("*.example.com",))
    assert not host_allowed("example.com.evil.net", ("example.com", "*.example.com"))
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254",
                    "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1", "::1",
                    "::", "fe80::1%eth0", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
                    "64:ff9b::a00:1", "2002:7f00:1::1", "not an address"):
        assert not is_public_address(address), address
    for address in ("8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert is_public_address(address), address


def test_redirects(server: _Server) -> None:
    assert fetch_image_url(f"{base(server)}/redirect", LOCAL) == PNG_BODY
    with pytest.raises(ImageFetchError, match="more than 3 redirects"):
        fetch_image_url(f"{base(server)}/loop", LOCAL)
    to_localhost = f"{base(server)}/redirect?to={base(server, 'localhost')}/image.png"
    only_ip = ImageLimits(allow_private_urls=True, url_allowed_hosts=("127.0.0.1",))
    with pytest.raises(ImageFetchError, match="image host 'localhost' is not allowed"):
        fetch_image_url(to_localhost, only_ip)
    with pytest.raises(ImageFetchError, match="scheme 'file' is not allowed"):
        fetch_image_url(f"{base(server)}/redirect?to=file:///etc/passwd", LOCAL)


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "scheme 'file' is not allowed; use http or https"),
    ("ftp://example.com/a.jpg", "scheme 'ftp' is not allowed"),
    ("gopher://example.com/", "scheme 'gopher' is not allowed"),
    ("example.com/a.jpg", "must start with http:// or https://"),
    ("http:///a.jpg", "has no host"),
    ("http://example.com:99999/a.jpg", "malformed"),
    ("http://evil.example\\@good.example/", "backslash"),
    ("", "empty"),
])
def test_bad_urls_refused(url: str, message: str) -> None:
    with pytest.raises(ImageFetchError, match=message):
        fetch_image_url(url, LIMITS)


def test_http_errors_name_the_status(server: _Server) -> None:
    with pytest.raises(ImageFetchError, match=r"/missing failed: HTTP 404 Not Found"):
        fetch_image_url(f"{base(server)}/missing", LOCAL)
    with pytest.raises(ImageFetchError, match="HTTP 500 Internal Server Error"):
        fetch_image_url(f"{base(server)}/error", LOCAL)


def test_messages_never_show_credentials(server: _Server) -> None:
    port = server.server_address[1]
    for url, limits in [
        (f"http://alice:s3cret@127.0.0.1:{port}/missing?token=t0ken#frag", LOCAL),
        (f"http://alice:s3cret@127.0.0.1:{port}/image.png?token=t0ken", ImageLimits()),
        (f"http://alice:s3cret@127.0.0.1:1/image.png?token=t0ken", LOCAL),
    ]:
        with pytest.raises(ImageFetchError) as caught:
            fetch_image_url(url, limits)
        text = str(caught.value) + repr(caught.value.__cause__) + repr(caught.value.__context__)
        assert "s3cret" not in text and "t0ken" not in text and "alice" not in text, text


def test_timeouts(server: _Server) -> None:
    limits = ImageLimits(allow_private_urls=True, url_timeout_s=0.5)
    for path in ("/slow", "/drip"):
        started = time.perf_counter()
        with pytest.raises(ImageFetchError, match=rf"{path} timed out after 0.5 s"):
            fetch_image_url(f"{base(server)}{path}", limits)
        assert time.perf_counter() - started < 1.5  # the deadline holds, not only per-read timeouts


def test_size_limit(server: _Server) -> None:
    limits = ImageLimits(allow_private_urls=True, url_max_bytes=100_000)
    with pytest.raises(PayloadTooLarge, match="/huge is 1,000,000 bytes; the limit is 100,000 bytes"):
        fetch_image_url(f"{base(server)}/huge", limits)
    with pytest.raises(PayloadTooLarge, match="/huge-unsized is more than 100,000 bytes"):
        fetch_image_url(f"{base(server)}/huge-unsized", limits)
    assert len(fetch_image_url(f"{base(server)}/huge", LOCAL)) == 1_000_000


# -- the JPEG header read without Pillow: Pillow's answer, faster -----------------------------------


def _outcome(fn, data: bytes, limits: ImageLimits, auto_orient: bool):
    try:
        return fn(data, limits, auto_orient)
    except (InvalidImage, PayloadTooLarge) as exc:
        return type(exc)


def _both(data: bytes, limits: ImageLimits, auto_orient: bool = True):
    fast = _outcome(lambda d, lim, a: decode_image_bytes(d, lim, auto_orient=a), data, limits, auto_orient)
    slow = _outcome(lambda d, lim, a: _decode_with_pillow_header(d, lim, a, None), data, limits, auto_orient)
    return fast, slow


def _jpeg(rng: np.random.Generator, h: int, w: int, grey: bool, orientation: int | None, progressive: bool,
          quality: int) -> bytes:
    pixels = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    pixels[: h // 2] //= 3  # some structure, so orientation errors show
    buffer = io.BytesIO()
    kwargs: dict = {"quality": quality, "progressive": progressive}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "camera"  # another IFD0 tag beside it
        kwargs["exif"] = exif
    Image.fromarray(pixels).save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 64), st.integers(1, 64), st.booleans(),
       st.sampled_from([None, 1, 2, 3, 4, 5, 6, 7, 8]), st.booleans(), st.integers(30, 100), st.booleans())
def test_plain_jpeg_header_gives_pillows_pixels_size_and_orientation(seed, h, w, grey, orientation, progressive,
                                                                       quality, auto_orient):
    data = _jpeg(np.random.default_rng(seed), h, w, grey, orientation, progressive, quality)
    assert _plain_jpeg_header(data) == (w, h, orientation or 1)  # the fast path is the one taken
    fast, slow = _both(data, ImageLimits(), auto_orient)
    assert isinstance(fast, np.ndarray) and fast.flags.c_contiguous and fast.flags.writeable
    np.testing.assert_array_equal(fast, slow)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.sampled_from([None, 6]), st.integers(0, 10**6), st.integers(0, 255),
       st.sampled_from(["flip", "cut", "both"]))
def test_damaged_jpegs_get_the_answer_pillows_header_gives(seed, orientation, where, value, damage):
    data = bytearray(_jpeg(np.random.default_rng(seed), 24, 40, False, orientation, False, 80))
    if damage in ("flip", "both"):
        data[where % len(data)] = value
    if damage in ("cut", "both"):
        del data[max(2, where % len(data)):]
    fast, slow = _both(bytes(data), ImageLimits())
    if isinstance(fast, np.ndarray) and isinstance(slow, np.ndarray):
        np.testing.assert_array_equal(fast, slow)
    else:  # the same kind of error (400 or 413), whichever reader saw the damage first
        assert fast == slow, (fast if isinstance(fast, type) else "pixels", slow if isinstance(slow, type) else "pixels")


def test_unusual_jpeg_headers_are_left_to_pillow():
    rgb = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG")  # Adobe segment, 4 components
    assert _plain_jpeg_header(buffer.getvalue()) is None
    assert decode_image_bytes(buffer.getvalue(), ImageLimits()).shape == (8, 8, 3)
    plain = cv2.imencode(".jpg", rgb)[1].tobytes()
    two_exif = plain[:2] + (b"\xff\xe1\x00\x08Exif\x00\x00") * 2 + plain[2:]  # Pillow decides which counts
    assert _plain_jpeg_header(two_exif) is None
    assert _plain_jpeg_header(plain[:-10]) is not None  # the header is whole; the decode then refuses it
    with pytest.raises(InvalidImage, match="truncated"):
        decode_image_bytes(plain[:-10], ImageLimits())
    with pytest.raises(PayloadTooLarge, match="pixels"):  # limits apply on the fast path too
        decode_image_bytes(plain, ImageLimits(max_pixels=63))
    padded = plain[:2] + b"\xff\xe5\x00\x02" * 300 + plain[2:]  # more segments than a header needs
    assert _plain_jpeg_header(padded) is None
    np.testing.assert_array_equal(decode_image_bytes(padded, ImageLimits()), decode_image_bytes(plain, ImageLimits()))


def test_every_one_byte_damage_to_a_jpeg_header_gets_pillows_answer():
    """Each byte of the header (markers, lengths, EXIF, tables) set to values that mean something
    to a JPEG reader: the fast header read answers as Pillow's does, or leaves the file to it."""
    base = _jpeg(np.random.default_rng(1), 24, 40, False, 6, False, 80)
    taken = 0
    for pos in range(2, base.index(b"\xff\xda") + 14):
        for value in (0x00, 0x01, 0x12, 0xC0, 0xD9, 0xDA, 0xE1, 0xFF, base[pos] ^ 0x80):
            data = bytearray(base)
            data[pos] = value
            taken += _plain_jpeg_header(bytes(data)) is not None
            fast, slow = _both(bytes(data), ImageLimits())
            if isinstance(fast, np.ndarray) and isinstance(slow, np.ndarray):
                np.testing.assert_array_equal(fast, slow, err_msg=f"byte {pos} = {value:#x}")
            else:
                assert fast is slow, (pos, value, fast, slow)
    assert taken > 1000  # most damage leaves a header the fast read still takes
