"""Instance segmentation: YOLOv8-seg, YOLOv5-seg, YOLO26-seg (mask coefficients + prototypes) and YOLACT."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.tasks.detection import Candidates, decode_end2end, decode_yolov5, decode_yolov8

YOLACT_VARIANCES = (0.1, 0.2)


@dataclass(frozen=True)
class SegCandidates:
    candidates: Candidates  # extra = mask coefficients
    protos: np.ndarray  # (P, mh, mw) prototype logits


def decode_yolov8_seg(output0: np.ndarray, protos: np.ndarray, num_classes: int) -> SegCandidates:
    """``output0``: ``[4+C+P, N]``; ``protos``: ``[P, mh, mw]``."""
    c = decode_yolov8(output0, num_classes)
    _check_protos(c, protos)
    return SegCandidates(c, protos)


def decode_yolov5_seg(output0: np.ndarray, protos: np.ndarray, num_classes: int) -> SegCandidates:
    """``output0``: ``[N, 5+C+P]``; ``protos``: ``[P, mh, mw]``."""
    c = decode_yolov5(output0, num_classes)
    _check_protos(c, protos)
    return SegCandidates(c, protos)


def decode_end2end_seg(output0: np.ndarray, protos: np.ndarray, num_classes: int) -> SegCandidates:
    """``output0``: ``[K, 6+P]`` (YOLO26-seg end-to-end: box, score, class, coefficients); ``protos``: ``[P, mh, mw]``."""
    c = decode_end2end(output0, num_classes)
    _check_protos(c, protos)
    return SegCandidates(c, protos)


def decode_yolact(loc: np.ndarray, conf: np.ndarray, coefficients: np.ndarray, priors: np.ndarray,
                  proto: np.ndarray, input_hw: tuple[int, int]) -> SegCandidates:
    """YOLACT's outputs for one image.

    ``loc`` ``[N, 4]`` box offsets against ``priors`` ``[N, 4]`` (cx, cy, w, h, normalised) with
    variances (0.1, 0.2); ``conf`` ``[N, 1+C]`` softmax scores whose column 0 is background;
    ``coefficients`` ``[N, P]``; ``proto`` ``[mh, mw, P]`` *after* the activation (YOLACT applies
    ReLU to prototypes and combines coefficients linearly, then a sigmoid).
    """
    h, w = input_hw
    v0, v1 = YOLACT_VARIANCES
    centre = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
    xyxy = np.concatenate([centre - size / 2, centre + size / 2], axis=1) * np.array([w, h, w, h], np.float32)
    c = Candidates(xyxy.astype(np.float32), conf[:, 1:], coefficients)
    return SegCandidates(c, np.ascontiguousarray(proto.transpose(2, 0, 1)))


def _check_protos(c: Candidates, protos: np.ndarray) -> None:
    if protos.ndim != 3 or protos.shape[0] != c.extra.shape[1]:
        raise ValueError(f"prototypes {list(protos.shape)} do not match {c.extra.shape[1]} mask coefficients")
