"""Install the built-in OCR model ``ocr/1`` and record rapidocr's reading of test images.

    .venv-zoo/bin/python -m zoo.ocr_reference          # both steps
    .venv-zoo/bin/python -m zoo.ocr_reference model    # only configs/models/ocr/1
    .venv-zoo/bin/python -m zoo.ocr_reference reference

``model`` copies PP-OCRv4's detector and recogniser from the installed ``rapidocr-onnxruntime``
(1.4.4) package, writes the recogniser's dictionary (the ``character`` entry of the ONNX file's
metadata, which is where rapidocr reads it) as ``alphabet.txt`` and writes ``model.json`` with
rapidocr's default settings from its ``config.yaml``. ``reference`` renders text images into
``tests/data/ocr/`` and stores rapidocr's boxes, texts and scores (angle classifier off) in
``tests/data/reference/ocr.json`` for the parity tests in ``tests/test_ocr.py``.
Needs rapidocr-onnxruntime; the server does not.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "configs" / "models" / "ocr" / "1"
IMAGES = ROOT / "tests" / "data" / "ocr"
REFERENCE = ROOT / "tests" / "data" / "reference" / "ocr.json"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")

# rapidocr 1.4.4 config.yaml: Det (limit_side_len, limit_type, thresh, box_thresh, unclip_ratio,
# max_candidates, use_dilation, mean, std), Rec (rec_img_shape [3, 48, 320], rec_batch_num) and
# Global (text_score, max_side_len, min_height, width_height_ratio).
OCR_SETTINGS = {
    "det_limit_side_len": 736, "det_limit_type": "min", "det_max_side_len": 2000,
    "det_thresh": 0.3, "det_box_thresh": 0.5, "det_unclip_ratio": 1.6, "det_max_candidates": 1000,
    "det_use_dilation": True, "det_pad_min_height": 30, "det_pad_max_aspect": 8,
    "rec_image_height": 48, "rec_image_width": 320, "rec_batch_size": 6, "text_score": 0.5,
    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
}


def _rapidocr_dir() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).resolve().parent


def _file_entry(path: Path) -> dict:
    return {"path": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}


def install_model() -> None:
    """Copy the ONNX files, extract the dictionary, write the manifest."""
    import onnxruntime as ort

    models = _rapidocr_dir() / "models"
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(models / "ch_PP-OCRv4_det_infer.onnx", MODEL_DIR / "det.onnx")
    shutil.copyfile(models / "ch_PP-OCRv4_rec_infer.onnx", MODEL_DIR / "rec.onnx")
    session = ort.InferenceSession(str(MODEL_DIR / "rec.onnx"), providers=["CPUExecutionProvider"])
    characters = session.get_modelmeta().custom_metadata_map["character"].split("\n")
    classes = session.get_outputs()[0].shape[-1]
    if len(characters) + 2 != classes:  # blank first and space last, as rapidocr/PP-OCR add them
        raise SystemExit(f"dictionary has {len(characters)} entries, recogniser {classes} classes")
    (MODEL_DIR / "alphabet.txt").write_bytes(("\n".join(characters) + "\n").encode("utf-8"))
    manifest = {
        "model_id": "ocr/1", "task": "ocr", "architecture": "pp-ocr",
        "files": {name: _file_entry(MODEL_DIR / file) for name, file in
                  (("detector", "det.onnx"), ("recognizer", "rec.onnx"), ("alphabet", "alphabet.txt"))},
        "classes": ["text"], "class_colors": {"text": "#00C2FF"},
        "input": {"channel_order": "bgr"},
        "preprocessing": {"auto_orient": True},
        "ocr": OCR_SETTINGS,
    }
    (MODEL_DIR / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {MODEL_DIR} ({len(characters)} dictionary entries, {classes} classes)")


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT), size)


def _canvas(width: int, height: int, colour: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (width, height), colour)
    return image, ImageDraw.Draw(image)


def _to_bgr(image: Image.Image) -> np.ndarray:
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def render_images() -> dict[str, tuple[np.ndarray, list[str]]]:
    """Test images (BGR) and the text drawn on each, top to bottom."""
    images: dict[str, tuple[np.ndarray, list[str]]] = {}
    img, draw = _canvas(640, 240, (255, 255, 255))
    draw.text((50, 75), "HELLO 2026", font=_font(80), fill=(0, 0, 0))
    images["hello.png"] = (_to_bgr(img), ["HELLO 2026"])

    img, draw = _canvas(800, 420, (255, 255, 255))
    draw.text((60, 50), "RAY SERVE", font=_font(64), fill=(20, 20, 20))
    draw.text((380, 270), "ONNX 42", font=_font(56), fill=(20, 20, 20))
    images["two_lines.png"] = (_to_bgr(img), ["RAY SERVE", "ONNX 42"])

    img, draw = _canvas(720, 260, (24, 28, 48))
    draw.text((60, 90), "DARK MODE 7", font=_font(64), fill=(250, 235, 170))
    images["light_on_dark.png"] = (_to_bgr(img), ["DARK MODE 7"])

    img, draw = _canvas(760, 320, (255, 255, 255))
    draw.text((80, 115), "TILTED 5 DEG", font=_font(72), fill=(0, 0, 0))
    bgr = _to_bgr(img)
    matrix = cv2.getRotationMatrix2D((380, 160), 5.0, 1.0)  # counter-clockwise by 5 degrees
    rotated = cv2.warpAffine(bgr, matrix, (760, 320), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
    images["rotated.png"] = (rotated, ["TILTED 5 DEG"])

    rng = np.random.default_rng(7)
    plain = np.full((200, 300, 3), 235, np.uint8) + rng.integers(0, 8, (200, 300, 3), dtype=np.uint8)
    images["blank.png"] = (plain, [])
    return images


def record_reference() -> None:
    """Render the images, run rapidocr without the angle classifier, write ocr.json."""
    from importlib.metadata import version

    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()
    IMAGES.mkdir(parents=True, exist_ok=True)
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, (image, drawn) in render_images().items():
        cv2.imwrite(str(IMAGES / name), image)
        loaded = cv2.imread(str(IMAGES / name), cv2.IMREAD_COLOR)
        result, _ = engine(loaded, use_cls=False)
        lines = [{"box": [[float(x), float(y)] for x, y in box], "text": text, "score": float(score)}
                 for box, text, score in (result or [])]
        records[name] = {"width": image.shape[1], "height": image.shape[0], "drawn": drawn, "lines": lines}
        print(name, [(line["text"], round(line["score"], 4)) for line in lines])
    body = {"engine": f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')}", "use_cls": False,
            "images": records}
    REFERENCE.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {REFERENCE}")


def main(argv: list[str]) -> None:
    steps = argv or ["model", "reference"]
    for step in steps:
        {"model": install_model, "reference": record_reference}[step]()


if __name__ == "__main__":
    main(sys.argv[1:])
