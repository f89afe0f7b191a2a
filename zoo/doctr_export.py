"""DocTR's own models exported to ONNX by python-doctr, and the doctr pipeline checked on them.

    YOLO_OFFLINE=1 .venv-zoo/bin/python -m zoo.doctr_export   # torch, python-doctr, onnxtr

No trained DocTR weights can be downloaded here, so the models are DocTR's architectures with their
random initialisation (seeded). For each test page the script runs three predictors and records
what each read: this server's ``DoctrPipeline`` and OnnxTR's ``ocr_predictor`` on the exported ONNX
files, and DocTR's own PyTorch ``ocr_predictor`` on the same weights (DocTR's ONNX path has no
predictor of its own). The figures go to ``benchmarks/results/doctr_export_parity.json``; the
exported files stay in ``.cache/doctr`` (about 24 MB: too big for the built-in zoo).
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".cache" / "doctr"
RESULT = ROOT / "benchmarks" / "results" / "doctr_export_parity.json"
DETECTOR, RECOGNIZER = "db_mobilenet_v3_large", "crnn_mobilenet_v3_small"
PAGES = [(["HELLO WORLD", "OCR 42 TEST"], (200, 480)), (["A TALL", "PAGE", "OF", "WORDS"], (640, 300)),
         (["SQUARE ONE"], (400, 400))]


def page(lines: list[str], hw: tuple[int, int]) -> np.ndarray:
    img = np.full((*hw, 3), 235, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(img, text, (30, 60 + 50 * i), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (60, 60, 60), 2, cv2.LINE_AA)
    return img


def export() -> tuple:
    import torch
    from doctr import models
    from doctr.models.utils import export_model_to_onnx

    OUT.mkdir(parents=True, exist_ok=True)
    built = []
    for name, shape in ((DETECTOR, (1, 3, 1024, 1024)), (RECOGNIZER, (1, 3, 32, 128))):
        torch.manual_seed(0)
        model = getattr(models, name)(pretrained=False, pretrained_backbone=False, exportable=True).eval()
        path = export_model_to_onnx(model, str(OUT / name), torch.rand(shape))
        print(f"exported {name} -> {path}", flush=True)
        torch.manual_seed(0)
        built.append((getattr(models, name)(pretrained=False, pretrained_backbone=False).eval(), Path(path)))
    return built


def words_of(export_dict: dict) -> list[dict]:
    out = []
    p = export_dict["pages"][0]
    h, w = p["dimensions"]
    for block in p["blocks"]:
        for line in block["lines"]:
            for word in line["words"]:
                (x0, y0), (x1, y1) = word["geometry"]
                out.append({"text": word["value"], "box": [x0 * w, y0 * h, x1 * w, y1 * h],
                            "objectness": word["objectness_score"], "confidence": word["confidence"]})
    return sorted(out, key=lambda r: r["box"])


def main() -> None:
    import onnxruntime as ort
    import torch
    from doctr.models import ocr_predictor as torch_predictor
    from onnxtr.models import crnn_mobilenet_v3_small, db_mobilenet_v3_large, ocr_predictor

    from serve_app.tasks.doctr import DoctrConfig, DoctrPipeline

    (det_torch, det_path), (rec_torch, rec_path) = export()
    vocab = rec_torch.vocab
    det = ort.InferenceSession(str(det_path), providers=["CPUExecutionProvider"])
    rec = ort.InferenceSession(str(rec_path), providers=["CPUExecutionProvider"])
    ours = DoctrPipeline(lambda x: det.run(None, {"input": x})[0], lambda x: rec.run(None, {"input": x})[0],
                         DoctrConfig(vocab=vocab))
    onnxtr = ocr_predictor(db_mobilenet_v3_large(str(det_path)), crnn_mobilenet_v3_small(str(rec_path), vocab=vocab))
    doctr = torch_predictor(det_torch, rec_torch, pretrained=False)
    results = []
    for lines, hw in PAGES:
        bgr = page(lines, hw)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        mine = sorted(({"text": w.text, "box": list(w.box), "objectness": w.objectness, "confidence": w.confidence}
                       for w in ours.words(bgr)), key=lambda r: r["box"])
        with torch.no_grad():
            entry = {"page": lines, "size": list(hw), "server": mine, "onnxtr": words_of(onnxtr([rgb]).export()),
                     "doctr_pytorch": words_of(doctr([rgb]).export())}
        for ref in ("onnxtr", "doctr_pytorch"):
            other = entry[ref]
            same = len(other) == len(mine) and all(
                a["text"] == b["text"] and np.allclose(a["box"], b["box"], atol=1.0) for a, b in zip(mine, other))
            entry[f"same_as_{ref}"] = bool(same)
        print(f"{hw}: {len(mine)} words; same as onnxtr {entry['same_as_onnxtr']}, "
              f"as DocTR's PyTorch predictor {entry['same_as_doctr_pytorch']}", flush=True)
        results.append(entry)
    import doctr as doctr_pkg
    import onnxtr as onnxtr_pkg

    RESULT.write_text(json.dumps({
        "what": "DocTR db_mobilenet_v3_large + crnn_mobilenet_v3_small, random weights (torch seed 0), exported by "
                "python-doctr; words read by this server's pipeline and by OnnxTR on the ONNX files, and by DocTR's "
                "PyTorch predictor on the same weights",
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "torch": torch.__version__, "python-doctr": doctr_pkg.__version__,
                    "onnxtr": onnxtr_pkg.__version__, "onnxruntime": ort.__version__},
        "pages": results}, indent=1))
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
