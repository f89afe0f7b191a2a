"""The README's serve command: `serve run serve_config.yaml` answers on every built-in model."""
from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import yaml

from tests.conftest import ray_tmp_parent
from tests.servers import free_port
from zoo.shapes import draw_dominant_shape, draw_scene

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def haproxy_env() -> dict[str, str]:
    """Ray's throughput-optimised Serve with HAProxy (configs/serve_gpu.yaml's launch), its files
    and ports made private to this run."""
    state = Path(tempfile.mkdtemp(prefix="hap"))  # short: HAProxy's admin socket path gets the node id appended
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port())}


@pytest.fixture(scope="module", params=["serve_config.yaml", "configs/serve_gpu.yaml"])
def served(request):
    """A shipped config on a free port with scratch cache/state folders. The GPU config runs as its
    comment says (HAProxy, Ray's throughput-optimised Serve), scaled down to this machine's CPUs."""
    tmp = Path(tempfile.mkdtemp(prefix="sr", dir=ray_tmp_parent()))
    config = yaml.safe_load((ROOT / request.param).read_text())
    port = free_port()
    config["http_options"]["port"] = port
    if request.param == "serve_config.yaml":  # as an operator opens it to the network: admin routes shut
        config["http_options"]["host"] = "0.0.0.0"
    args = config["applications"][0]["args"]
    args.update(cache_dir=str(tmp / "cache"), state_dir=str(tmp / "state"))
    env = {**os.environ, "RAY_TMPDIR": str(tmp / "ray"), "RAY_USAGE_STATS_ENABLED": "0"}
    if request.param == "configs/serve_gpu.yaml":
        for d in config["applications"][0]["deployments"]:
            d.update(num_replicas=1, ray_actor_options={"num_cpus": 0.25, "num_gpus": 0})
        env.update(haproxy_env())
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    env.pop("RAY_ADDRESS", None)
    serve_bin = Path(sys.executable).parent / "serve"
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([str(serve_bin), "run", str(tmp / "config.yaml")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            try:
                if requests.get(url + "/readiness", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline, (tmp / "serve.log").read_text()[-3000:]
            time.sleep(1)
        yield url, config["http_options"]["host"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # serve run shuts its cluster down on Ctrl-C
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        if "RAY_SERVE_HAPROXY_SERVER_STATE_BASE" in env:
            shutil.rmtree(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)


def _post(url: str, model: str, image: np.ndarray) -> dict:
    body = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    r = requests.post(url + "/infer", data=body, headers={"serve_multiplexed_model_id": model}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_every_builtin_model_answers(served):
    served, _ = served
    rng = np.random.default_rng(4242)
    scene = draw_scene(rng, size=(640, 480), max_shapes=4)
    truth = sorted(s.class_name for s in scene.shapes)
    for model in ("shapes", "shapes-det/1", "shapes-det-v5/1", "shapes-seg/1"):
        preds = _post(served, model, scene.image)["predictions"]
        assert sorted(p["class"] for p in preds) == truth, model
    seg = _post(served, "shapes-seg/1", scene.image)["predictions"]
    assert all(len(p["points"]) >= 3 for p in seg)
    pose = _post(served, "shapes-pose/1", scene.image)["predictions"]
    assert len(pose) == truth.count("triangle") and all(len(p["keypoints"]) == 3 for p in pose)
    cls = _post(served, "shapes-cls/1", draw_dominant_shape(rng, "square").image)
    assert cls["top"] == "square"
    text = np.full((120, 520, 3), 255, np.uint8)
    cv2.putText(text, "HELLO 2026", (20, 80), cv2.FONT_HERSHEY_DUPLEX, 2.0, (0, 0, 0), 4, cv2.LINE_AA)
    assert _post(served, "ocr/1", text)["result"] == "HELLO 2026"
    wanted = {"shapes-det/1", "ocr/1", "shapes-cls/1"}
    deadline = time.time() + 10  # replicas report what they hold within about a second
    while True:
        registry = requests.get(served + "/model/registry", timeout=30).json()
        if {m["model_id"] for m in registry["models"]} >= wanted or time.time() > deadline:
            break
        time.sleep(0.3)
    assert {m["model_id"] for m in registry["models"]} >= wanted


def test_admin_routes_are_shut_on_an_open_bind_without_an_admin_key(served):
    url, host = served
    calls = [("/model/add", {"model_id": "x/1", "weights_uri": "https://example.com/w.onnx"}),
             ("/model/remove", {"model_id": "nothing/1"}), ("/model/clear", {}),
             ("/model/alias", {"alias": "y", "model_id": "shapes-det/1"})]
    for path, body in calls:
        r = requests.post(url + path, json=body, timeout=60)
        if host == "127.0.0.1":  # loopback only: open (no keys configured)
            assert r.status_code in (200, 400, 404), (path, r.text)
        else:
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"] == "forbidden" and "admin_key" in r.json()["message"]
    assert "shapes-det/1" in {m["model_id"] for m in requests.get(url + "/model/registry", timeout=30).json()["available"]}
