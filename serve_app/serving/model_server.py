"""The ``ModelServer`` deployment: multiplexed model loading and inference on a replica.

The deployment class is made by :func:`model_server_deployment` because Ray Serve fixes the
per-replica model cap when ``@serve.multiplexed`` decorates the method; the cap comes from the
settings. Everything else lives in plain classes (loader, loaded model, vision model).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
from ray import serve

from serve_app.artifacts.actor import artifact_cache_handle
from serve_app.errors import ArtifactError, InvalidImage, SchemaError
from serve_app.pipeline.images import load_image, load_image_bytes
from serve_app.registry.actor import registry_handle
from serve_app.serving.loaded_model import LoadedModel
from serve_app.serving.loader import ModelLoader
from serve_app.settings import Settings
from serve_app.tasks.params import InferenceParams

log = logging.getLogger("serve_app.model_server")
MAX_IMAGES_PER_REQUEST = 64


class ModelServerCore:
    """What a replica does, minus the decorators: fetch artifacts, load, decode, infer, report."""

    def __init__(self, settings_args: dict) -> None:
        self.settings = Settings(**settings_args)
        self.registry = registry_handle(self.settings)
        self.artifacts = artifact_cache_handle(self.settings)
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (tests of the core)
            self.replica_id = f"local-{os.getpid()}"
        self.loaded: dict[str, LoadedModel] = {}
        self.evictions: list[str] = []
        self.load_log: list[dict] = []
        self.loader = ModelLoader(self._resolve, self._fetch, self.settings.session_options,
                                  self.settings.load_timeout_s, on_close=self._on_close)
        # one inference at a time per replica: ONNX Runtime already uses every core it is given
        self.infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")

    async def _resolve(self, model_id: str) -> dict:
        return await self.registry.resolve.remote(model_id)

    async def _fetch(self, files: dict[str, dict]) -> dict[str, tuple[Any, str]]:
        for attempt in range(2):
            got = await self.artifacts.get.remote(files)
            try:
                blobs = await asyncio.gather(*(entry["ref"][0] for entry in got.values()))
                return {name: (blob, entry["tier"]) for (name, entry), blob in zip(got.items(), blobs)}
            except (ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError):
                # the cache actor restarted and its objects died with it: ask again (it refetches)
                log.warning("artifact objects were lost (cache actor restarted?); asking again")
        raise ArtifactError("artifact objects were lost twice in a row; retry", retry_after=2)

    async def load(self, model_id: str) -> LoadedModel:
        loaded = await self.loader.load(model_id)
        self.loaded[model_id] = loaded
        self.load_log.append({"model_id": model_id, "tier": loaded.tier, "seconds": round(loaded.load_seconds, 4)})
        self._report()
        return loaded

    def _on_close(self, model: LoadedModel) -> None:
        if self.loaded.get(model.model_id) is model:
            del self.loaded[model.model_id]
        self.evictions.append(model.model_id)
        log.info("model %s evicted from replica %s", model.model_id, self.replica_id)
        self._report()

    def _report(self) -> None:
        state = {"models": {m: {"loaded_at": lm.loaded_at, "last_used": lm.last_used, "tier": lm.tier,
                                "load_seconds": lm.load_seconds, "requests": lm.requests}
                            for m, lm in self.loaded.items()},
                 "evictions": self.evictions[-100:], "loads": self.load_log[-100:], "pid": os.getpid()}
        self.registry.report_replica.remote(self.replica_id, state)

    def decode_images(self, request: dict) -> list[np.ndarray]:
        params = request.get("params") or {}
        auto_orient = not params.get("disable_preproc_auto_orient", False)
        limits = self.settings.image_limits
        if "body" in request:
            return [load_image_bytes(request["body"], request.get("content_type"), limits, auto_orient=auto_orient)]
        images = request.get("images")
        if images is None:
            raise SchemaError("the request has no image: send 'image' in the JSON body or the image as the body")
        if not isinstance(images, list):
            images = [images]
        if not images:
            raise SchemaError("'image' is an empty list")
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise SchemaError(f"'image' holds {len(images)} images; the limit is {MAX_IMAGES_PER_REQUEST}")
        out = []
        for i, spec in enumerate(images):
            try:
                out.append(load_image(spec, limits, auto_orient=auto_orient))
            except InvalidImage as exc:
                raise type(exc)(f"image {i}: {exc.message}" if len(images) > 1 else exc.message) from None
        return out

    async def infer(self, model: LoadedModel, request: dict) -> dict:
        started = time.perf_counter()
        params = InferenceParams.from_request(request.get("params") or {})
        images = await asyncio.to_thread(self.decode_images, request)
        decoded = time.perf_counter()
        with model.use() as vision_model:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.infer_pool, vision_model.predict, images, params)
            timings = dict(vision_model.timings)
        timings["decode"] = decoded - started
        return {"results": results, "replica": self.replica_id, "timings": timings}

    def describe(self) -> dict:
        return {"replica": self.replica_id, "loaded": list(self.loaded), "evictions": list(self.evictions)}


def model_server_deployment(settings: Settings):
    """The ``ModelServer`` deployment class with the model cap from the settings."""

    @serve.deployment(name="ModelServer")
    class ModelServer:
        def __init__(self, settings_args: dict) -> None:
            logging.basicConfig(level=logging.INFO)
            self.core = ModelServerCore(settings_args)

        @serve.multiplexed(max_num_models_per_replica=settings.max_models_per_replica)
        async def get_model(self, model_id: str) -> LoadedModel:
            return await self.core.load(model_id)

        async def infer(self, request: dict) -> dict:
            model = await self.get_model(serve.get_multiplexed_model_id())
            return await self.core.infer(model, request)

        async def load(self) -> dict:
            model = await self.get_model(serve.get_multiplexed_model_id())
            return {"replica": self.core.replica_id, "model_id": model.model_id, "tier": model.tier}

        async def describe(self) -> dict:
            return self.core.describe()

        async def check_health(self) -> None:
            pass

    return ModelServer
