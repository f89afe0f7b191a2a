"""shapes-det-26/1: a narrow YOLO26 (end-to-end head: no NMS) trained on the zoo's shapes scenes.

The same data, input and classes as shapes-det/1 (``zoo/build.py``), Ultralytics'
``cfg/models/26/yolo26.yaml`` narrowed to width 0.125 (YOLO26n's depth 0.5), exported with
``end2end=True`` so the ONNX output is ``[B, 300, 6]`` (x1, y1, x2, y2, score, class), which the
server decodes as architecture ``yolo26`` without NMS.

It trains beside the other shapes models, on the same broad data (``zoo/gpu_train.sh``:
``python -m zoo.build train det26 --device 0 ...`` on the GPU machine), then:

    # here, on the CPU (/work/zoo-venv): ONNX + manifest, held-out figures, parity reference
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$PWD/.cache/yolo /work/zoo-venv/bin/python -m zoo.yolo26 export PATH/last.pt
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$PWD/.cache/yolo /work/zoo-venv/bin/python -m zoo.yolo26 evaluate
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$PWD/.cache/yolo /work/zoo-venv/bin/python -m zoo.yolo26 reference
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from zoo.build import IMGSZ, MODELS, TESTDATA, WIDTH, WORK, write_manifest
from zoo.evaluate import N_HELDOUT, _write_heldout
from zoo.reference import CONF, IOU
from zoo.shapes import CLASSES

MODEL_ID = "shapes-det-26/1"
ARCHITECTURE = "yolo26"
DEPTH = 0.50  # YOLO26n's depth multiple (its width, 0.25, is halved to the zoo's 0.125)
MAX_DETECTIONS = 300  # the end-to-end head's K
RUN_NAME = "det26"
REFERENCE = TESTDATA / "reference" / "ultralytics_yolo26.json"
FIGURES = MODELS / "zoo_figures.json"


def model_yaml() -> Path:
    """Ultralytics' YOLO26 detection yaml with the zoo's scale and three classes (end2end kept on)."""
    import ultralytics

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/26/yolo26.yaml").read_text())
    cfg.pop("scales", None)
    cfg.update(nc=len(CLASSES), depth_multiple=DEPTH, width_multiple=WIDTH, max_channels=1024)
    assert cfg.get("end2end") is True, "yolo26.yaml no longer says end2end: True"
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "shapes-det-26.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def output_shape(onnx_path: Path, imgsz: int, batch: int = 2) -> list[int]:
    """The first output's real shape for a batch of ``batch`` (the declared one has symbolic dimensions)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.zeros((batch, 3, imgsz, imgsz), np.float32)
    return list(session.run(None, {session.get_inputs()[0].name: x})[0].shape)


def export(weights: Path) -> Path:
    """Export ``weights`` to ONNX with the end-to-end head and dynamic batch; write the manifest."""
    from ultralytics import YOLO

    onnx_path = Path(YOLO(str(weights)).export(format="onnx", imgsz=IMGSZ["det"], dynamic=True, simplify=False,
                                                opset=17, end2end=True))
    shape = output_shape(onnx_path, IMGSZ["det"])
    if shape != [2, MAX_DETECTIONS, 6]:  # end-to-end head, and the batch axis really dynamic
        raise SystemExit(f"expected an end-to-end output [2, {MAX_DETECTIONS}, 6] for a batch of 2, got {shape}")
    dest = MODELS / MODEL_ID
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, dest / "weights.onnx")
    # the same input as shapes-det/1: letterbox to 640, grey padding, RGB, 1/255
    spec = json.loads((MODELS / "shapes-det" / "1" / "model.json").read_text())["input"]
    write_manifest(MODEL_ID, "object-detection", ARCHITECTURE, {"weights": dest / "weights.onnx"}, list(CLASSES), spec)
    print(f"wrote {dest}: output {shape}, {(dest / 'weights.onnx').stat().st_size} bytes")
    return dest / "weights.onnx"


def evaluate() -> dict:
    """Held-out figures by Ultralytics' validator on the ONNX file, exactly as zoo/evaluate.py measures
    shapes-det/1 (the same 200 scenes), added to zoo_figures.json beside the others' entries."""
    from ultralytics import YOLO

    _write_heldout()
    m = YOLO(str(MODELS / MODEL_ID / "weights.onnx"), task="detect")
    r = m.val(data=str(WORK / "heldout" / "det.yaml"), imgsz=IMGSZ["det"], batch=1, plots=False, verbose=False,
              project=str(WORK / "val"), name=RUN_NAME, exist_ok=True)
    entry = {"box_map50": round(float(r.box.map50), 4), "box_map50_95": round(float(r.box.map), 4)}
    figures = json.loads(FIGURES.read_text())
    assert figures.get("heldout_images") == N_HELDOUT, figures.get("heldout_images")
    figures[MODEL_ID] = entry
    FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({MODEL_ID: entry}))
    return entry


def record_reference() -> Path:
    """Ultralytics' predictions on the ONNX file for the test images (the ones zoo/reference.py uses),
    in ultralytics.json's format, into a file of its own."""
    from ultralytics import YOLO

    model = YOLO(str(MODELS / MODEL_ID / "weights.onnx"), task="detect")
    per_image = {}
    for path in sorted((TESTDATA / "images").glob("*.jpg")):
        # rect=False: square letterbox to the manifest's 640x640 input, as zoo/reference.py records
        r = model.predict(str(path), imgsz=IMGSZ["det"], conf=CONF, iou=IOU, rect=False, verbose=False)[0]
        per_image[path.name] = {"shape": list(r.orig_shape), "boxes": r.boxes.xyxy.numpy().round(3).tolist(),
                                "classes": r.boxes.cls.numpy().astype(int).tolist(),
                                "confidences": r.boxes.conf.numpy().round(5).tolist()}
    reference = {"conf": CONF, "iou": IOU, "models": {MODEL_ID: per_image}}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {REFERENCE}: {sum(len(e['boxes']) for e in per_image.values())} boxes on {len(per_image)} images")
    return REFERENCE


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step == "export":  # export [weights]
        export(Path(sys.argv[2]) if len(sys.argv) > 2 else WORK / "runs" / RUN_NAME / "weights" / "last.pt")
    elif step == "evaluate":
        evaluate()
    elif step == "reference":
        record_reference()
    else:
        raise SystemExit("usage: python -m zoo.yolo26 export|evaluate|reference ... (train: python -m zoo.build train det26)")
