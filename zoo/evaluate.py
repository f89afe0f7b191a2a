"""Held-out accuracy of the zoo on the training generator's distribution (``zoo/broad_shapes.py``,
a seed training never used): Ultralytics' own validator on the exported ONNX files for det, seg and
pose, at the size each manifest serves (``SERVE_IMGSZ``: shapes-seg/1 at 1152); the server's pipeline
for the classifier (Ultralytics' classify predictor would centre-crop).

    python -m zoo.build evaluate [det|seg|pose|cls ...]   # all, or only the kinds named

Entries are merged into ``configs/models/zoo_figures.json``: the others (``shapes-det-26/1``'s from
``python -m zoo.yolo26 evaluate``, the ``independent`` block) are kept."""
from __future__ import annotations

import json

import cv2
import yaml

from zoo.build import MODELS, SERVE_IMGSZ, WORK, _label_lines
from zoo.heldout import heldout_cls_scenes, heldout_scenes
from zoo.shapes import CLASSES

N_HELDOUT = 200


def _write_heldout() -> None:
    scenes = heldout_scenes(N_HELDOUT)
    for kind in ("det", "seg", "pose"):
        root = WORK / "heldout" / kind
        (root / "images" / "val").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
        for i, scene in enumerate(scenes):
            cv2.imwrite(str(root / "images" / "val" / f"{i:05d}.jpg"), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            (root / "labels" / "val" / f"{i:05d}.txt").write_text("\n".join(_label_lines(scene, kind)) + "\n")
        data = {"path": str(root), "train": "images/val", "val": "images/val"}
        if kind == "pose":
            data.update(names={0: "triangle"}, kpt_shape=[3, 3], flip_idx=[0, 2, 1])
        else:
            data["names"] = dict(enumerate(CLASSES))
        (WORK / "heldout" / f"{kind}.yaml").write_text(yaml.safe_dump(data))


def evaluate_all(kinds: list[str] | None = None) -> dict:
    from ultralytics import YOLO

    _write_heldout()
    out = MODELS / "zoo_figures.json"
    figures: dict = json.loads(out.read_text()) if out.exists() else {}
    assert figures.get("heldout_images", N_HELDOUT) == N_HELDOUT, figures.get("heldout_images")
    figures["heldout_images"] = N_HELDOUT
    for kind, task, model_id in (("det", "detect", "shapes-det/1"), ("seg", "segment", "shapes-seg/1"),
                                 ("pose", "pose", "shapes-pose/1")):
        if kinds and kind not in kinds:
            continue
        m = YOLO(str(MODELS / model_id / "weights.onnx"), task=task)
        r = m.val(data=str(WORK / "heldout" / f"{kind}.yaml"), imgsz=SERVE_IMGSZ[kind], batch=1, plots=False,
                  verbose=False, project=str(WORK / "val"), name=kind, exist_ok=True)
        entry = {"box_map50": round(float(r.box.map50), 4), "box_map50_95": round(float(r.box.map), 4)}
        if kind == "seg":
            # mask mAP@0.5 hardly sees a rounded corner; @0.5:0.95 does
            entry.update(mask_map50=round(float(r.seg.map50), 4), mask_map50_95=round(float(r.seg.map), 4))
        if kind == "pose":
            entry["pose_map50"] = round(float(r.pose.map50), 4)
        figures[model_id] = entry
    if not kinds or "cls" in kinds:
        # the classifier through the server's own pipeline: its letterbox of the whole frame is the point
        from zoo.matching import builtin

        model = builtin("shapes-cls/1")
        scenes = heldout_cls_scenes(300)
        correct = sum(model.predict([s.image])[0]["top"] == s.shapes[0].class_name for s in scenes)
        figures["shapes-cls/1"] = {"top1": round(correct / len(scenes), 4), "images": len(scenes)}
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return figures
