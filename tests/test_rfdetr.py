"""RF-DETR (``tasks/detr.py``): decoding checked exactly on ONNX graphs with the real export's I/O contract
(input ``input`` [1, 3, S, S]; outputs ``dets`` [1, Q, 4], ``labels`` [1, Q, C+1], and ``masks``
[1, Q, S/4, S/4] for segmentation, in that order, as ``RFDETR.export`` writes them), the load-time
shape check, the recorded parity against the ``rfdetr`` package (``zoo/rfdetr_reference.py``), and
one model added by manifest and served over HTTP."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from serve_app.errors import ModelLoadError
from serve_app.pipeline.session import SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.tasks.detr import IMAGENET_MEAN, IMAGENET_STD
from serve_app.tasks.masks import rle_decode
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel
from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.test_decoders_onnx import SIZE, constant_model
from tests.servers import OriginServer

PARITY = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "rfdetr_parity.json"
CLASSES = ["circle", "square", "triangle"]  # 3 classes: labels has 4 columns, as many as dets
DET, SEG = "object-detection", "instance-segmentation"


def rfdetr_graph(outputs: dict[str, np.ndarray]) -> bytes:
    """A graph with RF-DETR's input (``input`` [1, 3, S, S]) returning the given constants as its outputs."""
    return constant_model(outputs, input_name="input")


def manifest(data: bytes, task: str = DET, architecture: str = "rfdetr-nano", resize: str = "stretch") -> dict:
    return {"model_id": "rfdetr-test/1", "task": task, "architecture": architecture, "classes": CLASSES,
            "files": {"weights": {"path": "w.onnx", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
            "input": {"width": SIZE, "height": SIZE, "resize": resize, "mean": list(IMAGENET_MEAN),
                      "std": list(IMAGENET_STD)}}


def load(data: bytes, **kw) -> VisionModel:
    return VisionModel.load(Manifest.from_dict(manifest(data, **kw)), {"weights": data},
                            SessionOptions(providers=("CPUExecutionProvider",)))


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def outputs() -> tuple[np.ndarray, np.ndarray]:
    """Five queries. q0 scores square 0.9 and triangle 0.8 (one query, two detections); q1 and q3 tie on
    circle 0.7 (the lower index first); q2's only high score is the no-object slot; q4 is low everywhere."""
    dets = np.array([[0.5, 0.5, 0.25, 0.5], [0.25, 0.25, 0.125, 0.125], [0.5, 0.5, 1.0, 1.0],
                     [0.75, 0.75, 0.125, 0.25], [0.1, 0.1, 0.1, 0.1]], np.float32)
    probs = np.full((5, 4), 0.01)
    probs[0, 1], probs[0, 2], probs[1, 0], probs[3, 0], probs[2, 3] = 0.9, 0.8, 0.7, 0.7, 0.99
    return dets[None], np.vectorize(logit)(probs).astype(np.float32)[None]


def rows(preds: list[dict]) -> list[tuple]:
    return [(p["class"], round(p["confidence"], 4), round(p["x"] - p["width"] / 2, 3), round(p["y"] - p["height"] / 2, 3),
             round(p["x"] + p["width"] / 2, 3), round(p["y"] + p["height"] / 2, 3)) for p in preds]


@pytest.fixture(scope="module")
def detector() -> VisionModel:
    dets, labels = outputs()
    return load(rfdetr_graph({"dets": dets, "labels": labels}))


def test_top_query_class_pairs_best_first_without_nms(detector):
    image = np.zeros((128, 128, 3), np.uint8)  # stretch at scale 2
    preds = detector.predict([image], InferenceParams(confidence=0.5, iou_threshold=0.1))[0]["predictions"]
    assert rows(preds) == [("square", 0.9, 48, 32, 80, 96), ("triangle", 0.8, 48, 32, 80, 96),
                           ("circle", 0.7, 24, 24, 40, 40), ("circle", 0.7, 88, 80, 104, 112)]
    assert [p["class_id"] for p in preds] == [1, 2, 0, 0]


def test_class_filter_and_max_detections(detector):
    image = np.zeros((128, 128, 3), np.uint8)
    circles = detector.predict([image], InferenceParams(confidence=0.5, class_filter=("circle",)))[0]["predictions"]
    assert [(p["class"], round(p["x"])) for p in circles] == [("circle", 32), ("circle", 96)]
    top2 = detector.predict([image], InferenceParams(confidence=0.5, max_detections=2))[0]["predictions"]
    assert [p["class"] for p in top2] == ["square", "triangle"]
    # at most Q pairs (rfdetr's num_select), ties by the lower query/class index, never the no-object slot
    low = detector.predict([image], InferenceParams(confidence=0.005))[0]["predictions"]
    assert [(p["class"], round(p["confidence"], 2), round(p["x"])) for p in low][3:] == [("circle", 0.7, 96),
                                                                                       ("circle", 0.01, 64)]


def test_stretched_and_letterboxed_inputs_map_back_to_original_pixels():
    dets, labels = outputs()
    data = rfdetr_graph({"dets": dets, "labels": labels})
    image = np.zeros((64, 128, 3), np.uint8)  # 128 wide, 64 high
    params = InferenceParams(confidence=0.85)
    stretched = load(data).predict([image], params)[0]["predictions"]
    assert rows(stretched) == [("square", 0.9, 48, 16, 80, 48)]  # x at scale 2, y at scale 1
    boxed = load(data, resize="letterbox").predict([image], params)[0]["predictions"]
    assert rows(boxed) == [("square", 0.9, 48, 0, 80, 64)]  # scale 0.5, 16 rows of padding above


def seg_outputs() -> dict[str, np.ndarray]:
    dets, labels = outputs()
    masks = np.full((1, 5, SIZE // 4, SIZE // 4), -10.0, np.float32)
    masks[0, 0, 4:8, 2:6] = 10.0  # q0: cells x 2..5, y 4..7 of the 16 x 16 map
    masks[0, 1] = 10.0  # q1: everywhere
    return {"dets": dets, "labels": labels, "masks": masks}


def test_segmentation_masks_follow_their_query_to_the_original_image():
    model = load(rfdetr_graph(seg_outputs()), task=SEG, architecture="rfdetr-seg-nano")
    preds = model.predict([np.zeros((128, 128, 3), np.uint8)],
                          InferenceParams(confidence=0.5, mask_format="rle"))[0]["predictions"]
    assert [p["class"] for p in preds] == ["square", "triangle", "circle", "circle"]
    for p in preds[:2]:  # both of q0's classes carry q0's mask: x 16..47, y 32..63 at scale 8 per cell
        ys, xs = np.nonzero(rle_decode(p["rle_mask"]))
        assert (xs.min(), xs.max(), ys.min(), ys.max()) == (16, 47, 32, 63)
        px, py = [q["x"] for q in p["points"]], [q["y"] for q in p["points"]]
        assert (min(px), max(px), min(py), max(py)) == (16, 47, 32, 63)
    assert rle_decode(preds[2]["rle_mask"]).all()
    boxed = load(rfdetr_graph(seg_outputs()), task=SEG, architecture="rf-detr-seg", resize="letterbox")
    wide = boxed.predict([np.zeros((64, 128, 3), np.uint8)], InferenceParams(confidence=0.5, mask_format="rle"))[0]
    everywhere = rle_decode(wide["predictions"][2]["rle_mask"])
    assert everywhere.shape == (64, 128) and everywhere.all()  # the padding is cut away, the image filled


@pytest.mark.parametrize("task, architecture, graph, says", [
    (DET, "rfdetr-base", {"dets": np.zeros((1, 5, 4)), "labels": np.zeros((1, 5, 6))},
     "labels with 3 + 1 (the no-object slot) or 3 class columns"),
    (DET, "rf-detr", {"dets": np.zeros((1, 5, 5)), "labels": np.zeros((1, 5, 4))}, "with the same Q"),
    (DET, "rfdetr-small", {"dets": np.zeros((1, 5, 4)), "labels": np.zeros((1, 6, 4))}, "with the same Q"),
    (DET, "rfdetr-nano", {"dets": np.zeros((1, 5, 4))}, "2 outputs dets [B, Q, 4], labels [B, Q, 3+1]"),
    (SEG, "rfdetr-seg-nano", {"dets": np.zeros((1, 5, 4)), "labels": np.zeros((1, 5, 4))},
     "3 outputs dets [B, Q, 4], labels [B, Q, 3+1], masks [B, Q, mh, mw]"),
    (SEG, "rfdetr-seg-small", {"dets": np.zeros((1, 5, 4)), "labels": np.zeros((1, 5, 4)),
                               "masks": np.zeros((1, 4, 16, 16))}, "with the same Q"),
])
def test_wrong_output_shapes_are_refused_at_load(task, architecture, graph, says):
    with pytest.raises(ModelLoadError, match="do not fit a rf-detr") as info:
        load(rfdetr_graph(graph), task=task, architecture=architecture)
    assert says in info.value.message


def test_every_column_a_class_when_the_manifest_names_them_all():
    """COCO checkpoints' labels have one column per category id (91, placeholders included): no slot dropped."""
    dets, labels = outputs()
    data = rfdetr_graph({"dets": dets, "labels": labels})
    m = manifest(data)
    m["classes"] = CLASSES + ["fourth"]
    model = VisionModel.load(Manifest.from_dict(m), {"weights": data}, SessionOptions(providers=("CPUExecutionProvider",)))
    preds = model.predict([np.zeros((128, 128, 3), np.uint8)], InferenceParams(confidence=0.95))[0]["predictions"]
    assert [(p["class"], round(p["confidence"], 2)) for p in preds] == [("fourth", 0.99)]


# -- parity with the rfdetr package, recorded by zoo/rfdetr_reference.py ------------------------------------------
def test_recorded_parity_with_rfdetr():
    assert PARITY.exists(), f"{PARITY} is missing: run zoo/rfdetr_reference.py"
    report = json.loads(PARITY.read_text())
    assert report["min_iou"] >= 0.99
    for kind, names in (("det", ["dets", "labels"]), ("seg", ["dets", "labels", "masks"])):
        entry = report["models"][kind]
        # the export's I/O contract is the one the graphs above are built with
        assert [i[0] for i in entry["onnx"]["inputs"]] == ["input"] and [o[0] for o in entry["onnx"]["outputs"]] == names
        queries, columns = entry["onnx"]["outputs"][1][1][1:]
        assert columns == len(CLASSES) + 1 and entry["onnx"]["metadata"] == {}
        parity = [i for i in entry["images"] if i["parity_image"]]
        assert len(parity) >= 4 and len({tuple(i["size"]) for i in parity}) == len(parity)
        assert sum(i["vs_rfdetr_predict"]["reference"] for i in parity) >= 20, "too few detections to compare"
        for item in parity:
            assert item["input_max_abs_difference"] < 1e-5 and item["pairs_above_threshold_all_columns"] <= queries
            for ref in ("vs_rfdetr_onnx_postprocess", "vs_rfdetr_predict"):
                c = item[ref]
                assert c["all_matched"], (kind, item["image"], ref, c)
                assert c["matched"] == 0 or c["min_iou"] >= 0.99, (kind, item["image"], ref, c)
                assert c["at_threshold"] <= 1, (kind, item["image"], ref, c)
                if kind == "seg" and c["matched"]:
                    assert c["min_mask_iou"] >= 0.95, (kind, item["image"], ref, c)


# -- through the server -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(ray_serve, tmp_path_factory):
    dets, labels = outputs()
    data = rfdetr_graph({"dets": dets, "labels": labels})
    origin = OriginServer({"/rfdetr.onnx": data})
    app = deploy_app(ray_serve, tmp_path_factory.mktemp("rfdetr"))
    m = manifest(data)
    m["files"]["weights"] = {"uri": origin.url("/rfdetr.onnx"), "sha256": hashlib.sha256(data).hexdigest(),
                             "size": len(data)}
    yield app, m
    teardown_app(app)
    origin.stop()


@pytest.mark.ray
def test_an_rfdetr_manifest_is_added_and_served(served: tuple[DeployedApp, dict]):
    import cv2

    app, m = served
    r = app.post("/model/add", json={"manifest": m})
    assert r.status_code == 200, r.text
    assert next(e for e in r.json()["models"] if e["model_id"] == "rfdetr-test/1")["architecture"] == "rf-detr"
    jpeg = cv2.imencode(".jpg", np.zeros((128, 128, 3), np.uint8))[1].tobytes()
    r = app.post("/infer", data=jpeg, headers={"serve_multiplexed_model_id": "rfdetr-test/1"})  # confidence 0.4
    assert r.status_code == 200, r.text
    assert rows(r.json()["predictions"]) == [("square", 0.9, 48, 32, 80, 96), ("triangle", 0.8, 48, 32, 80, 96),
                                             ("circle", 0.7, 24, 24, 40, 40), ("circle", 0.7, 88, 80, 104, 112)]
