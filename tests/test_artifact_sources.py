"""Sources against real servers on loopback: a threaded HTTP server (which also answers the GCS
JSON API's media download) and moto's S3 server. ``ArtifactServer`` is reused by
``test_disk_cache.py``."""
from __future__ import annotations

import io
import os
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from serve_app.artifacts.sources import SourceOptions, fetch_to_file, redact_uri
from serve_app.errors import ArtifactError, ModelLoadError, UriNotAllowed

# Seeded, not os.urandom: spawned child processes re-import this module and must agree.
ARTIFACT = random.Random(20240611).randbytes(1 << 20)
FAST = SourceOptions(connect_timeout_s=2.0, read_timeout_s=5.0, retries=3, backoff_s=0.01)


class ArtifactServer:
    """Serves ``artifact`` on 127.0.0.1 and counts requests per path (query excluded).

    ``/artifact.bin`` the artifact; ``/slow/...`` the same after ``slow_s``; ``/flaky/<n>/...``
    500 for the first n requests, then the artifact; ``/busy/...`` 429 once with Retry-After: 0;
    ``/truncated.bin`` half the body, then the connection closes; ``/missing`` 404;
    ``/forbidden`` 403; ``/hang`` no answer until ``stop()``;
    ``/storage/v1/b/<bucket>/o/<object>?alt=media`` a GCS media download of the artifact.
    """

    def __init__(self, artifact: bytes = ARTIFACT, slow_s: float = 0.5) -> None:
        self.artifact = artifact
        self.slow_s = slow_s
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        with self._lock:
            return self.counts[path]

    def _hit(self, path: str) -> int:
        with self._lock:
            self.counts[path] += 1
            return self.counts[path]

    def stop(self) -> None:
        self._release.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)


def _handler_for(server: ArtifactServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = unquote(urlsplit(self.path).path)
            n = server._hit(path)
            data = server.artifact
            if path == "/artifact.bin" or path.startswith("/storage/v1/b/"):
                if path.startswith("/storage/") and "/o/missing" in path:
                    return self._send(404, b'{"error": {"code": 404}}')
                return self._send(200, data)
            if path.startswith("/slow/"):
                time.sleep(server.slow_s)
                return self._send(200, data)
            if path.startswith("/flaky/"):
                failures = int(path.split("/")[2])
                return self._send(500, b"boom") if n <= failures else self._send(200, data)
            if path.startswith("/busy/"):
                if n == 1:
                    return self._send(429, b"slow down", {"Retry-After": "0"})
                return self._send(200, data)
            if path == "/truncated.bin":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            if path == "/forbidden":
                return self._send(403, b"no")
            if path == "/hang":
                server._release.wait(10)
                return None
            return self._send(404, b"not here")

    return Handler


@pytest.fixture
def http_server():
    server = ArtifactServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_object(moto_endpoint, monkeypatch):
    """An object in a fresh bucket; dummy credentials reach pyarrow through the env vars."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"models-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="yolo/weights.onnx", Body=ARTIFACT)
    options = SourceOptions(
        s3_endpoint_override=moto_endpoint, s3_region="us-east-1", retries=1, backoff_s=0.01
    )
    return f"s3://{bucket}/yolo/weights.onnx", options


def _fetch(uri: str, options: SourceOptions = FAST, **kwargs) -> bytes:
    dest = io.BytesIO()
    written = fetch_to_file(uri, dest, options, **kwargs)
    assert written == len(dest.getvalue())
    return dest.getvalue()


def test_http_streams_the_artifact(http_server):
    assert _fetch(http_server.url("/artifact.bin"), expected_size=len(ARTIFACT)) == ARTIFACT
    assert http_server.count("/artifact.bin") == 1


def test_http_retries_5xx_and_each_retry_starts_from_scratch(http_server):
    dest = io.BytesIO(b"stale bytes from an earlier attempt" * 50_000)  # longer than ARTIFACT
    written = fetch_to_file(http_server.url("/flaky/2/a.bin"), dest, FAST)
    assert written == len(ARTIFACT) and dest.getvalue() == ARTIFACT
    assert http_server.count("/flaky/2/a.bin") == 3


def test_http_gives_up_after_the_configured_retries(http_server):
    options = SourceOptions(retries=1, backoff_s=0.01)
    with pytest.raises(ArtifactError, match=r"after 2 attempt\(s\): HTTP 500"):
        _fetch(http_server.url("/flaky/5/a.bin"), options)
    assert http_server.count("/flaky/5/a.bin") == 2


def test_http_429_is_retried(http_server):
    assert _fetch(http_server.url("/busy/a.bin")) == ARTIFACT
    assert http_server.count("/busy/a.bin") == 2


@pytest.mark.parametrize(("path", "status"), [("/missing", 404), ("/forbidden", 403)])
def test_http_client_errors_fail_at_once(http_server, path, status):
    with pytest.raises(ArtifactError, match=f"HTTP {status}") as info:
        _fetch(http_server.url(path))
    assert http_server.count(path) == 1
    assert isinstance(info.value, ModelLoadError) and info.value.status == 503


def test_http_truncated_body_is_retried_then_fails(http_server):
    options = SourceOptions(retries=1, backoff_s=0.01)
    with pytest.raises(ArtifactError, match="closed before the body ended"):
        _fetch(http_server.url("/truncated.bin"), options)
    assert http_server.count("/truncated.bin") == 2


def test_http_size_other_than_expected_fails(http_server):
    options = SourceOptions(retries=0)
    with pytest.raises(ArtifactError, match="expected 1000 bytes"):
        _fetch(http_server.url("/artifact.bin"), options, expected_size=1000)


def test_http_read_timeout(http_server):
    options = SourceOptions(read_timeout_s=0.3, retries=0)
    started = time.monotonic()
    with pytest.raises(ArtifactError, match="read timed out"):
        _fetch(http_server.url("/hang"), options)
    assert time.monotonic() - started < 3


def test_errors_never_show_credentials_or_query(http_server):
    secret = "Signature=SECRET-SIGNATURE"
    base = f"http://user:hunter2@127.0.0.1:{http_server.port}"
    with pytest.raises(ArtifactError) as info:
        _fetch(f"{base}/missing?X-Amz-{secret}&token=tok123")
    message = str(info.value)
    assert f"http://127.0.0.1:{http_server.port}/missing" in message
    for leaked in ("SECRET", "hunter2", "user", "tok123", "?"):
        assert leaked not in message
    http_server.stop()  # now the connection is refused, and urllib3's message names the URL
    with pytest.raises(ArtifactError, match="connection refused") as info:
        _fetch(f"{base}/artifact.bin?{secret}", SourceOptions(retries=0))
    assert "SECRET" not in str(info.value) and "hunter2" not in str(info.value)


def test_redact_uri():
    assert redact_uri("https://u:p@h.example:8443/a/b?sig=1#x") == "https://h.example:8443/a/b"
    assert redact_uri("s3://bucket/key.onnx") == "s3://bucket/key.onnx"


def test_file_uri_and_plain_path(tmp_path: Path):
    path = tmp_path / "dir with space" / "w.onnx"
    path.parent.mkdir()
    path.write_bytes(ARTIFACT)
    assert _fetch(str(path)) == ARTIFACT
    assert _fetch("file://" + quote(str(path)), expected_size=len(ARTIFACT)) == ARTIFACT
    with pytest.raises(ArtifactError, match="not found"):
        _fetch(f"file://{tmp_path}/nope.onnx")
    with pytest.raises(ArtifactError, match="expected 5"):
        _fetch(str(path), SourceOptions(retries=0), expected_size=5)


@pytest.mark.parametrize("uri", ["ftp://host/w.onnx", "relative/w.onnx", "s3://bucket-only"])
def test_unsupported_uris(uri):
    with pytest.raises(UriNotAllowed):
        _fetch(uri)


def test_s3_through_moto(s3_object):
    uri, options = s3_object
    assert _fetch(uri, options, expected_size=len(ARTIFACT)) == ARTIFACT


def test_s3_missing_key_fails_at_once(s3_object):
    uri, options = s3_object
    missing = uri.rsplit("/", 1)[0] + "/absent.onnx"
    with pytest.raises(ArtifactError, match="not found: s3://") as info:
        _fetch(missing, options)
    assert "testing-secret-value" not in str(info.value)


def test_gs_through_a_fake_gcs_endpoint(http_server):
    options = SourceOptions(
        gcs_endpoint_override=f"http://127.0.0.1:{http_server.port}", gcs_anonymous=True,
        retries=0,
    )
    assert _fetch("gs://bkt/yolo/weights.onnx", options) == ARTIFACT
    assert http_server.count("/storage/v1/b/bkt/o/yolo/weights.onnx") == 1
    with pytest.raises(ArtifactError, match="gs://bkt/missing"):
        _fetch("gs://bkt/missing", options)
