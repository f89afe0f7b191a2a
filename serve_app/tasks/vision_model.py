"""A loaded model of any task: image(s) in, Roboflow-shaped result dicts out. No Ray, no HTTP.

>>> # model = VisionModel.load(manifest, {"weights": onnx_bytes}, SessionOptions())
>>> # model.predict([bgr_image], InferenceParams(confidence=0.25))[0]["predictions"]
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from serve_app.errors import InvalidParameter, ModelLoadError
from serve_app.pipeline.geometry import ImageTransform
from serve_app.pipeline.graph import prepend_uint8_normalization
from serve_app.pipeline.preprocess import prepare_image, to_tensor
from serve_app.pipeline.session import OnnxSession, SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.tasks import detection, segmentation
from serve_app.tasks.classification import Classification, to_probabilities
from serve_app.tasks.keypoints import keypoints_from_extra, keypoints_to_original
from serve_app.tasks.masks import mask_logits_at_input, mask_to_original, mask_to_polygon
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.results import Detections

log = logging.getLogger(__name__)


@dataclass
class VisionModel:
    manifest: Manifest
    session: OnnxSession | None
    ocr: Any = None  # OcrPipeline for task "ocr"
    warmup_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, manifest: Manifest, files: Mapping[str, Any], options: SessionOptions) -> "VisionModel":
        if manifest.task == "ocr":
            return cls._load_ocr(manifest, files, options)
        weights = files["weights"]
        if options.uint8_input:
            try:
                spec = manifest.input
                weights = prepend_uint8_normalization(weights, spec.scale, spec.mean, spec.std)
            except ModelLoadError as exc:
                log.warning("%s: keeping float input (%s)", manifest.model_id, exc.message)
        session = OnnxSession.from_bytes(weights, options, manifest.model_id)
        model = cls(manifest, session)
        started = time.perf_counter()
        try:
            for size in session.batch_sizes:  # every shape-stable session plans its kernels now, not on a request
                outputs = session.run(np.zeros((size, 3, manifest.input.height, manifest.input.width), session.input_dtype))
        except Exception as exc:
            raise ModelLoadError(f"{manifest.model_id}: warm-up inference failed: {str(exc)[:300]}") from None
        model.warmup_seconds = time.perf_counter() - started
        check_outputs(manifest, [o.shape for o in outputs])
        return model

    @classmethod
    def _load_ocr(cls, manifest: Manifest, files: Mapping[str, Any], options: SessionOptions) -> "VisionModel":
        from serve_app.tasks.ocr import OcrConfig, OcrPipeline, load_alphabet

        options = replace(options, batch_sizes=())  # OCR is not batched across requests: one session each
        det = OnnxSession.from_bytes(files["detector"], options, manifest.model_id + ":detector")
        rec = OnnxSession.from_bytes(files["recognizer"], options, manifest.model_id + ":recognizer")
        alphabet = load_alphabet(bytes(files["alphabet"]).decode("utf-8"))
        pipeline = OcrPipeline(lambda x: det.run(x)[0], lambda x: rec.run(x)[0], alphabet,
                               OcrConfig.from_manifest(manifest.ocr or {}))
        started = time.perf_counter()
        try:  # a page of text: both sessions run now, not on the first request
            pipeline.warm_up()
        except Exception as exc:
            raise ModelLoadError(f"{manifest.model_id}: warm-up inference failed: {str(exc)[:300]}") from None
        return cls(manifest, det, ocr=pipeline, warmup_seconds=time.perf_counter() - started)

    @property
    def providers(self) -> list[str]:
        return self.session.providers if self.session else []

    def predict(self, images: list[np.ndarray], params: InferenceParams = InferenceParams()) -> list[dict]:
        """Run a batch of BGR images; one Roboflow-shaped dict per image."""
        if self.manifest.task == "ocr":
            return [self.ocr.predict(img).to_roboflow() for img in images]
        t0 = time.perf_counter()
        tensor, transforms = self.prepare(images, params)
        t1 = time.perf_counter()
        outputs = self.run(tensor)
        t2 = time.perf_counter()
        results = self.decode(outputs, transforms, params, images)
        t3 = time.perf_counter()
        self.timings = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}
        return results

    def prepare(self, images: list[np.ndarray], params: InferenceParams) -> tuple[np.ndarray, list[ImageTransform]]:
        """Crop, adjust, resize and stack: the input tensor and each image's transform."""
        spec, pre = self.manifest.input, self.manifest.preprocessing
        prepared = [prepare_image(img, spec, pre, params.overrides) for img in images]
        assert self.session is not None
        return to_tensor([p[0] for p in prepared], spec, self.session.input_dtype), [p[1] for p in prepared]

    def decode(self, outputs: list[np.ndarray], transforms: list[ImageTransform], params: InferenceParams,
               images: list[np.ndarray]) -> list[dict]:
        """Raw batch outputs -> one result dict per image, in original-image coordinates."""
        results = [self._decode([o[i] for o in outputs], transforms[i], params) for i in range(len(transforms))]
        for img, res in zip(images, results):
            res["image"] = {"width": int(img.shape[1]), "height": int(img.shape[0])}
        return results

    @property
    def batchable(self) -> bool:
        """Whether tensors of several requests can be stacked into one session call."""
        return self.manifest.task != "ocr" and self.session is not None and self.session.dynamic_batch

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        assert self.session is not None
        if self.session.dynamic_batch or len(tensor) == 1:
            return self.session.run(tensor)
        parts = [self.session.run(tensor[i:i + 1]) for i in range(len(tensor))]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def _class_ids(self, params: InferenceParams) -> np.ndarray | None:
        if params.class_filter is None:
            return None
        unknown = [c for c in params.class_filter if c not in self.manifest.classes]
        if unknown:
            raise InvalidParameter(f"class_filter names classes this model lacks: {unknown}; it has {list(self.manifest.classes)}")
        return np.array([self.manifest.classes.index(c) for c in params.class_filter], dtype=np.int64)

    def _select(self, c: detection.Candidates, params: InferenceParams) -> detection.Selected:
        return detection.select(c, confidence=params.confidence, iou_threshold=params.iou_threshold,
                                class_agnostic=params.class_agnostic_nms, class_ids_allowed=self._class_ids(params),
                                max_detections=params.max_detections, max_candidates=params.max_candidates)

    def _decode(self, outs: list[np.ndarray], transform: ImageTransform, params: InferenceParams) -> dict:
        m = self.manifest
        nc = len(m.classes)
        arch = m.architecture
        if m.task == "classification":
            probs = to_probabilities(outs[0].reshape(-1), m.multi_label)
            return Classification(probs, m.classes, m.multi_label, params.confidence).to_roboflow()
        if m.task == "object-detection":
            c = detection.decode_yolov8(outs[0], nc) if arch == "yolov8" else detection.decode_yolov5(outs[0], nc)
            sel = self._select(c, params)
            dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id)
            return {"predictions": dets.to_roboflow(m.classes)}
        if m.task == "keypoint-detection":
            assert m.keypoints is not None
            sel = self._select(detection.decode_yolov8(outs[0], nc), params)
            kps = keypoints_to_original(keypoints_from_extra(sel.extra, len(m.keypoints.names)), transform)
            dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id, keypoints=kps)
            return {"predictions": dets.to_roboflow(m.classes, m.keypoints.names, params.keypoint_confidence)}
        # instance segmentation
        if arch == "yolact":
            named = dict(zip(self.session.output_names, outs))
            seg = segmentation.decode_yolact(named["loc"], named["conf"], named["mask"], named["priors"], named["proto"],
                                             (m.input.height, m.input.width))
        elif arch == "yolov8-seg":
            seg = segmentation.decode_yolov8_seg(outs[0], outs[1], nc)
        else:
            seg = segmentation.decode_yolov5_seg(outs[0], outs[1], nc)
        sel = self._select(seg.candidates, params)
        logits = mask_logits_at_input(sel.extra, seg.protos, sel.boxes, (m.input.height, m.input.width))
        binary = logits > 0
        polygons = tuple(transform.points_to_original(mask_to_polygon(b)).astype(np.float32) for b in binary)
        masks = tuple(mask_to_original(b, transform) for b in binary) if params.mask_format == "rle" else None
        dets = Detections(transform.boxes_to_original(sel.boxes), sel.confidence, sel.class_id, polygons=polygons,
                          masks=masks)
        return {"predictions": dets.to_roboflow(m.classes)}


def check_outputs(manifest: Manifest, shapes: list[tuple[int, ...]]) -> None:
    """Raise ModelLoadError when the model's real output shapes disagree with the manifest."""
    nc = len(manifest.classes)
    arch = manifest.architecture
    first = shapes[0]

    def fail(expected: str) -> None:
        raise ModelLoadError(f"{manifest.model_id}: output shapes {[list(s) for s in shapes]} do not fit a {arch} "
                             f"model with {nc} classes: expected {expected}")

    if arch == "yolov8":
        if len(first) != 3 or first[1] != 4 + nc:
            fail(f"[B, {4 + nc}, N]")
    elif arch == "yolov5":
        if len(first) != 3 or first[2] != 5 + nc:
            fail(f"[B, N, {5 + nc}]")
    elif arch in ("yolov8-seg", "yolov5-seg"):
        if len(shapes) < 2 or len(shapes[1]) != 4:
            fail("two outputs: detections and [B, P, mh, mw] prototypes")
        p = shapes[1][1]
        if arch == "yolov8-seg" and first[1] != 4 + nc + p:
            fail(f"[B, {4 + nc + p}, N]")
        if arch == "yolov5-seg" and first[2] != 5 + nc + p:
            fail(f"[B, N, {5 + nc + p}]")
    elif arch == "yolov8-pose":
        k = len(manifest.keypoints.names) if manifest.keypoints else 0
        if len(first) != 3 or first[1] != 4 + nc + 3 * k:
            fail(f"[B, {4 + nc + 3 * k}, N] for {k} keypoints")
    elif arch in ("yolov8-cls", "multi-label"):
        if first[-1] != nc:
            fail(f"[B, {nc}]")
    elif arch == "yolact":
        if len(shapes) != 5:
            fail("five outputs loc, conf, mask, priors, proto")
