"""Fetch an artifact from its origin: ``file://``, plain absolute paths, ``http(s)://``, ``s3://``
and ``gs://``, under a :class:`~serve_app.fetch_policy.FetchPolicy`.

What a URI may reach is the policy's call (``serve_app/fetch_policy.py``, the same rules as image
URLs): the operator's repositories use ``OPERATOR_POLICY`` (anything), a model a client added at
run time uses the strict client policy (no local files unless the operator names a folder, no
private, loopback or link-local hosts, DNS pinned, allowed hosts and buckets). A refused URI raises
:class:`~serve_app.errors.UriNotAllowed` before anything is opened or sent.

The one entry point is :func:`fetch_to_file`, which streams the artifact into an open binary file
in chunks (the whole artifact is never held in memory). Transient failures (connection errors,
timeouts, truncated bodies, HTTP 5xx and 429, S3/GCS errors other than "not found" and "access
denied") are retried with exponential backoff and jitter; each retry truncates ``dest`` and starts
from byte zero. Everything else fails at once with an :class:`~serve_app.errors.ArtifactError`.

Error messages name the origin as ``scheme://host/path`` only: no user info, no query string (a
signed URL's signature is a credential), no credentials from the environment.

Credentials: ``s3://`` uses pyarrow's standard AWS chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``~/.aws``, instance metadata) unless
``s3_anonymous``; ``gs://`` uses Google's default credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
metadata server) unless ``gcs_anonymous``. Nothing here reads secrets itself.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

from serve_app.errors import ArtifactError, PayloadTooLarge, UriNotAllowed
from serve_app.fetch_policy import (OPERATOR_POLICY, CheckedUri, FetchFailed, FetchPolicy, FetchRefused,
                                    FetchTooLarge, check_uri, http_chunks)
from serve_app.options import SourceOptions

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
_MAX_BACKOFF_S = 30.0
# Environment values that must never appear in a message, even if a library echoes them.
_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class _Transient(Exception):
    """An attempt failed in a way another attempt may fix. ``detail`` is already redacted."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


def redact_uri(uri: str) -> str:
    """The URI as ``scheme://host[:port]/path``: no user info, query or fragment.

    >>> redact_uri("https://user:pw@example.com:8443/a/b.onnx?X-Amz-Signature=abc#f")
    'https://example.com:8443/a/b.onnx'
    >>> redact_uri("/models/a.onnx")
    '/models/a.onnx'
    """
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable uri>"
    if not parts.scheme:
        return parts.path
    if port is not None:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _scrub(text: str, uri: str) -> str:
    """Remove the URI's secrets (user info, query) and AWS secrets from a library's message."""
    try:
        parts = urlsplit(uri)
        secrets = [parts.query, parts.username or "", parts.password or ""]
    except ValueError:
        secrets = []
    secrets += [os.environ.get(name, "") for name in _SECRET_ENV_VARS]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text[:300]


def fetch_to_file(
    uri: str,
    dest: BinaryIO,
    options: SourceOptions | None = None,
    *,
    expected_size: int | None = None,
    policy: FetchPolicy = OPERATOR_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Stream the artifact at ``uri`` into ``dest`` and return the number of bytes written.

    ``dest`` must be seekable: it is truncated to zero before every attempt, so on success it
    holds exactly the artifact. With ``expected_size`` a body of another length is an error
    (retried, as a truncated transfer looks the same). Raises ``ArtifactError``, ``UriNotAllowed``
    (the policy refuses the URI: nothing was opened or sent) or ``PayloadTooLarge``.

    >>> import io, tempfile
    >>> with tempfile.NamedTemporaryFile() as src:
    ...     _ = src.write(b"weights"); src.flush()
    ...     fetch_to_file(src.name, io.BytesIO(), expected_size=7)
    7
    """
    options = options or SourceOptions()
    if expected_size is not None and expected_size < 0:
        raise ValueError(f"expected_size must be >= 0, got {expected_size}")
    attempt_fn = _attempt_for(uri, options, policy)
    shown = redact_uri(uri)
    attempts = options.retries + 1
    for attempt in range(attempts):
        dest.seek(0)
        dest.truncate()
        try:
            written = _copy(attempt_fn(), dest, uri, expected_size)
            dest.flush()
            return written
        except _Transient as exc:
            if attempt + 1 >= attempts:
                raise ArtifactError(
                    f"could not fetch {shown} after {attempts} attempt(s): {exc.detail}"
                ) from None
            delay = min(options.backoff_s * (2**attempt), _MAX_BACKOFF_S)
            delay *= random.uniform(0.5, 1.0)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, _MAX_BACKOFF_S))
            logger.warning(
                "fetching %s failed (attempt %d/%d): %s; retrying in %.2fs",
                shown, attempt + 1, attempts, exc.detail, delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")


def _copy(chunks: Iterator[bytes], dest: BinaryIO, uri: str, expected_size: int | None) -> int:
    written = 0
    try:
        for chunk in chunks:
            written += len(chunk)
            if expected_size is not None and written > expected_size:
                raise _Transient(f"body is longer than the expected {expected_size} bytes")
            dest.write(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if expected_size is not None and written != expected_size:
        raise _Transient(f"got {written} bytes, expected {expected_size}")
    return written


def checked_uri(uri: str, policy: FetchPolicy) -> CheckedUri:
    """``uri`` checked against ``policy``; raises :class:`UriNotAllowed` before anything is opened."""
    try:
        return check_uri(uri, policy)
    except FetchRefused as exc:
        raise UriNotAllowed(exc.message) from None


def _attempt_for(uri: str, options: SourceOptions, policy: FetchPolicy) -> Callable[[], Iterator[bytes]]:
    """Pick the scheme's reader; each call of the result is one attempt from byte zero."""
    checked = checked_uri(uri, policy)
    if checked.kind == "local":
        return lambda: _read_local(checked.path, checked.shown)
    if checked.kind == "http":
        if policy.deadline_s is None:  # large artifacts: the deployment's own timeouts per read
            policy = dataclasses.replace(policy, connect_timeout_s=options.connect_timeout_s,
                                         read_timeout_s=options.read_timeout_s)
        return lambda: _read_http(uri, policy, checked)
    return lambda: _read_object_store(checked.scheme, checked.path, uri, options)


def _read_local(path: str, shown: str) -> Iterator[bytes]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError:
        raise ArtifactError(f"artifact not found: {shown}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ArtifactError(f"cannot read {shown}: {type(exc).__name__}") from None
    with f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _read_http(uri: str, policy: FetchPolicy, checked: CheckedUri) -> Iterator[bytes]:
    try:
        yield from http_chunks(uri, policy, checked)
    except FetchRefused as exc:  # a redirect the policy does not allow
        raise UriNotAllowed(exc.message) from None
    except FetchTooLarge as exc:
        raise PayloadTooLarge(exc.message) from None
    except FetchFailed as exc:
        if exc.transient:
            raise _Transient(exc.detail, retry_after=exc.retry_after) from None
        raise ArtifactError(exc.message) from None


def _object_store(scheme: str, options: SourceOptions):
    from pyarrow import fs  # imported here: pyarrow is heavy and only s3/gs need it

    if scheme == "s3":
        kwargs: dict = {
            "anonymous": options.s3_anonymous,
            "region": options.s3_region,
            "connect_timeout": options.connect_timeout_s,
            "request_timeout": options.read_timeout_s,
            # One retry policy, ours: the SDK's own retries would multiply with it.
            "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=1),
        }
        if options.s3_endpoint_override:
            kwargs.update(_split_endpoint(options.s3_endpoint_override))
        return fs.S3FileSystem(**kwargs)
    kwargs = {
        "anonymous": options.gcs_anonymous,
        "retry_time_limit": datetime.timedelta(
            seconds=max(1, int(options.connect_timeout_s + options.read_timeout_s))
        ),
    }
    if options.gcs_endpoint_override:
        kwargs.update(_split_endpoint(options.gcs_endpoint_override))
    return fs.GcsFileSystem(**kwargs)


def _split_endpoint(endpoint: str) -> dict:
    if "://" in endpoint:
        scheme, _, host = endpoint.partition("://")
        return {"scheme": scheme, "endpoint_override": host.rstrip("/")}
    return {"endpoint_override": endpoint.rstrip("/")}


def _read_object_store(scheme: str, path: str, uri: str, options: SourceOptions) -> Iterator[bytes]:
    shown = redact_uri(uri)
    try:
        filesystem = _object_store(scheme, options)
        stream = filesystem.open_input_stream(path)
    except FileNotFoundError:
        raise ArtifactError(f"artifact not found: {shown}") from None
    except PermissionError:
        raise ArtifactError(f"access denied to {shown}") from None
    except OSError as exc:
        message = str(exc)
        if "ACCESS_DENIED" in message or "AccessDenied" in message:
            raise ArtifactError(f"access denied to {shown}") from None
        if "NO_SUCH" in message or "NoSuchKey" in message or "NoSuchBucket" in message:
            raise ArtifactError(f"artifact not found: {shown}") from None
        raise _Transient(_scrub(message, uri)) from None
    with stream:
        while True:
            try:
                chunk = stream.read(CHUNK_BYTES)
            except OSError as exc:
                raise _Transient(_scrub(str(exc), uri)) from None
            if not chunk:
                return
            yield chunk
