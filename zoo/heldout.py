"""Held-out images (a seed never used in training) with their ground truth, for tests and the zoo's figures."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from zoo.broad_shapes import broad_scene, broad_single_shape
from zoo.shapes import CLASSES, Scene, draw_scene

HELDOUT_SEED = 20261126
# Sizes chosen to exercise letterboxing: wide, tall, square, small and large.
TEST_IMAGE_SIZES = [(640, 480), (480, 640), (1000, 400), (360, 900), (512, 512), (800, 600)]


def heldout_scenes(count: int, seed: int = HELDOUT_SEED) -> list[Scene]:
    """Scenes of the training generator (``zoo/broad_shapes.py``) drawn with a seed training never used."""
    rng = np.random.default_rng(seed)
    return [broad_scene(rng) for _ in range(count)]


def heldout_cls_scenes(count: int, seed: int = HELDOUT_SEED) -> list[Scene]:
    """Classification frames of the training generator: one shape anywhere in a frame of 1:3 to 3:1."""
    rng = np.random.default_rng(seed)
    return [broad_single_shape(rng, CLASSES[i % len(CLASSES)]) for i in range(count)]


def scene_truth(scene: Scene) -> list[dict]:
    out = []
    for s in scene.shapes:
        d = {"class": s.class_name, "box": [round(v, 2) for v in s.box_xyxy],
             "polygon": np.round(s.polygon, 2).tolist()}
        if s.class_name == "triangle":
            d["corners"] = np.round(s.corners, 2).tolist()
        out.append(d)
    return out


def rotate_truth_for_exif6(truth: list[dict], upright_w: int) -> list[dict]:
    """Ground truth is given in the upright (displayed) image; nothing to change for EXIF input."""
    return truth


def write_test_images(folder: Path) -> list[Path]:
    """Fixed test images (JPEG) and ground truth JSON; one stored rotated with EXIF orientation 6."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(HELDOUT_SEED + 1)
    paths = []
    for i, size in enumerate(TEST_IMAGE_SIZES):
        scene = draw_scene(rng, size=size, max_shapes=5)
        p = folder / f"scene{i}.jpg"
        cv2.imwrite(str(p), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (folder / f"scene{i}.json").write_text(json.dumps({"width": size[0], "height": size[1],
                                                           "shapes": scene_truth(scene)}, indent=1))
        paths.append(p)
    # EXIF orientation 6 means "rotate 90 degrees clockwise to display": store the upright image
    # rotated 90 degrees counter-clockwise, so a reader that honours EXIF sees the upright scene.
    scene = draw_scene(rng, size=(640, 480), max_shapes=5)
    stored = np.ascontiguousarray(np.rot90(scene.image, k=1))  # counter-clockwise
    pil = Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = folder / "exif_rotated.jpg"
    pil.save(p, quality=92, exif=exif.tobytes())
    (folder / "exif_rotated.json").write_text(json.dumps({"width": 640, "height": 480, "shapes": scene_truth(scene)},
                                                         indent=1))
    paths.append(p)
    return paths
