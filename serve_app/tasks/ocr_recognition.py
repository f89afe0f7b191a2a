"""Text recognition for PP-OCR: crop, batch, and CTC-decode one text line at a time.

Alphabet convention (``alphabet.txt`` of a ``pp-ocr`` model): the file is PP-OCR's character
dictionary verbatim, one entry per line, UTF-8, ``\\n`` line ends (a ``\\r`` before it is
ignored), no blank and no space entry. ``load_alphabet`` returns the recogniser's class list
the way PP-OCR builds it with ``use_space_char=True``: the CTC blank (``BLANK``) at index 0,
then the file's entries in order (index ``i + 1`` for line ``i``), then ``" "`` last. For
PP-OCRv4's ``ppocr_keys_v1`` dictionary that is 1 + 6623 + 1 = 6625 classes, the width of the
recogniser's output.

>>> alphabet = load_alphabet("a\\nb\\n")
>>> alphabet
['<blank>', 'a', 'b', ' ']
>>> probs = np.eye(4, dtype=np.float32)[[[1, 1, 0, 1, 3, 2]]]
>>> ctc_greedy_decode(probs, alphabet)
[('aa b', 1.0)]
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from serve_app.errors import InvalidImage, InvalidParameter, ModelLoadError

BLANK = "<blank>"
REC_IMAGE_HEIGHT = 48
REC_MIN_WIDTH = 320
TALL_CROP_RATIO = 1.5  # crops at least this much taller than wide are read rotated


def load_alphabet(text: str) -> list[str]:
    """The recogniser's classes from a PP-OCR dictionary file's text (see the module docstring)."""
    entries = text.split("\n")
    if entries and entries[-1] == "":
        entries.pop()
    entries = [e[:-1] if e.endswith("\r") else e for e in entries]
    if not entries:
        raise ModelLoadError("the OCR alphabet is empty")
    empty = [i + 1 for i, e in enumerate(entries) if e == ""]
    if empty:
        raise ModelLoadError(f"the OCR alphabet has empty entries on lines {empty[:5]}")
    return [BLANK, *entries, " "]


def crop_quad(image: np.ndarray, quad: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Perspective-crop ``quad`` (tl, tr, br, bl) to an upright rectangle, as PP-OCR does.

    The output is as wide as the longer of the top and bottom edges and as tall as the longer
    of the side edges (truncated to whole pixels), sampled bicubically with replicated borders.
    A crop at least 1.5 times taller than wide is rotated 90 degrees counter-clockwise
    (vertical text read as a line).

    >>> crop_quad(np.zeros((50, 80, 3), np.uint8), [(10, 5), (70, 5), (70, 25), (10, 25)]).shape
    (20, 60, 3)
    """
    pts = np.asarray(quad, dtype=np.float32).reshape(4, 2)
    width = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    height = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    if width < 1 or height < 1:
        raise InvalidParameter(f"cannot crop a degenerate quad {pts.tolist()}")
    target = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    matrix = cv2.getPerspectiveTransform(pts, target)
    crop = cv2.warpPerspective(
        image, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    if crop.shape[0] / crop.shape[1] >= TALL_CROP_RATIO:
        crop = np.rot90(crop)
    return crop


def rec_preprocess(
    crops: Sequence[np.ndarray], image_height: int = REC_IMAGE_HEIGHT, min_width: int = REC_MIN_WIDTH
) -> np.ndarray:
    """One NCHW float32 batch: each crop resized to ``image_height``, kept aspect, padded right.

    The batch width is ``int(image_height * r)`` where ``r`` is the widest crop's width/height
    ratio, at least ``min_width / image_height``. Pixels map to ``(x / 255 - 0.5) / 0.5``; the
    padding is 0 (mid-grey), as in PP-OCR.

    >>> rec_preprocess([np.zeros((20, 100, 3), np.uint8), np.zeros((10, 200, 3), np.uint8)]).shape
    (2, 3, 48, 960)
    """
    if not crops:
        raise InvalidParameter("rec_preprocess needs at least one crop")
    for crop in crops:
        if crop.ndim != 3 or crop.shape[2] != 3 or min(crop.shape[:2]) < 1:
            raise InvalidImage(f"expected HxWx3 BGR crops, got shape {crop.shape}")
    max_ratio = max(min_width / image_height, *(c.shape[1] / c.shape[0] for c in crops))
    batch_width = int(image_height * max_ratio)
    batch = np.zeros((len(crops), 3, image_height, batch_width), dtype=np.float32)
    for i, crop in enumerate(crops):
        width = min(batch_width, math.ceil(image_height * crop.shape[1] / crop.shape[0]))
        resized = cv2.resize(np.ascontiguousarray(crop), (width, image_height)).astype(np.float32)
        batch[i, :, :, :width] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return batch


def ctc_greedy_decode(probs: np.ndarray, alphabet: Sequence[str]) -> list[tuple[str, float]]:
    """Best-path CTC decoding of (N, T, C) class probabilities; class 0 is the blank.

    Per row: take the most likely class at each step, merge consecutive repeats, drop blanks.
    The confidence is the mean of the kept steps' probabilities (0.0 when nothing is kept).

    >>> ctc_greedy_decode(np.eye(3, dtype=np.float32)[[[0, 0, 0]]], ["", "x", " "])
    [('', 0.0)]
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ModelLoadError(f"the text recogniser must output (N, T, C) scores, got shape {probs.shape}")
    if probs.shape[2] != len(alphabet):
        raise ModelLoadError(
            f"the OCR alphabet has {len(alphabet)} classes but the recogniser outputs {probs.shape[2]}"
        )
    best = probs.argmax(axis=2)
    best_prob = probs.max(axis=2)
    keep = best != 0
    keep[:, 1:] &= best[:, 1:] != best[:, :-1]
    results = []
    for row, row_prob, row_keep in zip(best, best_prob, keep):
        text = "".join(alphabet[int(i)] for i in row[row_keep])
        kept = row_prob[row_keep]
        results.append((text, float(kept.mean()) if kept.size else 0.0))
    return results
