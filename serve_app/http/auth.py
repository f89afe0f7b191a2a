"""The optional API key: off when ``Settings.api_key`` is None, else every route but the probes needs it.

A client sends the key as ``Authorization: Bearer <key>``, the ``api_key`` query parameter
(Roboflow's hosted API and inference-sdk's v0 mode) or ``api_key`` in the JSON body
(inference-sdk's v1 mode). The first channel present is the one checked. Keys are compared as
SHA-256 digests in constant time (:class:`~serve_app.secret.Secret`: the server holds only the
digest), and no message or log line ever holds a key.

The admin routes (``/model/add``, ``/model/remove``, ``/model/clear``) have their own key, sent
on the same channels (so ``inference-sdk``'s ``load_model`` and ``unload_model`` work with it).
The admin key also opens the inference routes. With no admin key configured, the admin routes are
open (behind the API key, if one is set) only when the server listens on a loopback address, and
answer 403 otherwise (:class:`AdminAccess`).

>>> key = ApiKey("s3cret")
>>> key.check(bearer="Bearer s3cret")
>>> key.check(query="wrong")
Traceback (most recent call last):
serve_app.errors.Unauthorized: the API key is not valid
>>> ApiKey(None).check()  # off: anything goes
"""
from __future__ import annotations

import ipaddress
from typing import Any

from serve_app.errors import Forbidden, Unauthorized
from serve_app.secret import Secret

PUBLIC_PATHS = frozenset({"/healthz", "/readiness"})
CHANNELS = "'Authorization: Bearer <key>', the 'api_key' query parameter or 'api_key' in the JSON body"


class ApiKey:
    """Checks a request's key against the configured one (None: no key needed)."""

    def __init__(self, expected: Secret | str | None, *also: Secret | None) -> None:
        self._expected = Secret.from_arg(expected)
        self._also = tuple(a for a in also if a is not None)  # other keys that open these routes too

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
        if not any(key.matches(given) for key in (self._expected, *self._also)):
            raise Unauthorized("the API key is not valid")


class AdminAccess:
    """Who may use the admin routes: the admin key's holders, or (no admin key) anyone who may
    infer, but only when the HTTP server listens on loopback alone.

    >>> AdminAccess(None, None, bind_host="0.0.0.0").check_open()
    Traceback (most recent call last):
    serve_app.errors.Forbidden: the admin routes are off: this server listens on 0.0.0.0 and has no admin key; set the application argument admin_key (or the SERVE_APP_ADMIN_KEY environment variable) to enable them
    >>> AdminAccess(None, None, bind_host="127.0.0.1").check()  # loopback, no keys: open
    """

    def __init__(self, admin_key: Secret | None, api_key: Secret | None, *, bind_host: str | None) -> None:
        self._bind_host = bind_host
        self._key = ApiKey(admin_key) if admin_key is not None else ApiKey(api_key)
        self._closed = admin_key is None and not is_loopback_host(bind_host)

    def check_open(self) -> None:
        """Raise :class:`Forbidden` if the admin routes are off."""
        if self._closed:
            raise Forbidden(f"the admin routes are off: this server listens on {self._bind_host or 'an unknown address'} "
                            "and has no admin key; set the application argument admin_key (or the "
                            "SERVE_APP_ADMIN_KEY environment variable) to enable them")

    def check(self, *, bearer: str | None = None, query: str | None = None, body: Any = None) -> None:
        self.check_open()
        self._key.check(bearer=bearer, query=query, body=body)


def is_loopback_host(host: str | None) -> bool:
    """Whether a bind address reaches this machine only (``127.0.0.1``, ``::1``, ``localhost``).

    >>> [is_loopback_host(h) for h in ("127.0.0.1", "localhost", "0.0.0.0", "::", None)]
    [True, True, False, False, False]
    """
    if not host:
        return False
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bearer_token(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    return token.strip()
