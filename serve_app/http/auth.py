"""The optional API key: off when ``Settings.api_key`` is None, else every route but the probes needs it.

A client sends the key as ``Authorization: Bearer <key>``, the ``api_key`` query parameter
(Roboflow's hosted API and inference-sdk's v0 mode) or ``api_key`` in the JSON body
(inference-sdk's v1 mode). The first channel present is the one checked. Keys are compared with
``hmac.compare_digest`` on their UTF-8 bytes, and no message or log line ever holds a key.

>>> key = ApiKey("s3cret")
>>> key.check(bearer="Bearer s3cret")
>>> key.check(query="wrong")
Traceback (most recent call last):
serve_app.errors.Unauthorized: the API key is not valid
>>> ApiKey(None).check()  # off: anything goes
"""
from __future__ import annotations

import hmac
from typing import Any

from serve_app.errors import Unauthorized

PUBLIC_PATHS = frozenset({"/healthz", "/readiness"})
CHANNELS = "'Authorization: Bearer <key>', the 'api_key' query parameter or 'api_key' in the JSON body"


class ApiKey:
    """Checks a request's key against the configured one (None: no key needed)."""

    def __init__(self, expected: str | None) -> None:
        self._expected = expected.encode("utf-8") if expected else None

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def check(self, *, bearer: str | None = None, query: str | None = None, body: Any = None) -> None:
        """Raise :class:`Unauthorized` unless the first key given matches (no-op when off)."""
        if self._expected is None:
            return
        given = _bearer_token(bearer) if bearer else None
        if given is None:
            given = query or (body if isinstance(body, str) and body else None)
        if given is None:
            raise Unauthorized(f"this server needs an API key: send {CHANNELS}")
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._expected):
            raise Unauthorized("the API key is not valid")


def _bearer_token(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    return token.strip()
