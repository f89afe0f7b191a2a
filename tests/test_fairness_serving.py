"""A slow model beside a fast one on one replica, through a real Ray Serve app; OCR's warm-up.

The slow model (``slow/1``) runs a loop of matrix products whose trip count grows with the
image's brightness: a black image (the load's warm-up) costs nothing, a white one seconds. The
assertions count what finished while the slow request ran (its run's start is estimated from
the Server-Timing its answer carries), never how fast anything was.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper

from serve_app.pipeline.session import OnnxSession, SessionOptions
from serve_app.tasks.ocr import OcrConfig, OcrPipeline, load_alphabet, warm_up_image
from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.fixture_models import RED, colour_classifier, solid_jpeg, write_repository

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = ROOT / "configs" / "models"
WHITE = (255, 255, 255)


def slow_classifier(iterations: int = 1000, side: int = 512, size: int = 32) -> bytes:
    """:func:`colour_classifier`'s interface; ``iterations x brightness`` products of ``side``-square
    matrices before it answers (white: all of them, about 2 s on one core of the 2-core box)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["x_in", "m"], ["xm"]),
         helper.make_node("Tanh", ["xm"], ["x_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [side, side])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [side, side])])
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array((np.eye(3) * 10).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(float(iterations), np.float32), "k"),
        numpy_helper.from_array(np.full((side, side), 0.01, np.float32), "x0"),
        numpy_helper.from_array((rng.standard_normal((side, side)) / side ** 0.5).astype(np.float32), "m"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "w"], ["logits"]),
        helper.make_node("ReduceMean", ["images"], ["brightness"], keepdims=0),
        helper.make_node("Mul", ["brightness", "k"], ["trips_f"]),
        helper.make_node("Cast", ["trips_f"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "", "x0"], ["x_final"], body=body),
        helper.make_node("ReduceSum", ["x_final"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),  # used, so never pruned; adds 0
        helper.make_node("Add", ["logits", "nothing"], ["biased"]),
        helper.make_node("Softmax", ["biased"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "slow_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 3])], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="serve_app-tests")
    model.ir_version = 8
    return model.SerializeToString()


# -- OCR warms up at load ------------------------------------------------------------------------------
def test_ocr_load_runs_detector_and_recognizer_before_any_request(monkeypatch):
    from serve_app.registry.manifest import Manifest
    from serve_app.tasks.vision_model import VisionModel

    calls: dict[int, int] = {}
    real_run = OnnxSession.run

    def counting_run(self, tensor):
        calls[id(self)] = calls.get(id(self), 0) + 1
        return real_run(self, tensor)

    monkeypatch.setattr(OnnxSession, "run", counting_run)
    spec = json.loads((BUILT_IN / "ocr" / "1" / "model.json").read_text())
    files = {k: (BUILT_IN / "ocr" / "1" / v["path"]).read_bytes() for k, v in spec["files"].items()}
    model = VisionModel.load(Manifest.from_dict(spec), files, SessionOptions(providers=("CPUExecutionProvider",),
                                                                              intra_op_threads=1))
    assert len(calls) == 2 and all(n >= 1 for n in calls.values())  # both sessions ran, at load
    assert model.warmup_seconds > 0
    assert model.ocr.warm_up() >= 1  # the synthetic page has text the detector finds
    assert "WARM" in model.predict([warm_up_image()])[0]["result"]


def test_ocr_warm_up_still_runs_the_recognizer_when_nothing_is_detected():
    seen: list[tuple[int, ...]] = []
    config = OcrConfig()

    alphabet = load_alphabet("a\nb")

    def recognizer(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return np.zeros((len(batch), 4, len(alphabet)), np.float32)

    pipeline = OcrPipeline(lambda x: np.zeros((1, 1, *x.shape[2:]), np.float32), recognizer, alphabet, config)
    assert pipeline.warm_up() == 0
    assert len(seen) == 1 and seen[0][0] == 1 and seen[0][2] == config.rec_image_height


# -- a slow model beside a fast one on one replica ---------------------------------------------------------
def _timings(response: requests.Response) -> dict[str, float]:
    """Server-Timing's stages, in seconds."""
    out = {}
    for part in response.headers.get("Server-Timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur) / 1e3
    return out


def _infer(app: DeployedApp, model_id: str, body: bytes) -> requests.Response:
    r = requests.post(app.url + "/infer", data=body, timeout=120,
                      headers={"serve_multiplexed_model_id": model_id, "content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r


def fast_requests_during_slow(app: DeployedApp, slow: tuple[str, bytes], fast: tuple[str, bytes]) -> tuple[int, int]:
    """Send one slow request and, meanwhile, fast requests one after another until it answers.

    Returns (fast requests sent after the slow one's run began and answered before it ended,
    fast requests answered in all). The run's start is taken as its answer's arrival minus its
    time on the replica after its queue (Server-Timing: total - decode - load wait - queue): later
    than the true start by the answer's way back, so the count errs low.
    """
    answer: dict[str, object] = {}

    def send_slow() -> None:
        answer["response"] = _infer(app, *slow)
        answer["end"] = time.monotonic()

    thread = threading.Thread(target=send_slow)
    thread.start()
    fast_calls = []
    while thread.is_alive() and len(fast_calls) < 2000:
        sent = time.monotonic()
        _infer(app, *fast)
        fast_calls.append((sent, time.monotonic()))
    thread.join()
    stages = _timings(answer["response"])
    ran = stages["total"] - stages["decode"] - stages.get("load_wait", 0.0) - stages["queue"]
    run_began = answer["end"] - ran
    during = sum(1 for sent, done in fast_calls if sent >= run_began and done <= answer["end"])
    return during, len(fast_calls)


@pytest.fixture(scope="module", params=["fair", "fifo"])
def app(request, ray_serve, tmp_path_factory) -> DeployedApp:
    tmp = tmp_path_factory.mktemp(f"fair_{request.param}")
    repo = write_repository(tmp / "repo", {"colour/1": colour_classifier(), "slow/1": slow_classifier()})
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(repo), str(BUILT_IN)],
                                           "inference_scheduler": request.param})
    deployed.scheduler = request.param
    yield deployed
    teardown_app(deployed)


@pytest.mark.ray
def test_fast_requests_finish_while_a_slow_model_runs_on_the_same_replica(app):
    red, white = solid_jpeg(RED, (32, 32)), solid_jpeg(WHITE, (32, 32))
    for model_id, body in (("colour/1", red), ("slow/1", solid_jpeg((0, 0, 0), (32, 32)))):
        _infer(app, model_id, body)  # loaded (black: the slow model's cheap case) before the clock matters
    during, total = fast_requests_during_slow(app, ("slow/1", white), ("colour/1", red))
    if app.scheduler == "fair":
        assert during >= 5, (during, total)  # the fast model had a thread of its own
    else:
        # the old shared queue: a fast request sent once the slow one runs waits for its end (at most
        # one may squeeze in between the slow run's end and its answer reaching the client)
        assert during <= 1, (during, total)
    assert _infer(app, "colour/1", red).json()["top"] == "red"


@pytest.mark.ray
def test_shapes_detector_answers_while_ocr_reads_a_page(app):
    if app.scheduler != "fair":
        pytest.skip("the built-in models on the fair scheduler only")
    page = np.full((960, 1280, 3), 255, np.uint8)
    for i in range(14):
        cv2.putText(page, f"LINE {i} THE QUICK BROWN FOX JUMPS {i * 7}", (30, 60 + 64 * i), cv2.FONT_HERSHEY_DUPLEX,
                    1.4, (0, 0, 0), 3, cv2.LINE_AA)
    scene = cv2.imread(str(ROOT / "tests" / "data" / "images" / "scene0.jpg"))
    ocr_body, scene_body = cv2.imencode(".png", page)[1].tobytes(), cv2.imencode(".png", scene)[1].tobytes()
    _infer(app, "ocr/1", ocr_body)
    _infer(app, "shapes-det/1", scene_body)
    during, total = fast_requests_during_slow(app, ("ocr/1", ocr_body), ("shapes-det/1", scene_body))
    assert during >= 2, (during, total)
