"""Classification: single-label (softmax, ``top``) and multi-label (independent sigmoids)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    def to_roboflow(self) -> dict:
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
