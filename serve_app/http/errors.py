"""Exceptions -> HTTP responses, in one place."""
from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from serve_app.errors import Overloaded, ServeAppError, Timeout

log = logging.getLogger(__name__)


def unwrap(exc: BaseException) -> BaseException:
    """Ray wraps exceptions raised in a replica or actor; find ours underneath."""
    seen = 0
    while seen < 5 and not isinstance(exc, ServeAppError) and getattr(exc, "cause", None) is not None:
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
    headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after is not None else None
    return JSONResponse(err.to_dict(), status_code=err.status, headers=headers)
