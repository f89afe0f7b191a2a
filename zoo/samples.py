"""Draw the playground's sample images (one per built-in model) into ``serve_app/http/static/``.

    .venv/bin/python -m zoo.samples

The file names and the model each sample is for are ``serve_app.http.playground.SAMPLES``. The
shapes come from :mod:`zoo.shapes` with fixed seeds (a scene of every class for detection and
segmentation, triangles for keypoints, one dominant square for classification); the OCR sample
is a line of text drawn with OpenCV's Hershey font. JPEG quality 85 keeps each a few tens of KB.
"""
from __future__ import annotations

import cv2
import numpy as np

from serve_app.http.playground import SAMPLES, STATIC
from zoo.shapes import CLASSES, draw_dominant_shape, draw_scene

JPEG_QUALITY = 85
OCR_TEXT = "HELLO PLAYGROUND"


def sample_images() -> dict[str, np.ndarray]:
    """Each sample (BGR), by file name."""
    text = np.full((120, 720, 3), 255, np.uint8)
    cv2.putText(text, OCR_TEXT, (20, 80), cv2.FONT_HERSHEY_DUPLEX, 2.0, (0, 0, 0), 4, cv2.LINE_AA)
    return {
        "sample-shapes.jpg": busy_scene(CLASSES, min_shapes=5),
        "sample-triangles.jpg": busy_scene(("triangle",), min_shapes=3),
        "sample-square.jpg": draw_dominant_shape(np.random.default_rng(17), "square", size=224).image,
        "sample-text.jpg": text,
    }


def busy_scene(classes: tuple[str, ...], min_shapes: int, first_seed: int = 15) -> np.ndarray:
    """The first 640x480 scene (seeds from ``first_seed``) with ``min_shapes`` or more shapes, every
    class among them: ``draw_scene`` picks how many shapes at random, and a sample should show several."""
    for seed in range(first_seed, first_seed + 1000):
        scene = draw_scene(np.random.default_rng(seed), size=(640, 480), max_shapes=min_shapes + 1, min_extent=60,
                           max_extent=150, classes=classes)
        if len(scene.shapes) >= min_shapes and {s.class_name for s in scene.shapes} == set(classes):
            return scene.image
    raise AssertionError(f"no scene of {min_shapes} shapes of {classes} in 1000 seeds")


def main() -> None:
    images = sample_images()
    missing = {name for name, _ in SAMPLES.values()} - set(images)
    if missing:
        raise SystemExit(f"playground.SAMPLES names files this script does not draw: {sorted(missing)}")
    for name, image in images.items():
        path = STATIC / name
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        print(f"{path} {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
