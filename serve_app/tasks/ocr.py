"""OCR with a PP-OCR detector + recogniser pair (architecture ``pp-ocr``), as rapidocr runs it.

``OcrPipeline.predict`` pads very wide or short images (rapidocr's letterbox), detects text
quads (``ocr_detection``), sorts them into reading order, crops each one, recognises the crops
in batches sorted by aspect ratio (``ocr_recognition``), and keeps lines whose recognition
confidence is at least ``text_score``. It never touches ONNX Runtime: the caller passes two
callables from an NCHW float32 tensor to the model's first output.

``OcrResult.text`` (the Roboflow ``result`` field) joins the lines in reading order: a space
between lines on the same row (top-left corners less than 10 pixels apart vertically, the
tolerance of the reading order) and a newline between rows; "" when nothing was read.

>>> config = OcrConfig.from_manifest({"text_score": 0.6})
>>> config.det_limit_side_len, config.text_score
(736, 0.6)
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TypedDict

import cv2
import numpy as np

from serve_app.errors import InvalidImage, ManifestError
from serve_app.tasks.ocr_detection import (
    LIMIT_TYPES,
    READING_ORDER_TOLERANCE,
    Quad,
    TextBox,
    db_postprocess,
    det_preprocess,
    sort_reading_order,
)
from serve_app.tasks.ocr_recognition import crop_quad, ctc_greedy_decode, load_alphabet, rec_preprocess
from serve_app.tasks.results import ImageSize, Point

__all__ = [
    "OcrConfig", "OcrPipeline", "OcrResult", "TextBox", "TextLine", "crop_quad", "ctc_greedy_decode",
    "db_postprocess", "det_preprocess", "load_alphabet", "pad_for_detection", "rec_preprocess",
    "sort_reading_order", "warm_up_image",
]
WARM_UP_LINES = ("WARM UP 0123", "OCR READY")


@dataclass(frozen=True)
class OcrConfig:
    """The manifest's ``ocr`` section; defaults are rapidocr 1.4.4's ``config.yaml``."""

    det_limit_side_len: int = 736
    det_limit_type: str = "min"
    det_max_side_len: int = 2000
    det_thresh: float = 0.3
    det_box_thresh: float = 0.5
    det_unclip_ratio: float = 1.6
    det_max_candidates: int = 1000
    det_use_dilation: bool = True
    det_pad_min_height: int = 30
    det_pad_max_aspect: float = 8.0
    rec_image_height: int = 48
    rec_image_width: int = 320
    rec_batch_size: int = 6
    text_score: float = 0.5
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.det_limit_type not in LIMIT_TYPES:
            raise ManifestError(f"ocr.det_limit_type must be one of {LIMIT_TYPES}, got {self.det_limit_type!r}")
        for name in ("det_limit_side_len", "det_max_side_len", "det_max_candidates", "rec_image_height",
                     "rec_image_width", "rec_batch_size", "det_unclip_ratio", "det_pad_max_aspect"):
            if not getattr(self, name) > 0:
                raise ManifestError(f"ocr.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("det_thresh", "det_box_thresh", "text_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ManifestError(f"ocr.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ManifestError(f"ocr.mean and ocr.std need 3 values (std > 0), got {self.mean}, {self.std}")

    @classmethod
    def from_manifest(cls, ocr: Mapping[str, object]) -> OcrConfig:
        """Build from the manifest's ``ocr`` dict; missing keys take the defaults."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(ocr) - set(known))
        if unknown:
            raise ManifestError(f"unknown ocr settings {unknown}; expected some of {sorted(known)}")
        values: dict[str, object] = {}
        for name, value in ocr.items():
            default = getattr(cls, name)
            try:
                if isinstance(default, tuple):
                    values[name] = tuple(float(v) for v in value)  # type: ignore[union-attr]
                elif isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise TypeError
                    values[name] = value
                elif isinstance(default, int) and not isinstance(value, bool) and float(value) == int(value):  # type: ignore[arg-type]
                    values[name] = int(value)  # type: ignore[call-overload]
                elif isinstance(default, float) and not isinstance(value, bool):
                    values[name] = float(value)  # type: ignore[arg-type]
                elif isinstance(default, str) and isinstance(value, str):
                    values[name] = value
                else:
                    raise TypeError
            except (TypeError, ValueError):
                raise ManifestError(f"ocr.{name} must be like {default!r}, got {value!r}") from None
        return cls(**values)  # type: ignore[arg-type]


# "class" is a Python keyword: the functional form
OcrPrediction = TypedDict("OcrPrediction", {
    "x": float, "y": float, "width": float, "height": float, "confidence": float, "class": str, "class_id": int,
    "text": str, "points": list[Point], "detection_id": str,
})
OcrPrediction.__doc__ = ("One line of text: its box (centre ``x``, ``y``, ``width``, ``height``), its quad "
                         "(``points``), the text read and the recognition confidence; ``class`` is ``text``.")


class OcrAnswer(TypedDict):
    """Roboflow's OCR answer: the full text (``result``), one prediction per line, the image size."""

    result: str
    predictions: list[OcrPrediction]
    image: ImageSize


@dataclass(frozen=True)
class TextLine:
    """One recognised line: its text, recognition confidence and quad (original pixels)."""

    text: str
    confidence: float
    quad: Quad


@dataclass(frozen=True)
class OcrResult:
    """The lines read from one image, in reading order, and the image size.

    >>> line = TextLine("HI", 0.9, ((10, 10), (50, 10), (50, 30), (10, 30)))
    >>> body = OcrResult((line,), 100, 40).to_roboflow()
    >>> body["result"], body["predictions"][0]["x"], body["predictions"][0]["width"]
    ('HI', 30.0, 40.0)
    """

    lines: tuple[TextLine, ...]
    width: int
    height: int

    @property
    def text(self) -> str:
        """Lines joined with spaces within a row and newlines between rows (module docstring)."""
        parts: list[str] = []
        for i, line in enumerate(self.lines):
            if i:
                same_row = abs(line.quad[0][1] - self.lines[i - 1].quad[0][1]) < READING_ORDER_TOLERANCE
                parts.append(" " if same_row else "\n")
            parts.append(line.text)
        return "".join(parts)

    def to_roboflow(self) -> OcrAnswer:
        """The Roboflow OCR response: full text, one prediction per line, image size."""
        predictions: list[OcrPrediction] = []
        for line in self.lines:
            x0, y0, x1, y1 = TextBox(line.quad, line.confidence).bbox_xyxy
            predictions.append({
                "x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "width": x1 - x0, "height": y1 - y0,
                "confidence": line.confidence, "class": "text", "class_id": 0, "text": line.text,
                "points": [{"x": float(x), "y": float(y)} for x, y in line.quad],
                "detection_id": str(uuid.uuid4()),
            })
        return {"result": self.text, "predictions": predictions,
                "image": {"width": self.width, "height": self.height}}


def pad_for_detection(image: np.ndarray, min_height: int, max_aspect: float) -> tuple[np.ndarray, int]:
    """Pad black rows above and below an image that is short or very wide (rapidocr's letterbox).

    When ``height <= min_height`` or ``width / height > max_aspect`` the image is padded to
    about ``2 * max(width / max_aspect, min_height)`` rows. Returns the image and the rows
    added on top (subtract from y to map back).

    >>> padded, top = pad_for_detection(np.zeros((20, 400, 3), np.uint8), 30, 8)
    >>> padded.shape, top
    ((100, 400, 3), 40)
    """
    h, w = image.shape[:2]
    if h > min_height and w / h <= max_aspect:
        return image, 0
    pad = int(abs(max(int(w / max_aspect), min_height) * 2 - h) / 2)
    return cv2.copyMakeBorder(image, pad, pad, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0)), pad


def warm_up_image() -> np.ndarray:
    """A 640x480 white page with two lines of black text (``WARM_UP_LINES``): a warm-up inference
    on it runs the detector, its post-processing, the crops and the recogniser.

    >>> warm_up_image().shape
    (480, 640, 3)
    """
    image = np.full((480, 640, 3), 255, np.uint8)
    for i, text in enumerate(WARM_UP_LINES):
        cv2.putText(image, text, (40, 120 + 110 * i), cv2.FONT_HERSHEY_DUPLEX, 1.6, (0, 0, 0), 3, cv2.LINE_AA)
    return image


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise InvalidImage(f"expected a uint8 HxW or HxWx3 image, got {image.dtype} {image.shape}")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] != 3:
        raise InvalidImage(f"expected 1 or 3 channels, got {image.shape[2]}")
    return image


class OcrPipeline:
    """Detect, order, crop, recognise. See the module docstring."""

    def __init__(
        self,
        run_detector: Callable[[np.ndarray], np.ndarray],
        run_recognizer: Callable[[np.ndarray], np.ndarray],
        alphabet: list[str],
        config: OcrConfig,
    ) -> None:
        self._run_detector = run_detector
        self._run_recognizer = run_recognizer
        self.alphabet = list(alphabet)
        self.config = config

    def detect(self, image_bgr: np.ndarray) -> list[TextBox]:
        """Text quads in ``image_bgr``'s pixels, in reading order."""
        c = self.config
        tensor, ratio = det_preprocess(image_bgr, c.det_limit_side_len, c.det_limit_type,
                                       max_side_len=c.det_max_side_len, mean=c.mean, std=c.std)
        boxes = db_postprocess(self._run_detector(tensor), thresh=c.det_thresh, box_thresh=c.det_box_thresh,
                               unclip_ratio=c.det_unclip_ratio, ratio=ratio, original_shape=image_bgr.shape[:2],
                               max_candidates=c.det_max_candidates, use_dilation=c.det_use_dilation)
        return sort_reading_order(boxes)

    def recognize(self, crops: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) per crop; batches group crops of similar aspect ratio, as PP-OCR does."""
        order = np.argsort([c.shape[1] / c.shape[0] for c in crops], kind="stable")
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        size = self.config.rec_batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            batch = rec_preprocess([crops[i] for i in chunk], self.config.rec_image_height,
                                   self.config.rec_image_width)
            for i, decoded in zip(chunk, ctc_greedy_decode(self._run_recognizer(batch), self.alphabet)):
                results[i] = decoded
        return results

    def warm_up(self) -> int:
        """Read :func:`warm_up_image` once, so the first request does not pay the sessions' first
        runs; returns the text boxes found. When the detector finds none (a model that reads no
        such text), the recogniser still runs once, on a blank crop."""
        image = warm_up_image()
        boxes = self.detect(image)
        if boxes:
            self.recognize([crop_quad(image, box.quad) for box in boxes])
        else:
            self.recognize([np.zeros((self.config.rec_image_height, self.config.rec_image_width, 3), np.uint8)])
        return len(boxes)

    def predict(self, image_bgr: np.ndarray) -> OcrResult:
        """Read all text lines of a BGR (or grayscale) uint8 image."""
        image = _as_bgr(image_bgr)
        height, width = image.shape[:2]
        padded, top = pad_for_detection(image, self.config.det_pad_min_height, self.config.det_pad_max_aspect)
        boxes = self.detect(padded)
        texts = self.recognize([crop_quad(padded, box.quad) for box in boxes])
        lines = []
        for box, (text, confidence) in zip(boxes, texts):
            if confidence < self.config.text_score:
                continue
            quad = tuple((x, min(max(y - top, 0.0), float(height))) for x, y in box.quad)
            lines.append(TextLine(text, confidence, quad))  # type: ignore[arg-type]
        return OcrResult(tuple(lines), width, height)
