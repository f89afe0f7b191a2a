"""The admin plane and the one fetch policy: what a hostile client gets from /model/add and friends.

Unit tests drive the fetch policy and the artifact sources directly against a counting loopback
origin; the rest talk HTTP to a real Ray Serve app with an API key, an admin key, private
addresses refused (the default) and one local folder that clients may name.
"""
from __future__ import annotations

import io
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from serve_app import fetch_policy
from serve_app.artifacts.sources import fetch_to_file
from serve_app.errors import UriNotAllowed
from serve_app.settings import Settings
from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.fixture_models import BLUE, RED, classifier_manifest, colour_classifier, solid_jpeg

API_KEY = "inference-key-0123456789"
ADMIN_KEY = "admin-key-9876543210"


class _Origin:
    """A loopback origin that counts every request; ``/redirect?to=URL`` answers 302 to URL."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                origin.hits.append(self.path)
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = colour_classifier()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def origin():
    server = _Origin()
    yield server
    server.stop()


def hostile_uris(port: int, tmp_file: str) -> dict[str, str]:
    """Every kind of URI a client must not make the server read, by what it is."""
    return {
        "file URI of an existing file": "file:///etc/passwd",
        "file URI of a missing file": "file:///etc/no-such-file-here",
        "absolute path of an existing file": "/etc/passwd",
        "absolute path of a missing file": "/etc/no-such-file-here",
        "file URI of a file the server just wrote": "file://" + tmp_file,
        "loopback address": f"http://127.0.0.1:{port}/weights.onnx",
        "loopback IPv6": f"http://[::1]:{port}/weights.onnx",
        "unspecified address": f"http://0.0.0.0:{port}/weights.onnx",
        "DNS name resolving to loopback": f"http://localhost:{port}/weights.onnx",
        "private address": "http://10.1.2.3/weights.onnx",
        "private address (192.168)": "http://192.168.0.10/weights.onnx",
        "link-local metadata address": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "AWS IPv6 metadata address": "http://[fd00:ec2::254]/latest/meta-data/",
        "Ray dashboard on loopback": "http://127.0.0.1:8265/api/jobs/",
        "IPv4-mapped loopback": f"http://[::ffff:127.0.0.1]:{port}/weights.onnx",
        "bucket the operator did not list": "s3://someone-elses-bucket/weights.onnx",
        "ftp": "ftp://example.com/weights.onnx",
        "relative path": "weights.onnx",
    }


def test_client_policy_refuses_every_hostile_uri_before_sending(origin, tmp_path):
    policy = Settings.from_args({}).client_model_policy
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"secret")
    messages = {}
    for what, uri in hostile_uris(origin.port, str(secret)).items():
        with pytest.raises(UriNotAllowed) as caught:
            fetch_to_file(uri, io.BytesIO(), policy=policy)
        messages[what] = caught.value.message
        assert "secret" not in caught.value.message and "passwd" not in caught.value.message, (what, messages[what])
    assert origin.hits == []  # nothing was ever sent
    # an existing local file and a missing one get the same answer
    assert messages["file URI of an existing file"] == messages["file URI of a missing file"]
    assert messages["absolute path of an existing file"] == messages["absolute path of a missing file"]
    assert "private, loopback, link-local" in messages["link-local metadata address"]
    assert "private, loopback, link-local" in messages["DNS name resolving to loopback"]


def test_redirect_to_a_private_address_is_refused(origin, monkeypatch):
    """The origin is treated as public for this test; its redirect to the metadata address is not followed."""
    real = fetch_policy.is_public_address
    monkeypatch.setattr(fetch_policy, "is_public_address", lambda a: a == "127.0.0.1" or real(a))
    policy = Settings.from_args({}).client_model_policy
    before = len(origin.hits)
    for target in ("http://169.254.169.254/latest/meta-data/", f"http://10.0.0.1:{origin.port}/w.onnx",
                   "file:///etc/passwd"):
        with pytest.raises(UriNotAllowed):
            fetch_to_file(f"http://127.0.0.1:{origin.port}/redirect?to={target}", io.BytesIO(), policy=policy)
    assert len(origin.hits) == before + 3 and all(h.startswith("/redirect") for h in origin.hits[before:])
    # the same origin, allowed, serves the bytes (the refusals above are the policy's, not a broken origin)
    assert fetch_to_file(f"http://127.0.0.1:{origin.port}/w.onnx", io.BytesIO(), policy=policy) > 0


def test_local_roots_are_judged_by_real_path(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "ok.onnx").write_bytes(b"weights")
    (tmp_path / "outside.onnx").write_bytes(b"secret")
    os.symlink(tmp_path / "outside.onnx", root / "escape.onnx")
    policy = Settings.from_args({"model_uri_local_roots": [str(root)]}).client_model_policy
    out = io.BytesIO()
    assert fetch_to_file(f"file://{root}/ok.onnx", out, policy=policy) == 7 and out.getvalue() == b"weights"
    refused = set()
    for uri in (f"file://{root}/../outside.onnx", f"file://{root}/escape.onnx", f"{tmp_path}/outside.onnx",
                f"file://{root}-sibling/x.onnx"):
        with pytest.raises(UriNotAllowed) as caught:
            fetch_to_file(uri, io.BytesIO(), policy=policy)
        refused.add(caught.value.message)
    assert refused == {"weights path is outside the folders this server may read"}


def test_keys_never_in_settings_repr_or_actor_arguments():
    settings = Settings.from_args({"api_key": API_KEY, "admin_key": ADMIN_KEY})
    shown = repr(settings) + str(settings.to_args())
    assert API_KEY not in shown and ADMIN_KEY not in shown
    again = Settings(**settings.to_args())  # what an actor rebuilds from its arguments
    assert again.api_key.matches(API_KEY) and again.admin_key.matches(ADMIN_KEY)
    assert not again.api_key.matches(ADMIN_KEY)


def test_keys_from_the_environment(monkeypatch):
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY", ADMIN_KEY)
    settings = Settings.from_args({})
    assert settings.admin_key.matches(ADMIN_KEY) and settings.api_key is None


# -- through a running server ------------------------------------------------------------------------
def swapped_classifier() -> bytes:
    """The colour classifier with red and blue swapped in its weights: a red image says "blue"."""
    model = onnx.load_from_string(colour_classifier(variant=7))
    swap = np.array([[0, 0, 10], [0, 10, 0], [10, 0, 0]], np.float32)
    for i, init in enumerate(model.graph.initializer):
        if init.name == "w":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(swap, "w"))
    return model.SerializeToString()


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("adm")
    local = tmp / "client-models"
    local.mkdir()
    (local / "normal.onnx").write_bytes(colour_classifier(variant=5))
    (local / "swapped.onnx").write_bytes(swapped_classifier())
    deployed = deploy_app(ray_serve, tmp, {"api_key": API_KEY, "admin_key": ADMIN_KEY, "allow_private_urls": False,
                                           "model_uri_local_roots": [str(local)]})
    deployed.local = local
    yield deployed
    teardown_app(deployed)


def admin(key: str | None = ADMIN_KEY) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


ADMIN_ROUTES = [("/model/add", {"model_id": "x/1", "weights_uri": "https://example.com/w.onnx"}),
                ("/model/remove", {"model_id": "x/1"}), ("/model/clear", {}),
                ("/model/alias", {"alias": "y", "model_id": "x/1"})]


def test_admin_routes_need_the_admin_key(app):
    for path, body in ADMIN_ROUTES:
        for headers, extra in ((admin(None), {}), (admin(API_KEY), {}), (admin("wrong"), {}),
                               ({}, {"api_key": API_KEY})):
            r = app.post(path, json={**body, **extra}, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"] == "unauthorized"
            assert API_KEY not in r.text and ADMIN_KEY not in r.text
    assert app.post("/model/clear", headers=admin()).status_code == 200


def test_add_refuses_hostile_uris_with_one_answer(app):
    secret = app.local.parent / "not-for-clients.onnx"
    secret.write_bytes(colour_classifier(variant=9))
    answers = {}
    for what, uri in hostile_uris(8000, str(secret)).items():
        for body in ({"model_id": "evil/1", "weights_uri": uri},
                     {"manifest": classifier_manifest("evil/1", colour_classifier(), uri=uri)}):
            r = app.post("/model/add", json=body, headers=admin())
            assert r.status_code == 400, (what, r.status_code, r.text)
            assert r.json()["error"] == "uri_not_allowed", (what, r.text)
            assert "passwd" not in r.text and "not-for-clients" not in r.text, (what, r.text)
            answers.setdefault(what, set()).add(r.json()["message"])
    assert answers["file URI of an existing file"] == answers["file URI of a missing file"]
    assert answers["absolute path of an existing file"] == answers["absolute path of a missing file"]
    assert "evil/1" not in {m["model_id"] for m in app.get("/model/registry", headers=admin()).json()["available"]}
    assert app.get("/healthz").status_code == 200


def infer_top(app: DeployedApp, model: str, key: str = API_KEY) -> str:
    r = app.post("/infer", data=solid_jpeg(RED), headers={"serve_multiplexed_model_id": model, **admin(key)})
    assert r.status_code == 200, r.text
    return r.json()["top"]


def test_replaced_weights_are_served_from_the_next_request(app):
    normal, swapped = f"file://{app.local}/normal.onnx", f"file://{app.local}/swapped.onnx"
    r = app.post("/model/add", json={"model_id": "swap/1", "weights_uri": normal}, headers=admin())
    assert r.status_code == 200, r.text
    assert infer_top(app, "swap/1") == "red"
    assert infer_top(app, "swap/1", ADMIN_KEY) == "red"  # the admin key opens inference too
    r = app.post("/model/add", json={"model_id": "swap/1", "weights_uri": swapped, "replace": True}, headers=admin())
    assert r.status_code == 200, r.text
    assert infer_top(app, "swap/1") == "blue"
    r = app.post("/infer", data=solid_jpeg(BLUE), headers={"serve_multiplexed_model_id": "swap/1", **admin(API_KEY)})
    assert r.json()["top"] == "red"
    # and back: a manifest naming the first file again
    manifest = classifier_manifest("swap/1", colour_classifier(variant=5), uri=normal)
    assert app.post("/model/add", json={"manifest": manifest, "replace": True}, headers=admin()).status_code == 200
    assert infer_top(app, "swap/1") == "red"


def test_alias_route_points_an_alias(app):
    r = app.post("/model/add", json={"model_id": "aliased/1", "weights_uri": f"file://{app.local}/swapped.onnx"},
                 headers=admin())
    assert r.status_code == 200, r.text
    r = app.post("/model/alias", json={"alias": "flip", "model_id": "aliased/1"}, headers=admin())
    assert r.status_code == 200, r.text
    assert r.json()["aliases"]["flip"] == "aliased/1"
    assert infer_top(app, "flip") == "blue"
