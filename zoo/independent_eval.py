"""The built-in shapes models on images from the independent generator (``zoo/independent_shapes.py``).

    .venv/bin/python -m zoo.independent_eval        # writes "independent" into configs/models/zoo_figures.json

What the issue asks of them, measured on images they were never trained on (fixed seeds, the CPU
provider, so the figures are exactly reproducible; ``tests/test_independent_eval.py`` recomputes
them and compares):

- detectors: precision and recall at box IoU 0.5 (confidence 0.4, NMS IoU 0.5), overall and by the
  frame's orientation (portrait, landscape, square within 10%);
- segmentation: the share of drawn objects whose mask IoU is at least 0.9 (unmatched objects count
  as misses), overall and by class, and its boxes' recall and precision as the detectors';
- keypoints: the share of drawn triangles whose three corners, in the model's order (top, then
  clockwise), each lie within 5% of the triangle's size of the truth;
- classification: top-1 on one shape anywhere in a non-square frame (aspect at least 1.3), under
  the model's own preprocessing and under a letterbox of the whole frame.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

import numpy as np

from serve_app.tasks.params import InferenceParams
from zoo.independent_shapes import IndependentScene, independent_scene
from zoo.matching import MODELS, builtin, mask_iou, match, polygon_mask

SEED = 20261201
N_SCENES = 60
N_CLS = 60
PARAMS = InferenceParams(confidence=0.4, iou_threshold=0.5)
DETECTORS = ("shapes-det/1", "shapes-det-v5/1", "shapes-det-26/1")
FIGURES = MODELS / "zoo_figures.json"


def scenes(n: int = N_SCENES, seed: int = SEED, **kwargs) -> list[IndependentScene]:
    rng = np.random.default_rng(seed)
    return [independent_scene(rng, **kwargs) for _ in range(n)]


def orientation(scene: IndependentScene) -> str:
    h, w = scene.image.shape[:2]
    return "square" if max(h, w) / min(h, w) < 1.1 else ("portrait" if h > w else "landscape")


def detection_scores(model_id: str, images: Iterable[IndependentScene]) -> dict:
    model = builtin(model_id)
    counts: dict[str, list[int]] = {}  # orientation -> [found, truth, predicted]
    for scene in images:
        preds = model.predict([scene.image], PARAMS)[0]["predictions"]
        boxes = np.array([s.box_xyxy for s in scene.shapes]).reshape(-1, 4)
        found = len(match(boxes, [s.class_name for s in scene.shapes], preds, 0.5))
        for key in ("all", orientation(scene)):
            c = counts.setdefault(key, [0, 0, 0])
            c[0] += found
            c[1] += len(scene.shapes)
            c[2] += len(preds)
    return {key: {"recall": round(f / t, 4), "precision": round(f / max(p, 1), 4), "objects": t}
            for key, (f, t, p) in sorted(counts.items())}


def mask_scores(images: Iterable[IndependentScene], model_id: str = "shapes-seg/1") -> dict:
    model = builtin(model_id)
    counts: dict[str, list[int]] = {}  # class -> [mask IoU >= 0.9, objects]
    matched = predicted = 0
    for scene in images:
        preds = model.predict([scene.image], PARAMS)[0]["predictions"]
        predicted += len(preds)
        boxes = np.array([s.box_xyxy for s in scene.shapes]).reshape(-1, 4)
        hw = scene.image.shape[:2]
        for shape in scene.shapes:
            counts.setdefault(shape.class_name, [0, 0])[1] += 1
        for i, j in match(boxes, [s.class_name for s in scene.shapes], preds, 0.5):
            points = np.array([[p["x"], p["y"]] for p in preds[j]["points"]])
            good = mask_iou(polygon_mask(scene.shapes[i].polygon, hw), polygon_mask(points, hw)) >= 0.9
            counts[scene.shapes[i].class_name][0] += int(good)
            matched += 1
    good, total = (sum(c[k] for c in counts.values()) for k in (0, 1))
    return {"mask_iou_0.9": round(good / total, 4), "objects": total,
            "recall": round(matched / total, 4), "precision": round(matched / max(predicted, 1), 4),
            "by_class": {name: {"mask_iou_0.9": round(g / t, 4), "objects": t}
                         for name, (g, t) in sorted(counts.items())}}


def keypoint_scores(images: Iterable[IndependentScene], model_id: str = "shapes-pose/1") -> dict:
    model = builtin(model_id)
    good = total = 0
    for scene in images:
        triangles = [s for s in scene.shapes if s.class_name == "triangle"]
        if not triangles:
            continue
        preds = model.predict([scene.image], PARAMS)[0]["predictions"]
        boxes = np.array([s.box_xyxy for s in triangles]).reshape(-1, 4)
        pairs = dict(match(boxes, ["triangle"] * len(triangles), preds, 0.5))
        for i, shape in enumerate(triangles):
            total += 1
            if i in pairs:
                kps = np.array([[k["x"], k["y"]] for k in preds[pairs[i]]["keypoints"]])
                good += len(kps) == 3 and bool(np.all(np.linalg.norm(kps - shape.corners, axis=1)
                                                      <= 0.05 * shape.diameter))
    return {"corners_within_5pct": round(good / total, 4), "triangles": total}


def classification_scores(model_id: str = "shapes-cls/1", n: int = N_CLS) -> dict:
    model = builtin(model_id)
    images = scenes(n, SEED + 1, max_shapes=1, min_aspect=1.3)
    out = {}
    for resize in (model.manifest.input.resize, "letterbox"):
        spec = dataclasses.replace(model.manifest.input, resize=resize)
        viewed = dataclasses.replace(model, manifest=dataclasses.replace(model.manifest, input=spec))
        right = sum(viewed.predict([s.image])[0]["top"] == s.shapes[0].class_name for s in images)
        out[resize] = round(right / len(images), 4)
    return {"top1": out, "images": len(images)}


def evaluate() -> dict:
    images = scenes()
    figures: dict = {"generator": "zoo/independent_shapes.py", "seed": SEED, "scenes": len(images)}
    for model_id in DETECTORS:
        if (MODELS / model_id / "model.json").exists():
            figures[model_id] = detection_scores(model_id, images)
    figures["shapes-seg/1"] = mask_scores(images)
    figures["shapes-pose/1"] = keypoint_scores(images)
    figures["shapes-cls/1"] = classification_scores()
    return figures


def main() -> None:
    figures = json.loads(FIGURES.read_text())
    figures["independent"] = evaluate()
    FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures["independent"], indent=1))


if __name__ == "__main__":
    main()
