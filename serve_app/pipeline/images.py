"""Turn client images (bytes, base64, ``.npy``, URLs, Roboflow image objects) into BGR arrays.

Every decoder returns an ``HxWx3`` ``uint8`` array in OpenCV's BGR order, C-contiguous and
writable, so the preprocessing that follows sees one kind of input. Limits (file size, decoded
pixels, URL rules) come in one frozen :class:`ImageLimits`, built once from settings.

Plain 8-bit JPEG and PNG take OpenCV's decoder, which is what Ultralytics uses
(``cv2.imdecode(..., IMREAD_COLOR)``); other formats and modes go through Pillow. A JPEG is first
handed to libjpeg-turbo through simplejpeg (the same library and IDCT OpenCV's wheel builds in, so
the same pixels, in half the time: 1.9 against 4.0 ms for a 640x480 photo on the 2-core box);
whatever it refuses (corrupt data libjpeg can recover from, odd markers) goes to OpenCV as before,
so a bad JPEG gets the very answer it got. Either way the
pixel count is read from the header and checked before any pixel is decoded, and EXIF
orientation is applied by one function here, so both paths orient alike (and as OpenCV does).

Client data is never unpickled: Roboflow's ``numpy`` and ``pil`` image types are refused, here
and nowhere else (:func:`image_source`).

A request's images are read in two steps: :func:`image_source` / :func:`body_source` check a
client's image (its type, its base64, decoded once, straight from the JSON's string) into an
:class:`ImageSource` of encoded bytes or a URL, which is what travels from the gateway to the
replica; :func:`load_source` turns it into pixels there, once.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pybase64
from PIL import Image

try:  # a declared dependency; without it every JPEG takes OpenCV's (slower) decoder
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

from serve_app.errors import InvalidImage, PayloadTooLarge
from serve_app.options import ImageLimits
from serve_app.pipeline.gpu_jpeg import JpegDecoder
from serve_app.pipeline.image_urls import fetch_image_url

__all__ = [
    "ImageLimits",
    "ImageSource",
    "body_source",
    "image_source",
    "load_source",
    "decode_base64_image",
    "decode_image_bytes",
    "decode_npy",
    "fetch_image_url",
    "load_image",
    "load_image_bytes",
]

# Formats Pillow may open. Restricting them keeps Pillow's riskier plugins (EPS runs
# Ghostscript) away from client bytes. Its JPEG opener returns "MPO" for multi-picture JPEGs.
_PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF, GIF"
_OPENCV_FORMATS = frozenset({"JPEG", "MPO", "PNG"})
_OPENCV_MODES = frozenset({"RGB", "L"})
_OPENCV_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_EXIF_ORIENTATION = 0x0112
_PILLOW_WARNINGS_LOCK = threading.Lock()
_INVERSE_ORIENTATION = {6: 8, 8: 6}  # the other orientations undo themselves
# the frame headers (SOF0-3, 5-7, 9-11, 13-15); 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) are not
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED,
# SSHORT, SLONG, SRATIONAL, FLOAT, DOUBLE, IFD, LONG8, SLONG8, IFD8)
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_HEADER_SEGMENTS_READ = 256  # segments before the first scan the fast header read walks (Pillow beyond)

# A JPEG marker that ends entropy-coded data: 0xFF then anything but 0x00 (byte stuffing),
# 0xD0-0xD7 (restart markers) or 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")

_NPY_MAGIC = b"\x93NUMPY"
_NPY_MEDIA_TYPES = frozenset({"application/x-npy", "application/npy", "application/x-numpy"})
_FORMAT_MAGICS = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
                  (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                  (b"RIFF", "WebP"))
_IMAGE_MAGICS = tuple(magic for magic, _ in _FORMAT_MAGICS)
_BASE64_TEXT = re.compile(rb"\s*(?:data:[\w/+.;=-]{0,200},)?[A-Za-z0-9+/=_\-\s]*")
_BASE64_WHITESPACE = b" \t\r\n\f\v"
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")

_ACCEPTED_TYPES = ("base64", "url", "npy")
_PICKLE_TYPES = frozenset({"numpy", "numpy_object", "pil"})


def decode_image_bytes(data: bytes, limits: ImageLimits, *, auto_orient: bool = True,
                       jpeg_decoder: JpegDecoder | None = None) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, WebP, BMP, TIFF, GIF first frame) to HxWx3 BGR uint8.

    Greyscale becomes 3 channels, 16-bit samples keep their high byte (``>> 8``), alpha is
    dropped (not composited, as OpenCV's ``IMREAD_COLOR``), palette and CMYK become RGB. With
    ``auto_orient`` the EXIF orientation (1-8) is applied, matching ``cv2.imdecode(data,
    cv2.IMREAD_COLOR)``. Raises PayloadTooLarge past ``max_file_bytes`` or ``max_pixels``
    (checked on the header, before decoding) and InvalidImage for empty, unknown, corrupt or
    truncated data. ``jpeg_decoder`` (``pipeline/gpu_jpeg.py``) is tried first for a checked 8-bit
    JPEG; where it returns None the CPU decoders decide.

    >>> ok, png = cv2.imencode(".png", np.zeros((2, 3), np.uint8))
    >>> decode_image_bytes(png.tobytes(), ImageLimits()).shape
    (2, 3, 3)
    """
    _check_size(data, "image", "image file", limits)
    header = _plain_jpeg_header(data)
    if header is not None:  # the common case, read without Pillow (0.3-0.5 ms less per photo)
        width, height, stored = header
        _check_pixels((width, height), limits)
        try:
            bgr = _decode_with_opencv(data, "JPEG", jpeg_decoder)
        except (InvalidImage, PayloadTooLarge):
            raise
        except Exception as exc:  # OpenCV raises cv2.error on some malformed input
            raise InvalidImage(f"image data is corrupt or truncated ({_reason(exc)})") from None
        return _contiguous(_apply_orientation(bgr, stored if auto_orient else 1))
    return _decode_with_pillow_header(data, limits, auto_orient, jpeg_decoder)


def _decode_with_pillow_header(data: bytes, limits: ImageLimits, auto_orient: bool,
                               jpeg_decoder: JpegDecoder | None) -> np.ndarray:
    """Every format: Pillow reads the header (size, mode, EXIF), then OpenCV or Pillow decodes."""
    try:
        with _quiet_pillow():  # the header: size, mode, EXIF orientation
            image = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
            _check_pixels(image.size, limits)
            stored = _exif_orientation(image)
            with_opencv = image.format in _OPENCV_FORMATS and image.mode in _OPENCV_MODES
            if image.format == "TIFF":
                image.load()  # Pillow's TIFF loader reads (and warns on) tags while loading
        with image:
            applied = 1  # the orientation the decoder already applied
            if with_opencv:
                bgr = _decode_with_opencv(data, image.format, jpeg_decoder)
            else:
                bgr = _pillow_to_bgr(image)
                if _pillow_oriented(image, stored):
                    applied = stored
    except Image.DecompressionBombError:
        raise PayloadTooLarge(
            f"image is too large to decode: its header declares more than "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels; the limit is {limits.max_pixels:,}"
        ) from None
    except Image.UnidentifiedImageError:
        raise _unidentified(data) from None
    except (InvalidImage, PayloadTooLarge):
        raise
    except Exception as exc:  # Pillow raises many types on malformed input
        raise InvalidImage(f"image data is corrupt or truncated ({_reason(exc)})") from None
    wanted = stored if auto_orient else 1
    if applied != wanted:
        undone = _apply_orientation(bgr, _INVERSE_ORIENTATION.get(applied, applied))
        bgr = _apply_orientation(undone, wanted)
    return _contiguous(bgr)


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Silence Pillow's warnings (large images: we check pixels ourselves; odd metadata).

    ``warnings.catch_warnings`` swaps process-wide state, and threads interleaving it can leave
    every warning silenced for good, so these sections are serialised: keep them short.
    """
    with _PILLOW_WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _unidentified(data: bytes) -> InvalidImage:
    for magic, name in _FORMAT_MAGICS:
        if data.startswith(magic) and (name != "WebP" or data[8:12] == b"WEBP"):
            return InvalidImage(f"image data starts like a {name} file but its header is corrupt")
    return InvalidImage(f"image data is not a recognised image format (supported: {_SUPPORTED})")


def _check_size(data: bytes, empty_name: str, name: str, limits: ImageLimits) -> None:
    """InvalidImage for an empty payload, PayloadTooLarge for one past ``max_file_bytes``."""
    if not data:
        raise InvalidImage(f"{empty_name} is empty (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise PayloadTooLarge(f"{name} is {len(data):,} bytes; the limit is {limits.max_file_bytes:,} bytes")


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image header declares an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {limits.max_pixels:,} pixels"
        )


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag read from the header (1 when absent or invalid).

    Only EXIF is read, as OpenCV does (Pillow's ``getexif`` would also consult XMP and, for PNG,
    decode the whole image to look for a trailing eXIf chunk).
    """
    try:
        if image.format == "TIFF":
            value = image.tag_v2.get(_EXIF_ORIENTATION, 1)  # type: ignore[attr-defined]
        else:
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(_EXIF_ORIENTATION, 1)
    except Exception:  # corrupt EXIF never makes an image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pillow_oriented(image: Image.Image, stored: int) -> bool:
    """Whether Pillow applied the orientation while loading: its TIFF plugin does, and then
    removes the tag."""
    tags = getattr(image, "tag_v2", None)
    return (stored != 1 and image.format == "TIFF" and tags is not None
            and _EXIF_ORIENTATION not in tags)


def _decode_with_opencv(data: bytes, image_format: str | None, jpeg_decoder: JpegDecoder | None = None) -> np.ndarray:
    if image_format in ("JPEG", "MPO"):
        if not _jpeg_is_complete(data):
            raise InvalidImage("JPEG image is truncated: its data ends before the end-of-image marker")
        bgr = jpeg_decoder(data) if jpeg_decoder is not None else None
        if bgr is None:
            bgr = _decode_jpeg_turbo(data)
        if bgr is not None:
            return bgr
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _OPENCV_FLAGS)
    if bgr is None:
        raise InvalidImage(f"{image_format} image data is corrupt or truncated")
    return bgr


def _decode_jpeg_turbo(data: bytes) -> np.ndarray | None:
    """A baseline or progressive RGB/greyscale JPEG decoded by libjpeg-turbo (simplejpeg) to BGR,
    the pixels ``cv2.imdecode(data, IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)`` gives; None when
    simplejpeg is missing or refuses the data (``strict``: even a recoverable libjpeg warning),
    for OpenCV to decide as it always did.

    >>> ok, jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 200, np.uint8))
    >>> _decode_jpeg_turbo(jpeg.tobytes()).shape
    (8, 8, 3)
    >>> _decode_jpeg_turbo(b"\\xff\\xd8\\xff\\xd9") is None
    True
    """
    if simplejpeg is None:
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError:
        return None


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether the first JPEG in ``data`` reaches its end-of-image marker.

    Walks the segments (lengths) and skips entropy-coded data by searching for the next real
    marker, so trailers after the image (phone motion-photo videos, thumbnails) are ignored.
    OpenCV 4 decodes truncated JPEGs into grey-filled images without an error; this catches it.

    >>> _jpeg_is_complete(b"\\xff\\xd8\\xff\\xda\\x00\\x02\\x12\\x34\\xff\\xd9")
    True
    >>> _jpeg_is_complete(b"\\xff\\xd8\\xff\\xda\\x00\\x02\\x12\\x34")
    False
    """
    size, pos = len(data), 2
    while pos + 1 < size:
        marker = data[pos + 1]
        if data[pos] != 0xFF or marker == 0x00:  # junk between segments: libjpeg skips it too
            found = _JPEG_MARKER.search(data, pos + 1)
            if found is None:
                return False
            pos = found.start()
            continue
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if pos + 4 > size:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return False


def _plain_jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, EXIF orientation)`` of an 8-bit greyscale or 3-component JPEG whose
    header holds nothing unusual; None for anything else, which Pillow's header reader then decides.

    Walks the marker segments up to the first scan: one frame header (SOFn), at most one EXIF
    segment whose IFD0 orientation, if any, is a single SHORT of 1-8, no Adobe segment (CMYK and
    YCCK come with one). The answer is Pillow's for these files (``tests/test_images.py`` compares).

    >>> import cv2, numpy as np
    >>> _plain_jpeg_header(cv2.imencode(".jpg", np.zeros((4, 6, 3), np.uint8))[1].tobytes())
    (6, 4, 1)
    >>> _plain_jpeg_header(b"GIF89a") is None
    True
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    size, pos, frame, orientation, exif_seen = len(data), 2, None, 1, False
    for _ in range(_HEADER_SEGMENTS_READ):  # a camera's header has a dozen segments, a hostile one millions
        if pos + 4 > size or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker < 0xC0 or 0xD0 <= marker <= 0xD8:  # not a header segment (Pillow refuses some of these)
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker in _SOF_MARKERS:
            if frame is not None or len(segment) < 6:
                return None
            frame = (segment[0], int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"), segment[5])
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            if exif_seen:
                return None
            exif_seen = True
            found = _exif_ifd0_orientation(segment[6:])
            if found is None:
                return None
            orientation = found
        elif marker == 0xEE and segment.startswith(b"Adobe"):
            return None
        pos += 2 + length
    else:  # no scan within the segments read
        return None
    if frame is None:
        return None
    precision, height, width, components = frame
    if precision != 8 or components not in (1, 3) or not (width and height):
        return None
    if width * height > 2 * (Image.MAX_IMAGE_PIXELS or 0):  # Pillow's own refusal keeps its message
        return None
    return width, height, orientation


def _exif_ifd0_orientation(tiff: bytes) -> int | None:
    """The orientation in a TIFF-structured EXIF block's first IFD: 1 when the tag is absent,
    None when the block or the tag is anything but well formed (Pillow then reads it).

    >>> _exif_ifd0_orientation(bytes.fromhex("4d4d002a00000008" "0001" "011200030000000100060000" "00000000"))
    6
    """
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or int.from_bytes(tiff[2:4], order) != 42:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    if ifd + 2 + 12 * count + 4 > len(tiff):  # the entries and the next IFD's offset
        return None
    orientation = 1
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        tag, kind, n = int.from_bytes(entry[0:2], order), int.from_bytes(entry[2:4], order), int.from_bytes(entry[4:8], order)
        item = _TIFF_TYPE_BYTES.get(kind)
        if item is None:
            return None
        if item * n > 4 and int.from_bytes(entry[8:12], order) + item * n > len(tiff):
            return None  # a value outside the block: Pillow drops the whole directory then
        if tag != _EXIF_ORIENTATION:
            continue
        value = int.from_bytes(entry[8:10], order)
        if kind != 3 or n != 1 or not 1 <= value <= 8 or orientation != 1:
            return None
        orientation = value
    return orientation


def _pillow_to_bgr(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):  # 16-bit samples (32-bit "I" clipped)
        gray = np.clip(np.asarray(image).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mode == "F":
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mode in ("L", "LA"):
        gray = np.asarray(image)
        gray = np.ascontiguousarray(gray[..., 0] if gray.ndim == 3 else gray)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mode not in ("RGB", "RGBA", "RGBX"):
        image.info.pop("transparency", None)  # alpha is dropped anyway (and Pillow may warn)
        try:  # P, PA, 1, CMYK, YCbCr, RGBa, La ...
            image = image.convert("RGB")
        except ValueError:
            raise InvalidImage(f"image colour mode {mode!r} is not supported") from None
    rgb = np.asarray(image)
    return rgb[..., 2::-1]  # RGB(A/X) -> BGR, alpha dropped


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored image into the one a viewer shows for EXIF ``orientation`` (1-8).

    >>> a = np.arange(6).reshape(2, 3)
    >>> _apply_orientation(a, 6).tolist()  # 6: rotate 90 degrees clockwise
    [[3, 0], [4, 1], [5, 2]]
    """
    if orientation == 2:
        return image[:, ::-1]
    if orientation == 3:
        return image[::-1, ::-1]
    if orientation == 4:
        return image[::-1]
    if orientation == 5:
        return image.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(image, k=-1)
    if orientation == 7:
        return image[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(image, k=1)
    return image


def _contiguous(image: np.ndarray) -> np.ndarray:
    if image.flags.c_contiguous and image.flags.writeable:
        return image
    return np.array(image, order="C")


def decode_base64_image(value: str, limits: ImageLimits, *, auto_orient: bool = True) -> np.ndarray:
    """Decode a base64 image: standard or URL-safe alphabet, padded or not, whitespace ignored,
    with or without a ``data:image/...;base64,`` prefix.

    >>> ok, png = cv2.imencode(".png", np.zeros((2, 3, 3), np.uint8))
    >>> text = "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()
    >>> decode_base64_image(text, ImageLimits()).shape
    (2, 3, 3)
    """
    data = _decode_base64(value, limits.max_file_bytes, "image")
    return decode_image_bytes(data, limits, auto_orient=auto_orient)


def _decode_base64(value: str | bytes, max_bytes: int, what: str) -> bytes:
    if len(value) > 2 * _encoded_length(max_bytes) + 1024:  # before copying anything
        raise _base64_too_large(what, len(value) * 3 // 4, max_bytes)
    try:  # the common case, canonical padded base64, decoded from the string itself (no copy before the
        # bytes) by pybase64's SIMD decoder: 0.01 ms for a 117 KB JPEG's base64, against 0.4 ms with binascii
        data = pybase64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        data = b""  # URL-safe, unpadded, whitespace, a data: URL or invalid: normalised (and explained) below
    if data:
        if len(data) > max_bytes:
            raise _base64_too_large(what, len(data), max_bytes)
        return data
    if isinstance(value, str):
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidImage(
                f"{what} is not valid base64: it contains non-ASCII characters"
            ) from None
    else:
        raw = bytes(value)
    raw = raw.strip()
    if raw[:5].lower() == b"data:":
        comma = raw.find(b",")
        if comma < 0 or not raw[:comma].lower().endswith(b";base64"):
            raise InvalidImage(
                f"{what} data URL must be base64-encoded: 'data:<type>;base64,<data>'"
            )
        raw = raw[comma + 1:]
    raw = raw.translate(_URLSAFE_TO_STANDARD, _BASE64_WHITESPACE)
    if not raw:
        raise InvalidImage(f"{what} is empty (no base64 data)")
    decoded_size = len(raw) * 3 // 4 - min(2, len(raw) - len(raw.rstrip(b"=")))
    if decoded_size > max_bytes:
        raise _base64_too_large(what, decoded_size, max_bytes)
    raw += b"=" * (-len(raw) % 4)
    try:
        return pybase64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{what} is not valid base64 ({exc})") from None


def _encoded_length(size: int) -> int:
    return (size + 2) // 3 * 4


def _base64_too_large(what: str, decoded_size: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"base64 {what} decodes to about {decoded_size:,} bytes; the limit is {max_bytes:,} bytes"
    )


def decode_npy(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Load ``.npy`` bytes (never pickles) holding a uint8 HxW, HxWx1, HxWx3 (BGR) or HxWx4
    array (alpha dropped) and return HxWx3 BGR uint8. Other dtypes are refused, not rescaled.

    >>> buffer = io.BytesIO()
    >>> np.save(buffer, np.zeros((2, 3), np.uint8))
    >>> decode_npy(buffer.getvalue(), ImageLimits()).shape
    (2, 3, 3)
    """
    _check_size(data, "npy image", "npy image", limits)
    if data[:1] == b"\x80":
        raise InvalidImage(
            "npy image is pickled data; pickled data is never accepted: send an array saved "
            "with numpy.save(..., allow_pickle=False)"
        )
    if not data.startswith(_NPY_MAGIC):
        kind = "a .npz archive" if data[:2] == b"PK" else "not a .npy file"
        raise InvalidImage(f"npy image is {kind}: send one array saved with numpy.save")
    shape, dtype = _npy_header(data)
    if dtype.hasobject:
        raise InvalidImage(
            "npy image holds Python objects, which are stored as a pickle; pickled data is "
            "never accepted: send a uint8 array"
        )
    if dtype != np.uint8:
        raise InvalidImage(f"npy image must have dtype uint8; got {dtype}")
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))):
        raise InvalidImage(
            f"npy image must have shape HxW, HxWx1, HxWx3 or HxWx4; got {tuple(shape)}"
        )
    _check_pixels((shape[1], shape[0]), limits)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise InvalidImage(f"npy image is corrupt or truncated ({_reason(exc)})") from None
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_GRAY2BGR)
    return _contiguous(array[..., :3])


def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InvalidImage(f"npy image uses format version {version}; send version 1.0 or 2.0")
    except InvalidImage:
        raise
    except Exception as exc:
        raise InvalidImage(f"npy image header is corrupt ({_reason(exc)})") from None
    return shape, dtype


@dataclass(frozen=True)
class ImageSource:
    """One client image, checked, its base64 already decoded: ``kind`` "encoded" (an image file's
    bytes), "npy" (``.npy`` bytes) or "url" (``data`` is the http(s) URL, fetched where it is loaded).

    What a request carries from the gateway to the replica: bytes, not base64 text (a quarter
    smaller through the handle, and decoded once).
    """

    kind: str
    data: bytes | str

    def __post_init__(self) -> None:
        if self.kind not in ("encoded", "npy", "url"):
            raise ValueError(f"ImageSource.kind must be encoded, npy or url; got {self.kind!r}")
        if isinstance(self.data, str) != (self.kind == "url"):
            raise ValueError(f"ImageSource of kind {self.kind!r} holds {type(self.data).__name__}")


def image_source(spec: str | Mapping[str, Any], limits: ImageLimits) -> ImageSource:
    """Check a Roboflow Inference request image, ``{"type": "base64"|"url"|"npy", "value": ...}``,
    and decode its base64.

    A plain string is a URL when it starts with ``http://`` or ``https://``, else base64.
    ``npy`` is base64 of ``.npy`` bytes. Roboflow's ``numpy`` and ``pil`` types are pickles and
    are refused, as is ``file`` (a path on the server).

    >>> image_source({"type": "base64", "value": "aGk="}, ImageLimits())
    ImageSource(kind='encoded', data=b'hi')
    >>> image_source({"type": "numpy", "value": "gASV"}, ImageLimits())
    Traceback (most recent call last):
    serve_app.errors.InvalidImage: image type 'numpy' is a pickle and is never accepted; send base64, url or npy
    """
    if isinstance(spec, str):
        kind, value = ("url" if _is_http_url(spec) else "base64"), spec
    elif isinstance(spec, Mapping):
        kind, value = spec.get("type"), spec.get("value")
        if not isinstance(kind, str) or not kind:
            raise InvalidImage(f"image object needs a 'type': one of {', '.join(_ACCEPTED_TYPES)}")
        kind = kind.strip().lower()
    else:
        raise InvalidImage("image must be an object {type, value} or a string (base64 or URL)")
    if kind in _PICKLE_TYPES:
        raise InvalidImage(
            f"image type {kind!r} is a pickle and is never accepted; send base64, url or npy"
        )
    if kind == "file":
        raise InvalidImage("image type 'file' names a path on the server and is never accepted; "
                           "send base64, url or npy")
    if kind not in _ACCEPTED_TYPES:
        raise InvalidImage(
            f"image type {kind[:40]!r} is not supported; "
            f"use one of {', '.join(_ACCEPTED_TYPES)}"
        )
    if value is None or value == "":
        raise InvalidImage(f"image of type {kind!r} has no 'value'")
    if not isinstance(value, str):
        raise InvalidImage(f"image 'value' must be a string for type {kind!r}; "
                           f"got {type(value).__name__}")
    if kind == "url":
        return ImageSource("url", value.strip())
    if kind == "npy":
        return ImageSource("npy", _decode_base64(value, limits.max_file_bytes, "npy image"))
    return ImageSource("encoded", _decode_base64(value, limits.max_file_bytes, "image"))


def body_source(data: bytes, content_type: str | None, limits: ImageLimits) -> ImageSource:
    """A raw request body: ``.npy`` (by content type or magic), an encoded image, or base64 text
    (as Roboflow clients send on the legacy route, decoded here), told apart by content.

    >>> body_source(b"aGk=", "text/plain", ImageLimits())
    ImageSource(kind='encoded', data=b'hi')
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in _NPY_MEDIA_TYPES or data.startswith(_NPY_MAGIC):
        return ImageSource("npy", data)
    if data and not data.startswith(_IMAGE_MAGICS) and _looks_like_base64(data):
        return ImageSource("encoded", _decode_base64(data, limits.max_file_bytes, "image"))
    return ImageSource("encoded", data)


def load_source(source: ImageSource, limits: ImageLimits, *, auto_orient: bool = True,
                jpeg_decoder: JpegDecoder | None = None) -> np.ndarray:
    """The pixels of an :class:`ImageSource` (a URL is fetched under ``limits`` first; JPEGs are
    offered to ``jpeg_decoder`` first, see :func:`decode_image_bytes`).

    >>> ok, png = cv2.imencode(".png", np.zeros((2, 3, 3), np.uint8))
    >>> load_source(ImageSource("encoded", png.tobytes()), ImageLimits()).shape
    (2, 3, 3)
    """
    if source.kind == "npy":
        return decode_npy(source.data, limits)  # type: ignore[arg-type]
    data = fetch_image_url(source.data, limits) if source.kind == "url" else source.data
    return decode_image_bytes(data, limits, auto_orient=auto_orient, jpeg_decoder=jpeg_decoder)  # type: ignore[arg-type]


def load_image(
    spec: str | Mapping[str, Any], limits: ImageLimits, *, auto_orient: bool = True
) -> np.ndarray:
    """Load a Roboflow Inference request image (:func:`image_source`, then :func:`load_source`).

    >>> ok, png = cv2.imencode(".png", np.zeros((2, 3, 3), np.uint8))
    >>> spec = {"type": "base64", "value": base64.b64encode(png.tobytes()).decode()}
    >>> load_image(spec, ImageLimits()).shape
    (2, 3, 3)
    """
    return load_source(image_source(spec, limits), limits, auto_orient=auto_orient)


def _is_http_url(value: str) -> bool:
    return value.lstrip()[:8].lower().startswith(("http://", "https://"))


def load_image_bytes(
    data: bytes, content_type: str | None, limits: ImageLimits, *, auto_orient: bool = True
) -> np.ndarray:
    """Load a raw request body (:func:`body_source`, then :func:`load_source`).

    >>> ok, png = cv2.imencode(".png", np.zeros((2, 3, 3), np.uint8))
    >>> load_image_bytes(base64.b64encode(png.tobytes()), "text/plain", ImageLimits()).shape
    (2, 3, 3)
    """
    return load_source(body_source(data, content_type, limits), limits, auto_orient=auto_orient)


def _looks_like_base64(data: bytes) -> bool:
    """Whether the first KiB is base64 text (binary images have non-ASCII bytes early on)."""
    return _BASE64_TEXT.fullmatch(data[:1024]) is not None
