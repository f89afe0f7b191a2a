"""Loads a model for a replica through the tiers: registry manifest -> artifact refs -> session.

A plain class: the registry and artifact cache are passed in as async callables, so the logic is
testable without a cluster; :mod:`serve_app.serving.model_server` wires in the Ray actors.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from serve_app.errors import ModelLoadError, ServeAppError
from serve_app.pipeline.session import SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.serving.loaded_model import LoadedModel
from serve_app.tasks.vision_model import VisionModel

log = logging.getLogger(__name__)

ResolveFn = Callable[[str], Awaitable[dict]]
FetchFn = Callable[[dict[str, dict]], Awaitable[dict[str, tuple[Any, str]]]]


class ModelLoader:
    def __init__(self, resolve: ResolveFn, fetch: FetchFn, options: SessionOptions, timeout_s: float,
                 on_close: Callable[[LoadedModel], None] | None = None) -> None:
        self._resolve = resolve
        self._fetch = fetch
        self._options = options
        self._timeout_s = timeout_s
        self._on_close = on_close

    async def load(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(self._load(model_id, started), self._timeout_s)
        except asyncio.TimeoutError:
            log.error("model %s: load did not finish in %.1f s", model_id, self._timeout_s)
            raise ModelLoadError(f"loading model {model_id!r} took longer than {self._timeout_s:g} s; retry later",
                                 retry_after=self._timeout_s) from None
        except ServeAppError as exc:
            log.error("model %s: load failed: %s", model_id, exc.message)
            raise
        except Exception as exc:
            log.exception("model %s: load failed", model_id)
            raise ModelLoadError(f"model {model_id!r} could not be loaded: {type(exc).__name__}") from None

    async def _load(self, model_id: str, started: float) -> LoadedModel:
        manifest = Manifest.from_dict(await self._resolve(model_id))
        files = {name: {"uri": f.uri, "sha256": f.sha256, "size": f.size} for name, f in manifest.files.items()}
        fetched = await self._fetch(files)
        blobs = {name: blob for name, (blob, _) in fetched.items()}
        tiers = {tier for _, tier in fetched.values()}
        tier = "origin" if "origin" in tiers else "disk" if "disk" in tiers else "object_store"
        fetched_at = time.perf_counter()
        model = await asyncio.to_thread(VisionModel.load, manifest, blobs, self._options)
        done = time.perf_counter()
        log.info("model %s: artifacts from %s in %.0f ms, session on %s in %.0f ms (warm-up %.0f ms)", model_id, tier,
                 (fetched_at - started) * 1e3, model.providers, (done - fetched_at) * 1e3, model.warmup_seconds * 1e3)
        return LoadedModel(model_id, model, tier, done - started, on_close=self._on_close)
