"""The route table. Handlers live on the Gateway deployment; this module only assembles."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def build_routes(gateway: Any) -> list[Route]:
    async def infer(request: Request):
        return await gateway.handle_infer(request)

    async def healthz(request: Request):
        return JSONResponse({"status": "ok"})

    return [
        Route("/infer", infer, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readiness", gateway.handle_readiness, methods=["GET"]),
        Route("/info", gateway.handle_info, methods=["GET"]),
        Route("/model/registry", gateway.handle_registry, methods=["GET"]),
        Route("/model/add", gateway.handle_add, methods=["POST"]),
        Route("/model/remove", gateway.handle_remove, methods=["POST"]),
    ]
