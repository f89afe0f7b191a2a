"""DocTR OCR (architecture ``doctr``): each step against OnnxTR (DocTR's own ONNX port, run live
here as the reference), the whole pipeline against OnnxTR's ``ocr_predictor`` on the same ONNX
files, and the model through the server, with what bad manifests and bad models get."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from onnxtr.models import crnn_mobilenet_v3_small, db_mobilenet_v3_large, ocr_predictor
from onnxtr.models.detection.postprocessor.base import GeneralDetectionPostProcessor
from onnxtr.models.preprocessor import PreProcessor
from onnxtr.models.recognition.models.crnn import CRNNPostProcessor

from serve_app.errors import ManifestError
from serve_app.registry.manifest import Manifest
from serve_app.tasks.doctr import (
    DET_MEAN,
    DET_STD,
    REC_MEAN,
    REC_STD,
    DoctrConfig,
    DoctrPipeline,
    ctc_best_path,
    db_boxes,
    normalize,
    resize_keep_aspect,
)
from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.doctr_models import detector, recognizer
from tests.servers import OriginServer

VOCAB = "0123456789"
PAGES = [(["HELLO WORLD", "OCR 42 TEST"], (200, 480)), (["A TALL", "PAGE", "OF", "WORDS"], (640, 300)),
         (["SQUARE ONE"], (400, 400)), (["wide line of words here"], (120, 900))]


def text_page(lines: list[str], hw: tuple[int, int]) -> np.ndarray:
    """Dark grey text on a light page (BGR): ink the constructed detector sees."""
    img = np.full((*hw, 3), 235, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(img, text, (30, 60 + 50 * i), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (60, 60, 60), 2, cv2.LINE_AA)
    return img


# -- the steps, against OnnxTR's own ---------------------------------------------------------------
def test_box_extraction_matches_onnxtrs_postprocessor_on_random_maps():
    rng = np.random.default_rng(0)
    reference = GeneralDetectionPostProcessor(bin_thresh=0.3, box_thresh=0.1)  # DBNet's settings
    compared = 0
    for _ in range(150):
        prob = (rng.random((96, 128)) * 0.25).astype(np.float32)
        for _ in range(int(rng.integers(1, 7))):
            y, x, h, w = rng.integers(0, 90), rng.integers(0, 120), rng.integers(1, 24), rng.integers(1, 48)
            prob[y:y + h, x:x + w] = rng.uniform(0.2, 1.0)
        ours = db_boxes(prob, 0.3, 0.1, 1.5)
        theirs = reference(prob[None, ..., None])[0][0]
        order = lambda b: b[np.lexsort(b.T[::-1])]  # noqa: E731
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(order(ours), order(theirs), atol=1e-6)
        compared += len(ours)
    assert compared > 200


def test_ctc_decoding_matches_onnxtrs_crnn_postprocessor():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (16, 32, len(VOCAB) + 1)).astype(np.float32)
    logits[:, ::3, -1] += 6  # blanks between characters, so merging and dropping both happen
    ours = ctc_best_path(logits, VOCAB)
    theirs = CRNNPostProcessor(VOCAB)(logits)
    assert [t for t, _ in ours] == [t for t, _ in theirs] and any(len(t) > 1 for t, _ in ours)
    np.testing.assert_allclose([c for _, c in ours], [c for _, c in theirs], rtol=1e-5)


@pytest.mark.parametrize("hw", [(200, 480), (640, 300), (400, 400), (33, 517)])
def test_preprocessing_matches_onnxtrs(hw):
    rgb = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    det = PreProcessor((1024, 1024), batch_size=1, mean=DET_MEAN, std=DET_STD, preserve_aspect_ratio=True,
                       symmetric_pad=True)([rgb])[0]
    ours = normalize([resize_keep_aspect(rgb, (1024, 1024), symmetric=True)[0]], DET_MEAN, DET_STD)
    np.testing.assert_allclose(ours, det.transpose(0, 3, 1, 2), atol=1e-5)
    rec = PreProcessor((32, 128), batch_size=1, mean=REC_MEAN, std=REC_STD, preserve_aspect_ratio=True)([rgb])[0]
    ours = normalize([resize_keep_aspect(rgb, (32, 128), symmetric=False)[0]], REC_MEAN, REC_STD)
    np.testing.assert_allclose(ours, rec.transpose(0, 3, 1, 2), atol=1e-5)


# -- the pipeline, against OnnxTR's predictor on the same files -------------------------------------------
@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("doctr")
    (folder / "det.onnx").write_bytes(detector())
    (folder / "rec.onnx").write_bytes(recognizer(VOCAB))
    return folder


def _pipeline(folder) -> DoctrPipeline:
    det = ort.InferenceSession(str(folder / "det.onnx"), providers=["CPUExecutionProvider"])
    rec = ort.InferenceSession(str(folder / "rec.onnx"), providers=["CPUExecutionProvider"])
    return DoctrPipeline(lambda x: det.run(None, {"input": x})[0], lambda x: rec.run(None, {"input": x})[0],
                         DoctrConfig(vocab=VOCAB))


def _reference_words(folder, bgr: np.ndarray) -> list[tuple[str, tuple[float, ...], float, float]]:
    predictor = ocr_predictor(db_mobilenet_v3_large(str(folder / "det.onnx")),
                              crnn_mobilenet_v3_small(str(folder / "rec.onnx"), vocab=VOCAB))
    page = predictor([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)]).export()["pages"][0]
    h, w = page["dimensions"]
    return [(word["value"], (word["geometry"][0][0] * w, word["geometry"][0][1] * h, word["geometry"][1][0] * w,
                             word["geometry"][1][1] * h), word["objectness_score"], word["confidence"])
            for block in page["blocks"] for line in block["lines"] for word in line["words"]]


@pytest.mark.parametrize("lines, hw", PAGES)
def test_words_match_onnxtrs_ocr_predictor(model_files, lines, hw):
    bgr = text_page(lines, hw)
    ours = sorted(((w.text, w.box, w.objectness, w.confidence) for w in _pipeline(model_files).words(bgr)),
                  key=lambda r: r[1])
    theirs = sorted(_reference_words(model_files, bgr), key=lambda r: r[1])
    assert len(ours) == len(theirs) >= len(lines)
    for (t1, b1, o1, c1), (t2, b2, o2, c2) in zip(ours, theirs):
        assert t1 == t2 and len(t1) > 0
        assert b1 == pytest.approx(b2, abs=1e-3) and o1 == pytest.approx(o2, abs=1e-5)
        assert c1 == pytest.approx(c2, abs=1e-5)


def test_the_answer_is_in_reading_order_and_roboflow_shaped(model_files):
    result = _pipeline(model_files).predict(text_page(["HELLO WORLD", "OCR 42 TEST"], (200, 480))).to_roboflow()
    ys = [p["y"] for p in result["predictions"]]
    assert len(ys) >= 2 and ys[0] < ys[-1]
    assert result["result"].split() == [p["text"] for p in result["predictions"]]
    assert result["image"] == {"width": 480, "height": 200}


def test_manifest_checks_the_doctr_section():
    def manifest(ocr):
        return {"model_id": "d/1", "task": "ocr", "architecture": "doctr", "classes": ["text"], "ocr": ocr,
                "files": {n: {"path": f"{n}.onnx", "sha256": "0" * 64, "size": 1} for n in ("detector", "recognizer")}}
    assert Manifest.from_dict(manifest({"vocab": VOCAB})).architecture == "doctr"
    for bad, says in (({}, "vocab"), ({"vocab": VOCAB, "bin_tresh": 0.2}, "unknown keys"),
                      ({"vocab": VOCAB, "box_thresh": 2}, r"\[0, 1\]"), ({"vocab": VOCAB, "det_size": [4, 4]}, "det_size")):
        with pytest.raises(ManifestError, match=says):
            Manifest.from_dict(manifest(bad))


# -- through the server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def origin():
    server = OriginServer({"/det.onnx": detector(), "/rec.onnx": recognizer(VOCAB), "/rec5.onnx": recognizer("01234")})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    deployed = deploy_app(ray_serve, tmp_path_factory.mktemp("doctr-app"))
    yield deployed
    teardown_app(deployed)


def _doctr_manifest(origin: OriginServer, model_id: str, recognizer_path: str = "/rec.onnx", **ocr) -> dict:
    files = {}
    for name, path in (("detector", "/det.onnx"), ("recognizer", recognizer_path)):
        data = origin.files[path]
        files[name] = {"uri": origin.url(path), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {"model_id": model_id, "task": "ocr", "architecture": "doctr", "classes": ["text"], "files": files,
            "ocr": {"vocab": VOCAB, **ocr}}


@pytest.mark.ray
def test_a_doctr_model_serves_what_the_pipeline_reads(app, origin, model_files):
    r = app.post("/model/add", json={"manifest": _doctr_manifest(origin, "doctr-test/1")})
    assert r.status_code == 200, r.text
    page = text_page(["HELLO WORLD", "OCR 42 TEST"], (200, 480))
    jpeg = cv2.imencode(".png", page)[1].tobytes()
    answer = app.post("/infer", data=jpeg, headers={"serve_multiplexed_model_id": "doctr-test/1",
                                                    "content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    expected = _pipeline(model_files).predict(page).to_roboflow()
    body = answer.json()
    assert body["result"] == expected["result"] and len(body["predictions"]) == len(expected["predictions"])
    for got, want in zip(body["predictions"], expected["predictions"]):
        assert got["text"] == want["text"] and got["x"] == pytest.approx(want["x"], abs=1e-3)


@pytest.mark.ray
def test_bad_doctr_models_get_clear_errors(app, origin):
    r = app.post("/model/add", json={"manifest": _doctr_manifest(origin, "doctr-bad/1", bin_thresh=3)})
    assert r.status_code == 400 and r.json()["error"] == "invalid_manifest", r.text
    # a recogniser with 6 classes for a 10-character vocabulary fails its warm-up: a 503 that says why
    r = app.post("/model/add", json={"manifest": _doctr_manifest(origin, "doctr-mismatch/1", "/rec5.onnx")})
    assert r.status_code == 503, r.text
    assert "[N, T, 11]" in r.json()["message"]
    broken = app.post("/infer", data=b"not an image", headers={"serve_multiplexed_model_id": "doctr-test/1"})
    assert broken.status_code == 400, broken.text
