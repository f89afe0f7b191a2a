"""http/errors.py through the Starlette app http/routes.py builds: handlers raise, one mapping answers."""
from __future__ import annotations

import asyncio
import json

import pytest
import ray.exceptions
from ray.serve.exceptions import BackPressureError
from starlette.routing import Route

from serve_app.errors import InvalidImage, Overloaded, SchemaError, Unauthorized
from serve_app.http.routes import build_app


def _raiser(exc: BaseException):
    async def handler(request):
        raise exc
    return handler


APP = build_app([Route("/schema", _raiser(SchemaError("field 'image' is required")), methods=["POST"]),
                 Route("/image", _raiser(InvalidImage("image is empty (0 bytes)")), methods=["POST"]),
                 Route("/key", _raiser(Unauthorized("the API key is not valid")), methods=["POST"]),
                 Route("/busy", _raiser(Overloaded("retry", retry_after=3)), methods=["POST"]),
                 Route("/timeout", _raiser(TimeoutError()), methods=["POST"]),
                 Route("/dead", _raiser(ray.exceptions.ActorUnavailableError("gone", None)), methods=["POST"]),
                 Route("/full", _raiser(BackPressureError(num_queued_requests=9, max_queued_requests=8)),
                       methods=["POST"]),
                 Route("/bug", _raiser(KeyError("oops")), methods=["POST"])])


def call(path: str, method: str = "POST") -> tuple[int, dict[str, str], dict]:
    """One request through the ASGI app: status, headers, JSON body."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [], "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("c", 1),
             "root_path": ""}
    try:
        asyncio.run(APP(scope, receive, send))
    except KeyError:
        pass  # Starlette's 500 handler answers, then re-raises for the server's log
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


@pytest.mark.parametrize("path,status,code", [
    ("/schema", 422, "schema_error"), ("/image", 400, "invalid_image"), ("/key", 401, "unauthorized"),
    ("/busy", 503, "overloaded"), ("/timeout", 504, "timeout"), ("/dead", 503, "overloaded"),
    ("/full", 503, "overloaded"), ("/bug", 500, "internal_error"),
])
def test_every_exception_becomes_one_json_shape(path, status, code):
    got, headers, body = call(path)
    assert (got, body["status"], body["error"]) == (status, status, code)
    if status == 503:
        assert int(headers["retry-after"]) >= 1
    if path == "/key":
        assert headers["www-authenticate"] == "Bearer"
    if path == "/bug":
        assert body["message"] == "internal error (KeyError)"  # nothing of the exception's text


def test_starlette_404_and_405_in_the_same_shape():
    assert call("/nowhere")[0] == 404 and call("/nowhere")[2]["error"] == "not_found"
    status, headers, body = call("/schema", method="GET")
    assert (status, body["error"], headers["allow"]) == (405, "method_not_allowed", "POST")
