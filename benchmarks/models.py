"""Prepare the benchmark's inputs: one YOLOv8n 640 ONNX file, N distinct copies of it as models
``bench-<i>/1`` in our repository and in Roboflow Inference's cache, and the JPEG images.

Run it once (it is idempotent, and every workload calls it)::

    .venv/bin/python -m benchmarks.models --models 50

The copies differ by one ONNX metadata entry (``bench_copy = <i>``), so each has its own sha256
and every model switch really switches artifacts, on both servers, while the graph and the
weights (and so the cost of a load and of an inference) stay exactly the same.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import layout

IMAGE_SIZE = (640, 480)  # width, height: a typical camera frame, letterboxed to 640x640
IMAGE_SEED = 2024
JPEG_QUALITY = 90
ONNX_METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props, a repeated StringStringEntryProto


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def with_metadata(onnx_bytes: bytes, key: str, value: str) -> bytes:
    """The same ONNX model with one more ``metadata_props`` entry, by appending its encoding.

    Protobuf parses concatenated messages as one merged message and appends repeated fields, so
    appending an encoded ``metadata_props`` entry adds that entry and changes nothing else.

    >>> with_metadata(b"", "k", "v")
    b'r\\x06\\n\\x01k\\x12\\x01v'
    """
    entry = _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
    return onnx_bytes + _length_delimited(ONNX_METADATA_PROPS_FIELD, entry)


def export_base_model(dest: Path = layout.BASE_ONNX) -> Path:
    """Export a randomly initialised YOLOv8n at 640 with Ultralytics, offline, once."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(layout.ROOT / ".cache" / "yolo")}
    code = ("from ultralytics import YOLO; "
            "YOLO('yolov8n.yaml').export(format='onnx', imgsz=640, dynamic=True, simplify=False, opset=17)")
    subprocess.run([str(layout.ZOO_PYTHON), "-c", code], cwd=dest.parent, env=env, check=True)
    produced = dest.parent / "yolov8n.onnx"
    if produced != dest:
        produced.rename(dest)
    return dest


def write_images(folder: Path = layout.IMAGES, count: int = 8) -> list[Path]:
    """``count`` photo-like 640x480 JPEGs (cluttered, noisy synthetic scenes), written once."""
    import cv2

    from zoo.shapes import draw_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img-{i:02d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(IMAGE_SEED)
    for path in paths:
        scene = draw_scene(rng, size=IMAGE_SIZE)
        ok, data = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        path.write_bytes(data.tobytes())
    return paths


def load_images(count: int | None = None) -> list[bytes]:
    paths = sorted(layout.IMAGES.glob("img-*.jpg"))
    if not paths:
        raise SystemExit("no benchmark images; run: .venv/bin/python -m benchmarks prepare")
    return [p.read_bytes() for p in paths[:count]]


def ultralytics_metadata(onnx_path: Path) -> dict[str, str]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def model_copy(base: bytes, i: int) -> bytes:
    return with_metadata(base, "bench_copy", str(i))


def write_model(repository: Path, model_id: str, weights: bytes, metadata: dict[str, str],
                uri: str | None = None) -> dict:
    """``<repository>/<model_id>/model.json`` (+ ``weights.onnx`` unless ``uri`` names the origin)."""
    from serve_app.registry.manifest import FileSpec, manifest_from_ultralytics_metadata

    folder = repository / model_id
    folder.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(weights).hexdigest()
    if uri is None:
        _write_if_changed(folder / "weights.onnx", weights)
        spec = FileSpec(sha256=sha, size=len(weights), path="weights.onnx")
    else:
        spec = FileSpec(sha256=sha, size=len(weights), uri=uri)
    manifest = manifest_from_ultralytics_metadata(model_id, metadata, spec).to_dict()
    (folder / "model.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def write_roboflow_model(cache: Path, model_id: str, weights_path: Path, classes: list[str]) -> None:
    """One model in Roboflow Inference's classic cache layout (``USE_INFERENCE_MODELS=False``).

    Preprocessing "Fit (grey edges) in" 640x640 is Roboflow's letterbox with grey padding, the
    same work our manifest asks for (Ultralytics' letterbox, pad 114).
    """
    folder = cache / model_id
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "weights.onnx"
    if not target.exists():
        os.link(weights_path, target)  # the same bytes as our repository's copy, one inode
    (folder / "class_names.txt").write_text("\n".join(classes) + "\n")
    preprocessing = {"auto-orient": {"enabled": True},
                     "resize": {"enabled": True, "format": "Fit (grey edges) in", "width": 640, "height": 640}}
    environment = {"PREPROCESSING": json.dumps(preprocessing),
                   "CLASS_MAP": {str(i): name for i, name in enumerate(classes)},
                   "COLORS": {name: "#ff0000" for name in classes}}
    (folder / "environment.json").write_text(json.dumps(environment))
    (folder / "model_type.json").write_text(json.dumps(
        {"project_task_type": "object-detection", "model_type": "yolov8n", "model_id": model_id}))


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def prepare(models: int = 50, images: int = 8) -> dict:
    """Everything the workloads need, for ``models`` model ids; returns the record it writes."""
    if layout.PREPARED.exists():
        record = json.loads(layout.PREPARED.read_text())
        if record.get("models", 0) >= models and record.get("images", 0) >= images and layout.BASE_ONNX.exists():
            return record
    base_path = export_base_model()
    base = base_path.read_bytes()
    metadata = ultralytics_metadata(base_path)
    image_paths = write_images(count=images)
    shas = []
    classes: list[str] = []
    for i in range(models):
        mid = layout.model_id(i)
        manifest = write_model(layout.REPOSITORY, mid, model_copy(base, i), metadata)
        classes = manifest["classes"]
        write_roboflow_model(layout.RF_CACHE, mid, layout.REPOSITORY / mid / "weights.onnx", classes)
        shas.append(manifest["files"]["weights"]["sha256"])
        print(f"\rprepare: model {i + 1}/{models}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if len(set(shas)) != len(shas):
        raise RuntimeError("benchmark model copies are not distinct")
    record = {"base_onnx": str(base_path), "base_sha256": hashlib.sha256(base).hexdigest(), "model_bytes": len(base),
              "models": models, "images": len(image_paths), "classes": len(classes),
              "image_bytes": [p.stat().st_size for p in image_paths], "image_size": list(IMAGE_SIZE),
              "ultralytics_version": metadata.get("version")}
    layout.PREPARED.write_text(json.dumps(record, indent=1))
    return record


def origin_models(count: int, base_url: str, first_copy: int = 1000) -> tuple[Path, list[str]]:
    """Models ``origin-<i>/1`` whose only copy is at ``base_url`` (the throttled origin).

    Writes their bytes under ``layout.ORIGIN`` (what the origin serves) and their manifests into
    a repository of their own, returned with the model ids.
    """
    base = layout.BASE_ONNX.read_bytes()
    metadata = ultralytics_metadata(layout.BASE_ONNX)
    repository = layout.BENCH / "repo-origin"
    shutil.rmtree(repository, ignore_errors=True)
    layout.ORIGIN.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        mid = f"origin-{i}/1"
        weights = model_copy(base, first_copy + i)
        name = f"origin-{i}.onnx"
        _write_if_changed(layout.ORIGIN / name, weights)
        write_model(repository, mid, weights, metadata, uri=f"{base_url}/{name}")
        ids.append(mid)
    return repository, ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args(argv)
    print(json.dumps(prepare(args.models, args.images), indent=1))


if __name__ == "__main__":
    main()
