"""The HTTP API's JSON shapes beyond the tasks' own: the fields every inference answer gets, the
registry view, the probes and ``/info``, and the request bodies. ``http/openapi.py`` turns these
(with the tasks' result types) into the OpenAPI document; the answers of a running server are
checked against it in ``tests/test_openapi.py``.

Answer types are closed: a field the server sends must be here (or in the task's type). Request
types are open in the document (Roboflow's clients send fields this server ignores).

No ``from __future__ import annotations`` here: Python 3.11 would miss ``NotRequired`` in the
types' ``__required_keys__``.
"""
from typing import Any, Literal, NotRequired, TypedDict

from serve_app.registry.manifest import TASKS
from serve_app.tasks.classification import MultiLabelResult, SingleLabelResult
from serve_app.tasks.ocr import OcrAnswer
from serve_app.tasks.results import ImageSize, Prediction

# -- answers ------------------------------------------------------------------------------------


class Answer(TypedDict):
    """What the gateway adds to every result (``roboflow.finish_results``): an id, the seconds the
    request took, and the picture (base64 JPEG) when ``visualize_predictions`` or
    ``format=image_and_json`` asked for it."""

    inference_id: str
    time: float
    visualization: NotRequired[str]


class DetectionAnswer(Answer):
    """Object detection, instance segmentation and keypoints: one prediction per detection."""

    image: ImageSize
    predictions: list[Prediction]


class ClassificationResponse(Answer, SingleLabelResult):
    """Single-label classification."""

    image: ImageSize


class MultiLabelClassificationResponse(Answer, MultiLabelResult):
    """Multi-label classification."""

    image: ImageSize


class OcrResponse(Answer, OcrAnswer):
    """OCR: the text read, line by line."""


class RegisteredModel(TypedDict):
    """A model of the registry, as ``inference-sdk`` reads it (``task_type``, input size), with the
    replicas that hold it loaded (``loaded_on``: each replica's report on it)."""

    model_id: str
    task_type: Literal[TASKS]  # type: ignore[valid-type]
    architecture: str
    batch_size: str
    input_height: int | None
    input_width: int | None
    classes: list[str]
    loaded_on: list[dict[str, Any]]
    alias_of: NotRequired[str]


class ReplicaView(TypedDict):
    """A live ModelServer replica: what it holds and loads, its memory, its request rates."""

    replica: str
    node_id: str | None
    pid: int | None
    ready: bool | None
    gpu_ids: list[str]
    models: list[str]
    loading: list[str]
    loads: int
    evictions: int
    memory: dict[str, Any]
    rates: dict[str, float]
    reported_s_ago: float


class RegistryView(TypedDict):
    """``GET /model/registry`` and the admin routes' answer: ``models`` are the loaded ones (an alias
    of a loaded model listed under its own name too, with ``alias_of``), ``available`` all of them."""

    models: list[RegisteredModel]
    available: list[RegisteredModel]
    aliases: dict[str, str]
    replicas: list[ReplicaView]


class ServerInfo(TypedDict):
    """``GET /info``: the server's name, version and this gateway's id."""

    name: str
    version: str
    uuid: str


class Health(TypedDict):
    status: Literal["ok"]


class Ready(TypedDict):
    status: Literal["ready"]


class NotReady(TypedDict):
    """``/readiness`` while the registry or the artifact cache does not answer (a 503)."""

    status: Literal["not ready"]
    reason: str


# -- request bodies -------------------------------------------------------------------------------


class ImageObject(TypedDict):
    """An image as Roboflow's requests send it: ``base64`` of the file, a ``url`` the server fetches
    (under its fetch policy) or ``npy`` (base64 of ``.npy`` bytes, never a pickle)."""

    type: Literal["base64", "url", "npy"]
    value: str


ImageRef = ImageObject | str  # a bare string: a URL if it starts with http(s)://, else base64


class InferenceBody(TypedDict):
    """The fields of an inference request besides the parameters (``InferenceParams``)."""

    model_id: NotRequired[str]
    image: ImageRef | list[ImageRef]
    visualize_predictions: NotRequired[bool]
    visualization_labels: NotRequired[bool]
    visualization_stroke_width: NotRequired[int]
    id: NotRequired[str]
    api_key: NotRequired[str]


class AddModelBody(TypedDict):
    """``POST /model/add``: a full ``manifest``, or ``model_id`` with ``weights_uri`` (an
    Ultralytics-exported ONNX file), or just ``model_id`` to load a registered model
    (inference-sdk's ``load_model``); ``load`` (default true) loads it at once."""

    model_id: NotRequired[str]
    manifest: NotRequired[dict[str, Any]]
    weights_uri: NotRequired[str]
    replace: NotRequired[bool]
    load: NotRequired[bool]
    api_key: NotRequired[str]


class RemoveModelBody(TypedDict):
    model_id: str
    api_key: NotRequired[str]


class AliasBody(TypedDict):
    alias: str
    model_id: str
    api_key: NotRequired[str]
