"""The ``serve-app`` console script, run as a shell user runs it (a subprocess), against one deployed app.

The app has an API key and an admin key, so every command is also checked for sending the right
key (and for what it says when it has none).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.servers import OriginServer, free_port
from zoo.shapes import draw_scene

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "serve-app"  # the console script pip installed with the package
API_KEY, ADMIN_KEY = "cli-api-key", "cli-admin-key"
DET_WEIGHTS = ROOT / "configs" / "models" / "shapes-det" / "1" / "weights.onnx"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``serve-app ARGS`` with none of the caller's SERVE_APP_* variables, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_APP_")}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout,
                          env={**clean, **(env or {})}, cwd=ROOT)


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    deployed = deploy_app(ray_serve, tmp_path_factory.mktemp("cli"), {
        "api_key": API_KEY, "admin_key": ADMIN_KEY, "aliases": {"shapes": "shapes-det/1"}})
    yield deployed
    teardown_app(deployed)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[tuple[Path, set[str]]]:
    """Two drawn scenes as JPEG files, with the classes drawn in each."""
    folder = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(11)
    out = []
    for i in range(2):
        scene = draw_scene(rng, size=(512, 384), max_shapes=3, min_extent=90, max_extent=150)
        path = folder / f"scene{i}.jpg"
        cv2.imwrite(str(path), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        out.append((path, {s.class_name for s in scene.shapes}))
    return out


def on(app: DeployedApp, *args: str) -> list[str]:
    return [*args, "--url", app.url]


# -- no server needed ---------------------------------------------------------------------------------
def test_console_script_is_installed():
    assert CLI.is_file() and os.access(CLI, os.X_OK), "pip install -e . installs the serve-app console script"


def test_the_http_commands_do_not_import_ray():
    code = ("import sys; from serve_app.cli import build_parser, commands, client; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "serve_app.cli", "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("serve-app "), r.stderr


@pytest.mark.parametrize("command", [[], ["infer"], ["models"], ["models", "list"], ["models", "add"],
                                     ["models", "load"], ["models", "remove"], ["serve"], ["bench"]])
def test_help_of_every_command(command):
    r = cli(*command, "--help", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: serve-app {' '.join(command)}".rstrip()), r.stdout[:200]
    assert "--help" in r.stdout and r.stderr == ""


@pytest.mark.parametrize("args,fragment", [
    ([], "usage: serve-app"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["models"], "usage: serve-app models"),
    (["infer", "x.jpg"], "the following arguments are required: --model"),
    (["infer", "--model", "shapes-det/1"], "the following arguments are required: IMAGE"),
    (["infer", "x.jpg", "-m", "a/1", "--json", "--annotate", "o.jpg"], "not allowed with argument --json"),
    (["infer", "no-such-file.jpg", "-m", "a/1"], "cannot read image 'no-such-file.jpg'"),
    (["infer", "x.jpg", "-m", "a/1", "--url", "ftp://host"], "--url must start with http:// or https://"),
    (["bench", "-m", "a/1", "--clients", "0"], "must be a whole number of 1 or more"),
    (["bench", "-m", "a/1", "--duration", "-3"], "must be above 0"),
    (["models", "add", "no-such-manifest.json"], "cannot read manifest"),
    (["serve", "no-such-config.yaml"], "no config file 'no-such-config.yaml'"),
])
def test_usage_errors_exit_2(args, fragment):
    r = cli(*args, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert fragment in r.stderr, r.stderr


def test_server_down_is_exit_1_with_a_clear_line(scenes):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["infer", str(scenes[0][0]), "-m", "shapes-det/1"], ["models", "list"], ["bench", "-m", "x/1"]):
        r = cli(*args, "--url", url, timeout=30)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.strip() == f"serve-app: error: cannot reach the server at {url}: is it running? " \
                                   "(start one with 'serve-app serve', or pass --url)"


def test_serve_runs_serve_run_with_the_bundled_config():
    r = cli("serve", "--dry-run", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(Path(sys.executable).parent / "serve"), "run", str(ROOT / "serve_config.yaml")]
    r = cli("serve", "configs/serve_gpu.yaml", "--dry-run", "--", "--address", "auto", timeout=30)
    assert r.stdout.split()[2:] == [str(ROOT / "configs" / "serve_gpu.yaml"), "--address", "auto"]
    r = cli("serve", "--", "--help", timeout=60)  # the process becomes Ray Serve's own command
    assert r.returncode == 0 and r.stdout.startswith("Usage: serve run"), (r.stdout[:300], r.stderr[-500:])


# -- against the deployed app -------------------------------------------------------------------------
def test_infer_json_finds_the_drawn_classes(app, scenes):
    r = cli(*on(app, "infer", *(str(p) for p, _ in scenes), "--model", "shapes-det/1", "--json", "--api-key", API_KEY))
    assert r.returncode == 0, r.stderr
    answers = json.loads(r.stdout)
    assert isinstance(answers, list) and len(answers) == len(scenes)
    for answer, (path, drawn) in zip(answers, scenes):
        assert answer["image"] == {"width": 512, "height": 384}
        assert {p["class"] for p in answer["predictions"] if p["confidence"] > 0.5} == drawn, path


def test_infer_summary_through_an_alias_with_the_key_from_the_environment(app, scenes):
    path, drawn = scenes[0]
    r = cli(*on(app, "infer", str(path), "-m", "shapes"), env={"SERVE_APP_API_KEY": API_KEY})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.match(rf"{re.escape(str(path))} \(512x384, shapes, \d+ ms\): \d+ predictions?$", lines[0]), lines[0]
    assert {line.split()[0] for line in lines[1:]} >= drawn


def test_infer_annotate_writes_a_drawn_jpeg(app, scenes, tmp_path):
    path, _ = scenes[0]
    out = tmp_path / "drawn.jpg"
    r = cli(*on(app, "infer", str(path), "-m", "shapes-det/1", "--annotate", str(out), "--api-key", API_KEY))
    assert r.returncode == 0, r.stderr
    assert f"drawn: {out}" in r.stdout
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    drawn, original = cv2.imread(str(out)), cv2.imread(str(path))
    assert drawn.shape == original.shape
    changed = (np.abs(drawn.astype(int) - original.astype(int)).max(axis=2) > 60).sum()
    assert changed > 1000, changed  # boxes and labels, not JPEG noise
    many = tmp_path / "many"  # several images: a folder of drawn images named after them
    r = cli(*on(app, "infer", *(str(p) for p, _ in scenes), "-m", "shapes-det/1", "--annotate", str(many),
                "--api-key", API_KEY))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in many.iterdir()) == ["scene0.jpg", "scene1.jpg"]


def test_wrong_model_id_prints_the_servers_message(app, scenes):
    path = scenes[0][0]
    direct = app.post("/infer", data=path.read_bytes(), headers={"serve_multiplexed_model_id": "no-such-model/1",
                                                                  "Authorization": f"Bearer {API_KEY}"})
    assert direct.status_code == 404
    r = cli(*on(app, "infer", str(path), "-m", "no-such-model/1", "--api-key", API_KEY))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"serve-app: error: HTTP 404 model_not_found: {direct.json()['message']}"


def test_without_the_key_the_server_says_so(app, scenes):
    r = cli(*on(app, "infer", str(scenes[0][0]), "-m", "shapes-det/1"))
    assert r.returncode == 1
    assert r.stderr.startswith("serve-app: error: HTTP 401 unauthorized: this server needs an API key")
    r = cli(*on(app, "models", "load", "shapes-det/1", "--api-key", API_KEY))  # the API key does not open admin routes
    assert r.returncode == 1 and "HTTP 401 unauthorized: the API key is not valid" in r.stderr
    assert API_KEY not in r.stderr


def test_models_list_shows_the_built_in_models(app):
    r = cli(*on(app, "models", "list", "--api-key", API_KEY))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:] if not line.startswith("aliases")}
    for model_id in ("shapes-det/1", "shapes-seg/1", "shapes-pose/1", "shapes-cls/1", "shapes-det-v5/1", "ocr/1"):
        assert model_id in rows, r.stdout
    assert rows["shapes-seg/1"][1:4] == ["instance-segmentation", "yolov8-seg", "1152x1152"]  # served above 640
    assert "aliases: shapes -> shapes-det/1" in r.stdout
    r = cli(*on(app, "models", "list", "--json", "--api-key", API_KEY))
    assert {m["model_id"] for m in json.loads(r.stdout)["available"]} >= set(rows)


def relabelled_weights() -> bytes:
    """shapes-det/1's weights with one more metadata entry: the same answers, other bytes (so the
    server cannot find them in its content-addressed caches and must fetch them)."""
    import onnx

    model = onnx.load(str(DET_WEIGHTS))
    model.metadata_props.append(onnx.StringStringEntryProto(key="copied_by", value="tests/test_cli.py"))
    return model.SerializeToString()


@pytest.fixture
def origin():
    server = OriginServer({"/det.onnx": relabelled_weights()})
    yield server
    server.stop()


def test_models_add_load_remove(app, scenes, origin, tmp_path):
    admin = {"SERVE_APP_ADMIN_KEY": ADMIN_KEY}
    # the client policy refuses a local file, whatever key is sent
    r = cli(*on(app, "models", "add", "cli-file/1", "--weights-uri", DET_WEIGHTS.as_uri()), env=admin)
    assert r.returncode == 1 and "HTTP 400 uri_not_allowed" in r.stderr, r.stderr
    # a manifest whose weights the server fetches over HTTP
    manifest = json.loads((DET_WEIGHTS.parent / "model.json").read_text())
    manifest["model_id"] = "cli-det/1"
    weights = origin.files["/det.onnx"]
    manifest["files"]["weights"] = {"uri": origin.url("/det.onnx"), "sha256": hashlib.sha256(weights).hexdigest(),
                                    "size": len(weights)}
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    r = cli(*on(app, "models", "add", str(tmp_path / "model.json")), env=admin)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "added cli-det/1, loaded on 1 replica"
    assert origin.counts["/det.onnx"] == 1
    (tmp_path / "other.json").write_text(json.dumps({**manifest, "classes": ["a", "b", "c"]}))
    r = cli(*on(app, "models", "add", str(tmp_path / "other.json")), env=admin)  # the same id, other content
    assert r.returncode == 1 and r.stderr.strip() == ("serve-app: error: HTTP 400 invalid_parameter: model "
                                                      "'cli-det/1' already exists with other files; remove it first")
    path, drawn = scenes[0]
    r = cli(*on(app, "infer", str(path), "-m", "cli-det/1", "--json"), env=admin)  # the admin key opens inference
    assert r.returncode == 0, r.stderr
    assert {p["class"] for p in json.loads(r.stdout)["predictions"] if p["confidence"] > 0.5} == drawn
    r = cli(*on(app, "models", "load", "cli-det/1"), env=admin)
    assert r.returncode == 0 and r.stdout.strip() == "cli-det/1: loaded on 1 replica", (r.stdout, r.stderr)
    listed = cli(*on(app, "models", "list"), env=admin).stdout
    assert re.search(r"^cli-det/1 +object-detection +yolov8 +640x640 +1 replica$", listed, re.M), listed
    r = cli(*on(app, "models", "remove", "cli-det/1"), env=admin)
    assert r.returncode == 0 and r.stdout.strip() == "removed cli-det/1"
    assert "cli-det/1" not in cli(*on(app, "models", "list"), env=admin).stdout
    r = cli(*on(app, "infer", str(path), "-m", "cli-det/1"), env=admin)
    assert r.returncode == 1 and "HTTP 404 model_not_found" in r.stderr
    r = cli(*on(app, "models", "load", "cli-det/1"), env=admin)
    assert r.returncode == 1 and "HTTP 404 model_not_found" in r.stderr


def test_bench_prints_a_table(app):
    r = cli(*on(app, "bench", "-m", "shapes-det/1", "--clients", "1", "2", "--duration", "2", "--api-key", API_KEY))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"shapes-det/1 at {app.url}"
    assert lines[1].split() == ["clients", "seconds", "answers", "req/s", "p50", "ms", "p95", "ms", "p99", "ms", "errors"]
    rows = [line.split() for line in lines[3:5]]
    assert [row[0] for row in rows] == ["1", "2"] and len(lines) == 5, r.stdout
    for clients, seconds, answers, rate, p50, p95, p99, errors in rows:
        assert float(seconds) == 2.0 and int(answers) >= 1 and errors == "0"
        assert float(rate) == pytest.approx(int(answers) / 2, abs=0.01)
        assert 0 < float(p50) <= float(p95) <= float(p99)
    assert "2 clients: 100%" in r.stderr  # the progress bar reached the end of the window
    r = cli(*on(app, "bench", "-m", "no-such-model/1", "--duration", "1", "--api-key", API_KEY))
    assert r.returncode == 1 and "HTTP 404 model_not_found" in r.stderr
