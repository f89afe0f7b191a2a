"""The ``Gateway`` deployment: the HTTP API (plain Starlette), id resolution, forwarding.

A Starlette app as ingress: ``@serve.ingress()`` with no argument and a
``__serve_build_asgi_app__`` method that returns the app, so routes can use ``self``.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.artifacts.actor import artifact_cache_handle
from serve_app.errors import ModelNotFound, SchemaError
from serve_app.http.errors import as_serve_error, error_response
from serve_app.http.parsing import (MODEL_ID_HEADER, infer_payload_from_body, infer_payload_from_json, is_json,
                                    parse_json, read_body)
from serve_app.http.routes import build_routes
from serve_app.registry.actor import registry_handle
from serve_app.registry.manifest import Manifest, validate_model_id
from serve_app.settings import Settings

log = logging.getLogger("serve_app.gateway")
RESOLVE_TTL_S = 2.0


class GatewayCore:
    """Resolution with a short cache, forwarding with one retry on replica death, registry calls."""

    def __init__(self, settings: Settings, model_server: DeploymentHandle) -> None:
        self.settings = settings
        self.model_server = model_server
        self.registry = registry_handle(settings)
        self.artifacts = artifact_cache_handle(settings)
        self._resolved: dict[str, tuple[float, Manifest]] = {}

    async def resolve(self, id_or_alias: str) -> Manifest:
        validate_model_id(id_or_alias)
        hit = self._resolved.get(id_or_alias)
        now = time.monotonic()
        if hit and now - hit[0] < RESOLVE_TTL_S:
            return hit[1]
        manifest = Manifest.from_dict(await self.registry.resolve.remote(id_or_alias))
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[id_or_alias] = (now, manifest)
        return manifest

    def invalidate(self) -> None:
        self._resolved.clear()

    async def infer(self, model_ref: str, payload: dict[str, Any], task: str | None = None) -> tuple[Manifest, dict]:
        manifest = await self.resolve(model_ref)
        if task is not None and manifest.task != task:
            raise SchemaError(f"model {model_ref!r} is a {manifest.task} model, not {task}")
        handle = self.model_server.options(multiplexed_model_id=manifest.model_id)
        for attempt in range(2):
            try:
                out = await asyncio.wait_for(handle.infer.remote(payload), self.settings.request_timeout_s)
                return manifest, out
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if attempt == 1:
                    raise
                log.warning("replica died during a request for %s; retrying once", manifest.model_id)
        raise AssertionError("unreachable")

    async def load(self, model_id: str) -> None:
        manifest = await self.resolve(model_id)
        await self.model_server.options(multiplexed_model_id=manifest.model_id).load.remote()

    async def registry_view(self) -> dict:
        models, replicas, aliases = await asyncio.gather(self.registry.list_models.remote(),
                                                         self.registry.replicas.remote(),
                                                         self.registry.aliases.remote())
        where: dict[str, list[dict]] = {}
        for rid, state in replicas.items():
            for mid, info in state.get("models", {}).items():
                where.setdefault(mid, []).append({"replica": rid, **info})
        described = []
        for m in models:
            inp = m.get("input", {})
            described.append({"model_id": m["model_id"], "task_type": m["task"], "architecture": m["architecture"],
                              "batch_size": "batch", "input_height": inp.get("height"), "input_width": inp.get("width"),
                              "classes": m["classes"], "loaded_on": where.get(m["model_id"], [])})
        loaded = [d for d in described if d["loaded_on"]]
        return {"models": loaded, "available": described, "aliases": aliases}


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    def __init__(self, model_server: DeploymentHandle, settings_args: dict) -> None:
        logging.basicConfig(level=logging.INFO)
        self.settings = Settings(**settings_args)
        self.core = GatewayCore(self.settings, model_server)

    def __serve_build_asgi_app__(self) -> Starlette:
        return Starlette(routes=build_routes(self))

    # -- handlers used by routes ---------------------------------------------------------------
    async def handle_infer(self, request: Request, model_ref: str | None = None, task: str | None = None) -> Any:
        started = time.perf_counter()
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            if is_json(request):
                data = parse_json(body)
                payload = infer_payload_from_json(data)
                model_ref = model_ref or request.headers.get(MODEL_ID_HEADER) or data.get("model_id")
            else:
                payload = infer_payload_from_body(body, request.headers.get("content-type"), dict(request.query_params))
                model_ref = model_ref or request.headers.get(MODEL_ID_HEADER) or request.query_params.get("model_id")
            if not model_ref:
                raise SchemaError(f"no model id: send the '{MODEL_ID_HEADER}' header or 'model_id' in the body")
            manifest, out = await self.core.infer(model_ref, payload, task)
        except Exception as exc:
            return error_response(exc)
        elapsed = time.perf_counter() - started
        results = out["results"]
        for r in results:
            r["inference_id"] = str(uuid.uuid4())
            r["time"] = elapsed
        body_out: Any = results if isinstance(payload.get("images"), list) else results[0]
        headers = {"X-Replica": out["replica"], "X-Model-Id": manifest.model_id}
        return JSONResponse(body_out, headers=headers)

    async def handle_registry(self, request: Request) -> Any:
        try:
            return JSONResponse(await self.core.registry_view())
        except Exception as exc:
            return error_response(exc)

    async def handle_add(self, request: Request) -> Any:
        try:
            data = parse_json(await read_body(request, self.settings.max_body_bytes))
            if "manifest" in data or "weights_uri" in data:
                added = await self.core.registry.add.remote(data)
                model_id = added["model_id"]
            else:
                model_id = validate_model_id(data.get("model_id"))
            self.core.invalidate()
            if data.get("load", True):
                await self.core.load(model_id)
            return JSONResponse(await self.core.registry_view())
        except Exception as exc:
            return error_response(exc)

    async def handle_remove(self, request: Request) -> Any:
        try:
            data = parse_json(await read_body(request, self.settings.max_body_bytes))
            model_id = validate_model_id(data.get("model_id"))
            await self.core.registry.remove.remote(model_id)
            self.core.invalidate()
            return JSONResponse(await self.core.registry_view())
        except Exception as exc:
            return error_response(exc)

    async def handle_readiness(self, request: Request) -> Any:
        try:
            await asyncio.wait_for(asyncio.gather(self.core.registry.ping.remote(), self.core.artifacts.ping.remote()), 5)
            return JSONResponse({"status": "ready"})
        except Exception as exc:
            err = as_serve_error(exc)
            return JSONResponse({"status": "not ready", "reason": err.message}, status_code=503,
                                headers={"Retry-After": "2"})

    async def handle_info(self, request: Request) -> Any:
        from serve_app import __version__

        return JSONResponse({"name": "serve_app", "version": __version__, "uuid": self.core.model_server.deployment_name})


def model_not_found(model_id: str) -> ModelNotFound:
    return ModelNotFound(f"model {model_id!r} is not in the registry")
