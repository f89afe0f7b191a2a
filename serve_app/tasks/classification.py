"""Classification: single-label (softmax, ``top``) and multi-label (independent sigmoids)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

# "class" is a Python keyword: the functional form
ClassPrediction = TypedDict("ClassPrediction", {"class": str, "class_id": int, "confidence": float})
ClassPrediction.__doc__ = "One class of a single-label answer, with its probability."


class ClassScore(TypedDict):
    """One class of a multi-label answer (keyed by the class name), with its probability."""

    confidence: float
    class_id: int


class SingleLabelResult(TypedDict):
    """A single-label answer: every class ranked by probability, the top one and its probability."""

    predictions: list[ClassPrediction]
    top: str
    confidence: float


class MultiLabelResult(TypedDict):
    """A multi-label answer: every class's probability, and the classes at or above the confidence."""

    predictions: dict[str, ClassScore]
    predicted_classes: list[str]


@dataclass(frozen=True)
class Classification:
    probabilities: np.ndarray  # (C,)
    classes: tuple[str, ...]
    multi_label: bool
    confidence_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.probabilities.shape != (len(self.classes),):
            raise ValueError(f"expected {len(self.classes)} class scores, got shape {list(self.probabilities.shape)}")

    @property
    def ranked(self) -> list[tuple[int, float]]:
        order = np.argsort(-self.probabilities, kind="stable")
        return [(int(i), float(self.probabilities[i])) for i in order]

    def to_roboflow(self) -> SingleLabelResult | MultiLabelResult:
        if self.multi_label:
            predictions = {self.classes[i]: {"confidence": p, "class_id": i} for i, p in self.ranked}
            return {"predictions": predictions,
                    "predicted_classes": [self.classes[i] for i, p in self.ranked if p >= self.confidence_threshold]}
        ranked = self.ranked
        top_id, top_p = ranked[0]
        return {"predictions": [{"class": self.classes[i], "class_id": i, "confidence": p} for i, p in ranked],
                "top": self.classes[top_id], "confidence": top_p}


def to_probabilities(scores: np.ndarray, multi_label: bool) -> np.ndarray:
    """Scores -> probabilities; exported Ultralytics models already apply softmax, raw logits get one."""
    scores = scores.astype(np.float64)
    already = np.all((scores >= 0) & (scores <= 1)) and (multi_label or abs(scores.sum() - 1) < 1e-3)
    if already:
        return scores
    if multi_label:
        return 1 / (1 + np.exp(-scores))
    e = np.exp(scores - scores.max())
    return e / e.sum()
