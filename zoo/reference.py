"""Record Ultralytics' own predictions on the zoo's ONNX files as JSON, for the parity tests."""
from __future__ import annotations

import json

import cv2
import numpy as np

from zoo.build import IMGSZ, MODELS, TESTDATA, letterboxed
from zoo.heldout import heldout_cls_scenes, write_test_images

CONF, IOU = 0.25, 0.7
TASKS = {"shapes-det/1": "detect", "shapes-seg/1": "segment", "shapes-pose/1": "pose"}


def record_all() -> None:
    from ultralytics import YOLO

    images = write_test_images(TESTDATA / "images")
    reference: dict = {"conf": CONF, "iou": IOU, "models": {}}
    for model_id, task in TASKS.items():
        model = YOLO(str(MODELS / model_id / "weights.onnx"), task=task)
        per_image = {}
        for path in images:
            # rect=False: square letterbox to the manifest's 640x640 input (a dynamic export would otherwise pad minimally)
            r = model.predict(str(path), imgsz=640, conf=CONF, iou=IOU, rect=False, verbose=False)[0]
            entry = {"shape": list(r.orig_shape), "boxes": r.boxes.xyxy.numpy().round(3).tolist(),
                     "classes": r.boxes.cls.numpy().astype(int).tolist(),
                     "confidences": r.boxes.conf.numpy().round(5).tolist()}
            if r.masks is not None:
                entry["polygons"] = [np.round(p, 2).tolist() for p in r.masks.xy]
            if r.keypoints is not None:
                entry["keypoints"] = r.keypoints.data.numpy().round(3).tolist()
            per_image[path.name] = entry
        reference["models"][model_id] = per_image
    cls_dir = TESTDATA / "cls"
    cls_dir.mkdir(parents=True, exist_ok=True)
    model = YOLO(str(MODELS / "shapes-cls/1" / "weights.onnx"), task="classify")
    per_image = {}
    for old in cls_dir.glob("cls*.png"):
        old.unlink()
    for i, scene in enumerate(heldout_cls_scenes(6)):
        # stored letterboxed: Ultralytics' classify predictor (resize + centre crop) then sees what the
        # server's letterbox makes of the frame, so the two compare the model, not two preprocessings
        p = cls_dir / f"cls{i}_{scene.shapes[0].class_name}.png"
        cv2.imwrite(str(p), letterboxed(scene.image))
        r = model.predict(str(p), imgsz=IMGSZ["cls"], verbose=False)[0]
        per_image[p.name] = {"top": int(r.probs.top1), "probs": r.probs.data.numpy().round(5).tolist()}
    reference["models"]["shapes-cls/1"] = per_image
    out = TESTDATA / "reference" / "ultralytics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(reference, indent=1))
    print(f"wrote {out}")
