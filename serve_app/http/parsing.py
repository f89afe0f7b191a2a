"""Turn HTTP requests into the plain payloads the model deployment takes (bytes and JSON only)."""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from serve_app.errors import PayloadTooLarge, SchemaError

MODEL_ID_HEADER = "serve_multiplexed_model_id"
NOT_PARAMS = {"image", "model_id", "api_key", "id", "model_type"}


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {int(declared)} bytes; the limit is {max_bytes}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"the JSON body must be an object, got {type(data).__name__}")
    return data


def is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def infer_payload_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """A Roboflow-style JSON body -> ``{"images": [...], "params": {...}}``."""
    if "image" not in data:
        raise SchemaError("field 'image' is required: {type: base64|url|npy, value} or a list of them")
    return {"images": data["image"], "params": {k: v for k, v in data.items() if k not in NOT_PARAMS}}


def infer_payload_from_body(body: bytes, content_type: str | None, query: dict[str, str]) -> dict[str, Any]:
    """A raw image body (bytes, base64 text or .npy) with parameters in the query string."""
    if not body:
        raise SchemaError("the request body is empty: send the image bytes or a JSON body with 'image'")
    return {"body": body, "content_type": content_type, "params": dict(query)}
