"""Rebuild the built-in model repository from nothing (fixed seeds).

    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=$PWD/.cache/yolo .venv-zoo/bin/python -m zoo.build all

Steps (each can be run alone): ``data`` draws the synthetic data sets (``zoo/broad_shapes.py``:
the broad generator), ``train <task>`` trains a narrow YOLOv8 (width 0.125) for det, seg, pose or
cls (or the YOLO26 ``det26``, ``zoo/yolo26.py``), ``export`` writes ONNX files and manifests
into ``configs/models``, ``v5`` derives ``shapes-det-v5/1`` by an ONNX graph rewrite, ``evaluate``
measures held-out accuracy with Ultralytics' own validator on the exported ONNX files, and
``reference`` records Ultralytics' predictions on the test images as JSON for the parity tests.
Needs torch, torchvision and ultralytics (see ``zoo/requirements.txt``); the server does not.
Progress: tqdm bars (with ETAs) while the data sets are drawn and the models exported; ``all``
logs each step as ``[i/n]`` with the time so far; Ultralytics shows its own bar per epoch.

How the committed weights were made (device time is 30 minutes a session, so in time-bounded
calls of ``zoo/gpu_train.sh`` on one H200, all kinds side by side; the CPU does the rest):

1. ``bash zoo/gpu_train.sh OUT 0.12``: 0.12 h each from random weights. det 25 epochs (kept:
   ``shapes-det/1``, and ``shapes-det-v5/1`` derived from it), seg 11, pose 24, det26 20; cls
   stayed at chance (RandAugment's black wedges, since turned off) and was dropped.
2. ``KINDS="seg pose det26 cls" WORKERS=4 bash zoo/gpu_train.sh OUT 0.125 ROUND1``: seg +14,
   pose +33 (with the corner sigmas above; kept), det26 +24 (kept), cls 37 epochs from round 1's
   det backbone on frames whose shape reached 0.45 of the short side.
3. ``KINDS=seg WORKERS=14 bash zoo/gpu_train.sh OUT 0.1 ROUND2``: seg +24 (kept).
4. On the CPU: cls 6 epochs more from step 2's weights on 3,000 frames of the final
   ``broad_single_shape`` (shapes up to 0.9 of the short side: the frame-filling photos step 2
   never saw), i.e. ``train("cls", "cpu", 2, 32, start=...)`` with ``N_CLS_TRAIN = 3000`` and
   ``EPOCHS["cls"] = 6`` (kept).
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

from zoo.broad_shapes import broad_scene, broad_single_shape
from zoo.shapes import CLASSES, Scene

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("ZOO_WORK", ROOT / ".cache" / "zoo"))  # scratch: data sets and training runs
MODELS = ROOT / "configs" / "models"
TESTDATA = ROOT / "tests" / "data"
IMGSZ = {"det": 640, "seg": 640, "pose": 640, "cls": 256}  # training and export
# The size the manifest serves (and Ultralytics' figures and references are measured at); the export
# is dynamic in height and width, so it may differ from the training size. shapes-seg/1 is trained at
# 640 but served at 1152: its 4x-downsampled prototype masks are then 288 px instead of 160 and no
# longer round the triangles' corners (independent generator, mask IoU >= 0.9: 79.9% at 640, 95.5% at
# 1152, about 2.75x the CPU time per image); see the README's built-in models section.
SERVE_IMGSZ = {**IMGSZ, "seg": 1152}
EPOCHS = {"det": 40, "seg": 40, "pose": 40, "cls": 40}
TRAIN_SEED, VAL_SEED, HELDOUT_SEED = 11, 12, 20261126  # 11, 12: the broad generator's data (1, 2 were the first one's)
N_TRAIN, N_VAL, N_CLS_TRAIN, N_CLS_VAL = 4000, 100, 6000, 150
# classification looks at the whole frame, letterboxed: a small shape off-centre is not cropped away
CLS_INPUT = {"width": IMGSZ["cls"], "height": IMGSZ["cls"], "resize": "letterbox", "pad_color": [114, 114, 114],
             "channel_order": "rgb", "scale": 1 / 255}
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
    rng = np.random.default_rng([seed, i])  # one generator per image: parallel and reproducible
    scene = broad_scene(rng)
    jpeg = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])[1].tobytes()
    for kind in ("det", "seg", "pose"):
        img_dir = WORK / "data" / kind / "images" / split
        lbl_dir = WORK / "data" / kind / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        (img_dir / f"{i:05d}.jpg").write_bytes(jpeg)
        (lbl_dir / f"{i:05d}.txt").write_text("\n".join(_label_lines(scene, kind)) + "\n")


def letterboxed(image: np.ndarray) -> np.ndarray:
    """The classifier's input as the server makes it (``CLS_INPUT``), still BGR uint8."""
    from serve_app.pipeline.preprocess import InputSpec, resize_to_input

    spec = InputSpec(**{**CLS_INPUT, "pad_color": tuple(CLS_INPUT["pad_color"])})
    return resize_to_input(image, spec)[0]


def _write_cls_example(args: tuple[int, int, str]) -> None:
    seed, i, split = args
    rng = np.random.default_rng([seed, i])
    name = CLASSES[i % len(CLASSES)]
    d = WORK / "data" / "cls" / split / name
    d.mkdir(parents=True, exist_ok=True)
    frame = broad_single_shape(rng, name).image
    cv2.imwrite(str(d / f"{i:05d}.jpg"), letterboxed(frame), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])


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
            "names": {0: "triangle"}, "kpt_shape": [3, 3], "flip_idx": [0, 2, 1],
            # corners are exact points: Ultralytics' default for a custom skeleton (1/3 each) makes
            # the keypoint loss all but flat for errors of a few pixels
            "kpt_oks_sigmas": [0.05, 0.05, 0.05]}
    (WORK / "data" / "pose.yaml").write_text(yaml.safe_dump(pose))
    jobs = [(TRAIN_SEED, i, "train") for i in range(N_CLS_TRAIN)] + [(VAL_SEED, i, "val") for i in range(N_CLS_VAL)]
    with Pool() as pool:
        for _ in tqdm(pool.imap_unordered(_write_cls_example, jobs, chunksize=32), total=len(jobs),
                      desc="cls images", unit="img"):
            pass


TASKS = {"det": "detect", "seg": "segment", "pose": "pose", "cls": "classify", "det26": "detect"}
DATA = {"det": "det", "seg": "seg", "pose": "pose", "cls": "cls", "det26": "det"}  # det26 trains on det's data


def _model_yaml(kind: str) -> Path:
    import ultralytics

    if kind == "det26":
        from zoo.yolo26 import model_yaml

        return model_yaml()
    base = {"det": "yolov8.yaml", "seg": "yolov8-seg.yaml", "pose": "yolov8-pose.yaml", "cls": "yolov8-cls.yaml"}[kind]
    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8" / base).read_text())
    cfg.pop("scales", None)
    cfg.update(depth_multiple=0.33, width_multiple=WIDTH, max_channels=1024)
    if kind == "pose":
        cfg.update(nc=1, kpt_shape=[3, 3])
    else:
        cfg["nc"] = len(CLASSES)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"shapes-{kind}.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def _without_polars() -> None:
    """The GPU machine lacks polars; the trainer imports it only to copy results.csv into each
    checkpoint, so that copy is left out there."""
    import importlib.util

    if importlib.util.find_spec("polars") is None:
        from ultralytics.engine.trainer import BaseTrainer

        BaseTrainer.read_results_csv = lambda self: {}


def train(kind: str, device: str = "cpu", workers: int = 2, batch: int = 16, out: Path | None = None,
          start: Path | None = None, hours: float = 0.0, init: Path | None = None) -> Path:
    """Train one model (det, seg, pose, cls or det26) and return its last.pt.

    From random weights, or from ``start``'s to continue an earlier run. ``hours`` > 0 trains for
    that long instead of ``EPOCHS`` (Ultralytics' time mode refits the epochs, the learning-rate
    schedule and the mosaic closing after the first epoch); device time is scarce. ``init``: weights
    of another kind whose layers of the same name and shape start this model (the classifier starts
    from the detector's backbone: from random weights it never left chance on the broad frames,
    where a shape can be 10 px of a 256 px input). ``out``: last.pt
    is copied there after every epoch, so a call that runs out of time still returns weights.
    Augmentation: Ultralytics' defaults (mosaic, scale, translate, HSV, left-right flips, which
    keep the triangles' corner order through flip_idx), no rotation (it would break "top first"),
    and for cls none that crops (the frame is seen whole, letterboxed, as the server sends it).
    """
    from ultralytics import YOLO

    _without_polars()
    began = time.time()

    def copy_out(trainer) -> None:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(trainer.last, out / "last.pt")
        print(f"{kind}: epoch {trainer.epoch + 1}/{trainer.epochs} saved at {time.time() - began:.0f} s", flush=True)

    model = YOLO(str(start or _model_yaml(kind)), task=TASKS[kind])
    model.add_callback("on_model_save", copy_out)
    data = str(WORK / "data" / "cls") if kind == "cls" else str(WORK / "data" / f"{DATA[kind]}.yaml")
    # nothing may cut the only shape away or draw new edges (RandAugment's shears and rotations fill
    # wedges of black, which look like triangles in every class)
    extra = {"erasing": 0.0, "scale": 0.0, "auto_augment": None} if kind == "cls" else {}
    model.train(**extra, data=data, epochs=EPOCHS[DATA[kind]], time=hours or None, imgsz=IMGSZ[DATA[kind]],
                batch=batch, workers=workers, seed=0, deterministic=False, project=str(WORK / "runs"), name=kind,
                exist_ok=True, plots=False, val=False, cache="ram", close_mosaic=10,
                pretrained=str(init) if init else start is not None,
                amp=False, device=device, verbose=False)
    print(f"{kind}: trained in {time.time() - began:.0f} s", flush=True)
    return WORK / "runs" / kind / "weights" / "last.pt"


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


def export(kinds: list[str] | None = None, runs: Path | None = None) -> None:
    """ONNX files and manifests from ``runs/<kind>/weights/last.pt`` (or ``runs/<kind>/last.pt``,
    as the GPU calls return them)."""
    from ultralytics import YOLO

    runs = runs or WORK / "runs"
    for kind, model_id in tqdm([(k, m) for k, m in MODEL_IDS.items() if not kinds or k in kinds],
                               desc="export", unit="model"):
        weights = runs / kind / "weights" / "last.pt"
        weights = weights if weights.exists() else runs / kind / "last.pt"
        onnx_path = Path(YOLO(str(weights)).export(format="onnx", imgsz=IMGSZ[kind], dynamic=True, simplify=False,
                                                    opset=17))
        dest = MODELS / model_id
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(onnx_path, dest / "weights.onnx")
        size = SERVE_IMGSZ[kind]
        if kind == "cls":
            spec = dict(CLS_INPUT)
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
    elif step == "train":
        import argparse

        p = argparse.ArgumentParser(prog="python -m zoo.build train")
        p.add_argument("kind", choices=sorted(TASKS))
        p.add_argument("--device", default="cpu")
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--out", type=Path, help="copy last.pt here after every epoch")
        p.add_argument("--start", type=Path, help="weights to continue from")
        p.add_argument("--hours", type=float, default=0.0, help="train for this long instead of the epochs")
        p.add_argument("--init", type=Path, help="another kind's weights to start matching layers from")
        a = p.parse_args(sys.argv[2:])
        train(a.kind, a.device, a.workers, a.batch, a.out, a.start, a.hours, a.init)
    elif step == "export":  # export [RUNS_DIR [KIND...]]
        export(sys.argv[3:] or None, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    elif step == "v5":
        derive_v5()
    elif step == "evaluate":  # evaluate [KIND...]
        from zoo.evaluate import evaluate_all
        evaluate_all(sys.argv[2:] or None)
    elif step == "reference":  # reference [MODEL_ID...]
        from zoo.reference import record_all
        record_all(sys.argv[2:] or None)
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
