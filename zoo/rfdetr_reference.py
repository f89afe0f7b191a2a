"""RF-DETR exported by the ``rfdetr`` package, and this server's decoding checked against the package's own.

    HF_HUB_OFFLINE=1 PYTHONPATH=. /work/zoo-venv/bin/python -m zoo.rfdetr_reference   # torch, rfdetr, onnxruntime

No trained RF-DETR weights can be had here, so the models are ``RFDETRNano`` and ``RFDETRSegNano``
(3 classes: the zoo's shapes) with their random initialisation (torch seed 0), exported by
``RFDETR.export`` to ``.cache/rfdetr/`` (about 100 MB each: never committed). On each image three
predictors run at a low threshold, so the random heads give detections:

- ``server``: this server's ``VisionModel`` on the ONNX file (manifest: ``rfdetr-nano`` /
  ``rfdetr-seg-nano``, stretch resize, ImageNet mean/std);
- ``rfdetr_onnx``: the same ONNX file fed rfdetr's own export preprocessing
  (``rfdetr.export._runtime.preprocess.preprocess_to_nchw``), its outputs decoded by rfdetr's own
  ``PostProcess`` (the module ``predict`` uses);
- ``rfdetr_predict``: ``RFDETR.predict`` on the PyTorch model with the same weights.

A random-weight RF-DETR is chaotic: its two-stage query selection is a top-k over near-equal
scores, so the ±1/255 difference between a uint8 resize (this server's, like Roboflow's) and
rfdetr's float resize picks other queries. The parity images are therefore zoo scenes drawn at the
model's input size and enlarged by whole factors per axis (nearest), for which both resizes give
the same tensor, with different original sizes and aspect ratios so boxes and masks still map back
through a real stretch. Free-size scenes are recorded too, as what that sensitivity does, not as a
parity claim. Written to ``benchmarks/results/rfdetr_parity.json``.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

from serve_app.pipeline.geometry import box_iou
from serve_app.pipeline.preprocess import prepare_image, to_tensor
from serve_app.pipeline.session import SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.tasks.detr import IMAGENET_MEAN, IMAGENET_STD
from serve_app.tasks.masks import rle_decode
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel
from zoo.shapes import CLASSES, draw_scene

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".cache" / "rfdetr"
RESULT = ROOT / "benchmarks" / "results" / "rfdetr_parity.json"
THRESHOLD = {"det": 0.02, "seg": 0.025}  # above most of a random head's ~0.01 scores, below its best
FACTORS = [(1, 1), (2, 1), (1, 3), (3, 2)]  # whole enlargement factors (x, y) of the parity images
MIN_IOU = 0.99
AT_THRESHOLD = 1e-3  # an unmatched detection this close to the threshold is a float rounding's, not a decoding's


def build(kind: str):
    import torch
    from rfdetr import RFDETRNano, RFDETRSegNano

    torch.manual_seed(0)
    model = {"det": RFDETRNano, "seg": RFDETRSegNano}[kind](pretrain_weights=None, num_classes=len(CLASSES),
                                                             device="cpu")
    model.model.class_names = list(CLASSES)
    path = model.export(output_dir=str(OUT), output_name=f"rfdetr-{kind}-nano-shapes", verbose=False)
    return model, Path(path)


def server_model(kind: str, data: bytes, size: int) -> VisionModel:
    manifest = Manifest.from_dict({
        "model_id": f"rfdetr-{kind}/1", "task": {"det": "object-detection", "seg": "instance-segmentation"}[kind],
        "architecture": {"det": "rfdetr-nano", "seg": "rfdetr-seg-nano"}[kind], "classes": list(CLASSES),
        "files": {"weights": {"path": "w.onnx", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
        "input": {"width": size, "height": size, "resize": "stretch", "mean": list(IMAGENET_MEAN),
                  "std": list(IMAGENET_STD)}})
    return VisionModel.load(manifest, {"weights": data}, SessionOptions(providers=("CPUExecutionProvider",),
                                                                       intra_op_threads=2))


def images(size: int) -> list[tuple[str, np.ndarray, bool]]:
    """(name, BGR image, parity image?): scenes at the input size enlarged by whole factors, then free sizes."""
    out = []
    for i, (fx, fy) in enumerate(FACTORS):
        scene = draw_scene(np.random.default_rng(100 + i), size=(size, size), max_extent=size / 3)
        out.append((f"scene{100 + i}_x{fx}y{fy}", np.repeat(np.repeat(scene.image, fy, axis=0), fx, axis=1), True))
    for i in range(2):
        out.append((f"scene{i}_free", draw_scene(np.random.default_rng(i)).image, False))
    return out


def rows(boxes, scores, labels, masks=None) -> list[dict]:
    out = [{"class_id": int(c), "confidence": float(s), "box": [float(v) for v in b]}
           for b, s, c in zip(boxes, scores, labels)]
    if masks is not None:
        for r, m in zip(out, masks):
            r["_mask"] = np.asarray(m, bool)
    return out


def from_server(preds: list[dict], shape: tuple[int, int]) -> list[dict]:
    out = []
    for p in preds:
        r = {"class_id": p["class_id"], "confidence": p["confidence"],
             "box": [p["x"] - p["width"] / 2, p["y"] - p["height"] / 2, p["x"] + p["width"] / 2, p["y"] + p["height"] / 2]}
        if "rle_mask" in p:
            r["_mask"] = rle_decode(p["rle_mask"]).astype(bool)
        out.append(r)
    return out


def compare(ours: list[dict], ref: list[dict], threshold: float) -> dict:
    """One-to-one matching by box IoU within the same class (a pair needs both), best pairs first; what stays unmatched is
    counted as ``at_threshold`` when its score is within :data:`AT_THRESHOLD` of the threshold."""
    def near(rows: list[dict]) -> int:
        return sum(abs(r["confidence"] - threshold) < AT_THRESHOLD for r in rows)

    if not ours or not ref:
        return {"ours": len(ours), "reference": len(ref), "matched": 0, "min_iou": None,
                "at_threshold": near(ours) + near(ref), "all_matched": near(ours) + near(ref) == len(ours) + len(ref)}
    iou = box_iou(np.array([r["box"] for r in ours]), np.array([r["box"] for r in ref]))
    same = np.array([[a["class_id"] == b["class_id"] for b in ref] for a in ours])
    iou = np.where(same, iou, -1.0)
    pairs, used_a, used_b = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        a, b = divmod(int(flat), len(ref))
        if a in used_a or b in used_b or iou[a, b] < 0:
            continue
        used_a.add(a), used_b.add(b), pairs.append((a, b))
    ious = [float(iou[a, b]) for a, b in pairs]
    loose = [r for i, r in enumerate(ours) if i not in used_a] + [r for i, r in enumerate(ref) if i not in used_b]
    result = {"ours": len(ours), "reference": len(ref), "matched": sum(i >= MIN_IOU for i in ious),
              "at_threshold": near(loose),
              "min_iou": min(ious) if ious else None,
              "max_confidence_difference": max(abs(ours[a]["confidence"] - ref[b]["confidence"]) for a, b in pairs),
              # every detection in a same-class pair, or unmatched at the threshold
              "all_matched": min(ious) >= MIN_IOU and 2 * len(pairs) + near(loose) == len(ours) + len(ref)}
    if "_mask" in ours[0] and "_mask" in ref[0]:
        mask_ious = []
        for a, b in pairs:
            ma, mb = ours[a]["_mask"], ref[b]["_mask"]
            union = (ma | mb).sum()
            mask_ious.append(float((ma & mb).sum() / union) if union else 1.0)
        result["min_mask_iou"] = min(mask_ious)
    return result


def main() -> None:
    import onnxruntime as ort
    import rfdetr
    import torch
    from PIL import Image
    from rfdetr.export._runtime.preprocess import preprocess_to_nchw
    from rfdetr.models.postprocess import PostProcess

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"what": "RF-DETR nano (detection) and seg-nano, 3 classes, random weights (torch seed 0), exported by "
                      "RFDETR.export; the server's decoding vs rfdetr's PostProcess on the same ONNX outputs "
                      "(rfdetr's export preprocessing) and vs RFDETR.predict on the PyTorch model",
              "min_iou": MIN_IOU,
              "parity_images": "zoo scenes drawn at the input size and enlarged by whole factors per axis (nearest): "
                               "both resizes then give the same tensor (input_max_abs_difference); the free-size "
                               "scenes show how a random-weight model's query selection follows the +-1/255 "
                               "difference of a uint8 resize, and are no parity claim",
              "selection": "PostProcess ranks all label columns, the no-object slot included, and keeps num_select=Q "
                           "pairs; the server drops that slot first, as rfdetr's export decoder does: the same "
                           "detections while pairs_above_threshold_all_columns <= Q",
              "at_threshold": f"unmatched detections within {AT_THRESHOLD} of the threshold (float rounding: the "
                              "server's session takes uint8 pixels and normalises in the graph)",
              "models": {}}
    for kind in ("det", "seg"):
        model, path = build(kind)
        data = path.read_bytes()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs, outputs = session.get_inputs(), session.get_outputs()
        size = inputs[0].shape[2]
        ours_model = server_model(kind, data, size)
        queries = outputs[0].shape[1]
        post = PostProcess(num_select=queries)
        threshold = THRESHOLD[kind]
        params = InferenceParams(confidence=threshold, max_detections=300, mask_format="rle")
        entry = {"onnx": {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                          "inputs": [[i.name, i.shape] for i in inputs],
                          "outputs": [[o.name, o.shape] for o in outputs], "metadata": session.get_modelmeta().custom_metadata_map},
                 "threshold": threshold, "images": []}
        for name, bgr, parity in images(size):
            rgb = np.ascontiguousarray(bgr[..., ::-1])
            h, w = bgr.shape[:2]
            tensor = preprocess_to_nchw(Image.fromarray(rgb), size, size)
            raw = session.run(None, {inputs[0].name: tensor})
            named = {"pred_boxes": torch.from_numpy(raw[0]), "pred_logits": torch.from_numpy(raw[1])}
            if kind == "seg":
                named["pred_masks"] = torch.from_numpy(raw[2])
            res = post(named, torch.tensor([[h, w]]))[0]
            keep = (res["scores"] > threshold) & (res["labels"] < len(CLASSES))  # the no-object slot is no class
            above_all_columns = int((torch.sigmoid(named["pred_logits"]) > threshold).sum())
            ref_onnx = rows(res["boxes"][keep].numpy(), res["scores"][keep].numpy(), res["labels"][keep].numpy(),
                            res["masks"][keep][:, 0].numpy() if kind == "seg" else None)
            with torch.no_grad():
                det = model.predict(rgb, threshold=threshold, include_source_image=False)
            known = det.class_id < len(CLASSES)
            ref_predict = rows(det.xyxy[known], det.confidence[known], det.class_id[known],
                               det.mask[known] if kind == "seg" and det.mask is not None else None)
            ours = from_server(ours_model.predict([bgr], params)[0]["predictions"], (h, w))
            server_input = to_tensor([prepare_image(bgr, ours_model.manifest.input, ours_model.manifest.preprocessing)[0]],
                                     ours_model.manifest.input)  # the float tensor (the session may take uint8)
            item = {"image": name, "size": [w, h], "parity_image": parity,
                    "input_max_abs_difference": float(np.abs(server_input - tensor).max()),
                    "pairs_above_threshold_all_columns": above_all_columns,
                    "vs_rfdetr_onnx_postprocess": compare(ours, ref_onnx, threshold),
                    "vs_rfdetr_predict": compare(ours, ref_predict, threshold),
                    "server": [{k: v for k, v in r.items() if k != "_mask"} for r in ours]}
            entry["images"].append(item)
            print(kind, name, {k: item[k] for k in ("vs_rfdetr_onnx_postprocess", "vs_rfdetr_predict")}, flush=True)
        report["models"][kind] = entry
    report["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(),
                         "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                         "rfdetr": rfdetr.__version__ if hasattr(rfdetr, "__version__") else _version("rfdetr"),
                         "onnxruntime": ort.__version__, "opencv": cv2.__version__, "numpy": np.__version__}
    RESULT.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULT}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
