"""Inference parameters of a request, validated, with Roboflow Inference's names and defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve_app.errors import SchemaError
from serve_app.pipeline.preprocess import PreprocOverrides


@dataclass(frozen=True)
class InferenceParams:
    confidence: float = 0.4
    iou_threshold: float = 0.3
    class_agnostic_nms: bool = False
    class_filter: tuple[str, ...] | None = None
    max_detections: int = 300
    max_candidates: int = 3000
    keypoint_confidence: float = 0.0
    mask_format: str = "polygon"  # polygon | rle
    overrides: PreprocOverrides = field(default_factory=PreprocOverrides)

    @classmethod
    def from_request(cls, body: dict[str, Any]) -> "InferenceParams":
        """Read the fields present in ``body``; a wrong type or range is a 422 naming the field."""
        kw: dict[str, Any] = {}
        for name in ("confidence", "iou_threshold", "keypoint_confidence"):
            if body.get(name) is not None:
                kw[name] = _number(body[name], name, 0.0, 1.0)
        for name, hi in (("max_detections", 10_000), ("max_candidates", 100_000)):
            if body.get(name) is not None:
                kw[name] = int(_number(body[name], name, 1, hi, integer=True))
        if body.get("class_agnostic_nms") is not None:
            kw["class_agnostic_nms"] = _boolean(body["class_agnostic_nms"], "class_agnostic_nms")
        if body.get("class_filter") is not None:
            cf = body["class_filter"]
            if not isinstance(cf, list) or not all(isinstance(c, str) for c in cf):
                raise SchemaError("class_filter must be a list of class names (strings)")
            kw["class_filter"] = tuple(cf)
        fmt = body.get("response_mask_format", body.get("mask_format"))
        if fmt is not None:
            if fmt not in ("polygon", "rle"):
                raise SchemaError(f"response_mask_format must be 'polygon' or 'rle', got {fmt!r}")
            kw["mask_format"] = fmt
        overrides = {}
        for name in ("disable_preproc_auto_orient", "disable_preproc_contrast", "disable_preproc_grayscale",
                     "disable_preproc_static_crop"):
            if body.get(name) is not None:
                overrides[name] = _boolean(body[name], name)
        if overrides:
            kw["overrides"] = PreprocOverrides(**overrides)
        return cls(**kw)


def _number(value: Any, name: str, lo: float, hi: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise SchemaError(f"{name} must be a number, got {value!r}") from None
        else:
            raise SchemaError(f"{name} must be a number, got {type(value).__name__}")
    if integer and float(value) != int(value):
        raise SchemaError(f"{name} must be an integer, got {value}")
    if not (lo <= value <= hi):
        raise SchemaError(f"{name} must be between {lo} and {hi}, got {value}")
    return float(value)


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise SchemaError(f"{name} must be true or false, got {value!r}")
