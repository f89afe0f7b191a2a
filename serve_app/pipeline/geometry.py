"""Coordinate transforms between the original image and the model's input tensor.

Every preprocessing step that moves pixels (static crop, resize, letterbox, centre crop) is
described by one :class:`ImageTransform`; ``to_original`` is its exact inverse.

>>> t = letterbox_transform((480, 640), (320, 320))
>>> t.scale_x, t.scale_y, t.pad_x, t.pad_y
(0.5, 0.5, 0, 40)
>>> t.points_to_original(np.array([[160.0, 160.0]])).tolist()
[[320.0, 240.0]]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageTransform:
    """original (x, y) -> input (x', y'):  x' = (x - crop_x) * scale_x + pad_x, likewise for y.

    ``resized_w``/``resized_h`` is the size of the image content inside the input (without padding);
    ``original_w``/``original_h`` the size of the image before any crop.
    """

    original_w: int
    original_h: int
    input_w: int
    input_h: int
    scale_x: float
    scale_y: float
    pad_x: int = 0
    pad_y: int = 0
    crop_x: int = 0
    crop_y: int = 0
    resized_w: int = 0
    resized_h: int = 0

    def with_crop(self, crop_x: int, crop_y: int, original_w: int, original_h: int) -> "ImageTransform":
        """The same transform applied after a static crop at (crop_x, crop_y) of a larger image."""
        return ImageTransform(original_w, original_h, self.input_w, self.input_h, self.scale_x, self.scale_y,
                              self.pad_x, self.pad_y, self.crop_x + crop_x, self.crop_y + crop_y,
                              self.resized_w, self.resized_h)

    def points_to_original(self, xy: np.ndarray, clip: bool = True) -> np.ndarray:
        """Map (..., 2) points from input pixels to original pixels."""
        out = np.asarray(xy, dtype=np.float64).copy()
        out[..., 0] = (out[..., 0] - self.pad_x) / self.scale_x + self.crop_x
        out[..., 1] = (out[..., 1] - self.pad_y) / self.scale_y + self.crop_y
        if clip:
            out[..., 0] = out[..., 0].clip(0, self.original_w)
            out[..., 1] = out[..., 1].clip(0, self.original_h)
        return out

    def points_to_input(self, xy: np.ndarray) -> np.ndarray:
        """Map (..., 2) points from original pixels to input pixels."""
        out = np.asarray(xy, dtype=np.float64).copy()
        out[..., 0] = (out[..., 0] - self.crop_x) * self.scale_x + self.pad_x
        out[..., 1] = (out[..., 1] - self.crop_y) * self.scale_y + self.pad_y
        return out

    def boxes_to_original(self, xyxy: np.ndarray, clip: bool = True) -> np.ndarray:
        """Map (N, 4) x0, y0, x1, y1 boxes from input pixels to original pixels."""
        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 2, 2)
        return self.points_to_original(boxes, clip).reshape(-1, 4)

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """The input-pixel region (x0, y0, x1, y1) holding image content, not padding."""
        return self.pad_x, self.pad_y, self.pad_x + self.resized_w, self.pad_y + self.resized_h


def letterbox_transform(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> ImageTransform:
    """Scale to fit keeping the aspect ratio, centre, pad (Ultralytics' rounding, exactly)."""
    h, w = image_hw
    ih, iw = input_hw
    r = min(ih / h, iw / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    pad_x = round((iw - new_w) / 2 - 0.1)
    pad_y = round((ih - new_h) / 2 - 0.1)
    return ImageTransform(w, h, iw, ih, new_w / w, new_h / h, pad_x, pad_y, resized_w=new_w, resized_h=new_h)


def stretch_transform(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> ImageTransform:
    """Scale each axis to the input size independently."""
    h, w = image_hw
    ih, iw = input_hw
    return ImageTransform(w, h, iw, ih, iw / w, ih / h, resized_w=iw, resized_h=ih)


def center_crop_transform(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> ImageTransform:
    """Scale the short side to the input size, then cut the centre (classification)."""
    h, w = image_hw
    ih, iw = input_hw
    r = max(ih / h, iw / w)
    new_w, new_h = max(round(w * r), iw), max(round(h * r), ih)
    # a negative pad: the resized image starts before the input's left/top edge
    pad_x = -((new_w - iw) // 2)
    pad_y = -((new_h - ih) // 2)
    return ImageTransform(w, h, iw, ih, new_w / w, new_h / h, pad_x, pad_y, resized_w=new_w, resized_h=new_h)


def static_crop_box(image_hw: tuple[int, int], crop_percent: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a Roboflow static crop given in percent of the image."""
    h, w = image_hw
    x0p, y0p, x1p, y1p = crop_percent
    x0, y0 = int(w * x0p / 100), int(h * y0p / 100)
    x1, y1 = max(int(w * x1p / 100), x0 + 1), max(int(h * y1p / 100), y0 + 1)
    return x0, y0, min(x1, w), min(y1, h)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Centre x, y, width, height -> corners."""
    out = np.empty_like(boxes)
    half = boxes[..., 2:4] / 2
    out[..., 0:2] = boxes[..., 0:2] - half
    out[..., 2:4] = boxes[..., 0:2] + half
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between (N, 4) and (M, 4) xyxy boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
