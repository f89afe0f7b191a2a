"""The request contract: what a parsed request is, and what the gateway asks a replica.

A request is parsed and validated once, where it arrives (``http/roboflow.py``'s parsers build an
:class:`InferRequest`); the replica gets a :class:`ModelRequest` made from it and trusts it: its
images are :class:`~serve_app.pipeline.images.ImageSource` bytes (base64 already decoded), its
parameters typed :class:`~serve_app.tasks.params.InferenceParams`, its model the resolved
manifest's key (``model_id@digest``), and ``draw`` says whether the replica draws the predictions
on the images it decoded (so no image is decoded twice).

>>> from serve_app.pipeline.images import ImageSource
>>> req = InferRequest("shapes", (ImageSource("encoded", b"..."),), draw=DrawOptions(labels=False))
>>> model = req.for_model("shapes-det/1@3f2a")
>>> model.key, len(model.images), model.params.confidence, model.draw.labels
('shapes-det/1@3f2a', 1, 0.4, False)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from serve_app.http.visualize import DrawOptions
from serve_app.options import ImageLimits
from serve_app.pipeline.images import ImageSource, body_source
from serve_app.tasks.params import InferenceParams

MAX_IMAGES_PER_REQUEST = 64
RESPONSE_FORMATS = ("json", "image", "image_and_json")


@dataclass(frozen=True)
class ModelRequest:
    """What a replica is asked to do: run model ``key`` on ``images`` with ``params``, and draw the
    predictions on them with ``draw`` (None: no pictures)."""

    key: str
    images: tuple[ImageSource, ...]
    params: InferenceParams = field(default_factory=InferenceParams)
    draw: DrawOptions | None = None


@dataclass(frozen=True)
class InferRequest:
    """One inference request, parsed and validated: the model as the client named it (id or alias),
    its images (empty until a raw body is attached with :meth:`with_body`), typed parameters, and
    how to answer: ``draw`` (None: no visualization), ``inference_id``, ``response_format`` (the
    legacy route's json | image | image_and_json) and ``batched`` (a list of images in, a list out).
    """

    model_ref: str | None
    images: tuple[ImageSource, ...] = ()
    params: InferenceParams = field(default_factory=InferenceParams)
    draw: DrawOptions | None = None
    inference_id: str | None = None
    response_format: str = "json"
    batched: bool = False

    def with_body(self, body: bytes, content_type: str | None, limits: ImageLimits) -> "InferRequest":
        """This request with the raw body as its one image."""
        return replace(self, images=(body_source(body, content_type, limits),), batched=False)

    def for_model(self, key: str) -> ModelRequest:
        """What to ask the replicas of the resolved model ``key`` (``model_id@digest``)."""
        return ModelRequest(key, self.images, self.params, self.draw)
