"""Architecture -> its task, the output shapes it must have and its decoder: one table.

A new model family is one :class:`Architecture` entry in :data:`TABLE`: the manifest accepts its
name for its task (``registry/manifest.py`` reads :func:`names_by_task`; the names Roboflow and
Ultralytics give their models map onto these in ``tasks/model_names.py``), and a loaded model
takes the decoder of the first of its :class:`Layout` s whose ``check`` its output shapes pass.
The first entry of a task is that task's default architecture. OCR has a pipeline of its own
(``tasks/ocr.py``: two sessions), so its entries have no layouts.

>>> ARCHITECTURES["yolov5"].task, names_by_task()["object-detection"]
('object-detection', ('yolov8', 'yolov5', 'yolov10', 'yolo26', 'rf-detr'))
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serve_app.errors import InvalidParameter
from serve_app.pipeline.geometry import ImageTransform
from serve_app.pipeline.preprocess import InputSpec, PreprocessingSpec
from serve_app.tasks import detection, detr, segmentation
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
class Layout:
    """One output layout of an architecture: how to check the real output shapes, and how to decode."""

    decode: Decoder
    check: OutputCheck


@dataclass(frozen=True)
class Architecture:
    """An architecture: its task and the output layouts its exports come in (YOLO26 has two: the
    end-to-end head and, exported without it, YOLOv8's). OCR's entries have none (``tasks/ocr.py``)."""

    name: str
    task: str
    layouts: tuple[Layout, ...] = ()
    # what a manifest's ``input`` means when it leaves a key out (the YOLO defaults otherwise)
    input_defaults: tuple[tuple[str, Any], ...] = ()

    def fit(self, spec: "ModelSpec", shapes: Shapes) -> Decoder:
        """The decoder of the first layout the output ``shapes`` fit; ValueError saying what was expected."""
        expected = []
        for layout in self.layouts:
            wrong = layout.check(spec, shapes)
            if wrong is None:
                return layout.decode
            expected.append(wrong)
        raise ValueError(" or ".join(expected) if expected else f"{self.name} has no output decoder")


# -- decoders -------------------------------------------------------------------------------------
def _class_ids(spec: ModelSpec, params: InferenceParams) -> np.ndarray | None:
    if params.class_filter is None:
        return None
    unknown = [c for c in params.class_filter if c not in spec.classes]
    if unknown:
        raise InvalidParameter(f"class_filter names classes this model lacks: {unknown}; it has {list(spec.classes)}")
    return np.array([spec.classes.index(c) for c in params.class_filter], dtype=np.int64)


def _select(c: detection.Candidates, params: InferenceParams, spec: ModelSpec, nms: bool = True) -> detection.Selected:
    return detection.select(c, confidence=params.confidence, iou_threshold=params.iou_threshold,
                            class_agnostic=params.class_agnostic_nms, class_ids_allowed=_class_ids(spec, params),
                            max_detections=params.max_detections, max_candidates=params.max_candidates, nms=nms)


BoxDecoder = Callable[[np.ndarray, int], detection.Candidates]


def _boxes(decode: BoxDecoder, nms: bool = True) -> Decoder:
    def decoder(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform, params: InferenceParams,
                spec: ModelSpec) -> dict:
        sel = _select(decode(outs[0], len(spec.classes)), params, spec, nms)
        dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id)
        return {"predictions": dets.to_roboflow(spec.classes)}
    return decoder


def _pose(decode: BoxDecoder, nms: bool = True) -> Decoder:
    def decoder(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform, params: InferenceParams,
                spec: ModelSpec) -> dict:
        sel = _select(decode(outs[0], len(spec.classes)), params, spec, nms)
        kps = keypoints_to_original(keypoints_from_extra(sel.extra, len(spec.keypoints.names)), transform)
        dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id, keypoints=kps)
        return {"predictions": dets.to_roboflow(spec.classes, spec.keypoints.names, params.keypoint_confidence)}
    return decoder


def _instances(decode: Callable[[Sequence[np.ndarray], Sequence[str], ModelSpec], segmentation.SegCandidates],
               nms: bool = True) -> Decoder:
    def decoder(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform, params: InferenceParams,
                spec: ModelSpec) -> dict:
        seg = decode(outs, names, spec)
        input_hw = (spec.input.height, spec.input.width)
        sel = _select(seg.candidates, params, spec, nms)
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


def _detr_select(outs: Sequence[np.ndarray], transform: ImageTransform, params: InferenceParams,
                 spec: ModelSpec) -> detr.DetrSelection:
    return detr.select(outs[0], outs[1], len(spec.classes), (transform.input_h, transform.input_w),
                       confidence=params.confidence, class_ids_allowed=_class_ids(spec, params),
                       max_detections=params.max_detections)


def _detr_boxes(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform, params: InferenceParams,
                spec: ModelSpec) -> dict:
    sel = _detr_select(outs, transform, params, spec)
    dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id)
    return {"predictions": dets.to_roboflow(spec.classes)}


def _detr_instances(outs: Sequence[np.ndarray], names: Sequence[str], transform: ImageTransform,
                    params: InferenceParams, spec: ModelSpec) -> dict:
    sel = _detr_select(outs, transform, params, spec)
    masks = detr.masks_to_original(outs[2][sel.query], transform)
    polygons = tuple(mask_to_polygon(m) for m in masks)
    dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id, polygons=polygons,
                      masks=tuple(masks) if params.mask_format == "rle" else None)
    return {"predictions": dets.to_roboflow(spec.classes)}


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


def _end2end(extra: Callable[[ModelSpec, Shapes], int] = lambda spec, shapes: 0, prototypes: bool = False) -> OutputCheck:
    """An end-to-end output ``[B, K, 6 + extra]`` (box, score, class, extras), with (``prototypes``) a
    second output ``[B, P, mh, mw]`` whose P adds to the columns."""
    def check(spec: ModelSpec, shapes: Shapes) -> str | None:
        if prototypes and (len(shapes) < 2 or len(shapes[1]) != 4):
            return "two outputs: end-to-end detections and [B, P, mh, mw] prototypes"
        n = 6 + extra(spec, shapes) + (shapes[1][1] if prototypes else 0)
        return None if len(shapes[0]) == 3 and shapes[0][2] == n else f"[B, K, {n}] (end-to-end)"
    return check


def _keypoint_columns(spec: ModelSpec, shapes: Shapes) -> int:
    return 3 * (len(spec.keypoints.names) if spec.keypoints else 0)


def _keypoints(rows: Callable[..., OutputCheck]) -> OutputCheck:
    def check(spec: ModelSpec, shapes: Shapes) -> str | None:
        wrong = rows(extra=_keypoint_columns)(spec, shapes)
        k = len(spec.keypoints.names) if spec.keypoints else 0
        return None if wrong is None else f"{wrong} for {k} keypoints"
    return check


def _scores(spec: ModelSpec, shapes: Shapes) -> str | None:
    return None if shapes[0][-1] == len(spec.classes) else f"[B, {len(spec.classes)}]"


def _five_outputs(spec: ModelSpec, shapes: Shapes) -> str | None:
    return None if len(shapes) == 5 else "five outputs loc, conf, mask, priors, proto"


def _detr_outputs(masks: bool) -> OutputCheck:
    """RF-DETR's export: ``dets`` ``[B, Q, 4]``, ``labels`` ``[B, Q, C + 1]`` and (``masks``) ``masks``
    ``[B, Q, mh, mw]``, in that order (``tasks/detr.py``)."""
    def check(spec: ModelSpec, shapes: Shapes) -> str | None:
        c = len(spec.classes)
        expected = f"dets [B, Q, 4], labels [B, Q, {c}+1]" + (", masks [B, Q, mh, mw]" if masks else "")
        if len(shapes) != 2 + masks or any(len(s) != 3 for s in shapes[:2]) or (masks and len(shapes[2]) != 4):
            return f"{2 + masks} outputs {expected}"
        q = shapes[0][1]
        if shapes[0][2] != 4 or shapes[1][1] != q or (masks and shapes[2][1] != q):
            return f"{expected} with the same Q"
        wrong = detr.class_columns(shapes[1][2], c)
        return None if wrong is None else f"{expected}: labels with {wrong}"
    return check


def _seg(decode: Callable[[np.ndarray, np.ndarray, int], segmentation.SegCandidates], nms: bool = True) -> Decoder:
    return _instances(lambda outs, names, spec: decode(outs[0], outs[1], len(spec.classes)), nms)


# the layouts, by how the head writes its boxes
GRID = Layout(_boxes(detection.decode_yolov8), _rows(1, False))  # [B, 4+C, N]: YOLOv8, v9, 11, 12, v5u
OBJECTNESS = Layout(_boxes(detection.decode_yolov5), _rows(2, True))  # [B, N, 5+C]: YOLOv5, YOLOv7
END2END = Layout(_boxes(detection.decode_end2end, nms=False), _end2end())  # [B, K, 6]: YOLOv10, YOLO26
GRID_SEG = Layout(_seg(segmentation.decode_yolov8_seg), _rows(1, False, prototypes=True))
OBJECTNESS_SEG = Layout(_seg(segmentation.decode_yolov5_seg), _rows(2, True, prototypes=True))
END2END_SEG = Layout(_seg(segmentation.decode_end2end_seg, nms=False), _end2end(prototypes=True))
GRID_POSE = Layout(_pose(detection.decode_yolov8), _keypoints(lambda extra: _rows(1, False, extra)))
END2END_POSE = Layout(_pose(detection.decode_end2end, nms=False), _keypoints(_end2end))
SCORES = Layout(_classes, _scores)
DETR = Layout(_detr_boxes, _detr_outputs(masks=False))  # RF-DETR: top query/class pairs, no NMS
DETR_SEG = Layout(_detr_instances, _detr_outputs(masks=True))

# rfdetr's export expects a plain square resize of RGB in [0, 1] with ImageNet's mean and std
RF_DETR_INPUT = (("resize", "stretch"), ("mean", detr.IMAGENET_MEAN), ("std", detr.IMAGENET_STD))

TABLE: tuple[Architecture, ...] = (
    Architecture("yolov8", "object-detection", (GRID,)),
    Architecture("yolov5", "object-detection", (OBJECTNESS,)),
    # exported with end2end=False, YOLOv10 and YOLO26 write YOLOv8's grid (their one-to-many head)
    Architecture("yolov10", "object-detection", (END2END, GRID)),
    Architecture("yolo26", "object-detection", (END2END, GRID)),
    Architecture("rf-detr", "object-detection", (DETR,), RF_DETR_INPUT),  # tasks/detr.py
    Architecture("yolov8-seg", "instance-segmentation", (GRID_SEG,)),
    Architecture("yolov5-seg", "instance-segmentation", (OBJECTNESS_SEG,)),
    Architecture("yolo26-seg", "instance-segmentation", (END2END_SEG, GRID_SEG)),
    Architecture("yolact", "instance-segmentation", (Layout(_instances(_yolact), _five_outputs),)),
    Architecture("rf-detr-seg", "instance-segmentation", (DETR_SEG,), RF_DETR_INPUT),
    Architecture("yolov8-cls", "classification", (SCORES,)),
    Architecture("multi-label", "classification", (SCORES,)),
    Architecture("yolov8-pose", "keypoint-detection", (GRID_POSE,)),
    Architecture("yolo26-pose", "keypoint-detection", (END2END_POSE, GRID_POSE)),
    Architecture("pp-ocr", "ocr"),
    Architecture("doctr", "ocr"),  # tasks/doctr.py: a DocTR DB/LinkNet detector and a CTC recogniser
)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in TABLE}


def names_by_task() -> dict[str, tuple[str, ...]]:
    """Task -> its architectures' names, the default first (the table's order)."""
    out: dict[str, tuple[str, ...]] = {}
    for a in TABLE:
        out[a.task] = (*out.get(a.task, ()), a.name)
    return out
