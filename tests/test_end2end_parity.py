"""Real end-to-end exports (no NMS, output ``[B, 300, 6 + E]``) against Ultralytics' own predictor on
the same ONNX files and images: a YOLO26-seg, a YOLO26-pose and a YOLOv10, each loaded the way the
server loads a model added by ``weights_uri`` alone (manifest from the ONNX metadata, decoder from the
output shapes). ``tests/test_yolo26.py`` does the same for YOLO26 detection (shapes-det-26/1).

The models and the reference are built by ``zoo/end2end_parity.py`` (its docstring has the command);
a missing one fails here. Per image: the same number of detections, each matched one-to-one with one
of the same class at box IoU >= 0.99, confidence within 1e-3; per matched object the mask IoU
(segmentation) and the keypoints' distance and confidence (pose) as stated at their thresholds.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from serve_app.pipeline.geometry import box_iou
from serve_app.pipeline.images import ImageLimits, decode_image_bytes
from serve_app.pipeline.session import SessionOptions
from serve_app.registry.actor import _onnx_metadata
from serve_app.registry.manifest import FileSpec, manifest_from_ultralytics_metadata
from serve_app.tasks.architectures import END2END, END2END_POSE, END2END_SEG
from serve_app.tasks.masks import rle_decode
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel
from tests.zoo_models import mask_iou, match, pred_boxes

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "reference" / "ultralytics_end2end.json"
BUILD = "build them with zoo/end2end_parity.py (YOLO_OFFLINE=1 /work/zoo-venv/bin/python -m zoo.end2end_parity)"
# ONNX stem -> (architecture and task the metadata must give, the end-to-end layout it must fit, columns)
MODELS = {
    "yolo26-seg-e2e": ("yolo26-seg", "instance-segmentation", END2END_SEG, 6 + 32),
    "yolo26-pose-e2e": ("yolo26-pose", "keypoint-detection", END2END_POSE, 6 + 3 * 3),
    "yolov10-e2e": ("yolov10", "object-detection", END2END, 6),
}
BOX_IOU = 0.99
CONFIDENCE_TOL = 1e-3
# Masks, measured over the 25 matched objects (zoo/end2end_parity.py's seg model, its mask branch
# briefly trained): both sides compute the same mask at the 640 input (prototypes bilinear-upsampled,
# cropped to the box, logit > 0); they differ only in how it reaches the original pixels: Ultralytics'
# scale_masks resizes bilinearly and the reference thresholds at 0.5, the server resizes by nearest
# neighbour (pixel-centre aligned since this test found cv2's INTER_NEAREST shifting the mask by up to
# half an input pixel: worst IoU 0.72 before, 0.90 after). That leaves a band of about one original
# pixel along the edge: worst IoU 0.903 (a 93-pixel mask), mean 0.98.
MASK_IOU, MASK_IOU_MEAN = 0.9, 0.97
# Polygons: Ultralytics' masks.xy joins every contour of a split mask into one polygon, the server
# keeps the largest, so only masks of one piece compare (4 of the 25 here; worst IoU 0.9987 filled).
POLYGON_IOU = 0.99
# Keypoints: measured worst 0.0005 px and 0.0005 in confidence (the reference's rounding to 3 decimals).
KEYPOINT_PX = 0.01


@pytest.fixture(scope="module")
def reference() -> dict:
    assert REFERENCE.is_file(), f"{REFERENCE} is missing: {BUILD}"
    ref = json.loads(REFERENCE.read_text())
    assert sorted(ref["models"]) == sorted(MODELS), sorted(ref["models"])
    return ref


@lru_cache(maxsize=None)
def load(name: str) -> VisionModel:
    """The ONNX file as the registry adds it by URL: the manifest from its metadata alone."""
    path = DATA / "models" / f"{name}.onnx"
    assert path.is_file(), f"{path} is missing: {BUILD}"
    blob = path.read_bytes()
    manifest = manifest_from_ultralytics_metadata(f"{name}/1", _onnx_metadata(blob), FileSpec(
        sha256=hashlib.sha256(blob).hexdigest(), size=len(blob), uri=path.as_uri()))
    return VisionModel.load(manifest, {"weights": blob}, SessionOptions(providers=("CPUExecutionProvider",),
                                                                        intra_op_threads=2))


def _params(entry: dict) -> InferenceParams:
    return InferenceParams(confidence=entry["conf"], iou_threshold=entry["iou"], mask_format="rle",
                           keypoint_confidence=0.0)


def _empty_mask(pred: dict) -> bool:
    return "rle_mask" in pred and not rle_decode(pred["rle_mask"]).any()


def compare(name: str, reference: dict) -> tuple[list[dict], dict[str, int]]:
    """Every matched object of ``name`` on every reference image (the reference's and our prediction,
    their box IoU), and the counts of what was left out; asserts the count, classes, boxes, confidences.

    Two things may go unmatched, each counted: a detection on either side whose confidence is within
    CONFIDENCE_TOL of the threshold (the two preprocessings differ by a few 1e-6 in the scores, so it
    may fall on either side), and, for segmentation, our detections whose mask has no pixel:
    Ultralytics' predictor drops those (``keep = masks.amax((-2, -1)) > 0`` in its
    ``SegmentationPredictor.construct_result``); the server keeps them with an empty polygon, as
    Roboflow Inference does (its ``make_response`` filters nothing but classes)."""
    model, entry = load(name), reference["models"][name]
    classes, threshold = model.manifest.classes, entry["conf"]
    borderline = lambda c: abs(c - threshold) <= CONFIDENCE_TOL  # noqa: E731
    matched, left_out = [], {"borderline": 0, "empty_mask": 0}
    for image_name, expected in entry["images"].items():
        image = decode_image_bytes((DATA / "images" / image_name).read_bytes(), ImageLimits())
        assert list(image.shape[:2]) == expected["shape"], image_name  # EXIF applied the same way
        preds = model.predict([image], _params(entry))[0]["predictions"]
        left_out["empty_mask"] += sum(_empty_mask(p) for p in preds)
        preds = [p for p in preds if not _empty_mask(p)]
        boxes = np.array(expected["boxes"]).reshape(-1, 4)
        pairs = match(boxes, [classes[c] for c in expected["classes"]], preds, BOX_IOU)
        theirs_alone = sorted(set(range(len(boxes))) - {i for i, _ in pairs})
        ours_alone = sorted(set(range(len(preds))) - {j for _, j in pairs})
        for i in theirs_alone:
            assert borderline(expected["confidences"][i]), (name, image_name, "only Ultralytics has", i,
                                                            expected["boxes"][i], expected["confidences"][i])
        for j in ours_alone:
            assert borderline(preds[j]["confidence"]), (name, image_name, "only we have", preds[j])
        left_out["borderline"] += len(theirs_alone) + len(ours_alone)
        for i, j in pairs:
            assert abs(preds[j]["confidence"] - expected["confidences"][i]) <= CONFIDENCE_TOL, (
                name, image_name, preds[j], expected["confidences"][i])
            iou = float(box_iou(boxes[i:i + 1], pred_boxes([preds[j]]))[0, 0])
            matched.append({"image": image_name, "i": i, "ours": preds[j], "expected": expected, "box_iou": iou})
    return matched, left_out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recognised_from_its_metadata_as_end_to_end(name):
    architecture, task, layout, columns = MODELS[name]
    model = load(name)
    assert (model.manifest.architecture, model.manifest.task) == (architecture, task)
    assert model.manifest.classes == ("circle", "square", "triangle")
    assert model.decoder is layout.decode  # the end-to-end layout, not the grid one these families also have
    out = model.run(model.blank_batch(2))
    assert out[0].shape == (2, 300, columns) and model.batchable
    if name == "yolo26-pose-e2e":
        assert len(model.manifest.keypoints.names) == 3
    assert (DATA / "models" / f"{name}.onnx").stat().st_size < 3_500_000


@pytest.mark.parametrize("name", sorted(MODELS))
def test_boxes_classes_and_confidences_match_ultralytics(name, reference):
    pairs, left_out = compare(name, reference)
    assert len(pairs) >= 15, (name, len(pairs))  # enough to mean something
    assert min(p["box_iou"] for p in pairs) >= BOX_IOU
    assert left_out["borderline"] <= max(2, len(pairs) // 50), (name, left_out)  # a rare exception
    assert left_out["empty_mask"] <= 1, (name, left_out)  # measured: 0 (3 of 24 with a random mask branch)


def _components(mask: np.ndarray) -> int:
    import cv2

    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def test_segmentation_masks_match_ultralytics(reference):
    from zoo.matching import polygon_mask

    mask_ious, polygon_ious = [], []
    for p in compare("yolo26-seg-e2e", reference)[0]:
        hw = tuple(p["expected"]["shape"])
        ours, theirs = rle_decode(p["ours"]["rle_mask"]), rle_decode(p["expected"]["masks"][p["i"]])
        assert ours.shape == theirs.shape == hw, p["image"]
        mask_ious.append(mask_iou(ours, theirs))
        if _components(theirs) == 1:  # a split mask: Ultralytics joins every contour into one polygon, we keep the largest
            our_polygon = polygon_mask(np.array([[q["x"], q["y"]] for q in p["ours"]["points"]]), hw)
            polygon_ious.append(mask_iou(our_polygon, polygon_mask(np.array(p["expected"]["polygons"][p["i"]]), hw)))
    assert len(mask_ious) >= 20 and len(polygon_ious) >= 3, (len(mask_ious), len(polygon_ious))
    assert min(mask_ious) >= MASK_IOU and np.mean(mask_ious) >= MASK_IOU_MEAN, (min(mask_ious), np.mean(mask_ious))
    assert min(polygon_ious) >= POLYGON_IOU, sorted(polygon_ious)[:3]


def test_pose_keypoints_match_ultralytics(reference):
    worst_px, worst_conf = 0.0, 0.0
    for p in compare("yolo26-pose-e2e", reference)[0]:
        ours = np.array([[k["x"], k["y"], k["confidence"]] for k in p["ours"]["keypoints"]])
        theirs = np.array(p["expected"]["keypoints"][p["i"]])
        assert ours.shape == theirs.shape == (3, 3), p["image"]
        worst_px = max(worst_px, float(np.abs(ours[:, :2] - theirs[:, :2]).max()))
        worst_conf = max(worst_conf, float(np.abs(ours[:, 2] - theirs[:, 2]).max()))
    assert worst_px <= KEYPOINT_PX and worst_conf <= CONFIDENCE_TOL, (worst_px, worst_conf)
