"""Roboflow Inference's request and response shapes, read and written without Ray or Starlette.

Three ways in, one :class:`~serve_app.http.requests.InferRequest` out:

- ``POST /infer/{task}`` and ``POST /infer`` with a JSON body (:func:`from_json_body`):
  ``{model_id, image: {type, value} | [...], confidence, iou_threshold, ..., visualize_predictions}``;
- ``POST /infer`` with the image as the body and parameters in the query (:func:`from_query`);
- the legacy ``POST /{dataset}/{version}?confidence=40&overlap=30&format=image``
  (:func:`from_legacy_query`): ``overlap`` is ``iou_threshold``, and ``confidence`` and
  ``overlap`` of 1 or more are percentages, as Roboflow's hosted API reads them.

Parameters are validated once, into :class:`InferenceParams` (a 422 naming the field), and images
into :class:`~serve_app.pipeline.images.ImageSource` bytes (base64 decoded here, once); both go
to the replica typed. Fields this server does not know are ignored, as Roboflow's server ignores them.

>>> r = from_legacy_query({"confidence": "40", "overlap": "0.5", "format": "image"}, "shapes-det", "1")
>>> r.model_ref, r.params.confidence, r.params.iou_threshold, r.draw is not None, r.response_format
('shapes-det/1', 0.4, 0.5, True, 'image')
"""
from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any

from serve_app.errors import SchemaError, ServeAppError
from serve_app.http.requests import MAX_IMAGES_PER_REQUEST, RESPONSE_FORMATS, InferRequest
from serve_app.http.visualize import DrawOptions
from serve_app.options import ImageLimits
from serve_app.pipeline.images import ImageSource, image_source
from serve_app.tasks.params import InferenceParams

# route segment of /infer/{segment} -> manifest task
TASK_ROUTES: dict[str, str] = {
    "object_detection": "object-detection",
    "instance_segmentation": "instance-segmentation",
    "classification": "classification",
    "keypoints_detection": "keypoint-detection",
    "ocr": "ocr",
}
ROUTE_OF_TASK = {task: route for route, task in TASK_ROUTES.items()}
_PARAM_FIELDS = ("confidence", "iou_threshold", "class_agnostic_nms", "class_filter", "max_detections",
                 "max_candidates", "keypoint_confidence", "response_mask_format", "mask_format",
                 "disable_preproc_auto_orient", "disable_preproc_contrast", "disable_preproc_grayscale",
                 "disable_preproc_static_crop")
_MAX_STROKE = 100


def from_json_body(data: Mapping[str, Any], max_images: int = MAX_IMAGES_PER_REQUEST,
                   limits: ImageLimits = ImageLimits()) -> InferRequest:
    """A Roboflow ``/infer/*`` JSON body (also taken by ``POST /infer`` and the legacy route)."""
    model_ref = data.get("model_id")
    if model_ref is not None and not isinstance(model_ref, str):
        raise SchemaError(f"model_id must be a string like 'name/1', got {type(model_ref).__name__}")
    if "image" not in data or data["image"] is None:
        raise SchemaError("field 'image' is required: {type: base64|url|npy, value} or a list of them")
    images = data["image"]
    return InferRequest(
        model_ref=model_ref or None, images=image_sources(images, max_images, limits),
        params=inference_params(data),
        draw=_draw(data, "visualize_predictions", "visualization_labels", "visualization_stroke_width"),
        inference_id=_request_id(data.get("id")), batched=isinstance(images, list),
    )


def from_query(query: Mapping[str, str]) -> InferRequest:
    """``POST /infer`` with the image as the body: parameters (Roboflow's names) in the query string."""
    return InferRequest(
        model_ref=query.get("model_id") or None, params=inference_params(query),
        draw=_draw(query, "visualize_predictions", "visualization_labels", "visualization_stroke_width"),
        inference_id=_request_id(query.get("id")),
    )


def from_legacy_query(query: Mapping[str, str], dataset: str, version: str) -> InferRequest:
    """The legacy route's query: ``confidence``, ``overlap``, ``format``, ``labels``, ``stroke``, ``image``...

    ``image=<url>`` names the image when the body is empty; ``classes=a,b`` is a class filter.
    """
    raw: dict[str, Any] = {k: v for k, v in query.items() if k in _PARAM_FIELDS and k != "iou_threshold"}
    if query.get("confidence") not in (None, ""):
        raw["confidence"] = percent_or_fraction(query["confidence"], "confidence")
    if query.get("overlap") not in (None, ""):
        raw["iou_threshold"] = percent_or_fraction(query["overlap"], "overlap")
    if query.get("classes"):
        raw["class_filter"] = [c.strip() for c in query["classes"].split(",") if c.strip()]
    fmt = query.get("format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise SchemaError(f"format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt[:40]!r}")
    url = query.get("image")
    draw = DrawOptions(labels=_flag(query, "labels", True), stroke=_stroke(query.get("stroke"), "stroke"))
    return InferRequest(
        model_ref=f"{dataset}/{version}", images=(ImageSource("url", url.strip()),) if url else (),
        params=inference_params(raw), draw=draw if fmt != "json" else None, response_format=fmt,
    )


def percent_or_fraction(value: Any, name: str) -> float:
    """A threshold as Roboflow's hosted API reads it: 1..100 is a percentage, below 1 a fraction.

    >>> percent_or_fraction("30", "overlap"), percent_or_fraction(0.25, "confidence")
    (0.3, 0.25)
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SchemaError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not 0 <= number <= 100:
        raise SchemaError(f"{name} must be a fraction 0..1 or a percentage 1..100, got {number}")
    return round(number / 100, 6) if number >= 1 else number


def inference_params(body: Mapping[str, Any]) -> InferenceParams:
    """The inference parameters in ``body`` (Roboflow's names), validated and typed (``"0.5"`` -> ``0.5``).

    ``confidence: "default" | "best"`` (Roboflow's per-model thresholds) means the server default.

    >>> p = inference_params({"confidence": "0.5", "class_agnostic_nms": "true", "other": 1})
    >>> p.confidence, p.class_agnostic_nms, p == inference_params({"confidence": 0.5, "class_agnostic_nms": True})
    (0.5, True, True)
    """
    raw = {k: body[k] for k in _PARAM_FIELDS if body.get(k) is not None}
    if raw.get("confidence") in ("default", "best"):
        del raw["confidence"]
    return InferenceParams.from_request(raw)


def image_sources(images: Any, max_images: int, limits: ImageLimits) -> tuple[ImageSource, ...]:
    """The ``image`` field (one image or a list), checked and decoded from base64; an error in a
    list names the image (``image[1]: ...``)."""
    items = images if isinstance(images, list) else [images]
    if not items:
        raise SchemaError("field 'image' is an empty list")
    if len(items) > max_images:
        raise SchemaError(f"field 'image' holds {len(items)} images; the limit is {max_images}")
    sources = []
    for i, item in enumerate(items):
        where = f"image[{i}]" if isinstance(images, list) else "image"
        if not isinstance(item, (str, Mapping)):
            raise SchemaError(f"{where} must be an object {{type, value}} or a string, got {type(item).__name__}")
        try:
            sources.append(image_source(item, limits))
        except ServeAppError as exc:
            if isinstance(images, list):
                raise type(exc)(f"{where}: {exc.message}") from None
            raise
    return tuple(sources)


def finish_results(results: list[dict], *, inference_id: str | None, elapsed: float,
                   visualizations: list[bytes] | None = None) -> list[dict]:
    """Add Roboflow's ``inference_id``, ``time`` and (base64 JPEG) ``visualization`` to each result."""
    out = []
    for i, result in enumerate(results):
        body = {"inference_id": inference_id or str(uuid.uuid4()), "time": elapsed, **result}
        if visualizations is not None:
            body["visualization"] = base64.b64encode(visualizations[i]).decode("ascii")
        out.append(body)
    return out


def client_registry(view: Mapping[str, Any]) -> dict[str, Any]:
    """The registry view with an entry per alias of a loaded model, as ``inference-sdk`` looks models up.

    The SDK's v1 client finds a model's task by its id in ``models``; a client that names an alias
    (``shapes``) must find it there under that name.
    """
    models = list(view.get("models", []))
    by_id = {m["model_id"]: m for m in models}
    for alias, target in sorted((view.get("aliases") or {}).items()):
        for _ in range(8):  # aliases may point at aliases
            if target in by_id or target not in (view.get("aliases") or {}):
                break
            target = view["aliases"][target]
        if target in by_id and alias not in by_id:
            models.append({**by_id[target], "model_id": alias, "alias_of": target})
    return {**view, "models": models}


def _draw(data: Mapping[str, Any], enabled: str, labels: str, stroke: str) -> DrawOptions | None:
    """How to draw the predictions, if the request asks for pictures (``enabled``)."""
    wanted, options = _flag(data, enabled, False), DrawOptions(labels=_flag(data, labels, True),
                                                               stroke=_stroke(data.get(stroke), stroke))
    return options if wanted else None


def _flag(data: Mapping[str, Any], name: str, default: bool) -> bool:
    value = data.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise SchemaError(f"{name} must be true or false, got {str(value)[:40]!r}")


def _stroke(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise SchemaError(f"{name} must be an integer number of pixels, got {str(value)[:40]!r}")
    if not 1 <= number <= _MAX_STROKE:
        raise SchemaError(f"{name} must be between 1 and {_MAX_STROKE} pixels, got {int(number)}")
    return int(number)


def _request_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise SchemaError("id must be a string of at most 200 characters")
    return value
