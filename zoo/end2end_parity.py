"""Real end-to-end exports for the parity tests (``tests/test_end2end_parity.py``): a narrow YOLO26-seg,
YOLO26-pose and YOLOv10 exported by Ultralytics with ``end2end=True`` (output ``[B, 300, 6 + E]``,
no NMS), and Ultralytics' own predictions on those ONNX files for the test images.

Each model is built from Ultralytics' yaml (``yolo26n-seg``, ``yolo26n-pose``, ``yolov10n``) at the
zoo's width (0.125) with the shapes classes and a fixed seed. The two YOLO26 models take every tensor
of the zoo's trained YOLO26 detector (``shapes-det-26/1``'s checkpoint) whose name and shape match,
so their boxes and scores are (nearly) the detector's. The seg model's mask branch is then trained
for a few CPU minutes on 96 shapes scenes with the backbone and neck frozen (:func:`train_masks`):
a random mask branch draws ragged specks, whose comparison measures resizing, not decoding. The pose
model's keypoint branch stays random (keypoints near their anchors; decoding is what is compared),
with the shapes zoo's keypoint shape (3 keypoints: x, y, visibility). YOLOv10 is random throughout,
its batch-norm statistics set from a few shapes scenes (:func:`calibrate`), and is recorded at a low
confidence (its ``Spec.conf``) so that it has detections at all.

    # /work/zoo-venv: torch (CPU) + ultralytics 8.4; about 7 minutes on two cores (the seg training)
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/e2e/cfg /work/zoo-venv/bin/python -m zoo.end2end_parity [DET26_LAST_PT]

It writes ``tests/data/models/{yolo26-seg-e2e,yolo26-pose-e2e,yolov10-e2e}.onnx`` and
``tests/data/reference/ultralytics_end2end.json``: per model its task, conf, iou and per image the
original shape, boxes (xyxy, original pixels), classes, confidences, for seg the masks at the
original size (Ultralytics' ``ops.scale_masks`` of ``Results.masks``, as COCO RLE with plain counts)
and polygons (``masks.xy``), for pose the keypoints (x, y, conf).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from zoo.shapes import CLASSES
from zoo.yolo26 import output_shape

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = ROOT / "tests" / "data"
OUT_MODELS = TESTDATA / "models"
REFERENCE = TESTDATA / "reference" / "ultralytics_end2end.json"
WORK = Path(os.environ.get("E2E_WORK", "/tmp/e2e"))  # scratch: yamls and export folders
DET26 = ROOT / ".gpu-zoo" / "round1" / "det26" / "last.pt"  # the zoo's trained YOLO26 detector
IMGSZ = 640
WIDTH = 0.125  # the zoo's width multiple (zoo/build.py's WIDTH)
MAX_DETECTIONS = 300  # the end-to-end heads' K
SEED = 0
IOU = 0.7  # passed to both sides; end-to-end heads ignore it (no NMS)
MAX_BYTES = 3_500_000
SEG_SCENES, SEG_EPOCHS = 96, 6  # the seg model's short mask-branch training (CPU, a few minutes)
FROZEN = 23  # layers 0..22, the backbone and neck the detector's weights fill; the head (23) trains


@dataclass(frozen=True)
class Spec:
    name: str  # key in the reference, and the ONNX file's stem
    yaml_path: str  # under ultralytics/cfg/models
    task: str  # Ultralytics' task
    depth: float  # the "n" scale's depth multiple
    columns: int  # 6 + extra columns of the end-to-end output
    conf: float
    transfer: bool  # start from the matching tensors of the trained YOLO26 detector
    kpt_shape: tuple[int, int] | None = None


SPECS = (
    Spec("yolo26-seg-e2e", "26/yolo26-seg.yaml", "segment", 0.50, 6 + 32, 0.25, True),
    Spec("yolo26-pose-e2e", "26/yolo26-pose.yaml", "pose", 0.50, 6 + 3 * 3, 0.25, True, (3, 3)),
    Spec("yolov10-e2e", "v10/yolov10n.yaml", "detect", 0.33, 6, 0.01, False),
)


def model_yaml(spec: Spec) -> Path:
    """Ultralytics' yaml narrowed to the zoo's width with the three shapes classes (end2end on)."""
    import ultralytics

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "models" / spec.yaml_path).read_text())
    cfg.pop("scales", None)
    cfg.update(nc=len(CLASSES), depth_multiple=spec.depth, width_multiple=WIDTH, max_channels=1024)
    if spec.kpt_shape:
        cfg["kpt_shape"] = list(spec.kpt_shape)
    if spec.name.startswith("yolo26"):
        assert cfg.get("end2end") is True, f"{spec.yaml_path} no longer says end2end: True"
    WORK.mkdir(parents=True, exist_ok=True)
    # named as Ultralytics names its models: the export's description ("Ultralytics YOLOv10n model")
    # comes from the file name, and the server tells YOLOv10's end-to-end head from YOLO26's by it
    out = WORK / Path(spec.yaml_path).name.replace("yolo26-", "yolo26n-")
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def transfer(model, checkpoint: Path) -> tuple[int, int]:
    """Copy every tensor of ``checkpoint`` whose name and shape match into ``model``; (copied, total)."""
    import torch

    source = torch.load(checkpoint, map_location="cpu", weights_only=False)
    source = (source.get("ema") or source["model"]).float().state_dict()
    target = model.state_dict()
    same = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    model.load_state_dict(same, strict=False)
    return len(same), len(target)


def calibrate(model, n_scenes: int = 8) -> None:
    """Set every batch-norm layer's statistics from a few shapes scenes (no gradient, weights kept).
    With the default statistics a randomly initialised network's activations fade layer by layer,
    and its end-to-end output is one constant row repeated 300 times (every score the class bias's
    sigmoid, 0.00415): no order, nothing to compare. Calibrated, scores and boxes follow the image."""
    import cv2
    import torch

    from zoo.shapes import draw_scene

    rng = np.random.default_rng(SEED)
    images = [cv2.resize(draw_scene(rng).image, (IMGSZ, IMGSZ))[:, :, ::-1] for _ in range(n_scenes)]
    x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()).float() / 255
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def seg_data(count: int = SEG_SCENES) -> Path:
    """``count`` shapes scenes (``zoo.shapes.draw_scene``, seeded) with YOLO polygon labels, and their yaml."""
    import cv2

    from zoo.shapes import draw_scene

    root = WORK / "seg-data"
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 1)
    for i in range(count):
        scene = draw_scene(rng)
        h, w = scene.image.shape[:2]
        cv2.imwrite(str(root / "images" / "train" / f"{i:04d}.jpg"), scene.image)
        lines = [f"{s.class_id} " + " ".join(f"{min(max(x / w, 0), 1):.6f} {min(max(y / h, 0), 1):.6f}"
                                             for x, y in s.polygon) for s in scene.shapes]
        (root / "labels" / "train" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/train",
                                    "names": dict(enumerate(CLASSES))}))
    return data


def train_masks(spec: Spec, checkpoint: Path) -> Path:
    """The seg model started from the detector (``pretrained``: the tensors of the same name and shape)
    with its backbone and neck frozen, trained briefly on shapes scenes so that its mask branch draws
    blobs over the shapes rather than the ragged noise of a random one (whose masks of a few pixels
    would measure resizing, not decoding). Returns its last.pt."""
    from ultralytics import YOLO
    from ultralytics.engine.trainer import BaseTrainer

    BaseTrainer.read_results_csv = lambda self: {}  # polars may be missing (zoo/build.py's _without_polars)
    yolo = YOLO(str(model_yaml(spec)), task=spec.task)
    yolo.train(data=str(seg_data()), epochs=SEG_EPOCHS, imgsz=IMGSZ, batch=8, workers=0, seed=SEED,
               deterministic=True, pretrained=str(checkpoint), freeze=FROZEN, project=str(WORK / "runs"),
               name=spec.name, exist_ok=True, plots=False, val=False, amp=False, device="cpu", mosaic=0.0,
               verbose=False)
    return WORK / "runs" / spec.name / "weights" / "last.pt"


def build(spec: Spec, checkpoint: Path):
    """The seeded model as a ``YOLO`` object, with the shapes class names."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import init_seeds

    init_seeds(SEED, deterministic=True)
    if spec.task == "segment":
        yolo = YOLO(str(train_masks(spec, checkpoint)), task=spec.task)
        yolo.model.names = dict(enumerate(CLASSES))
        return yolo
    yolo = YOLO(str(model_yaml(spec)), task=spec.task)
    if spec.transfer:
        copied, total = transfer(yolo.model, checkpoint)
        print(f"{spec.name}: {copied}/{total} tensors from {checkpoint}")
    else:
        calibrate(yolo.model)
    yolo.model.names = dict(enumerate(CLASSES))
    return yolo


def export(spec: Spec, yolo) -> Path:
    """ONNX with the end-to-end head and a dynamic batch, as zoo/yolo26.py exports shapes-det-26/1."""
    with contextlib.chdir(WORK):  # the export lands in the working directory
        onnx_path = WORK / yolo.export(format="onnx", imgsz=IMGSZ, dynamic=True, simplify=False, opset=17,
                                       end2end=True)
    shape = output_shape(onnx_path, IMGSZ)
    if shape != [2, MAX_DETECTIONS, spec.columns]:
        raise SystemExit(f"{spec.name}: expected an end-to-end output [2, {MAX_DETECTIONS}, {spec.columns}], got {shape}")
    OUT_MODELS.mkdir(parents=True, exist_ok=True)
    dest = OUT_MODELS / f"{spec.name}.onnx"
    shutil.copy(onnx_path, dest)
    assert dest.stat().st_size <= MAX_BYTES, (dest, dest.stat().st_size)
    print(f"wrote {dest}: output {shape}, {dest.stat().st_size} bytes")
    return dest


def rle(mask: np.ndarray) -> dict:
    """COCO run-length encoding with plain counts (column-major, starting with a run of zeros)."""
    from serve_app.tasks.masks import rle_counts

    return {"size": list(mask.shape), "counts": rle_counts(mask)}


def _masks_at_original(result) -> list[np.ndarray]:
    """Ultralytics' masks (input resolution, letterboxed) mapped to the original image by its own
    ``ops.scale_masks`` (padding cropped, bilinear resize), thresholded at 0.5."""
    from ultralytics.utils import ops

    scaled = ops.scale_masks(result.masks.data[None].float(), result.orig_shape)[0]  # (N, H, W)
    return list(scaled.numpy() > 0.5)


def record(spec: Spec, onnx_path: Path) -> dict:
    """Ultralytics' predictions on ``onnx_path`` for every test image."""
    from ultralytics import YOLO

    model = YOLO(str(onnx_path), task=spec.task)
    per_image = {}
    for path in sorted((TESTDATA / "images").glob("*.jpg")):
        # rect=False: square letterbox to 640x640, the server's input (a dynamic export would pad minimally)
        r = model.predict(str(path), imgsz=IMGSZ, conf=spec.conf, iou=IOU, rect=False, verbose=False)[0]
        entry = {"shape": list(r.orig_shape), "boxes": r.boxes.xyxy.numpy().round(3).tolist(),
                 "classes": r.boxes.cls.numpy().astype(int).tolist(),
                 "confidences": r.boxes.conf.numpy().round(5).tolist()}
        if spec.task == "segment":
            entry["masks"] = [rle(m) for m in _masks_at_original(r)] if r.masks is not None else []
            entry["polygons"] = [np.round(p, 2).tolist() for p in r.masks.xy] if r.masks is not None else []
        if spec.task == "pose":
            entry["keypoints"] = r.keypoints.data.numpy().round(3).tolist()
        per_image[path.name] = entry
    return {"task": spec.task, "conf": spec.conf, "iou": IOU, "images": per_image}


def main(checkpoint: Path = DET26) -> Path:
    import ultralytics

    assert checkpoint.is_file(), f"{checkpoint}: the zoo's YOLO26 detector checkpoint (zoo/yolo26.py) is missing"
    reference = {"ultralytics": ultralytics.__version__, "imgsz": IMGSZ, "det26_checkpoint": checkpoint.name,
                 "models": {}}
    for spec in SPECS:
        onnx_path = export(spec, build(spec, checkpoint))
        reference["models"][spec.name] = record(spec, onnx_path)
        n = sum(len(e["boxes"]) for e in reference["models"][spec.name]["images"].values())
        print(f"{spec.name}: {n} detections on {len(reference['models'][spec.name]['images'])} images")
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(reference, separators=(",", ":")) + "\n")
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes)")
    return REFERENCE


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DET26)
