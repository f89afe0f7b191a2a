"""Exceptions -> HTTP responses, in one place.

:func:`exception_handlers` is what the Starlette app is built with (``http/routes.py``): route
handlers raise, and Starlette walks the exception's class hierarchy to the handler here. Our
errors (:class:`ServeAppError`, Ray's wrappers of them included), timeouts and Ray's and Serve's
own errors are answered by :func:`exception_response` in Starlette's exception middleware; any
other exception (a bug) reaches the same function as Starlette's 500 handler, which answers in the
same JSON shape and then re-raises, so the server logs it.
"""
from __future__ import annotations

import logging
from typing import Any, NotRequired, TypedDict

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_app.errors import MethodNotAllowed, Overloaded, RouteNotFound, ServeAppError, Timeout, Unauthorized

log = logging.getLogger(__name__)


ErrorBody = TypedDict("ErrorBody", {"error": str, "message": str, "status": int, "retry_after": NotRequired[float]})
ErrorBody.__doc__ = ("Every error answer's JSON (``ServeAppError.to_dict``): the error's code, a message a client "
                     "can act on, the HTTP status, and for 503s the seconds to wait (also sent as Retry-After).")


def unwrap(exc: BaseException) -> BaseException:
    """Ray wraps exceptions raised in a replica or actor; find ours underneath."""
    # Ray's wrapper subclasses our error class but loses instance fields (retry_after): prefer its cause
    seen = 0
    while seen < 5 and getattr(exc, "cause", None) is not None and (
            not isinstance(exc, ServeAppError) or isinstance(exc.cause, ServeAppError)):
        exc = exc.cause  # type: ignore[assignment]
        seen += 1
    return exc


def as_serve_error(exc: BaseException) -> ServeAppError:
    import ray.exceptions as rex

    exc = unwrap(exc)
    if isinstance(exc, ServeAppError):
        return exc
    if isinstance(exc, (TimeoutError, rex.GetTimeoutError)):
        return Timeout("the request did not finish in time")
    if isinstance(exc, (rex.RayActorError, rex.ActorUnavailableError)):
        return Overloaded("the replica serving this request died or is unreachable; retry", retry_after=1)
    name = type(exc).__name__
    if name in ("BackPressureError", "DeploymentUnavailableError"):
        return Overloaded("the server is at capacity; retry", retry_after=1)
    log.error("unexpected error: %s: %s", name, exc, exc_info=exc)
    return ServeAppError(f"internal error ({name})")


def error_response(exc: BaseException) -> JSONResponse:
    err = as_serve_error(exc)
    headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after is not None else {}
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(err, MethodNotAllowed) and err.allowed:
        headers["Allow"] = ", ".join(err.allowed)
    return JSONResponse(err.to_dict(), status_code=err.status, headers=headers or None)


async def http_exception_response(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404 (no route) and 405 (wrong method) in the same JSON shape as every error."""
    status = getattr(exc, "status_code", 500)
    if status == 405:
        allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
        return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}; "
                                               f"allowed: {allowed or 'none'}",
                                               allowed=tuple(m.strip() for m in allowed.split(",") if m.strip())))
    if status == 404:
        return error_response(RouteNotFound(f"no route {request.method} {request.url.path}"))
    return error_response(ServeAppError(str(getattr(exc, "detail", "error"))))


async def exception_response(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def exception_handlers() -> dict[Any, Any]:
    """Exception class -> handler, for ``Starlette(exception_handlers=...)``."""
    from ray.exceptions import RayError
    from ray.serve.exceptions import RayServeException

    return {HTTPException: http_exception_response, ServeAppError: exception_response,
            TimeoutError: exception_response, RayError: exception_response, RayServeException: exception_response,
            Exception: exception_response}
