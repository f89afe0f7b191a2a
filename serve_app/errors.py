"""The one error hierarchy: every error the server raises on purpose carries its HTTP status.

Messages say what was wrong, in words a client can act on, and never echo secrets (API keys,
credentials in URLs). ``http/errors.py`` maps these to responses in one place.
"""
from __future__ import annotations


class ServeAppError(Exception):
    """Base class. ``status`` is the HTTP status; ``retry_after`` (seconds) is sent for 503s."""

    status: int = 500
    code: str = "internal_error"
    retry_after: float | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after

    def to_dict(self) -> dict:
        body = {"error": self.code, "message": self.message, "status": self.status}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body

    def __reduce__(self):  # survive pickling through Ray with the retry hint intact
        return (_rebuild, (type(self), self.message, self.retry_after))


def _rebuild(cls: type[ServeAppError], message: str, retry_after: float | None) -> ServeAppError:
    return cls(message, retry_after=retry_after)


class BadRequest(ServeAppError):
    """400: the request is well-formed JSON/HTTP but its content is unusable."""

    status, code = 400, "bad_request"


class InvalidImage(BadRequest):
    """400: the image could not be read (bad base64, undecodable bytes, unsupported type)."""

    code = "invalid_image"


class InvalidParameter(BadRequest):
    """400: a parameter has a wrong value."""

    code = "invalid_parameter"


class InvalidModelId(BadRequest):
    """400: the model id is malformed (empty, too long, path traversal, bad characters)."""

    code = "invalid_model_id"


class ImageFetchError(BadRequest):
    """400: an image URL could not be fetched or is not allowed."""

    code = "image_fetch_failed"


class UriNotAllowed(BadRequest):
    """400: the fetch policy does not let the server reach this URI (scheme, host, address, folder)."""

    code = "uri_not_allowed"


class Unauthorized(ServeAppError):
    status, code = 401, "unauthorized"


class Forbidden(ServeAppError):
    """403: the route is closed (admin routes without an admin key on a non-loopback bind)."""

    status, code = 403, "forbidden"


class RouteNotFound(ServeAppError):
    """404: no route has this path."""

    status, code = 404, "not_found"


class MethodNotAllowed(ServeAppError):
    """405: the path exists for another method; ``allowed`` goes out as the ``Allow`` header."""

    status, code = 405, "method_not_allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...] = (), retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.allowed = tuple(allowed)


class ModelNotFound(ServeAppError):
    """404: no such model id or alias."""

    status, code = 404, "model_not_found"


class PayloadTooLarge(ServeAppError):
    """413: body, image file or decoded image exceeds a configured limit."""

    status, code = 413, "payload_too_large"


class SchemaError(ServeAppError):
    """422: the request body does not match the schema (missing field, wrong type)."""

    status, code = 422, "schema_error"


class ModelLoadError(ServeAppError):
    """503: the model cannot be loaded now (artifact unavailable, bad weights, load timeout)."""

    status, code = 503, "model_unavailable"
    retry_after = 5.0


class ArtifactError(ModelLoadError):
    """503: an artifact could not be fetched or failed verification."""

    code = "artifact_unavailable"


class ArtifactCorrupt(ArtifactError):
    """503: fetched bytes do not match the manifest's sha256 or size (fetched again once)."""

    code = "artifact_corrupt"


class InsufficientMemory(ServeAppError):
    """507: the model does not fit the replica's memory budget even alone."""

    status, code = 507, "insufficient_memory"


class Overloaded(ServeAppError):
    """503: the server is shedding load or a replica died; retry."""

    status, code = 503, "overloaded"
    retry_after = 1.0


class Timeout(ServeAppError):
    """504: the request did not finish in time."""

    status, code = 504, "timeout"


class ManifestError(ServeAppError):
    """500 at discovery, 400 when a client submitted it: a manifest is invalid."""

    status, code = 400, "invalid_manifest"
