"""Image -> input tensor, per the manifest, with Roboflow's per-request ``disable_preproc_*``.

The pipeline owns the types that say how: :class:`InputSpec` (size, resize mode, channel order,
scaling) and :class:`PreprocessingSpec` (crop, contrast, grayscale defaults); the manifest
(``registry/manifest.py``) holds them and validates its JSON into them.

Order: auto-orient (done at decode) -> static crop -> contrast -> grayscale -> resize -> tensor.
All functions take and return HxWx3 uint8 BGR images unless said otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from serve_app.errors import ManifestError
from serve_app.pipeline.geometry import (ImageTransform, center_crop_transform, letterbox_transform,
                                         static_crop_box, stretch_transform)

RESIZE_MODES = ("letterbox", "stretch", "center-crop")


@dataclass(frozen=True)
class InputSpec:
    """How images become the model's input tensor."""

    width: int = 640
    height: int = 640
    resize: str = "letterbox"
    pad_color: tuple[int, int, int] = (114, 114, 114)
    channel_order: str = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ManifestError(f"input.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.channel_order not in ("rgb", "bgr"):
            raise ManifestError(f"input.channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if not (8 <= self.width <= 8192 and 8 <= self.height <= 8192):
            raise ManifestError(f"input size must be 8..8192 pixels, got {self.width}x{self.height}")


@dataclass(frozen=True)
class PreprocessingSpec:
    """Defaults that a request may switch off with ``disable_preproc_*`` (as Roboflow's do)."""

    auto_orient: bool = True
    static_crop: tuple[float, float, float, float] | None = None  # x_min, y_min, x_max, y_max in percent
    contrast: str | None = None  # "stretching" | "equalization" | "adaptive"
    grayscale: bool = False

    def __post_init__(self) -> None:
        if self.contrast not in (None, "stretching", "equalization", "adaptive"):
            raise ManifestError(f"preprocessing.contrast must be stretching, equalization or adaptive, got {self.contrast!r}")
        if self.static_crop is not None:
            x0, y0, x1, y1 = self.static_crop
            if not (0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 100):
                raise ManifestError(f"preprocessing.static_crop must be percentages with min < max, got {self.static_crop}")


@dataclass(frozen=True)
class PreprocOverrides:
    """Per-request switches, named as in Roboflow Inference's requests."""

    disable_preproc_auto_orient: bool = False
    disable_preproc_contrast: bool = False
    disable_preproc_grayscale: bool = False
    disable_preproc_static_crop: bool = False


def apply_static_crop(image: np.ndarray, crop_percent: tuple[float, float, float, float]) -> tuple[np.ndarray, int, int]:
    """Cut the static crop; returns the crop and its top-left offset in the original image."""
    x0, y0, x1, y1 = static_crop_box(image.shape[:2], crop_percent)
    return image[y0:y1, x0:x1], x0, y0


def contrast_stretch(image: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """Rescale intensities so the ``low``..``high`` percentiles span 0..255 (all channels together)."""
    lo, hi = np.percentile(image, (low, high))
    if hi <= lo:
        return image
    scaled = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def histogram_equalize(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of the luma channel (colours keep their hue)."""
    ycc = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)
    ycc[..., 0] = cv2.equalizeHist(ycc[..., 0])
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)


def adaptive_equalize(image: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the L channel of Lab."""
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


CONTRAST = {"stretching": contrast_stretch, "equalization": histogram_equalize, "adaptive": adaptive_equalize}


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Grayscale kept as three equal channels, so the model's input shape does not change."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def resize_to_input(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, ImageTransform]:
    """Resize (letterbox, stretch or centre-crop) to the model's input size."""
    input_hw = (spec.height, spec.width)
    if spec.resize == "letterbox":
        t = letterbox_transform(image.shape[:2], input_hw)
        resized = image if (t.resized_w, t.resized_h) == (image.shape[1], image.shape[0]) else \
            cv2.resize(image, (t.resized_w, t.resized_h), interpolation=cv2.INTER_LINEAR)
        out = cv2.copyMakeBorder(resized, t.pad_y, spec.height - t.resized_h - t.pad_y, t.pad_x,
                                 spec.width - t.resized_w - t.pad_x, cv2.BORDER_CONSTANT, value=spec.pad_color)
        return out, t
    if spec.resize == "stretch":
        t = stretch_transform(image.shape[:2], input_hw)
        return cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR), t
    t = center_crop_transform(image.shape[:2], input_hw)
    shrinking = t.resized_w < image.shape[1]
    resized = cv2.resize(image, (t.resized_w, t.resized_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    x0, y0 = -t.pad_x, -t.pad_y
    return np.ascontiguousarray(resized[y0:y0 + spec.height, x0:x0 + spec.width]), t


def prepare_image(image: np.ndarray, spec: InputSpec, pre: PreprocessingSpec,
                  overrides: PreprocOverrides = PreprocOverrides()) -> tuple[np.ndarray, ImageTransform]:
    """Crop, adjust and resize one BGR image; returns the input-sized uint8 image and its transform."""
    original_h, original_w = image.shape[:2]
    crop_x = crop_y = 0
    if pre.static_crop is not None and not overrides.disable_preproc_static_crop:
        image, crop_x, crop_y = apply_static_crop(image, pre.static_crop)
    if pre.contrast is not None and not overrides.disable_preproc_contrast:
        image = CONTRAST[pre.contrast](image)
    if pre.grayscale and not overrides.disable_preproc_grayscale:
        image = to_grayscale(image)
    resized, transform = resize_to_input(image, spec)
    if crop_x or crop_y or (original_w, original_h) != (transform.original_w, transform.original_h):
        transform = transform.with_crop(crop_x, crop_y, original_w, original_h)
    return resized, transform


def to_tensor(images: list[np.ndarray], spec: InputSpec, dtype: type = np.float32, *,
              channels_last: bool = False) -> np.ndarray:
    """Stack input-sized BGR uint8 images into an NCHW tensor (channel order, scale, mean/std).

    With ``dtype=np.uint8`` the pixels stay bytes: the model then scales them itself (see
    :func:`serve_app.pipeline.graph.prepend_uint8_normalization`); with ``channels_last`` too the
    images are only stacked, ``N x H x W x 3`` BGR, and the model transposes and reorders them.
    """
    batch = np.ascontiguousarray(images[0])[None] if len(images) == 1 else np.stack(images)  # one: a view, no copy
    if dtype == np.uint8 and channels_last:
        return batch
    if spec.channel_order == "rgb":
        batch = batch[..., ::-1]
    if dtype == np.uint8:
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    tensor = batch.transpose(0, 3, 1, 2).astype(np.float32)
    tensor *= np.float32(spec.scale)
    if any(spec.mean) or any(s != 1 for s in spec.std):
        mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
        tensor = (tensor - mean) / std
    return np.ascontiguousarray(tensor)
