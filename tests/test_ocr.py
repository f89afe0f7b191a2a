"""OCR (ocr/1, PP-OCRv4): reads rendered text exactly and agrees with rapidocr's recorded output.

The reference (``tests/data/reference/ocr.json``) comes from ``python -m zoo.ocr_reference``.
"""
import hashlib
import json
import uuid
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st

from serve_app.errors import InvalidParameter, ManifestError, ModelLoadError
from serve_app.tasks.ocr import (OcrConfig, OcrPipeline, OcrResult, TextBox, TextLine, crop_quad, ctc_greedy_decode,
                                 db_postprocess, det_preprocess, load_alphabet, pad_for_detection, rec_preprocess,
                                 sort_reading_order)
from serve_app.tasks.ocr_detection import det_input_size, unclip
from serve_app.tasks.ocr_recognition import BLANK

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "configs" / "models" / "ocr" / "1"
IMAGES = ROOT / "tests" / "data" / "ocr"
REFERENCE = json.loads((ROOT / "tests" / "data" / "reference" / "ocr.json").read_text(encoding="utf-8"))
MANIFEST = json.loads((MODEL_DIR / "model.json").read_text())


@lru_cache(maxsize=1)
def pipeline() -> OcrPipeline:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    det = ort.InferenceSession(str(MODEL_DIR / "det.onnx"), options, providers=["CPUExecutionProvider"])
    rec = ort.InferenceSession(str(MODEL_DIR / "rec.onnx"), options, providers=["CPUExecutionProvider"])
    det_in, rec_in = det.get_inputs()[0].name, rec.get_inputs()[0].name
    alphabet = load_alphabet((MODEL_DIR / "alphabet.txt").read_text(encoding="utf-8"))
    return OcrPipeline(lambda x: det.run(None, {det_in: x})[0], lambda x: rec.run(None, {rec_in: x})[0],
                       alphabet, OcrConfig.from_manifest(MANIFEST["ocr"]))


@lru_cache(maxsize=None)
def read(name: str) -> OcrResult:
    image = cv2.imread(str(IMAGES / name), cv2.IMREAD_COLOR)
    assert image is not None, name
    return pipeline().predict(image)


# --- end to end ----------------------------------------------------------------------------------

def test_hello_reads_back_exactly():
    result = read("hello.png")
    body = result.to_roboflow()
    assert body["result"] == "HELLO 2026"
    assert [p["text"] for p in body["predictions"]] == ["HELLO 2026"]
    assert body["image"] == {"width": 640, "height": 240}
    pred = body["predictions"][0]
    assert (pred["class"], pred["class_id"]) == ("text", 0)
    assert 0.9 < pred["confidence"] <= 1.0
    assert len(pred["points"]) == 4
    # the text was drawn at x 50..~590, y ~80..~155: the box covers it and stays in the image
    assert 30 <= pred["x"] - pred["width"] / 2 <= 55 and 585 <= pred["x"] + pred["width"] / 2 <= 640
    assert 60 <= pred["y"] - pred["height"] / 2 <= 90 and 150 <= pred["y"] + pred["height"] / 2 <= 180
    uuid.UUID(pred["detection_id"])


@pytest.mark.parametrize("name", sorted(REFERENCE["images"]))
def test_matches_rapidocr_reference(name):
    expected = REFERENCE["images"][name]
    result = read(name)
    assert (result.width, result.height) == (expected["width"], expected["height"])
    assert [line.text for line in result.lines] == [line["text"] for line in expected["lines"]]
    for line, ref in zip(result.lines, expected["lines"]):
        np.testing.assert_allclose(np.array(line.quad), np.array(ref["box"]), atol=2.0)
        assert line.confidence == pytest.approx(ref["score"], abs=0.01)


def test_reference_texts_are_what_was_drawn():
    # guards the reference itself: rapidocr read every rendered image correctly
    for name, record in REFERENCE["images"].items():
        assert [line["text"] for line in record["lines"]] == record["drawn"], name


def test_two_lines_result_joins_rows_with_newline():
    assert read("two_lines.png").text == "RAY SERVE\nONNX 42"


def test_image_without_text_gives_nothing():
    assert read("blank.png").to_roboflow()["result"] == ""
    result = pipeline().predict(np.full((120, 200, 3), 255, np.uint8))
    assert result.lines == () and result.to_roboflow() == {"result": "", "predictions": [],
                                                             "image": {"width": 200, "height": 120}}


def test_grayscale_input_reads_like_bgr():
    gray = cv2.cvtColor(cv2.imread(str(IMAGES / "hello.png")), cv2.COLOR_BGR2GRAY)
    assert pipeline().predict(gray).text == "HELLO 2026"


# --- artifacts and configuration -----------------------------------------------------------------

def test_manifest_files_match_their_hashes():
    for spec in MANIFEST["files"].values():
        data = (MODEL_DIR / spec["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (spec["size"], spec["sha256"])


def test_alphabet_convention():
    alphabet = load_alphabet((MODEL_DIR / "alphabet.txt").read_text(encoding="utf-8"))
    assert len(alphabet) == 6625
    assert (alphabet[0], alphabet[1], alphabet[-1]) == (BLANK, "'", " ")
    assert alphabet.index("H") > 0 and " " not in alphabet[:-1]
    assert load_alphabet("a\r\nb") == [BLANK, "a", "b", " "]
    with pytest.raises(ModelLoadError):
        load_alphabet("")
    with pytest.raises(ModelLoadError):
        load_alphabet("a\n\nb\n")


def test_config_from_manifest():
    config = OcrConfig.from_manifest(MANIFEST["ocr"])
    assert config == OcrConfig()  # the manifest holds rapidocr 1.4.4's defaults
    assert (config.det_limit_side_len, config.det_limit_type, config.det_unclip_ratio, config.text_score) == (
        736, "min", 1.6, 0.5)
    assert OcrConfig.from_manifest({"det_box_thresh": 0.6, "mean": [0.4, 0.4, 0.4]}).mean == (0.4, 0.4, 0.4)
    for bad in ({"det_limit_type": "middle"}, {"det_thresh": 2}, {"rec_batch_size": 0}, {"unknown": 1},
                {"det_use_dilation": "yes"}, {"rec_image_height": 47.5}, {"mean": [0.5]}):
        with pytest.raises(ManifestError):
            OcrConfig.from_manifest(bad)


# --- detection -----------------------------------------------------------------------------------

def test_det_preprocess_shapes_and_values():
    image = np.zeros((240, 640, 3), np.uint8)
    image[:, 320:] = 255
    tensor, ratio = det_preprocess(image, 736, "min")
    assert tensor.shape == (1, 3, 736, 1952) and tensor.dtype == np.float32
    assert ratio == (736 / 240, 1952 / 640)
    assert tensor[0, :, 10, 10].tolist() == [-1.0, -1.0, -1.0] and tensor[0, :, 10, -10].tolist() == [1.0, 1.0, 1.0]
    assert det_preprocess(np.zeros((800, 1000, 3), np.uint8), 736, "min")[0].shape == (1, 3, 800, 992)
    assert det_preprocess(np.zeros((1000, 3000, 3), np.uint8), 960, "max")[0].shape == (1, 3, 320, 960)
    assert det_preprocess(np.zeros((100, 200, 3), np.uint8), 960, "max")[0].shape == (1, 3, 96, 192)
    # long side capped at 2000 first: 1200 x 2000 round half-to-even (as PP-OCR's round) to 1216 x 1984
    assert det_input_size(3000, 5000, 736, "min", max_side_len=2000) == (1216, 1984)
    with pytest.raises(InvalidParameter):
        det_preprocess(image, 736, "average")


def test_db_postprocess_finds_two_rectangles_in_original_pixels():
    prob = np.zeros((1, 1, 200, 400), np.float32)
    prob[0, 0, 30:54, 40:88] = 0.9  # 48 x 24 after the 2x2 dilation: unclip distance 48*24/72 = 16 at ratio 2
    prob[0, 0, 120:144, 200:248] = 0.8
    prob[0, 0, 170:172, 10:12] = 1.0  # 2x2 blob: too small
    prob[0, 0, 170:190, 300:380] = 0.4  # above thresh, below box_thresh
    boxes = db_postprocess(prob, thresh=0.3, box_thresh=0.5, unclip_ratio=2.0, ratio=(2.0, 2.0),
                           original_shape=(100, 200))
    boxes = sort_reading_order(boxes)
    assert [b.quad for b in boxes] == [((12.0, 7.0), (52.0, 7.0), (52.0, 35.0), (12.0, 35.0)),
                                       ((92.0, 52.0), (132.0, 52.0), (132.0, 80.0), (92.0, 80.0))]
    inside = 48 * 24 / (49 * 25)  # the scored rectangle includes the dilated border, where prob is 0
    assert [b.score for b in boxes] == pytest.approx([0.9 * inside, 0.8 * inside], abs=1e-6)
    assert db_postprocess(prob, thresh=0.3, box_thresh=0.5, unclip_ratio=2.0, ratio=(1.0, 1.0),
                          original_shape=(200, 400))[0].bbox_xyxy in {(24.0, 14.0, 104.0, 70.0),
                                                                      (184.0, 104.0, 264.0, 160.0)}


def test_db_postprocess_clips_to_the_image_and_handles_empty_maps():
    prob = np.zeros((64, 64), np.float32)
    prob[0:20, 0:30] = 1.0
    (box,) = db_postprocess(prob, thresh=0.3, box_thresh=0.5, unclip_ratio=1.6, ratio=(1.0, 1.0),
                            original_shape=(64, 64))
    assert box.bbox_xyxy[:2] == (0.0, 0.0)
    assert db_postprocess(np.zeros((64, 64), np.float32), thresh=0.3, box_thresh=0.5, unclip_ratio=1.6,
                          ratio=(1.0, 1.0), original_shape=(64, 64)) == []
    with pytest.raises(ModelLoadError):
        db_postprocess(np.zeros((2, 1, 8, 8), np.float32), thresh=0.3, box_thresh=0.5, unclip_ratio=1.6,
                       ratio=(1.0, 1.0), original_shape=(8, 8))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(0, 500), st.integers(3, 300), st.integers(3, 80), st.floats(1.0, 3.0))
def test_unclip_grows_an_upright_rectangle_by_the_db_distance(x, y, w, h, ratio):
    quad = np.float32([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    (cx, cy), (gw, gh), angle = cv2.minAreaRect(unclip(quad, ratio))
    distance = w * h * ratio / (2 * (w + h))
    if round(angle) % 180 == 90:
        gw, gh = gh, gw
    assert abs(gw - (w + 2 * distance)) <= 1.0 and abs(gh - (h + 2 * distance)) <= 1.0
    assert abs(cx - (x + w / 2)) <= 0.5 and abs(cy - (y + h / 2)) <= 0.5


def test_sort_reading_order_rows_then_left_to_right():
    def box(x, y):
        return TextBox(((x, y), (x + 30, y), (x + 30, y + 15), (x, y + 15)), 1.0)

    right_high, left_low, next_row = box(100, 10), box(5, 18), box(50, 60)
    ordered = sort_reading_order([next_row, right_high, left_low])
    assert ordered == [left_low, right_high, next_row]
    assert sort_reading_order([box(100, 10), box(5, 30)]) == [box(100, 10), box(5, 30)]  # 20 px apart: two rows


def test_pad_for_detection():
    padded, top = pad_for_detection(np.full((40, 400, 3), 255, np.uint8), 30, 8)
    assert (padded.shape, top) == ((100, 400, 3), 30)
    assert padded[:30].max() == 0 and padded[30:70].min() == 255
    image = np.zeros((240, 640, 3), np.uint8)
    same, top = pad_for_detection(image, 30, 8)
    assert same is image and top == 0


# --- recognition ---------------------------------------------------------------------------------

ALPHABET = [BLANK, "a", "b", " "]


def one_hot(indices, p=1.0):
    probs = np.full((1, len(indices), 4), (1 - p) / 3, np.float32)
    probs[0, np.arange(len(indices)), indices] = p
    return probs


def test_ctc_merges_repeats_and_drops_blanks():
    assert ctc_greedy_decode(one_hot([1, 1, 1, 2, 2, 0]), ALPHABET) == [("ab", 1.0)]
    assert ctc_greedy_decode(one_hot([1, 0, 1, 3, 2]), ALPHABET) == [("aa b", 1.0)]  # a blank separates repeats
    assert ctc_greedy_decode(one_hot([0, 0, 0]), ALPHABET) == [("", 0.0)]
    assert ctc_greedy_decode(np.zeros((0, 5, 4), np.float32), ALPHABET) == []


def test_ctc_confidence_is_mean_of_kept_steps():
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0] = [[0.1, 0.6, 0.2, 0.1], [0.1, 0.8, 0.05, 0.05], [0.9, 0.05, 0.05, 0.0], [0.1, 0.1, 0.7, 0.1]]
    probs[1] = [[1.0, 0, 0, 0]] * 4
    (text, conf), empty = ctc_greedy_decode(probs, ALPHABET)
    assert text == "ab" and conf == pytest.approx((0.6 + 0.7) / 2)  # the repeated 'a' (0.8) is merged away
    assert empty == ("", 0.0)
    with pytest.raises(ModelLoadError):
        ctc_greedy_decode(probs, ALPHABET[:3])


def test_crop_quad_is_exact_for_upright_boxes_and_rotates_tall_ones():
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    crop = crop_quad(image, [(10, 5), (70, 5), (70, 25), (10, 25)])
    np.testing.assert_array_equal(crop, image[5:25, 10:70])
    tall = crop_quad(image, [(10, 5), (20, 5), (20, 45), (10, 45)])
    assert tall.shape == (10, 40, 3)
    np.testing.assert_array_equal(tall, np.rot90(image[5:45, 10:20]))


def test_rec_preprocess_pads_to_widest_aspect():
    white = np.full((24, 48, 3), 255, np.uint8)  # 2:1, narrower than the 320/48 minimum
    long = np.zeros((10, 120, 3), np.uint8)  # 12:1 sets the batch width: 48 * 12 = 576
    batch = rec_preprocess([white, long])
    assert batch.shape == (2, 3, 48, 576) and batch.dtype == np.float32
    assert np.all(batch[0, :, :, :96] == 1.0) and np.all(batch[0, :, :, 96:] == 0.0)
    assert np.all(batch[1] == -1.0)
    assert rec_preprocess([white]).shape == (1, 3, 48, 320)


# --- result shape --------------------------------------------------------------------------------

def test_to_roboflow_shape_and_joining():
    lines = (TextLine("ONE", 0.9, ((10, 10), (50, 12), (50, 32), (10, 30))),
             TextLine("TWO", 0.8, ((60, 14), (90, 14), (90, 30), (60, 30))),
             TextLine("THREE", 0.7, ((10, 60), (80, 60), (80, 80), (10, 80))))
    body = OcrResult(lines, 100, 90).to_roboflow()
    assert body["result"] == "ONE TWO\nTHREE"
    first = body["predictions"][0]
    assert {k: first[k] for k in ("x", "y", "width", "height", "confidence", "class", "class_id", "text")} == {
        "x": 30.0, "y": 21.0, "width": 40.0, "height": 22.0, "confidence": 0.9, "class": "text", "class_id": 0,
        "text": "ONE"}
    assert first["points"] == [{"x": 10.0, "y": 10.0}, {"x": 50.0, "y": 12.0}, {"x": 50.0, "y": 32.0},
                               {"x": 10.0, "y": 30.0}]
    assert len({p["detection_id"] for p in body["predictions"]}) == 3
    assert body["image"] == {"width": 100, "height": 90}
