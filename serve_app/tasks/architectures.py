"""Architecture -> its task, the output shapes it must have and its decoder: one table.

A new model family is one :class:`Architecture` entry in :data:`TABLE`: the manifest accepts its
name for its task (``registry/manifest.py`` reads :func:`names_by_task`), a loaded model checks
its output shapes with ``check`` and decodes each image's raw outputs with ``decode``. The first
entry of a task is that task's default architecture. OCR has a pipeline of its own
(``tasks/ocr.py``: two sessions), so its entry has neither.

>>> ARCHITECTURES["yolov5"].task, names_by_task()["object-detection"]
('object-detection', ('yolov8', 'yolov5'))
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serve_app.errors import InvalidParameter
from serve_app.pipeline.geometry import ImageTransform
from serve_app.pipeline.preprocess import InputSpec, PreprocessingSpec
from serve_app.tasks import detection, segmentation
from serve_app.tasks.classification import Classification, to_probabilities
from serve_app.tasks.keypoints import keypoints_from_extra, keypoints_to_original
from serve_app.tasks.masks import mask_logits_at_input, mask_to_original, mask_to_polygon
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.results import Detections


class ModelSpec(Protocol):
    """What the tasks read of a model's description (``registry.manifest.Manifest`` is one)."""

    model_id: str
    task: str
    architecture: str
    classes: tuple[str, ...]
    input: InputSpec
    preprocessing: PreprocessingSpec
    keypoints: Any  # names and skeleton, for keypoint models
    ocr: dict[str, Any] | None
    multi_label: bool


Shapes = Sequence[tuple[int, ...]]
# raw outputs of one image (batch axis removed), the session's output names, the image's transform
Decoder = Callable[[Sequence[np.ndarray], Sequence[str], ImageTransform, InferenceParams, ModelSpec], dict]
# None when the output shapes fit, else what was expected, in words
OutputCheck = Callable[[ModelSpec, Shapes], "str | None"]


@dataclass(frozen=True)
class Architecture:
    name: str
    task: str
    decode: Decoder | None = None
    check: OutputCheck | None = None


# -- decoders -------------------------------------------------------------------------------------
def _class_ids(spec: ModelSpec, params: InferenceParams) -> np.ndarray | None:
    if params.class_filter is None:
        return None
    unknown = [c for c in params.class_filter if c not in spec.classes]
    if unknown:
        raise InvalidParameter(f"class_filter names classes this model lacks: {unknown}; it has {list(spec.classes)}")
    return np.array([spec.classes.index(c) for c in params.class_filter], dtype=np.int64)


def _select(c: detection.Candidates, params: InferenceParams, spec: ModelSpec) -> detection.Selected:
    return detection.select(c, confidence=params.confidence, iou_threshold=params.iou_threshold,
                            class_agnostic=params.class_agnostic_nms, class_ids_allowed=_class_ids(spec, params),
                            max_detections=params.max_detections, max_candidates=params.max_candidates)


def _boxes(decode: Callable[[np.ndarray, int], detection.Candidates]) -> Decoder:
    def decoder(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform, params: InferenceParams,
                spec: ModelSpec) -> dict:
        sel = _select(decode(outs[0], len(spec.classes)), params, spec)
        dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id)
        return {"predictions": dets.to_roboflow(spec.classes)}
    return decoder


def _pose(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform, params: InferenceParams,
          spec: ModelSpec) -> dict:
    sel = _select(detection.decode_yolov8(outs[0], len(spec.classes)), params, spec)
    kps = keypoints_to_original(keypoints_from_extra(sel.extra, len(spec.keypoints.names)), transform)
    dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id, keypoints=kps)
    return {"predictions": dets.to_roboflow(spec.classes, spec.keypoints.names, params.keypoint_confidence)}


def _instances(decode: Callable[[Sequence[np.ndarray], Sequence[str], ModelSpec], segmentation.SegCandidates]) -> Decoder:
    def decoder(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform, params: InferenceParams,
                spec: ModelSpec) -> dict:
        seg = decode(outs, names, spec)
        input_hw = (spec.input.height, spec.input.width)
        sel = _select(seg.candidates, params, spec)
        binary = mask_logits_at_input(sel.extra, seg.protos, sel.boxes, input_hw) > 0
        polygons = tuple(transform.points_to_original(mask_to_polygon(b)).astype(np.float32) for b in binary)
        masks = tuple(mask_to_original(b, transform) for b in binary) if params.mask_format == "rle" else None
        dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id, polygons=polygons,
                          masks=masks)
        return {"predictions": dets.to_roboflow(spec.classes)}
    return decoder


def _yolact(outs: Sequence[np.ndarray], names: Sequence[str], spec: ModelSpec) -> segmentation.SegCandidates:
    named = dict(zip(names, outs))
    return segmentation.decode_yolact(named["loc"], named["conf"], named["mask"], named["priors"], named["proto"],
                                      (spec.input.height, spec.input.width))


def _classes(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform, params: InferenceParams,
             spec: ModelSpec) -> dict:
    probs = to_probabilities(outs[0].reshape(-1), spec.multi_label)
    return Classification(probs, spec.classes, spec.multi_label, params.confidence).to_roboflow()


# -- output checks ----------------------------------------------------------------------------------
def _rows(axis: int, objectness: bool, extra: Callable[[ModelSpec, Shapes], int] = lambda spec, shapes: 0,
          prototypes: bool = False) -> OutputCheck:
    """A detection output ``[B, 4 (+1) + classes + extra, N]`` (``axis`` 1) or ``[B, N, ...]`` (``axis`` 2),
    with (``prototypes``) a second output ``[B, P, mh, mw]`` whose P adds to the rows."""
    def check(spec: ModelSpec, shapes: Shapes) -> str | None:
        if prototypes and (len(shapes) < 2 or len(shapes[1]) != 4):
            return "two outputs: detections and [B, P, mh, mw] prototypes"
        n = 4 + int(objectness) + len(spec.classes) + extra(spec, shapes) + (shapes[1][1] if prototypes else 0)
        if len(shapes[0]) == 3 and shapes[0][axis] == n:
            return None
        return f"[B, {n}, N]" if axis == 1 else f"[B, N, {n}]"
    return check


def _keypoints(spec: ModelSpec, shapes: Shapes) -> str | None:
    k = len(spec.keypoints.names) if spec.keypoints else 0
    wrong = _rows(1, False, lambda spec, shapes: 3 * k)(spec, shapes)
    return None if wrong is None else f"{wrong} for {k} keypoints"


def _scores(spec: ModelSpec, shapes: Shapes) -> str | None:
    return None if shapes[0][-1] == len(spec.classes) else f"[B, {len(spec.classes)}]"


def _five_outputs(spec: ModelSpec, shapes: Shapes) -> str | None:
    return None if len(shapes) == 5 else "five outputs loc, conf, mask, priors, proto"


TABLE: tuple[Architecture, ...] = (
    Architecture("yolov8", "object-detection", _boxes(detection.decode_yolov8), _rows(1, False)),
    Architecture("yolov5", "object-detection", _boxes(detection.decode_yolov5), _rows(2, True)),
    Architecture("yolov8-seg", "instance-segmentation",
                 _instances(lambda outs, names, spec: segmentation.decode_yolov8_seg(outs[0], outs[1], len(spec.classes))),
                 _rows(1, False, prototypes=True)),
    Architecture("yolov5-seg", "instance-segmentation",
                 _instances(lambda outs, names, spec: segmentation.decode_yolov5_seg(outs[0], outs[1], len(spec.classes))),
                 _rows(2, True, prototypes=True)),
    Architecture("yolact", "instance-segmentation", _instances(_yolact), _five_outputs),
    Architecture("yolov8-cls", "classification", _classes, _scores),
    Architecture("multi-label", "classification", _classes, _scores),
    Architecture("yolov8-pose", "keypoint-detection", _pose, _keypoints),
    Architecture("pp-ocr", "ocr"),
)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in TABLE}


def names_by_task() -> dict[str, tuple[str, ...]]:
    """Task -> its architectures' names, the default first (the table's order)."""
    out: dict[str, tuple[str, ...]] = {}
    for a in TABLE:
        out[a.task] = (*out.get(a.task, ()), a.name)
    return out
