"""Masks: prototype combination, cropping, polygons and COCO run-length encoding.

>>> m = np.zeros((4, 5), bool); m[1:3, 1:4] = True
>>> rle = rle_encode(m); rle_decode(rle).tolist() == m.tolist()
True
"""
from __future__ import annotations

import cv2
import numpy as np

from serve_app.pipeline.geometry import ImageTransform


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def mask_logits_at_input(coefficients: np.ndarray, protos: np.ndarray, boxes: np.ndarray,
                         input_hw: tuple[int, int]) -> np.ndarray:
    """Combine ``(M, P)`` coefficients with ``(P, mh, mw)`` prototypes; upsample to the input size and
    zero everything outside each box (xyxy, input pixels). Returns ``(M, H, W)`` logits."""
    p, mh, mw = protos.shape
    logits = (coefficients @ protos.reshape(p, -1)).reshape(-1, mh, mw)
    h, w = input_hw
    out = np.empty((len(logits), h, w), np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    for i, (logit, box) in enumerate(zip(logits, boxes)):
        up = cv2.resize(logit.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
        out[i] = np.where(inside, up, -1e4)
    return out


def mask_to_polygon(mask: np.ndarray) -> np.ndarray:
    """The largest outer contour of a boolean mask, as (K, 2) float pixel coordinates (may be empty)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2), np.float32)
    largest = max(contours, key=cv2.contourArea)
    return largest.reshape(-1, 2).astype(np.float32)


def mask_to_original(mask_input: np.ndarray, transform: ImageTransform) -> np.ndarray:
    """A boolean mask at input resolution -> boolean mask of the original image (crop/pad undone)."""
    x0, y0, x1, y1 = transform.content_box
    content = mask_input[max(y0, 0):y1, max(x0, 0):x1].astype(np.uint8)
    out_w = round(transform.resized_w / transform.scale_x)
    out_h = round(transform.resized_h / transform.scale_y)
    # NEAREST_EXACT samples at pixel centres; INTER_NEAREST floors (x * scale), shifting the mask by up to
    # half an input pixel towards the top left (tests/test_end2end_parity.py: mask IoU against
    # Ultralytics' 0.72 -> 0.90 on a small upscaled mask)
    resized = cv2.resize(content, (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    full = np.zeros((transform.original_h, transform.original_w), bool)
    cy, cx = transform.crop_y, transform.crop_x
    full[cy:cy + out_h, cx:cx + out_w] = resized[: transform.original_h - cy, : transform.original_w - cx]
    return full


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's run lengths of a mask, column-major, starting with a run of zeros (uncompressed)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return [0] + counts if flat.size and flat[0] == 1 else counts


def rle_encode(mask: np.ndarray) -> dict:
    """COCO run-length encoding (column-major, compressed counts string), as pycocotools writes it."""
    h, w = mask.shape
    return {"size": [h, w], "counts": _compress_counts(rle_counts(mask))}


def _compress_counts(counts: list[int]) -> str:
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _decompress_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`rle_encode`."""
    h, w = rle["size"]
    counts = _decompress_counts(rle["counts"]) if isinstance(rle["counts"], str) else list(rle["counts"])
    values = np.zeros(len(counts), np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.astype(bool)
