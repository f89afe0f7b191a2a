"""Direct ingress (``direct_ingress: true``): the ModelServer replica answers HTTP itself.

Serve's proxy routes the ``serve_multiplexed_model_id`` header straight to a replica, one hop
less than through the Gateway. Raw image body only (parameters in the query, as on the header
route); the id is resolved on the replica, so an alias is routed by its own name (see the README's
note on the measurement). The request is parsed into the same
:class:`~serve_app.http.requests.ModelRequest` the Gateway sends.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from serve_app.errors import SchemaError
from serve_app.http.errors import error_response
from serve_app.http.json_response import FastJSONResponse
from serve_app.http.parsing import MODEL_ID_HEADER, read_body
from serve_app.http.requests import ModelRequest
from serve_app.http.roboflow import from_query
from serve_app.http.server_timing import server_timing
from serve_app.options import ImageLimits
from serve_app.registry.manifest import validate_model_id


async def direct_infer(request: Request, model_ref: str | None, *, resolve: Callable[[str], Awaitable[str]],
                       infer: Callable[[ModelRequest], Awaitable[dict[str, Any]]], limits: ImageLimits,
                       max_body_bytes: int) -> Response:
    """Answer one raw-body request: ``resolve`` turns an id or alias into its key, ``infer`` runs it."""
    started = time.perf_counter()
    try:
        model_ref = model_ref or request.headers.get(MODEL_ID_HEADER)
        if not model_ref:
            raise SchemaError(f"send the model id in the '{MODEL_ID_HEADER}' header")
        key = await resolve(validate_model_id(model_ref))
        req = from_query(request.query_params).with_body(await read_body(request, max_body_bytes),
                                                         request.headers.get("content-type"), limits)
        out = await infer(req.for_model(key))
    except Exception as exc:  # not a Starlette app: this is the one place its errors become responses
        return error_response(exc)
    result = out["results"][0]
    result.update(inference_id=req.inference_id or str(uuid.uuid4()), time=time.perf_counter() - started)
    return FastJSONResponse(result, headers={"X-Replica": out["replica"], "X-Model-Id": key.partition("@")[0],
                                         "Server-Timing": server_timing(out["timings"])})
