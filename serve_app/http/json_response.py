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
    # orjson writes NaN and infinity as null: where a null appears, the text must parse back to
    # ``content`` (NaN != None); parsing and comparing in C is 3-4x cheaper than walking in Python.
    # A tuple (rendered as a list, so unequal) takes Starlette's rendering too: the same text.
    if b"null" in body and orjson.loads(body) != content:
        return None
    return body


class FastJSONResponse(JSONResponse):
    """``JSONResponse`` rendered by orjson (:func:`render_json`), Starlette's own rendering where
    orjson's would differ."""

    def render(self, content: Any) -> bytes:
        body = render_json(content)
        return body if body is not None else super().render(content)
