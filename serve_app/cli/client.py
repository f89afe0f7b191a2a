"""The HTTP client the command line talks to a server with: one place that sends keys, reads the
server's error bodies and turns every failure into a :class:`CliError` with the exit status a shell
user expects (1: the server said no or could not be reached; 2: the command was used wrongly).

No Ray here: ``serve-app infer`` and ``serve-app models`` start in a fraction of a second.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
MODEL_ID_HEADER = "serve_multiplexed_model_id"  # the header route's model id (http/requests.py)
ENV_URL, ENV_API_KEY, ENV_ADMIN_KEY = "SERVE_APP_URL", "SERVE_APP_API_KEY", "SERVE_APP_ADMIN_KEY"
EXIT_SERVER, EXIT_USAGE = 1, 2


class CliError(Exception):
    """A failure to report on stderr as ``serve-app: error: <message>``, exiting with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_SERVER) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(CliError):
    """The command line itself is wrong (a missing file, arguments that do not fit): exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


@dataclass(frozen=True)
class ServerClient:
    """One server: its base URL, the keys to send and a per-request timeout.

    The API key goes with inference and read routes, the admin key with the admin routes; either
    falls back to the other (the server's admin key opens the inference routes too). Keys travel as
    ``Authorization: Bearer <key>`` and are never printed.
    """

    url: str = DEFAULT_URL
    api_key: str | None = None
    admin_key: str | None = None
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls, url: str | None, api_key: str | None, admin_key: str | None, timeout_s: float) -> "ServerClient":
        """Options given on the command line win over ``SERVE_APP_URL`` / ``SERVE_APP_API_KEY`` /
        ``SERVE_APP_ADMIN_KEY``."""
        url = (url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url must start with http:// or https://, got {url[:80]!r}")
        return cls(url, api_key or os.environ.get(ENV_API_KEY) or None,
                   admin_key or os.environ.get(ENV_ADMIN_KEY) or None, timeout_s)

    def headers(self, *, admin: bool = False) -> dict[str, str]:
        key = (self.admin_key or self.api_key) if admin else (self.api_key or self.admin_key)
        return {"Authorization": f"Bearer {key}"} if key else {}

    # -- the routes -------------------------------------------------------------------------------
    def infer(self, image: bytes, model_id: str, *, annotate: bool = False, params: dict[str, Any] | None = None,
              session: requests.Session | None = None) -> dict:
        """``POST /infer``, the raw image as the body; with ``annotate`` the answer carries the drawn
        image (``visualization``, base64 JPEG) beside the predictions."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if annotate:
            query["visualize_predictions"] = "true"
        return self.request("POST", "/infer", data=image, params=query, session=session,
                            headers={MODEL_ID_HEADER: model_id, "Content-Type": "application/octet-stream"}).json()

    def registry(self) -> dict:
        return self.request("GET", "/model/registry").json()

    def add(self, body: dict) -> dict:
        return self.request("POST", "/model/add", json=body, admin=True).json()

    def remove(self, model_id: str) -> dict:
        return self.request("POST", "/model/remove", json={"model_id": model_id}, admin=True).json()

    def request(self, method: str, path: str, *, admin: bool = False, session: requests.Session | None = None,
                headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        """Send one request; a refusal, an unreachable server or a timeout raise :class:`CliError`."""
        sender = session or requests
        try:
            response = sender.request(method, self.url + path, timeout=self.timeout_s,
                                      headers={**self.headers(admin=admin), **(headers or {})}, **kw)
        except requests.ConnectionError:
            raise CliError(f"cannot reach the server at {self.url}: is it running? "
                           "(start one with 'serve-app serve', or pass --url)") from None
        except requests.Timeout:
            raise CliError(f"{method} {path}: no answer from {self.url} within {self.timeout_s:g} s "
                           "(raise --timeout)") from None
        except requests.RequestException as exc:
            raise CliError(f"{method} {path} failed: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise CliError(error_message(response))
        return response


def error_message(response: requests.Response) -> str:
    """The server's own words for a refusal: ``HTTP 404 model_not_found: ...`` from our JSON error
    body (``http/errors.py``), else the start of whatever came back (Serve's proxy answers plain text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        text = f"HTTP {response.status_code} {body.get('error', 'error')}: {body['message']}"
        retry = response.headers.get("Retry-After")
        return text + (f" (retry after {retry} s)" if retry else "")
    snippet = " ".join(response.text.split())[:300]
    return f"HTTP {response.status_code}: {snippet or response.reason}"


def visualization(answer: dict) -> bytes:
    """The drawn image (JPEG bytes) of an answer asked for with ``annotate``."""
    encoded = answer.get("visualization")
    if not encoded:
        raise CliError("the server sent no drawn image (this model's task may not support drawing)")
    return base64.b64decode(encoded)
