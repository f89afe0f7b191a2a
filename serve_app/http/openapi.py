"""The OpenAPI 3.1 document of the HTTP API (``GET /openapi.json``) and its Swagger UI page (``GET /docs``).

The document is built once, from the types the server answers with and the tables it reads:
the answers are the ``TypedDict``s of the tasks and of ``http/shapes.py`` (converted by
``http/schema.py``), the inference parameters are :class:`InferenceParams`'s fields with their
defaults, the tasks of ``POST /infer/{task}`` are ``roboflow.TASK_ROUTES``, the error codes each
status can carry are read off the error hierarchy (``serve_app/errors.py``), and the model id's
pattern is the registry's. ``tests/test_openapi.py`` checks that every route of
``http/routes.py`` is here and nothing else is, and that real answers of a running server fit.

``/openapi.json``, ``/docs`` and its assets need no API key, as with FastAPI and Roboflow
Inference (whose ``/docs`` and ``/openapi.json`` are open): the document holds no data, and a
browser cannot send a key when it opens a page. Swagger UI's assets come from the
``swagger_ui_bundle`` package, read once at start-up and served from here (no CDN); its online
validator badge is off, and a Content-Security-Policy keeps the page on this origin. That
package's Swagger UI (4.x) reads OpenAPI 3.0 only, so the page loads the same document in 3.0's
dialect (``/docs/openapi-3.0.json``, :func:`~serve_app.http.schema.as_openapi_30`).
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from functools import lru_cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serve_app import __version__, errors
from serve_app.errors import RouteNotFound
from serve_app.http import shapes
from serve_app.http.errors import ErrorBody
from serve_app.http.parsing import MODEL_ID_HEADER
from serve_app.http.requests import MAX_IMAGES_PER_REQUEST, RESPONSE_FORMATS
from serve_app.http.roboflow import TASK_ROUTES
from serve_app.http.schema import SchemaSet, as_openapi_30, variant
from serve_app.pipeline.preprocess import PreprocOverrides
from serve_app.registry.manifest import MODEL_ID_PATTERN
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.results import Prediction

# What InferenceParams.from_request enforces beyond the fields' types (tests/test_openapi.py
# checks each bound against it): numeric ranges, and the mask formats.
PARAM_RANGES: dict[str, tuple[float, float]] = {"confidence": (0.0, 1.0), "iou_threshold": (0.0, 1.0),
                                                "keypoint_confidence": (0.0, 1.0), "max_detections": (1, 10_000),
                                                "max_candidates": (1, 100_000)}
MASK_FORMATS = ("polygon", "rle")
MAX_STROKE = 100  # visualization_stroke_width and the legacy route's stroke (roboflow.py)
PARAM_DOCS = {
    "confidence": "minimum confidence of a prediction; 'default' or 'best' mean the server's default",
    "iou_threshold": "IoU above which NMS drops the weaker of two boxes",
    "class_agnostic_nms": "run NMS across classes rather than within each class",
    "class_filter": "keep only these classes (names of the model's classes)",
    "max_detections": "most predictions per image",
    "max_candidates": "most boxes fed to NMS",
    "keypoint_confidence": "keypoints below this confidence are left out",
    "mask_format": "instance segmentation: 'polygon' (points) or also 'rle' (rle_mask)",
}
# the answer of each task, by its /infer/{task} segment (classification: single- or multi-label)
TASK_ANSWERS = {"object_detection": ("ObjectDetectionResponse",),
                "instance_segmentation": ("InstanceSegmentationResponse",),
                "keypoints_detection": ("KeypointsDetectionResponse",),
                "classification": ("ClassificationResponse", "MultiLabelClassificationResponse"), "ocr": ("OcrResponse",)}
DOCS_ASSETS = {"swagger-ui.css": "text/css; charset=utf-8", "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
               "favicon-32x32.png": "image/png", "favicon-16x16.png": "image/png"}
DOCS_SPEC = "openapi-3.0.json"
DOCS_SCRIPT = "docs.js"
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DOCS_HEADERS = {"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}
PLAYGROUND_NOTE = "the playground (http/playground.py): a page to try the models in a browser"

# -- the error answers ---------------------------------------------------------------------------
ERROR_RESPONSES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                   405: "MethodNotAllowed", 413: "PayloadTooLarge", 422: "SchemaError", 503: "Unavailable",
                   504: "Timeout", 507: "InsufficientMemory"}
ERROR_TEXT = {400: "bad input: an undecodable image, a bad parameter value, a malformed model id, a URL not allowed",
              401: "no API key, or a wrong one (WWW-Authenticate: Bearer)",
              403: "the admin routes are off: no admin key, and the server does not listen on loopback alone",
              404: "no such model or alias, or no such route",
              405: "the path is served with other methods (listed in Allow)",
              413: "the body, an image file or its decoded pixels exceed the server's limits",
              422: "the body does not match the schema: not JSON, a missing field, a wrong type or range",
              503: "the model cannot be loaded now, or the server is at capacity; retry after Retry-After seconds",
              504: "the request did not finish in time", 507: "the model does not fit the replica's memory alone"}


def error_codes() -> dict[int, list[str]]:
    """Status -> the ``error`` codes answered with it, read off ``serve_app/errors.py``'s classes."""
    by_status: dict[int, list[str]] = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.ServeAppError):
            codes = by_status.setdefault(value.status, [])
            if value.code not in codes:
                codes.append(value.code)
    return dict(sorted(by_status.items()))


def _error_components(schemas: SchemaSet) -> dict[str, Any]:
    body = schemas.of(ErrorBody)
    codes = error_codes()
    responses: dict[str, Any] = {}
    for status, name in {**ERROR_RESPONSES, 500: "InternalError"}.items():
        schema = schemas.add(f"Error{status}", {"allOf": [body], "properties": {
            "error": {"enum": codes[status]}, "status": {"enum": [status]}}})
        response: dict[str, Any] = {"description": ERROR_TEXT.get(status, "an internal error (a bug: logged)"),
                                    "content": {"application/json": {"schema": schema}}}
        header = {401: "WWW-Authenticate", 405: "Allow", 503: "Retry-After"}.get(status)
        if header:
            response["headers"] = {header: {"schema": {"type": "string"}}}
        responses[name] = response
    return responses


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {str(s): {"$ref": f"#/components/responses/{ERROR_RESPONSES[s]}"} for s in statuses}
    out["default"] = {"$ref": "#/components/responses/InternalError"}
    return out


# -- the request parameters --------------------------------------------------------------------
def inference_parameters(schemas: SchemaSet) -> dict[str, dict[str, Any]]:
    """Wire name -> schema of each inference parameter, from :class:`InferenceParams`'s fields.

    ``mask_format`` goes by Roboflow's ``response_mask_format`` (``mask_format`` is read too), and
    ``overrides`` by :class:`PreprocOverrides`'s fields (``disable_preproc_*``).
    """
    hints = typing.get_type_hints(InferenceParams)
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(InferenceParams):
        if f.name == "overrides":
            for o in dataclasses.fields(PreprocOverrides):
                out[o.name] = {"type": "boolean", "default": o.default,
                               "description": "skip this preprocessing step of the model's manifest"}
            continue
        tp = hints[f.name]
        given = [a for a in typing.get_args(tp) if a is not type(None)]  # None: not sent, the default
        schema = schemas.of(given[0] if typing.get_origin(tp) is types.UnionType and len(given) == 1 else tp)
        if f.name in PARAM_RANGES:
            schema["minimum"], schema["maximum"] = PARAM_RANGES[f.name]
        if f.name == "mask_format":
            schema = {"type": "string", "enum": list(MASK_FORMATS)}
        if f.default is not None and f.default is not dataclasses.MISSING:
            schema["default"] = f.default
        schema["description"] = PARAM_DOCS.get(f.name, "")  # tests/test_openapi.py: every field has its words
        if f.name == "mask_format":
            out["response_mask_format"] = schema
            out["mask_format"] = {**schema, "description": "the same as response_mask_format"}
        else:
            out[f.name] = schema
    return out


def _query(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    param = {"name": name, "in": "query", "required": False, "schema": schema}
    if description or schema.get("description"):
        param["description"] = description or schema["description"]
    return param


def _inference_request(schemas: SchemaSet, params: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``InferenceBody``'s fields and the inference parameters: the JSON body of every inference route."""
    body = schemas.components.pop(_name(schemas.of(shapes.InferenceBody)))  # only as part of this one
    body["description"] = ("Roboflow Inference's JSON request: the image(s) and the model, the inference "
                           "parameters, whether to draw the predictions. Fields it does not know are ignored.")
    image = body["properties"]["image"]
    image["anyOf"] = [{**b, "maxItems": MAX_IMAGES_PER_REQUEST} if b.get("type") == "array" else b
                      for b in image["anyOf"]]
    body["properties"]["model_id"] = {**schemas.ref("ModelId"), "description": "the model (id or alias); the "
                                      f"'{MODEL_ID_HEADER}' header, when sent, wins"}
    body["properties"]["visualization_stroke_width"] = {"type": "integer", "minimum": 1, "maximum": MAX_STROKE}
    body["properties"]["id"] = {"type": "string", "maxLength": 200, "description": "echoed as inference_id"}
    body["properties"]["api_key"] = {"type": "string", "description": "the API key (or admin key), if the "
                                     "server needs one and no header or query sends it"}
    confidence = params["confidence"]
    params = {**params, "confidence": {"anyOf": [{k: v for k, v in confidence.items() if k != "description"},
                                                 {"enum": ["default", "best"]}],
                                       "description": confidence["description"]}}
    body["properties"].update(params)
    body["additionalProperties"] = True  # Roboflow's clients send fields this server does not read
    return schemas.add("InferenceRequest", body)


def _body(schemas: SchemaSet, tp: Any) -> dict[str, Any]:
    """A JSON request body of type ``tp``, open to fields the server ignores."""
    ref = schemas.of(tp)
    schemas.components[_name(ref)]["additionalProperties"] = True
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def _name(ref: dict[str, str]) -> str:
    return ref["$ref"].rsplit("/", 1)[1]


# -- the answers ---------------------------------------------------------------------------------
def _answer_components(schemas: SchemaSet) -> None:
    schemas.of(shapes.ClassificationResponse)
    schemas.of(shapes.MultiLabelClassificationResponse)
    schemas.of(shapes.OcrResponse)
    # the detection tasks share one type; each route's answers are a variant of it, named by task
    detection = schemas.components.pop(_name(schemas.of(shapes.DetectionAnswer)))
    prediction = schemas.components.pop(_name(schemas.of(Prediction)))
    kinds = {"ObjectDetection": ((), ("points", "rle_mask", "keypoints"), "a box"),
             "InstanceSegmentation": (("points",), ("keypoints",), "a box and its polygon (and RLE mask if asked)"),
             "KeypointsDetection": (("keypoints",), ("points", "rle_mask"), "a box and its keypoints")}
    for kind, (require, drop, what) in kinds.items():
        pred = schemas.add(f"{kind}Prediction", variant(prediction, require=require, drop=drop,
                                                         description=f"One detection: {what}."))
        schemas.add(f"{kind}Response", {**detection, "description": f"{kind_words(kind)}: one prediction per "
                                        "detection.", "properties": {**detection["properties"],
                                                                      "predictions": {"type": "array", "items": pred}}})


def kind_words(kind: str) -> str:
    """A component name's words as a sentence starts.

    >>> kind_words("InstanceSegmentation")
    'Instance segmentation'
    """
    words = re.findall(r"[A-Z][a-z]*", kind)
    return " ".join([words[0], *(w.lower() for w in words[1:])])


def _json_answer(schemas: SchemaSet, names: tuple[str, ...], what: str) -> dict[str, Any]:
    one = [schemas.ref(n) for n in names]
    schema = {"anyOf": [*one, {"type": "array", "items": one[0] if len(one) == 1 else {"anyOf": one}}]}
    return {"description": f"{what}; a list of images is answered with a list",
            "content": {"application/json": {"schema": schema}},
            "headers": {"X-Model-Id": {"schema": {"type": "string"}, "description": "the model's canonical id"},
                        "X-Replica": {"schema": {"type": "string"}, "description": "the replica that answered"},
                        "Server-Timing": {"schema": {"type": "string"}, "description": "time spent per stage"}}}


def _ok(schemas: SchemaSet, tp: Any, what: str) -> dict[str, Any]:
    return {"200": {"description": what, "content": {"application/json": {"schema": schemas.of(tp)}}}}


# -- the document ------------------------------------------------------------------------------
def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict each call)."""
    schemas = SchemaSet()
    schemas.add("ModelId", {"type": "string", "pattern": MODEL_ID_PATTERN.pattern, "maxLength": 150,
                            "examples": ["shapes-det/1"], "description": "a model id (name/version) or an alias"})
    responses = _error_components(schemas)
    _answer_components(schemas)
    params = inference_parameters(schemas)
    request = _inference_request(schemas, params)
    all_answers = tuple(dict.fromkeys(n for names in TASK_ANSWERS.values() for n in names))
    infer_security = [{}, {"apiKeyBearer": []}, {"apiKeyQuery": []}]
    admin_security = [{}, {"adminKeyBearer": []}, {"adminKeyQuery": []}]
    public: list[dict[str, list[str]]] = []
    header_param = {"name": MODEL_ID_HEADER, "in": "header", "required": False, "schema": schemas.ref("ModelId"),
                    "description": "the model (id or alias); wins over model_id"}
    scalar_params = {k: v for k, v in params.items() if v.get("type") != "array"}
    shared_query = [_query("visualize_predictions", {"type": "boolean", "default": False}, "answer with the "
                           "predictions drawn, as base64 JPEG in 'visualization'"),
                    _query("visualization_labels", {"type": "boolean", "default": True}, "label the drawn boxes"),
                    _query("visualization_stroke_width", {"type": "integer", "minimum": 1, "maximum": MAX_STROKE}),
                    _query("id", {"type": "string", "maxLength": 200}, "echoed as inference_id")]
    binary = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
    raw_bodies = {"image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}},
                  "application/x-npy": binary,
                  "text/plain": {"schema": {"type": "string", "contentEncoding": "base64"}}}
    infer_errors = _errors(400, 401, 404, 413, 422, 503, 504, 507)
    paths: dict[str, dict[str, Any]] = {
        "/infer": {"post": {
            "operationId": "infer", "tags": ["inference"], "summary": "Infer with the model the header names",
            "description": f"The model from the '{MODEL_ID_HEADER}' header (or 'model_id'). The body is a JSON "
                           "request, or the image itself (encoded bytes, .npy, or base64 text) with the "
                           "parameters in the query.",
            "parameters": [header_param, _query("model_id", schemas.ref("ModelId")),
                           *(_query(k, v) for k, v in scalar_params.items()), *shared_query],
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}, **raw_bodies}},
            "security": infer_security, "responses": {"200": _json_answer(schemas, all_answers, "the answer"),
                                                      **infer_errors}}},
    }
    for route, names in ((r, TASK_ANSWERS.get(r, all_answers)) for r in TASK_ROUTES):  # a new task: tested
        paths[f"/infer/{route}"] = {"post": {
            "operationId": f"infer_{route}", "tags": ["inference"], "summary": f"{TASK_ROUTES[route]} (Roboflow's "
            "JSON request)", "parameters": [header_param],
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "security": infer_security,
            "responses": {"200": _json_answer(schemas, names, f"the {TASK_ROUTES[route]} answer"), **infer_errors}}}
    paths["/healthz"] = {"get": {"operationId": "healthz", "tags": ["probes"], "summary": "Liveness",
                                 "security": public, "responses": _ok(schemas, shapes.Health, "alive")}}
    paths["/readiness"] = {"get": {
        "operationId": "readiness", "tags": ["probes"], "summary": "Readiness (registry and artifact cache answer)",
        "security": public, "responses": {**_ok(schemas, shapes.Ready, "ready"), "503": {
            "description": "not ready", "headers": {"Retry-After": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": schemas.of(shapes.NotReady)}}}}}}
    paths["/info"] = {"get": {"operationId": "info", "tags": ["server"], "summary": "Server name and version",
                              "security": infer_security,
                              "responses": {**_ok(schemas, shapes.ServerInfo, "the server"), **_errors(401)}}}
    registry = _ok(schemas, shapes.RegistryView, "the registry view")
    paths["/model/registry"] = {"get": {"operationId": "model_registry", "tags": ["models"],
                                        "summary": "Models, aliases and replicas", "security": infer_security,
                                        "responses": {**registry, **_errors(401)}}}
    admin = {"/model/add": ("model_add", "Add and/or load a model", shapes.AddModelBody, (400, 401, 403, 404, 413,
                                                                                        422, 503)),
             "/model/remove": ("model_remove", "Remove a model from the registry", shapes.RemoveModelBody,
                               (400, 401, 403, 404, 413, 422)),
             "/model/clear": ("model_clear", "Unload every model from every replica", None, (401, 403)),
             "/model/alias": ("model_alias", "Point an alias at a model", shapes.AliasBody,
                              (400, 401, 403, 404, 413, 422))}
    for path, (op, summary, body, statuses) in admin.items():
        operation: dict[str, Any] = {"operationId": op, "tags": ["admin"], "summary": summary,
                                     "description": "Needs the admin key when one is set; without one, open only "
                                                    "on a loopback bind (behind the API key, if set).",
                                     "security": admin_security, "responses": {**registry, **_errors(*statuses)}}
        if body is not None:
            operation["requestBody"] = _body(schemas, body)
        paths[path] = {"post": operation}
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "tags": ["docs"], "summary": "This document",
                                      "security": public, "responses": {"200": {
                                          "description": "OpenAPI 3.1",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    paths["/docs"] = {"get": {"operationId": "docs", "tags": ["docs"], "summary": "Swagger UI", "security": public,
                              "responses": {"200": {"description": "the page", "content": _html()}}}}
    paths["/docs/{asset}"] = {"get": {
        "operationId": "docs_asset", "tags": ["docs"], "summary": "Swagger UI's files, and this document in "
        "OpenAPI 3.0's dialect (which the page's Swagger UI reads)", "security": public,
        "parameters": [{"name": "asset", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": [*DOCS_ASSETS, DOCS_SCRIPT, DOCS_SPEC]}}],
        "responses": {"200": {"description": "the file", "content": {
            media: {"schema": {"type": "string"}} for media in {*DOCS_ASSETS.values(), "application/json"}}},
            **_errors(404)}}}
    paths.update(playground_operations(schemas))
    legacy_params = [
        {"name": "dataset", "in": "path", "required": True, "schema": {"type": "string"}, "description":
         "the model's name (not infer, model, ... : the other routes' first segments)"},
        {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}},
        _query("confidence", {"type": "number", "minimum": 0, "maximum": 100}, "0..1, or a percentage from 1"),
        _query("overlap", {"type": "number", "minimum": 0, "maximum": 100}, "NMS IoU: 0..1, or a percentage from 1"),
        _query("format", {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
               "json; image: the predictions drawn (a JPEG); image_and_json: JSON with 'visualization'"),
        _query("labels", {"type": "boolean", "default": True}, "label the drawn boxes"),
        _query("stroke", {"type": "integer", "minimum": 1, "maximum": MAX_STROKE}, "line width of the drawing"),
        _query("image", {"type": "string", "format": "uri"}, "an image URL (used when the body is empty)"),
        _query("classes", {"type": "string"}, "a class filter: names, comma-separated"),
        *(_query(k, v) for k, v in scalar_params.items() if k not in ("confidence", "iou_threshold")),
    ]
    legacy_answer = _json_answer(schemas, all_answers, "the answer: JSON (format json or image_and_json) or "
                                 "the predictions drawn (format image)")
    legacy_answer["content"]["image/jpeg"] = {"schema": {"type": "string", "contentMediaType": "image/jpeg"}}
    paths["/{dataset}/{version}"] = {"post": {
        "operationId": "infer_legacy", "tags": ["inference"], "summary": "Roboflow's legacy route",
        "description": "The image as the body (bytes or base64), as multipart 'file', or as ?image=<url>.",
        "parameters": legacy_params, "security": infer_security,
        "requestBody": {"required": False, "content": {**raw_bodies, "multipart/form-data": {"schema": {
            "type": "object", "properties": {"file": binary["schema"]}, "required": ["file"]}}}},
        "responses": {"200": legacy_answer, **_errors(400, 401, 404, 405, 413, 422, 503, 504, 507)}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "serve_app", "version": __version__, "description": (
            "Many ONNX vision models behind one endpoint, speaking Roboflow Inference's HTTP API. Errors "
            "answer in one JSON shape (ErrorBody); any path answers a method it does not serve with 405 "
            "and an Allow header, and an unknown path with 404. When the server has an API key, every "
            "route but the probes, this document and the pages needs it: 'Authorization: Bearer <key>', "
            "?api_key=<key>, or 'api_key' in the JSON body.")},
        "tags": [{"name": "inference"}, {"name": "models"}, {"name": "admin"}, {"name": "server"},
                 {"name": "probes"}, {"name": "docs"}, {"name": "playground", "description": PLAYGROUND_NOTE}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())), "responses": responses,
            "securitySchemes": {
                "apiKeyBearer": {"type": "http", "scheme": "bearer", "description": "the API key"},
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key", "description": "the API key"},
                "adminKeyBearer": {"type": "http", "scheme": "bearer", "description": "the admin key"},
                "adminKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key",
                                  "description": "the admin key"}}},
    }


def playground_operations(schemas: SchemaSet) -> dict[str, dict[str, Any]]:
    """The playground's routes (``http/playground.py``): its page, files, samples and drawing hints."""
    page = {"get": {"operationId": "playground", "tags": ["playground"], "summary": "The playground page",
                    "security": [], "responses": {"200": {"description": "the page", "content": _html()}}}}
    return {
        "/": page, "/playground": {"get": {**page["get"], "operationId": "playground_page"}},
        "/playground/samples": {"get": {
            "operationId": "playground_samples", "tags": ["playground"], "summary": "A sample image per model",
            "security": [], "responses": {"200": {"description": "the samples", "content": {"application/json": {
                "schema": {"type": "array", "items": {"type": "object", "required": ["model_id", "title", "url"],
                                                       "properties": {k: {"type": "string"} for k in
                                                                      ("model_id", "title", "url")}}}}}}}}},
        "/playground/static/{name}": {"get": {
            "operationId": "playground_static", "tags": ["playground"], "summary": "The page's files",
            "security": [], "parameters": [{"name": "name", "in": "path", "required": True,
                                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file", "content": {
                m: {"schema": {"type": "string"}} for m in ("text/css", "text/javascript", "image/jpeg")}},
                **_errors(404)}}},
        "/playground/models/{model_id}": {"get": {
            "operationId": "playground_model", "tags": ["playground"], "summary": "How to draw a model's answers",
            "security": [{}, {"apiKeyBearer": []}, {"apiKeyQuery": []}],
            "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": schemas.ref("ModelId")}],
            "responses": {"200": {"description": "colours by class, keypoint names and skeleton", "content": {
                "application/json": {"schema": {"type": "object", "required": ["model_id", "task", "classes"]}}}},
                **_errors(400, 401, 404)}}},
    }


def _html() -> dict[str, Any]:
    return {"text/html": {"schema": {"type": "string"}}}


@lru_cache(maxsize=1)
def document_bytes() -> tuple[bytes, bytes]:
    """The document as JSON, in 3.1 and in 3.0's dialect (built once per process)."""
    doc = build_document()
    return json.dumps(doc).encode(), json.dumps(as_openapi_30(doc)).encode()


# -- the routes ----------------------------------------------------------------------------------
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>serve_app API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="docs/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/docs.js"></script>
</body>
</html>
"""
# Swagger UI, pointed at the 3.0 view next to this script; validatorUrl null: no call to the online validator
DOCS_INIT = """"use strict";
(function () {
  var here = document.currentScript.src;
  window.ui = SwaggerUIBundle({
    url: new URL("openapi-3.0.json", here).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
})();
"""


def load_docs_assets() -> dict[str, bytes]:
    """Swagger UI's files that the page loads, from the ``swagger_ui_bundle`` package."""
    from pathlib import Path

    from swagger_ui_bundle import swagger_ui_path

    return {name: (Path(swagger_ui_path) / name).read_bytes() for name in DOCS_ASSETS}


def routes(gateway: Any) -> list[BaseRoute]:
    """``GET /openapi.json``, ``GET /docs`` and ``GET /docs/{asset}``; public (module docstring)."""
    assets = load_docs_assets()
    document, document_30 = document_bytes()

    async def openapi_json(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def docs(request: Request) -> Response:
        return Response(DOCS_PAGE, media_type="text/html; charset=utf-8", headers=DOCS_HEADERS)

    async def docs_asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if name == DOCS_SPEC:
            return Response(document_30, media_type="application/json", headers=DOCS_HEADERS)
        if name == DOCS_SCRIPT:
            return Response(DOCS_INIT, media_type="text/javascript; charset=utf-8", headers=DOCS_HEADERS)
        if name not in assets:
            raise RouteNotFound(f"no docs asset {name[:60]!r}")
        return Response(assets[name], media_type=DOCS_ASSETS[name], headers=DOCS_HEADERS)

    return [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs, methods=["GET"]),
            Route("/docs/{asset}", docs_asset, methods=["GET"])]

