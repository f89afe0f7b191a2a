"""The ``Gateway`` deployment: the HTTP API (plain Starlette), id resolution, forwarding.

Requests are parsed and validated in ``http/`` into an :class:`~serve_app.http.requests.InferRequest`,
resolved here, and sent to a replica as a :class:`~serve_app.http.requests.ModelRequest`; route
handlers raise, and the app's exception handlers (``http/errors.py``) answer.

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
from starlette.responses import JSONResponse, Response

from serve_app.artifacts.actor import artifact_cache_handle
from serve_app.errors import MethodNotAllowed, RouteNotFound, SchemaError
from serve_app.http.auth import AdminAccess, ApiKey
from serve_app.http.errors import as_serve_error
from serve_app.http.json_response import FastJSONResponse
from serve_app.http.parsing import MODEL_ID_HEADER, is_json, media_type, multipart_file, parse_json, read_body
from serve_app.http.requests import MAX_IMAGES_PER_REQUEST, InferRequest, ModelRequest
from serve_app.http.roboflow import (ROUTE_OF_TASK, TASK_ROUTES, client_registry, finish_results, from_json_body,
                                     from_legacy_query, from_query)
from serve_app.http.routes import RESERVED_SEGMENTS, build_app, build_routes, methods_of
from serve_app.http.server_timing import server_timing
from serve_app.registry.actor import registry_handle
from serve_app.registry.manifest import Manifest, validate_model_id
from serve_app.settings import Settings

log = logging.getLogger("serve_app.gateway")
RESOLVE_TTL_S = 2.0
REPLICA_ATTEMPTS = 4


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

    async def infer(self, manifest: Manifest, payload: ModelRequest) -> dict:
        """Forward to a replica holding the (already resolved) model.

        A replica that died or became unreachable (its node lost) is retried on another, up to
        ``REPLICA_ATTEMPTS`` in all within the request's time: Serve's router learns of a dead
        replica from the failed call, so the next attempt goes elsewhere. What still fails is a
        503 with ``Retry-After`` (http/errors.py), never a 500.
        """
        handle = self.model_server.options(multiplexed_model_id=manifest.key)
        deadline = time.monotonic() + self.settings.request_timeout_s
        for attempt in range(REPLICA_ATTEMPTS):
            try:
                return await asyncio.wait_for(handle.infer.remote(payload), max(0.1, deadline - time.monotonic()))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                if attempt + 1 >= REPLICA_ATTEMPTS or time.monotonic() > deadline - 0.5:
                    raise
                log.warning("replica unavailable during a request for %s (%s); retrying (%d/%d)", manifest.model_id,
                            type(exc).__name__, attempt + 2, REPLICA_ATTEMPTS)
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def load(self, model_id: str) -> dict:
        manifest = await self.resolve(model_id)
        return await self.model_server.options(multiplexed_model_id=manifest.key).load.remote()

    async def unload_all(self) -> int:
        """Unload every loaded model from every replica that holds it (Roboflow's ``/model/clear``).

        A call routed with a model's id reaches a replica holding it; each replica that held it
        answers ``unloaded`` once, so calling until one answers ``False`` reaches them all.
        """
        replicas = await self.registry.replicas.remote()
        copies: dict[str, int] = {}
        for state in replicas.values():
            for model_id, info in state.get("models", {}).items():
                key = info.get("key", model_id)
                copies[key] = copies.get(key, 0) + 1
        unloaded = 0
        for key, count in copies.items():
            handle = self.model_server.options(multiplexed_model_id=key)
            for _ in range(count + 1):
                answer = await handle.unload.remote()
                if not answer["unloaded"]:
                    break
                unloaded += 1
        log.info("/model/clear unloaded %d model copies", unloaded)
        return unloaded

    async def registry_view(self) -> dict:
        models, replicas, aliases = await asyncio.gather(self.registry.list_models.remote(),
                                                         self.registry.replicas.remote(),
                                                         self.registry.aliases.remote())
        where: dict[str, list[dict]] = {}
        for rid, state in replicas.items():
            for model_id, info in state.get("models", {}).items():
                where.setdefault(model_id, []).append({"replica": rid, **info})
        described = []
        for m in models:
            inp = m.get("input", {})
            described.append({"model_id": m["model_id"], "task_type": m["task"], "architecture": m["architecture"],
                              "batch_size": "batch", "input_height": inp.get("height"), "input_width": inp.get("width"),
                              "classes": m["classes"], "loaded_on": where.get(m["model_id"], [])})
        loaded = [d for d in described if d["loaded_on"]]
        now = time.time()
        live = [{"replica": rid, "node_id": st.get("node_id"), "pid": st.get("pid"), "ready": st.get("ready"),
                 "gpu_ids": st.get("gpu_ids", []), "models": sorted(st.get("models", {})),
                 "loading": st.get("loading", []), "loads": len(st.get("loads", [])),
                 "evictions": len(st.get("evictions", [])), "memory": st.get("memory", {}),
                 "rates": st.get("rates", {}), "reported_s_ago": round(now - st.get("reported_at", now), 1)}
                for rid, st in sorted(replicas.items())]
        return {"models": loaded, "available": described, "aliases": aliases, "replicas": live}


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway:
    def __init__(self, model_server: DeploymentHandle, settings_args: dict) -> None:
        logging.basicConfig(level=logging.INFO)
        self.settings = Settings(**settings_args)
        self.core = GatewayCore(self.settings, model_server)
        self.api_key = ApiKey(self.settings.api_key, self.settings.admin_key)
        self.admin = AdminAccess(self.settings.admin_key, self.settings.api_key, bind_host=serve_bind_host())
        self.instance_id = str(uuid.uuid4())
        self.routes = build_routes(self)

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_app(self.routes)  # route handlers raise; http/errors.py answers

    # -- authorization -------------------------------------------------------------------------
    def _key_in_body(self, request: Request) -> bool:
        """Whether the key, if one is needed, can only be in the body (no header, no query)."""
        elsewhere = request.headers.get("authorization") or request.query_params.get("api_key")
        return self.api_key.enabled and not elsewhere

    def _authorize(self, request: Request, body: dict | None = None, *, admin: bool = False) -> None:
        check = self.admin.check if admin else self.api_key.check
        check(bearer=request.headers.get("authorization"), query=request.query_params.get("api_key"),
              body=(body or {}).get("api_key"))

    async def _json_body(self, request: Request, *, admin: bool = False) -> dict:
        """The JSON body, authorized: a body that cannot hold the key is a 401 before it is a 422."""
        if admin:
            self.admin.check_open()  # a closed admin plane answers 403 before reading anything
        if not self._key_in_body(request):
            self._authorize(request, admin=admin)
            return parse_json(await read_body(request, self.settings.max_body_bytes))
        try:
            data = parse_json(await read_body(request, self.settings.max_body_bytes))
        except SchemaError:
            self._authorize(request, admin=admin)
            raise
        self._authorize(request, data, admin=admin)
        return data

    # -- inference -----------------------------------------------------------------------------
    async def handle_infer(self, request: Request, task_route: str | None = None) -> Any:
        """``POST /infer`` (header route: JSON or raw image body) and ``POST /infer/{task}`` (JSON body)."""
        started = time.perf_counter()
        task = None
        if task_route is not None:
            task = TASK_ROUTES.get(task_route)
            if task is None:
                raise RouteNotFound(f"no route POST /infer/{task_route[:40]}; tasks: "
                                    f"{', '.join('/infer/' + r for r in TASK_ROUTES)}")
        header_ref = request.headers.get(MODEL_ID_HEADER)
        limits = self.settings.image_limits
        if task_route is not None or is_json(request):
            req = from_json_body(await self._json_body(request), MAX_IMAGES_PER_REQUEST, limits)
        else:
            self._authorize(request)
            body = await read_body(request, self.settings.max_body_bytes)
            if not body:
                raise SchemaError("the request body is empty: send the image bytes or a JSON body with 'image'")
            req = from_query(request.query_params).with_body(body, request.headers.get("content-type"), limits)
        model_ref = header_ref or req.model_ref
        if not model_ref:
            raise SchemaError(f"no model id: send the '{MODEL_ID_HEADER}' header or 'model_id' in the body")
        return await self._infer(req, model_ref, task, started)

    async def handle_legacy(self, request: Request) -> Any:
        """Roboflow's legacy ``POST /{dataset}/{version}``: base64 or raw body, multipart ``file`` or ``?image=``."""
        started = time.perf_counter()
        dataset, version = request.path_params["dataset"], request.path_params["version"]
        if dataset in RESERVED_SEGMENTS:
            allowed = methods_of(self.routes, f"/{dataset}/{version}")
            if allowed:
                raise MethodNotAllowed(f"POST is not allowed on /{dataset}/{version}; "
                                       f"allowed: {', '.join(allowed)}", allowed=tuple(allowed))
            raise RouteNotFound(f"no route POST /{dataset}/{version[:40]}; '{dataset}' cannot be a model name "
                                "on the legacy route")
        self._authorize(request)
        req = from_legacy_query(request.query_params, dataset, version)
        validate_model_id(req.model_ref)
        body = await read_body(request, self.settings.max_body_bytes)
        content_type = request.headers.get("content-type")
        if not req.images:  # ?image=<url> wins over a body, as on Roboflow's server
            if not body:
                raise SchemaError("no image: send it as the body (bytes or base64), as multipart 'file', "
                                  "or as ?image=<url>")
            if media_type(content_type) == "multipart/form-data":
                body, content_type = multipart_file(body, content_type or "")
                if not body:
                    raise SchemaError("the multipart 'file' field is empty")
            req = req.with_body(body, content_type, self.settings.image_limits)
        return await self._infer(req, req.model_ref, None, started)

    async def _infer(self, req: InferRequest, model_ref: str, task: str | None, started: float) -> Response:
        manifest = await self.core.resolve(model_ref)
        if task is not None and manifest.task != task:
            message = (f"model {model_ref!r} is a {manifest.task} model, and POST /infer/{ROUTE_OF_TASK[task]} "
                       f"serves {task} models")
            if manifest.task in ROUTE_OF_TASK:
                message += f": send it to POST /infer/{ROUTE_OF_TASK[manifest.task]}"
            raise SchemaError(message)
        out = await self.core.infer(manifest, req.for_model(manifest.key))
        pictures = out.get("visualizations")  # drawn by the replica, on the images it decoded
        headers = {"X-Replica": out["replica"], "X-Model-Id": manifest.model_id,
                   "Server-Timing": server_timing(out.get("timings") or {}, time.perf_counter() - started)}
        if req.response_format == "image" and pictures:
            return Response(pictures[0], media_type="image/jpeg", headers=headers)
        bodies = finish_results(out["results"], inference_id=req.inference_id, elapsed=time.perf_counter() - started,
                                visualizations=pictures)
        return FastJSONResponse(bodies if req.batched else bodies[0], headers=headers)

    # -- model management ----------------------------------------------------------------------
    async def handle_registry(self, request: Request) -> Any:
        self._authorize(request)
        return JSONResponse(client_registry(await self.core.registry_view()))

    async def handle_add(self, request: Request) -> Any:
        """Add a model (``manifest`` or ``weights_uri``) and/or load one (``model_id``, inference-sdk's load_model)."""
        data = await self._json_body(request, admin=True)
        if "manifest" in data or "weights_uri" in data:
            added = await self.core.registry.add.remote(data)
            model_id = added["model_id"]
        else:
            model_id = validate_model_id(data.get("model_id"))
        self.core.invalidate()
        loaded = None
        if data.get("load", True):
            loaded = await self.core.load(model_id)
        view = await self.core.registry_view()
        if loaded is not None:
            view = with_loaded(view, loaded)
        return JSONResponse(client_registry(view))

    async def handle_remove(self, request: Request) -> Any:
        data = await self._json_body(request, admin=True)
        model_id = validate_model_id(data.get("model_id"))
        await self.core.registry.remove.remote(model_id)
        self.core.invalidate()
        return JSONResponse(client_registry(await self.core.registry_view()))

    async def handle_alias(self, request: Request) -> Any:
        """``POST /model/alias`` ``{"alias", "model_id"}``: point an alias at a model (admin)."""
        data = await self._json_body(request, admin=True)
        alias, target = validate_model_id(data.get("alias")), validate_model_id(data.get("model_id"))
        await self.core.registry.set_alias.remote(alias, target)
        self.core.invalidate()
        return JSONResponse(client_registry(await self.core.registry_view()))

    async def handle_clear(self, request: Request) -> Any:
        self._authorize(request, admin=True)  # 403 first when the admin plane is shut
        await self.core.unload_all()
        return JSONResponse(client_registry(await self.core.registry_view()))

    # -- probes and information ----------------------------------------------------------------
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

        self._authorize(request)
        return JSONResponse({"name": "serve_app", "version": __version__, "uuid": self.instance_id})


def serve_bind_host() -> str | None:
    """The address Serve's HTTP proxy listens on (None if it cannot be read: the admin plane stays shut)."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:
        log.warning("could not read Serve's HTTP bind address; admin routes need the admin key")
        return None


def with_loaded(view: dict, loaded: dict) -> dict:
    """The view with a model just loaded listed as loaded (the replica's own report may still be on its way)."""
    model_id = loaded["model_id"]
    if any(m["model_id"] == model_id for m in view["models"]):
        return view
    entry = next((m for m in view["available"] if m["model_id"] == model_id), None)
    if entry is None:
        return view
    return {**view, "models": [*view["models"], {**entry, "loaded_on": [{"replica": loaded.get("replica")}]}]}
