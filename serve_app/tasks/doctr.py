"""OCR with a DocTR detector + CTC recogniser pair exported to ONNX (architecture ``doctr``), as
DocTR's ``ocr_predictor`` runs them on straight pages (and OnnxTR, its ONNX port, on the same files).

A page (RGB) is resized to the detector's square input keeping its aspect ratio, padded evenly
on both sides with black, scaled to [0, 1] and normalised (DocTR's ``PreProcessor`` with
``preserve_aspect_ratio`` and ``symmetric_pad``; resizing with Pillow's bilinear filter, as DocTR
does, so the tensors are the same). The detector's logits go through a sigmoid; the probability
map is binarised at ``bin_thresh`` and opened with a 3x3 kernel; each external contour wider and
taller than 2 pixels gives its bounding rectangle, scored by the mean probability inside; boxes
scoring at least ``box_thresh`` grow by ``area * unclip_ratio / perimeter`` (round joins) and
their bounding rectangle is the word box (``db_boxes``). Boxes are mapped back through the
padding, each word is cropped from the page, resized to the recogniser's input keeping its aspect
ratio (padded right and bottom), normalised, and read by best-path CTC decoding over DocTR's
vocabulary (blank last; confidence: the least of the per-step maximum probabilities).

Differences from DocTR's predictor, by choice: crops wider than DocTR's split ratio are read
whole (DocTR splits and merges them), and words are put in this server's reading order (rows top
to bottom, left to right within a row), not grouped by DocTR's document builder.

>>> cfg = DoctrConfig.from_manifest({"vocab": "0123456789"})
>>> cfg.det_size, cfg.rec_size, cfg.bin_thresh, len(cfg.vocab)
((1024, 1024), (32, 128), 0.3, 10)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
from PIL import Image

from serve_app.errors import InvalidImage, ManifestError
from serve_app.tasks.ocr import OcrResult, TextLine
from serve_app.tasks.ocr_detection import TextBox, sort_reading_order, unclip

Tensor = np.ndarray  # float32 NCHW
# DocTR's default normalisation of its detection and recognition models (their ``cfg``)
DET_MEAN, DET_STD = (0.798, 0.785, 0.772), (0.264, 0.2749, 0.287)
REC_MEAN, REC_STD = (0.694, 0.695, 0.693), (0.299, 0.296, 0.301)


@dataclass(frozen=True)
class DoctrConfig:
    """The manifest's ``ocr`` section for a DocTR pair; defaults are DocTR's for DB + CRNN."""

    vocab: str
    det_size: tuple[int, int] = (1024, 1024)
    det_mean: tuple[float, float, float] = DET_MEAN
    det_std: tuple[float, float, float] = DET_STD
    bin_thresh: float = 0.3
    box_thresh: float = 0.1
    unclip_ratio: float = 1.5
    rec_size: tuple[int, int] = (32, 128)
    rec_mean: tuple[float, float, float] = REC_MEAN
    rec_std: tuple[float, float, float] = REC_STD
    rec_batch_size: int = 64
    max_words: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, str) or not self.vocab:
            raise ManifestError("a doctr manifest needs ocr.vocab: the recogniser's characters, in order")
        for name in ("bin_thresh", "box_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ManifestError(f"ocr.{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("det_size", "rec_size"):
            size = getattr(self, name)
            if len(size) != 2 or min(size) < 8:
                raise ManifestError(f"ocr.{name} must be [height, width] of at least 8, got {size!r}")
        for name in ("det_mean", "det_std", "rec_mean", "rec_std"):
            if len(getattr(self, name)) != 3:
                raise ManifestError(f"ocr.{name} needs 3 values, got {getattr(self, name)!r}")
        if min(self.det_std) <= 0 or min(self.rec_std) <= 0 or self.unclip_ratio <= 0 or self.rec_batch_size < 1:
            raise ManifestError("ocr std values, unclip_ratio and rec_batch_size must be positive")

    @classmethod
    def from_manifest(cls, ocr: Mapping[str, Any]) -> "DoctrConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(ocr) - known)
        if unknown:
            raise ManifestError(f"manifest ocr has unknown keys {unknown}; known for doctr: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in ocr.items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise ManifestError(f"manifest ocr: {exc}") from None


# -- preprocessing ----------------------------------------------------------------------------------
def resize_keep_aspect(rgb: np.ndarray, size: tuple[int, int], symmetric: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """``rgb`` resized into ``size`` (h, w) keeping its aspect ratio, padded with black: evenly on
    both sides (``symmetric``, extra pixel left/top) or right and bottom. Returns the image and the
    (top, left) padding.

    >>> out, pad = resize_keep_aspect(np.full((50, 100, 3), 255, np.uint8), (64, 64), True)
    >>> out.shape, pad, int(out[:, :, 0].sum(axis=1).astype(bool).sum())
    ((64, 64, 3), (16, 0), 32)
    """
    sh, sw = size
    h, w = rgb.shape[:2]
    pil = Image.fromarray(rgb)
    if sh / sw == h / w:
        return np.asarray(pil.resize((sw, sh), resample=Image.Resampling.BILINEAR)), (0, 0)
    if h / w > sh / sw:
        th, tw = sh, max(int(sh / (h / w)), 1)
    else:
        th, tw = max(int(sw * (h / w)), 1), sw
    resized = np.asarray(pil.resize((tw, th), resample=Image.Resampling.BILINEAR))
    top, left = (math.ceil((sh - th) / 2), math.ceil((sw - tw) / 2)) if symmetric else (0, 0)
    out = np.zeros((sh, sw, 3), np.uint8)
    out[top:top + th, left:left + tw] = resized
    return out, (top, left)


def normalize(images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 HWC RGB images -> float32 NCHW, scaled to [0, 1], minus ``mean``, over ``std``."""
    batch = np.stack(images).astype(np.float32) / 255.0
    batch = (batch - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


# -- detection post-processing ---------------------------------------------------------------------------
def db_boxes(prob: np.ndarray, bin_thresh: float, box_thresh: float, unclip_ratio: float,
             max_boxes: int = 2000) -> np.ndarray:
    """Word boxes ``(N, 5)``: xmin, ymin, xmax, ymax relative to ``prob``'s size, and the score.

    >>> prob = np.zeros((64, 64), np.float32); prob[20:30, 10:50] = 0.9
    >>> db_boxes(prob, 0.3, 0.1, 1.5).round(3).tolist()
    [[0.062, 0.219, 0.891, 0.578, 0.798]]
    """
    height, width = prob.shape
    bitmap = cv2.morphologyEx((prob >= bin_thresh).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes: list[list[float]] = []
    for contour in contours[:max_boxes]:
        extent = contour[:, 0].max(axis=0) - contour[:, 0].min(axis=0)
        if np.any(extent < 2):
            continue
        x, y, w, h = cv2.boundingRect(contour)
        x0, x1 = np.clip([x, x + w], 0, width - 1)
        y0, y1 = np.clip([y, y + h], 0, height - 1)
        score = float(prob[y0:y1 + 1, x0:x1 + 1].mean())
        if score < box_thresh:
            continue
        rect = np.array([[x, y], [x, y + h], [x + w, y + h], [x + w, y]], np.float64)
        grown = unclip(rect, unclip_ratio)
        if len(grown) < 1:
            continue
        gx, gy, gw, gh = cv2.boundingRect(grown.astype(np.int32))
        boxes.append([gx / width, gy / height, (gx + gw) / width, (gy + gh) / height, score])
    return np.clip(np.asarray(boxes, np.float64), 0, 1) if boxes else np.zeros((0, 5))


def remove_padding(boxes: np.ndarray, page_hw: tuple[int, int]) -> np.ndarray:
    """Relative boxes on the evenly padded square input -> relative boxes on the page."""
    out = boxes.copy()
    h, w = page_hw
    if h > w:
        out[:, [0, 2]] = (out[:, [0, 2]] - 0.5) * h / w + 0.5
    elif w > h:
        out[:, [1, 3]] = (out[:, [1, 3]] - 0.5) * w / h + 0.5
    return np.clip(out, 0, 1)


def to_pixels(boxes: np.ndarray, page_hw: tuple[int, int]) -> np.ndarray:
    """Relative boxes -> integer pixel crops ``x0, y0, x1, y1`` (exclusive ends), as DocTR crops."""
    h, w = page_hw
    px = boxes[:, :4] * np.array([w, h, w, h], np.float64)
    px = px.round().astype(np.int64)
    px[:, 2:] += 1
    return px


# -- recognition ----------------------------------------------------------------------------------------
def ctc_best_path(logits: np.ndarray, vocab: str) -> list[tuple[str, float]]:
    """Best-path CTC decoding of ``[N, T, len(vocab) + 1]`` logits (blank last): repeats merged,
    blanks dropped; confidence is the least of the per-step maximum probabilities.

    >>> logits = np.full((1, 4, 3), -9.0, np.float32)
    >>> logits[0, [0, 1, 3], [0, 0, 1]] = 9.0; logits[0, 2, 2] = 9.0
    >>> [(text, round(conf, 3)) for text, conf in ctc_best_path(logits, "ab")]
    [('ab', 1.0)]
    """
    if logits.ndim != 3 or logits.shape[2] != len(vocab) + 1:
        raise ValueError(f"recogniser logits must be [N, T, {len(vocab) + 1}], got {list(logits.shape)}")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=-1, keepdims=True)
    confidence = probs.max(axis=-1).min(axis=1)
    blank = len(vocab)
    words = []
    for seq in logits.argmax(axis=-1):
        keep = seq[np.r_[True, seq[1:] != seq[:-1]]]
        words.append("".join(vocab[k] for k in keep if k != blank))
    return list(zip(words, confidence.astype(float).tolist()))


@dataclass(frozen=True)
class Word:
    """One word read from a page: its box (x0, y0, x1, y1, page pixels: DocTR's relative geometry
    times the page size), detection score, text and recognition confidence."""

    box: tuple[float, ...]
    objectness: float
    text: str
    confidence: float


class DoctrPipeline:
    """Detection, cropping, recognition of one page; ``detect`` and ``recognize`` map NCHW float32
    tensors to the models' first outputs (the caller owns ONNX Runtime)."""

    def __init__(self, detect: Callable[[Tensor], np.ndarray], recognize: Callable[[Tensor], np.ndarray],
                 config: DoctrConfig) -> None:
        self.detect, self.recognize, self.config = detect, recognize, config

    def words(self, bgr: np.ndarray) -> list[Word]:
        """The words on a BGR page, in detection order."""
        if bgr.ndim != 3 or bgr.shape[2] != 3 or min(bgr.shape[:2]) < 1:
            raise InvalidImage(f"OCR needs a colour image, got shape {list(bgr.shape)}")
        cfg = self.config
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        page, _ = resize_keep_aspect(rgb, cfg.det_size, symmetric=True)
        logits = self.detect(normalize([page], cfg.det_mean, cfg.det_std))
        prob = 1.0 / (1.0 + np.exp(-logits[0, 0].astype(np.float32)))
        found = db_boxes(prob, cfg.bin_thresh, cfg.box_thresh, cfg.unclip_ratio, cfg.max_words)
        found = remove_padding(found, rgb.shape[:2])
        pixels = to_pixels(found, rgb.shape[:2])
        crops, kept = [], []
        for i, (x0, y0, x1, y1) in enumerate(pixels):
            crop = rgb[y0:y1, x0:x1]
            if crop.size:
                crops.append(crop)
                kept.append(i)
        texts: list[tuple[str, float]] = []
        for start in range(0, len(crops), cfg.rec_batch_size):
            batch = [resize_keep_aspect(c, cfg.rec_size, symmetric=False)[0] for c in crops[start:start + cfg.rec_batch_size]]
            texts += ctc_best_path(self.recognize(normalize(batch, cfg.rec_mean, cfg.rec_std)), cfg.vocab)
        h, w = rgb.shape[:2]
        scale = np.array([w, h, w, h], np.float64)
        return [Word(tuple(float(v) for v in found[i, :4] * scale), float(found[i, 4]), text, conf)
                for i, (text, conf) in zip(kept, texts)]

    def predict(self, bgr: np.ndarray) -> OcrResult:
        """The page's words as lines of this server's OCR answer, in reading order (empty words dropped)."""
        boxes = []
        for word in self.words(bgr):
            if not word.text:
                continue
            x0, y0, x1, y1 = word.box
            quad = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
            boxes.append((TextBox(quad, word.objectness), word))
        by_box = {id(b): w for b, w in boxes}
        ordered = sort_reading_order([b for b, _ in boxes])
        lines = tuple(TextLine(by_box[id(b)].text, by_box[id(b)].confidence, b.quad) for b in ordered)
        return OcrResult(lines, int(bgr.shape[1]), int(bgr.shape[0]))

    def warm_up(self) -> None:
        """Run both models once on a page of text, so the first request pays no kernel planning."""
        page = np.full((256, 512, 3), 255, np.uint8)
        cv2.putText(page, "WARM UP 0123", (20, 140), cv2.FONT_HERSHEY_DUPLEX, 1.6, (0, 0, 0), 3, cv2.LINE_AA)
        self.words(page)
        self.recognize(normalize([np.zeros((*self.config.rec_size, 3), np.uint8)], self.config.rec_mean,
                                 self.config.rec_std))
