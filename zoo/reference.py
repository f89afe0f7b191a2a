"""Record Ultralytics' own predictions on the zoo's ONNX files as JSON, for the parity tests.

    python -m zoo.build reference [MODEL_ID ...]   # all, or re-record only the models named

Each model is predicted at the size its manifest serves (``SERVE_IMGSZ``: shapes-seg/1 at 1152).
With model ids, the test images and the other models' entries are left as they are."""
from __future__ import annotations

import json

import cv2
import numpy as np

from zoo.build import IMGSZ, MODELS, SERVE_IMGSZ, TESTDATA, letterboxed
from zoo.heldout import heldout_cls_scenes, write_test_images

CONF, IOU = 0.25, 0.7
TASKS = {"shapes-det/1": "detect", "shapes-seg/1": "segment", "shapes-pose/1": "pose"}
KINDS = {"shapes-det/1": "det", "shapes-seg/1": "seg", "shapes-pose/1": "pose"}
OUT = TESTDATA / "reference" / "ultralytics.json"


def record_all(only: list[str] | None = None) -> None:
    from ultralytics import YOLO

    if only:
        unknown = set(only) - set(TASKS)
        assert not unknown, f"{sorted(unknown)}: only {sorted(TASKS)} can be re-recorded alone"
        reference = json.loads(OUT.read_text())
        assert (reference["conf"], reference["iou"]) == (CONF, IOU), (reference["conf"], reference["iou"])
        images = [TESTDATA / "images" / name for name in reference["models"][only[0]]]
    else:
        images = write_test_images(TESTDATA / "images")
        reference = {"conf": CONF, "iou": IOU, "models": {}}
    for model_id, task in TASKS.items():
        if only and model_id not in only:
            continue
        model = YOLO(str(MODELS / model_id / "weights.onnx"), task=task)
        size = SERVE_IMGSZ[KINDS[model_id]]
        manifest = json.loads((MODELS / model_id / "model.json").read_text())["input"]
        assert (manifest["width"], manifest["height"]) == (size, size), (model_id, manifest, size)
        per_image = {}
        for path in images:
            # rect=False: square letterbox to the manifest's input (a dynamic export would otherwise pad minimally)
            r = model.predict(str(path), imgsz=size, conf=CONF, iou=IOU, rect=False, verbose=False)[0]
            entry = {"shape": list(r.orig_shape), "boxes": r.boxes.xyxy.numpy().round(3).tolist(),
                     "classes": r.boxes.cls.numpy().astype(int).tolist(),
                     "confidences": r.boxes.conf.numpy().round(5).tolist()}
            if r.masks is not None:
                entry["polygons"] = [np.round(p, 2).tolist() for p in r.masks.xy]
            if r.keypoints is not None:
                entry["keypoints"] = r.keypoints.data.numpy().round(3).tolist()
            per_image[path.name] = entry
        reference["models"][model_id] = per_image
    if only:
        OUT.write_text(json.dumps(reference, indent=1))
        print(f"wrote {OUT} ({', '.join(only)} re-recorded)")
        return
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(reference, indent=1))
    print(f"wrote {OUT}")
