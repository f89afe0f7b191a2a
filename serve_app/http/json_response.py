"""The JSON answer of an inference request, rendered by orjson.

Starlette's ``JSONResponse`` renders through ``json.dumps``; orjson writes the same compact UTF-8
text (``separators=(",", ":")``, ``ensure_ascii=False``, floats by their shortest round-trip repr,
so every value parses back identical; only a small float's exponent is spelt differently, ``1e-7``
against ``1e-07``) several times faster, which counts on a body of hundreds of boxes or polygon
points. Where the two would
differ, :class:`FastJSONResponse` falls back to Starlette's rendering, so the answer is the same
as before: a NaN or infinity (``json.dumps(allow_nan=False)`` refuses it, orjson would write
``null``), a non-string key, an integer past 64 bits, a type orjson does not know.
"""
from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import JSONResponse

__all__ = ["FastJSONResponse", "render_json"]


def render_json(content: Any) -> bytes | None:
    """``content`` as compact JSON bytes, or None where ``json.dumps`` would render (or refuse) it
    differently.

    >>> render_json({"x": 1.5, "name": "café", "ok": [True, None]})
    b'{"x":1.5,"name":"caf\\xc3\\xa9","ok":[true,null]}'
    >>> render_json({"x": float("nan")}) is None
    True
    """
    try:
        body = orjson.dumps(content)
    except (orjson.JSONEncodeError, TypeError):
        return None
    if b"null" in body and _has_non_finite(content):
        return None
    return body


def _has_non_finite(value: Any) -> bool:
    """Whether a float NaN or infinity hides in ``value`` (orjson writes them as ``null``)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


class FastJSONResponse(JSONResponse):
    """``JSONResponse`` rendered by orjson (:func:`render_json`), Starlette's own rendering where
    orjson's would differ."""

    def render(self, content: Any) -> bytes:
        body = render_json(content)
        return body if body is not None else super().render(content)
