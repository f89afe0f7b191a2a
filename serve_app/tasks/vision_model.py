"""A loaded model of any task: image(s) in, Roboflow-shaped result dicts out. No Ray, no HTTP.

What differs between model families (decoder, output shapes) is looked up in
``tasks/architectures.py``; the model is described by a :class:`ModelSpec` (the registry's manifest).

>>> # model = VisionModel.load(manifest, {"weights": onnx_bytes}, SessionOptions())
>>> # model.predict([bgr_image], InferenceParams(confidence=0.25))[0]["predictions"]
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from serve_app.errors import ModelLoadError
from serve_app.pipeline.candidates import CANDIDATES, FLOOR, OUTPUTS, CandidateRows, append_candidate_filter, score_floor
from serve_app.pipeline.chunks import run_in_chunks
from serve_app.pipeline.geometry import ImageTransform
from serve_app.pipeline.graph import prepend_uint8_normalization
from serve_app.pipeline.preprocess import prepare_image, to_tensor
from serve_app.pipeline.graph_cache import GraphCache, graph_key
from serve_app.pipeline.session import OnnxSession, SavedGraph, SessionOptions, graph_cache_applies
from serve_app.tasks.architectures import ARCHITECTURES, Decoder, ModelSpec
from serve_app.tasks.params import InferenceParams

log = logging.getLogger(__name__)


@dataclass
class VisionModel:
    manifest: ModelSpec
    session: OnnxSession | None
    ocr: Any = None  # OcrPipeline for task "ocr"
    warmup_seconds: float = 0.0
    decoder: Decoder | None = None  # the layout's decoder its output shapes fit (set at load)
    channels_last: bool = False  # the session takes the decoded BGR images stacked (N x H x W x 3 uint8)
    timings: dict[str, float] = field(default_factory=dict)
    load_phases: dict[str, float] = field(default_factory=dict)  # seconds: graph (edit or kept graph), session, warmup
    graph_cache_hit: bool = False  # the session was built from the optimised graph an earlier load kept
    candidate_filter: bool = False  # its session picks the candidate rows (pipeline/candidates.py): see run

    @classmethod
    def load(cls, manifest: ModelSpec, files: Mapping[str, Any], options: SessionOptions,
             weights_sha256: str | None = None) -> "VisionModel":
        """Build the model's session(s) and run a warm-up batch through each. ``weights_sha256``
        (the manifest's digest of the weights) lets a later load start from the optimised graph
        this one keeps (``SessionOptions.graph_cache_dir``). ``load_phases`` says where the time went."""
        if manifest.task == "ocr":
            return cls._load_ocr(manifest, files, options)
        t0 = time.perf_counter()
        spec = manifest.input
        edit = {"scale": spec.scale, "mean": list(spec.mean), "std": list(spec.std),
                "rgb": spec.channel_order == "rgb"} if options.uint8_input else None
        classes = len(manifest.classes) if filters_candidates(manifest, options) else None
        saved = cls._saved_graph(options, weights_sha256, edit, classes)
        session, channels_last = cls._session(manifest, files["weights"], options, edit, saved, classes)
        model = cls(manifest, session, channels_last=channels_last, candidate_filter=CANDIDATES in session.output_names)
        started = time.perf_counter()
        try:
            for size in session.batch_sizes:  # every shape-stable session plans its kernels now, not on a request
                outputs = session.run(model.blank_batch(size))
        except Exception as exc:
            raise ModelLoadError(f"{manifest.model_id}: warm-up inference failed: {str(exc)[:300]}") from None
        model.warmup_seconds = time.perf_counter() - started
        model.decoder = fit_outputs(manifest, [o.shape for o in outputs])
        model.load_phases = {"graph": started - t0 - session.load_seconds, "session": session.load_seconds,
                             "warmup": model.warmup_seconds}
        model.graph_cache_hit = session.graph_cache_hit
        return model

    @staticmethod
    def _saved_graph(options: SessionOptions, weights_sha256: str | None, edit: dict | None,
                     filter_classes: int | None = None) -> SavedGraph | None:
        """Where this load's optimised graph is kept (None: no graph is kept for it)."""
        if not (weights_sha256 and graph_cache_applies(options)):
            return None
        key = graph_key(weights_sha256, providers=options.providers, graph_optimization=options.graph_optimization,
                        uint8_input=edit, shared_arena=options.shared_arena, candidate_filter=filter_classes)
        return SavedGraph(GraphCache(options.graph_cache_dir or "", options.graph_cache_max_bytes), key)

    @staticmethod
    def _session(manifest: ModelSpec, weights: Any, options: SessionOptions, edit: dict | None,
                 saved: SavedGraph | None, filter_classes: int | None = None) -> tuple[OnnxSession, bool]:
        """The model's session and whether it takes the decoded images as they are (channels last):
        from the kept optimised graph where there is one, else from the weights (with the uint8 input
        edit and, for ``filter_classes`` classes, the candidate filter; that session keeps its graph).
        A kept graph that does not load is removed."""
        graph = saved.cache.get(saved.key) if saved is not None else None
        if saved is not None and graph is not None:
            try:
                return OnnxSession.from_bytes(graph, options, manifest.model_id, replace(saved, hit=True)), \
                    edit is not None
            except ModelLoadError:
                log.warning("%s: its kept optimised graph did not load; loading the weights", manifest.model_id)
                saved.cache.discard(saved.key)
        channels_last = False
        if edit is not None:
            try:
                weights = prepend_uint8_normalization(weights, edit["scale"], edit["mean"], edit["std"],
                                                      channels_last=True, reverse_channels=edit["rgb"])
                channels_last = True
            except ModelLoadError as exc:
                log.warning("%s: keeping float input (%s)", manifest.model_id, exc.message)
                saved = None  # a graph kept under the edit's key must have the edit
        if filter_classes is not None:
            try:
                weights = append_candidate_filter(weights, filter_classes)
            except ModelLoadError as exc:
                log.warning("%s: candidates chosen on the host (%s)", manifest.model_id, exc.message)
                saved = None
        return OnnxSession.from_bytes(weights, options, manifest.model_id, saved), channels_last

    @classmethod
    def _load_ocr(cls, manifest: ModelSpec, files: Mapping[str, Any], options: SessionOptions) -> "VisionModel":
        options = replace(options, batch_sizes=())  # OCR is not batched across requests: one session each
        det = OnnxSession.from_bytes(files["detector"], options, manifest.model_id + ":detector")
        rec = OnnxSession.from_bytes(files["recognizer"], options, manifest.model_id + ":recognizer")
        pipeline: Any
        if manifest.architecture == "doctr":
            from serve_app.tasks.doctr import DoctrConfig, DoctrPipeline

            pipeline = DoctrPipeline(lambda x: det.run(x)[0], lambda x: rec.run(x)[0],
                                     DoctrConfig.from_manifest(manifest.ocr or {}))
        else:
            from serve_app.tasks.ocr import OcrConfig, OcrPipeline, load_alphabet

            alphabet = load_alphabet(bytes(files["alphabet"]).decode("utf-8"))
            pipeline = OcrPipeline(lambda x: det.run(x)[0], lambda x: rec.run(x)[0], alphabet,
                                   OcrConfig.from_manifest(manifest.ocr or {}))
        started = time.perf_counter()
        try:  # a page of text: both sessions run now, not on the first request
            pipeline.warm_up()
        except Exception as exc:
            raise ModelLoadError(f"{manifest.model_id}: warm-up inference failed: {str(exc)[:300]}") from None
        return cls(manifest, det, ocr=pipeline, warmup_seconds=time.perf_counter() - started)

    def blank_batch(self, size: int) -> np.ndarray:
        """``size`` zero images in the session's input layout and type (warm-up, tests)."""
        assert self.session is not None
        h, w = self.manifest.input.height, self.manifest.input.width
        shape = (size, h, w, 3) if self.channels_last else (size, 3, h, w)
        return np.zeros(shape, self.session.input_dtype)

    @property
    def batch_sessions(self) -> list[int]:
        """The batch sizes with a session of their own, built so far."""
        return self.session.batch_sizes if self.session else []

    @property
    def pending_batch_sizes(self) -> tuple[int, ...]:
        """Buckets whose sessions are still to be built (``SessionOptions.lazy_batch_sessions``)."""
        return self.session.pending_batch_sizes if self.session else ()

    def ready_buckets(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        """The batch sizes to pad to now: with a session per bucket, the buckets built so far (a
        bucket still pending would run its padding rows one by one); else ``configured``."""
        if self.session is None or not self.session.per_batch_size:
            return configured
        return tuple(self.session.batch_sizes)

    @property
    def tuning_pending(self) -> bool:
        """Its session is a quick start's; :meth:`tune_session` builds the tuned one."""
        return bool(self.session and self.session.tuning_pending)

    def tune_session(self) -> bool:
        """Build, warm and put in place the tuned main session (``SessionOptions.quick_start``)."""
        return bool(self.session and self.session.tune(self.blank_batch(1)))

    def add_batch_sessions(self) -> list[int]:
        """Build, and warm up, the sessions of the pending buckets; returns the sizes built."""
        assert self.session is not None
        return [size for size in self.session.pending_batch_sizes
                if self.session.add_batch_session(size, self.blank_batch(size))]

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
        outputs = self.run(tensor, self.score_floor(params))
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
        tensor = to_tensor([p[0] for p in prepared], spec, self.session.input_dtype, channels_last=self.channels_last)
        return tensor, [p[1] for p in prepared]

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

    def score_floor(self, params: InferenceParams) -> np.ndarray | None:
        """What :meth:`run` needs to know of a request: the score its candidates must beat (None
        for a model whose session does not choose them). A batch runs with its requests' lowest."""
        return score_floor(params.confidence) if self.candidate_filter else None

    def run(self, tensor: np.ndarray, floor: np.ndarray | None = None) -> list[Any]:
        """The session's outputs for ``tensor``; with the candidate filter one :class:`CandidateRows`
        of the rows scoring above ``floor`` (every row when None), which :meth:`decode` reads as
        YOLOv8's output."""
        session = self.session
        assert session is not None
        run = session.run
        if self.candidate_filter:  # the rows' output replaced by the filter's; the others (prototypes) as they are
            feeds = None if floor is None else {FLOOR: floor}
            names = [*OUTPUTS, *(n for n in session.output_names[1:] if n not in OUTPUTS)]
            run = lambda x: session.run(x, feeds, names)  # noqa: E731
        outputs = run(tensor) if session.dynamic_batch or len(tensor) == 1 else run_in_chunks(run, tensor, 1)
        return [CandidateRows(outputs[0], outputs[1]), *outputs[2:]] if self.candidate_filter else outputs

    def _decode(self, outs: list[np.ndarray], transform: ImageTransform, params: InferenceParams) -> dict:
        assert self.decoder is not None and self.session is not None
        return self.decoder(outs, self.session.output_names, transform, params, self.manifest)


FILTERED_ARCHITECTURES = ("yolov8", "yolov8-seg", "yolov8-pose")  # YOLOv8's rows are all they write


def filters_candidates(manifest: ModelSpec, options: SessionOptions) -> bool:
    """Whether the model's session gets the candidate filter: YOLOv8's layout is the only one its
    architecture writes, and no option that needs fixed output shapes or float16 is on."""
    return (options.candidate_filter and manifest.architecture in FILTERED_ARCHITECTURES
            and options.precision == "fp32" and not options.cuda_graph)


def fit_outputs(manifest: ModelSpec, shapes: list[tuple[int, ...]]) -> Decoder:
    """The decoder for the model's real output shapes; ModelLoadError when they fit none of its layouts."""
    try:
        return ARCHITECTURES[manifest.architecture].fit(manifest, shapes)
    except ValueError as exc:
        raise ModelLoadError(f"{manifest.model_id}: output shapes {[list(s) for s in shapes]} do not fit a "
                             f"{manifest.architecture} model with {len(manifest.classes)} classes: expected {exc}") from None
