"""Rebuild the built-in model repository from nothing (fixed seeds).

    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$PWD/.cache/yolo .venv-zoo/bin/python -m zoo.build all

Steps (each can be run alone): ``data`` draws the synthetic data sets, ``train <task>`` trains a
narrow YOLOv8 (width 0.125) for det, seg, pose or cls, ``export`` writes ONNX files and manifests
into ``configs/models``, ``v5`` derives ``shapes-det-v5/1`` by an ONNX graph rewrite, ``evaluate``
measures held-out accuracy with Ultralytics' own validator on the exported ONNX files, and
``reference`` records Ultralytics' predictions on the test images as JSON for the parity tests.
Needs torch, torchvision and ultralytics (see ``zoo/requirements.txt``); the server does not.
Progress: tqdm bars (with ETAs) while the data sets are drawn and the models exported; ``all``
logs each step as ``[i/n]`` with the time so far; Ultralytics shows its own bar per epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from zoo.shapes import CLASSES, Scene, draw_dominant_shape, draw_scene

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("ZOO_WORK", ROOT / ".cache" / "zoo"))  # scratch: data sets and training runs
MODELS = ROOT / "configs" / "models"
TESTDATA = ROOT / "tests" / "data"
IMGSZ = {"det": 640, "seg": 640, "pose": 640, "cls": 128}
EPOCHS = {"det": 40, "seg": 40, "pose": 40, "cls": 40}
TRAIN_SEED, VAL_SEED, HELDOUT_SEED = 1, 2, 20261126
N_TRAIN, N_VAL, N_CLS_TRAIN, N_CLS_VAL = 2000, 100, 3000, 150
WIDTH = 0.125
MODEL_IDS = {"det": "shapes-det/1", "seg": "shapes-seg/1", "pose": "shapes-pose/1", "cls": "shapes-cls/1"}
TASK_NAMES = {"det": "object-detection", "seg": "instance-segmentation", "pose": "keypoint-detection",
              "cls": "classification"}
ARCH = {"det": "yolov8", "seg": "yolov8-seg", "pose": "yolov8-pose", "cls": "yolov8-cls"}
KEYPOINT_NAMES = ["top", "second_clockwise", "third_clockwise"]
KEYPOINT_SKELETON = [[0, 1], [1, 2], [2, 0]]
CLASS_COLOURS = {"circle": "#FF3838", "square": "#2C99A8", "triangle": "#FFB21D"}


def _norm(v: float, size: int) -> float:
    return min(max(v / size, 0.0), 1.0)


def _label_lines(scene: Scene, kind: str) -> list[str]:
    h, w = scene.image.shape[:2]
    lines = []
    for s in scene.shapes:
        x0, y0, x1, y1 = s.box_xyxy
        box = f"{_norm((x0 + x1) / 2, w):.6f} {_norm((y0 + y1) / 2, h):.6f} {_norm(x1 - x0, w):.6f} {_norm(y1 - y0, h):.6f}"
        if kind == "det":
            lines.append(f"{s.class_id} {box}")
        elif kind == "seg":
            pts = " ".join(f"{_norm(x, w):.6f} {_norm(y, h):.6f}" for x, y in s.polygon)
            lines.append(f"{s.class_id} {pts}")
        elif kind == "pose" and s.class_name == "triangle":
            kps = " ".join(f"{_norm(x, w):.6f} {_norm(y, h):.6f} 2" for x, y in s.corners)
            lines.append(f"0 {box} {kps}")
    return lines


def _write_example(args: tuple[int, int, str]) -> None:
    seed, i, split = args
    scene = draw_scene(np.random.default_rng([seed, i]))  # one generator per image: parallel and reproducible
    for kind in ("det", "seg", "pose"):
        img_dir = WORK / "data" / kind / "images" / split
        lbl_dir = WORK / "data" / kind / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_dir / f"{i:05d}.jpg"), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (lbl_dir / f"{i:05d}.txt").write_text("\n".join(_label_lines(scene, kind)) + "\n")


def make_data() -> None:
    """Write YOLO-format data sets for det, seg, pose (same images) and cls."""
    from multiprocessing import Pool

    jobs = [(TRAIN_SEED, i, "train") for i in range(N_TRAIN)] + [(VAL_SEED, i, "val") for i in range(N_VAL)]
    with Pool() as pool:
        for _ in tqdm(pool.imap_unordered(_write_example, jobs, chunksize=16), total=len(jobs),
                      desc="det/seg/pose images", unit="img"):
            pass
    for kind in ("det", "seg"):
        data = {"path": str(WORK / "data" / kind), "train": "images/train", "val": "images/val",
                "names": dict(enumerate(CLASSES))}
        (WORK / "data" / f"{kind}.yaml").write_text(yaml.safe_dump(data))
    pose = {"path": str(WORK / "data" / "pose"), "train": "images/train", "val": "images/val",
            "names": {0: "triangle"}, "kpt_shape": [3, 3], "flip_idx": [0, 2, 1]}
    (WORK / "data" / "pose.yaml").write_text(yaml.safe_dump(pose))
    rng = np.random.default_rng(TRAIN_SEED)
    for split, count in (("train", N_CLS_TRAIN), ("val", N_CLS_VAL)):
        for i in tqdm(range(count), desc=f"cls {split} images", unit="img"):
            name = CLASSES[i % len(CLASSES)]
            d = WORK / "data" / "cls" / split / name
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{i:05d}.jpg"), draw_dominant_shape(rng, name).image)


def _model_yaml(kind: str) -> Path:
    import ultralytics

    base = {"det": "yolov8.yaml", "seg": "yolov8-seg.yaml", "pose": "yolov8-pose.yaml", "cls": "yolov8-cls.yaml"}[kind]
    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8" / base).read_text())
    cfg.pop("scales", None)
    cfg.update(depth_multiple=0.33, width_multiple=WIDTH, max_channels=1024)
    if kind == "pose":
        cfg.update(nc=1, kpt_shape=[3, 3])
    else:
        cfg["nc"] = len(CLASSES)
    out = WORK / f"shapes-{kind}.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def train(kind: str, device: str = "cpu", workers: int = 2, batch: int = 16) -> None:
    """Train one model. The committed weights were trained with ``--device 0`` on one H100 (same seeds)."""
    from ultralytics import YOLO

    model = YOLO(str(_model_yaml(kind)), task={"det": "detect", "seg": "segment", "pose": "pose", "cls": "classify"}[kind])
    data = str(WORK / "data" / "cls") if kind == "cls" else str(WORK / "data" / f"{kind}.yaml")
    extra = {"erasing": 0.0} if kind == "cls" else {}  # random erasing can cut a corner off the only shape
    model.train(**extra, data=data, epochs=EPOCHS[kind], imgsz=IMGSZ[kind], batch=batch, workers=workers, seed=0,
                deterministic=False, project=str(WORK / "runs"), name=kind, exist_ok=True, plots=False, val=False,
                cache="ram", close_mosaic=10, pretrained=False, amp=False, device=device, verbose=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(model_id: str, task: str, architecture: str, files: dict[str, Path], classes: list[str],
                   input_spec: dict, extras: dict | None = None) -> None:
    manifest = {
        "model_id": model_id,
        "task": task,
        "architecture": architecture,
        "files": {name: {"path": p.name, "sha256": _sha256(p), "size": p.stat().st_size} for name, p in files.items()},
        "classes": classes,
        "class_colors": {c: CLASS_COLOURS.get(c, "#A351FB") for c in classes},
        "input": input_spec,
        "preprocessing": {"auto_orient": True},
        **(extras or {}),
    }
    (MODELS / model_id / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")


def export(kinds: list[str] | None = None) -> None:
    from ultralytics import YOLO

    for kind, model_id in tqdm([(k, m) for k, m in MODEL_IDS.items() if not kinds or k in kinds],
                               desc="export", unit="model"):
        weights = WORK / "runs" / kind / "weights" / "last.pt"
        onnx_path = Path(YOLO(str(weights)).export(format="onnx", imgsz=IMGSZ[kind], dynamic=True, simplify=False,
                                                    opset=17))
        dest = MODELS / model_id
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(onnx_path, dest / "weights.onnx")
        size = IMGSZ[kind]
        if kind == "cls":
            spec = {"width": size, "height": size, "resize": "center-crop", "channel_order": "rgb", "scale": 1 / 255}
        else:
            spec = {"width": size, "height": size, "resize": "letterbox", "pad_color": [114, 114, 114],
                    "channel_order": "rgb", "scale": 1 / 255}
        extras = {}
        classes = list(CLASSES)
        if kind == "pose":
            classes = ["triangle"]
            extras = {"keypoints": {"names": KEYPOINT_NAMES, "skeleton": KEYPOINT_SKELETON}}
        write_manifest(model_id, TASK_NAMES[kind], ARCH[kind], {"weights": dest / "weights.onnx"}, classes, spec, extras)


def derive_v5() -> None:
    """shapes-det-v5/1: shapes-det/1 with its output rewritten into YOLOv5's layout.

    YOLOv8 gives ``[B, 4+C, N]`` class scores; YOLOv5 gives ``[B, N, 5+C]`` with an objectness and
    class probabilities whose product is the confidence.  The appended graph transposes, takes
    objectness = max class score and class probability = score / objectness, so objectness times
    probability equals the YOLOv8 score exactly and both models must give the same detections.
    """
    import onnx
    from onnx import helper, TensorProto

    src = MODELS / "shapes-det" / "1" / "weights.onnx"
    model = onnx.load(str(src))
    graph = model.graph
    old_out = graph.output[0]
    name = old_out.name
    nc = len(CLASSES)
    consts = [
        helper.make_tensor("v5_split", TensorProto.INT64, [2], [4, nc]),
        helper.make_tensor("v5_eps", TensorProto.FLOAT, [], [1e-9]),
    ]
    graph.initializer.extend(consts)
    nodes = [
        helper.make_node("Transpose", [name], ["v5_t"], perm=[0, 2, 1]),
        helper.make_node("Split", ["v5_t", "v5_split"], ["v5_box", "v5_cls"], axis=2),
        helper.make_node("ReduceMax", ["v5_cls"], ["v5_obj"], axes=[2], keepdims=1),
        helper.make_node("Max", ["v5_obj", "v5_eps"], ["v5_obj_safe"]),
        helper.make_node("Div", ["v5_cls", "v5_obj_safe"], ["v5_prob"]),
        helper.make_node("Concat", ["v5_box", "v5_obj", "v5_prob"], ["output0_v5"], axis=2),
    ]
    graph.node.extend(nodes)
    graph.output.remove(old_out)
    graph.output.append(helper.make_tensor_value_info("output0_v5", TensorProto.FLOAT, ["batch", "anchors", 5 + nc]))
    for prop in model.metadata_props:
        if prop.key == "description":
            prop.value = "shapes-det/1 rewritten to the YOLOv5 output layout"
    onnx.checker.check_model(model)
    dest = MODELS / "shapes-det-v5" / "1"
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "weights.onnx"))
    spec = json.loads((MODELS / "shapes-det" / "1" / "model.json").read_text())["input"]
    write_manifest("shapes-det-v5/1", "object-detection", "yolov5", {"weights": dest / "weights.onnx"}, list(CLASSES), spec)


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else "all"
    if step == "data":
        make_data()
    elif step == "train":  # train <kind> [device] [workers] [batch]
        kind = sys.argv[2]
        train(kind, *(sys.argv[3:4] or ["cpu"]), *[int(v) for v in sys.argv[4:6]])
    elif step == "export":
        export(sys.argv[2:] or None)
    elif step == "v5":
        derive_v5()
    elif step == "evaluate":
        from zoo.evaluate import evaluate_all
        evaluate_all()
    elif step == "reference":
        from zoo.reference import record_all
        record_all()
    elif step == "all":
        from zoo.evaluate import evaluate_all
        from zoo.reference import record_all

        steps = [("data", make_data), *((f"train {k}", lambda k=k: train(k)) for k in MODEL_IDS), ("export", export),
                 ("v5", derive_v5), ("evaluate", evaluate_all), ("reference", record_all)]
        began = time.monotonic()
        for i, (name, run) in enumerate(steps, 1):
            print(f"[{i}/{len(steps)}] {name} ({time.monotonic() - began:.0f} s so far)", file=sys.stderr, flush=True)
            run()
        print(f"done: {len(steps)} steps in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    else:
        raise SystemExit(f"unknown step {step!r}")
