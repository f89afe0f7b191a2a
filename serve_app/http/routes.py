"""The route table and the Starlette app. Handlers live on the Gateway deployment; this module only
assembles, with the one exception-to-response mapping (``http/errors.py``).

Order matters: Starlette takes the first route whose path and method match, and the legacy
``POST /{dataset}/{version}`` would match any two-segment path, so it comes last; its handler
also refuses the paths of the routes above it (``POST /model/registry`` is a 405, not a model).
"""
from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from serve_app.http import openapi, playground
from serve_app.http.errors import exception_handlers

# first path segments that belong to the routes below, never to a legacy model name
RESERVED_SEGMENTS = frozenset({"infer", "model", "healthz", "readiness", "info", "playground", "docs"})


def build_app(routes: list[BaseRoute]) -> Starlette:
    """The gateway's ASGI app: ``routes`` (from :func:`build_routes`), errors answered by ``http/errors.py``."""
    return Starlette(routes=routes, exception_handlers=exception_handlers())


def build_routes(gateway: Any) -> list[BaseRoute]:
    async def infer(request: Request):
        return await gateway.handle_infer(request)

    async def infer_task(request: Request):
        return await gateway.handle_infer(request, task_route=request.path_params["task"])

    async def healthz(request: Request):
        return JSONResponse({"status": "ok"})

    return [
        Route("/infer", infer, methods=["POST"]),
        Route("/infer/{task}", infer_task, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readiness", gateway.handle_readiness, methods=["GET"]),
        Route("/info", gateway.handle_info, methods=["GET"]),
        Route("/model/registry", gateway.handle_registry, methods=["GET"]),
        Route("/model/add", gateway.handle_add, methods=["POST"]),
        Route("/model/remove", gateway.handle_remove, methods=["POST"]),
        Route("/model/clear", gateway.handle_clear, methods=["POST"]),
        Route("/model/alias", gateway.handle_alias, methods=["POST"]),
        *openapi.routes(gateway),
        *playground.routes(gateway),
        Route("/{dataset}/{version}", gateway.handle_legacy, methods=["POST"]),
    ]


def methods_of(routes: list[BaseRoute], path: str) -> list[str]:
    """The methods that the fixed (parameterless) routes serve at ``path``; HEAD is left out."""
    return sorted({m for r in routes if isinstance(r, Route) and r.path == path for m in (r.methods or ())
                   if m != "HEAD"})
