"""Reading request bodies: the size limit, JSON objects (orjson, straight from the body's bytes),
multipart files (with the standard library)."""
from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from serve_app.errors import PayloadTooLarge, SchemaError

MODEL_ID_HEADER = "serve_multiplexed_model_id"


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
    return b"".join(chunks)  # one chunk: that very object, not a copy


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``, parsed from the bytes (no decode to ``str`` first).

    >>> parse_json(b'{"image": {"type": "base64", "value": "aGk="}}')["image"]["value"]
    'aGk='
    """
    try:
        data = orjson.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"the JSON body must be an object, got {type(data).__name__}")
    return data


def is_json(request: Request) -> bool:
    return media_type(request.headers.get("content-type")) == "application/json"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def multipart_file(body: bytes, content_type: str, field: str = "file") -> tuple[bytes, str | None]:
    """The bytes and content type of form field ``field`` (else the first file) of a multipart body.

    Read with the standard library's MIME parser, so Starlette's forms (python-multipart) are not needed.
    """
    from email import policy
    from email.parser import BytesParser

    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise SchemaError("the multipart body could not be read: check its boundary")
    fallback = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name == field:
            return part.get_payload(decode=True) or b"", part.get_content_type()
        if fallback is None and part.get_filename():
            fallback = part
    if fallback is not None:
        return fallback.get_payload(decode=True) or b"", fallback.get_content_type()
    raise SchemaError(f"the multipart body has no '{field}' field: send the image as 'file'")
