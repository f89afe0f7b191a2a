"""Roboflow Inference's model cache (its ``MODEL_CACHE_DIR``) read as a model repository.

Roboflow Inference keeps each model it has downloaded in ``<MODEL_CACHE_DIR>/<dataset>/<version>/``
(``inference/core/cache/model_artifacts.py::get_cache_dir``), with the files its ONNX models need
(``inference/core/models/roboflow.py``: ``OnnxRoboflowInferenceModel.get_infer_bucket_file_list``
plus ``weights_file``, and ``keypoints_detection_base.py`` for pose):

- ``weights.onnx``: the weights;
- ``environment.json``: ``PREPROCESSING`` (a JSON string, or an object) with ``resize``
  ``{format, width, height}``, ``auto-orient``, ``static-crop``, ``contrast``, ``grayscale``;
  ``CLASS_MAP`` (``{"0": name}``), ``COLORS`` (``{name: "#rrggbb"}``), ``MULTICLASS``;
- ``class_names.txt``: one class a line (``CLASS_MAP`` stands in when it is absent);
- ``model_type.json``: ``{"project_task_type", "model_type", "model_id"}`` written by
  ``inference/core/registries/roboflow.py::_save_model_metadata_in_cache``;
- ``keypoints_metadata.json`` (pose): ``[{"object_class_id", "keypoints": {"0": name}, "edges"?}]``.

:func:`discover_roboflow_models` turns each such folder into a :class:`Manifest` that feeds the
model exactly as Roboflow Inference does (its ``preproc_image``/``prepare`` and the task classes'
``preprocess``), or into a reason it is skipped. What Roboflow does that this server has no
equivalent for is refused by name, not approximated.

>>> input_fields, pre = map_preprocessing({"resize": {"format": "Fit (grey edges) in", "width": 640,
...     "height": 640}, "auto-orient": {"enabled": True}}, "object-detection")
>>> input_fields["resize"], input_fields["pad_color"], pre
('letterbox', (114, 114, 114), {'auto_orient': True})
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.artifacts.disk_cache import sha256_file
from serve_app.errors import ManifestError
from serve_app.registry.manifest import Manifest

WEIGHTS, ENVIRONMENT, CLASS_NAMES, MODEL_TYPE, KEYPOINTS = (
    "weights.onnx", "environment.json", "class_names.txt", "model_type.json", "keypoints_metadata.json")
# Roboflow's names of the folders at the cache root that are not models
# (model_artifacts.py::RESERVED_CACHE_ROOT_NAMESPACES), and its slugged folder names
# (``~<slug>-<hash>``, and ``<slug>-<8 hex>`` before it widened the hash)
RESERVED_FOLDERS = frozenset({"_file_locks", "auto-resolution-cache", "hf_home", "huggingface", "lora-bases",
                              "models-cache", "owl-v2-serialized-data", "shared-blobs", "usage.db", "workflow"})
SLUGGED_FOLDER = re.compile(r"^(~.+|[A-Za-z0-9_-]{1,48}-[0-9a-f]{8})$")

# Roboflow's resize formats (RoboflowInferenceModel.preproc_image) -> (our resize mode, pad colour)
RESIZE_FORMATS: dict[str, tuple[str, tuple[int, int, int] | None]] = {
    "Stretch to": ("stretch", None),
    "Fit (black edges) in": ("letterbox", (0, 0, 0)),
    "Fit (grey edges) in": ("letterbox", (114, 114, 114)),
    "Fit (white edges) in": ("letterbox", (255, 255, 255)),
    # Roboflow Inference letterboxes these in black and logs "degraded model performance";
    # this server has the transform the name says (scale the short side, cut the centre)
    "Fill (with center crop) in": ("center-crop", None),
}
REFUSED_RESIZE = {
    "Fit (reflect edges) in": "this server has no reflect padding",
    "Fit within": "a fixed-size ONNX input cannot take images of varying size",
}
# contrast types (inference/core/utils/preprocess.py::ContrastAdjustmentType) -> PreprocessingSpec.contrast
CONTRAST_TYPES = {"Contrast Stretching": "stretching"}
REFUSED_CONTRAST = {
    "Histogram Equalization": "Roboflow equalises a grayscale copy and returns it gray; this server's "
                              "'equalization' equalises luma and keeps the colours",
    "Adaptive Equalization": "Roboflow runs CLAHE (clip limit 0.03) on a grayscale copy; this server's "
                             "'adaptive' runs CLAHE (clip limit 2) on Lab's L and keeps the colours",
}
# ClassificationBaseOnnxRoboflowInferenceModel.preprocess: (x / 255 - 0.5) / 0.5 on every channel
CLASSIFICATION_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class CacheEntry:
    """One model folder of a Roboflow cache: its manifest, or why it was skipped."""

    model_id: str
    folder: Path
    manifest: Manifest | None = None
    reason: str | None = None


def discover_roboflow_models(root: Path, skip: frozenset[Path] = frozenset()) -> list[CacheEntry]:
    """Every ``model_type.json`` folder under ``root`` (but the reserved ones and ``skip``), read.

    A folder that cannot be served comes back with its ``reason`` instead of a manifest; nothing
    here raises for a bad cache."""
    entries = []
    for marker in sorted(root.rglob(MODEL_TYPE)):
        folder = marker.parent
        relative = folder.relative_to(root)
        if folder in skip or not relative.parts or relative.parts[0] in RESERVED_FOLDERS:
            continue
        model_id = relative.as_posix()
        try:
            model_id = model_id_of(folder, relative)
            entries.append(CacheEntry(model_id, folder, manifest=manifest_from_roboflow_folder(folder, model_id)))
        except ManifestError as exc:
            entries.append(CacheEntry(model_id, folder, reason=str(exc)))
    return entries


def model_id_of(folder: Path, relative: Path) -> str:
    """``<dataset>/<version>`` as Roboflow names it: the folder, or ``model_type.json``'s ``model_id``
    for a folder Roboflow slugged (an id that is not a portable path)."""
    model_type = read_json(folder / MODEL_TYPE)
    named = model_type.get("model_id") if isinstance(model_type, dict) else None
    folder_id = relative.as_posix()
    if named is None or named == folder_id:
        return folder_id
    if not isinstance(named, str) or not (len(relative.parts) == 1 and SLUGGED_FOLDER.match(relative.parts[0])):
        raise ManifestError(f"{MODEL_TYPE} names model {named!r} but sits in folder {folder_id!r}")
    return named


def manifest_from_roboflow_folder(folder: Path, model_id: str) -> Manifest:
    """The manifest of one Roboflow cache folder (raises ManifestError saying what is wrong)."""
    model_type = read_json(folder / MODEL_TYPE)
    if not isinstance(model_type, dict) or not all(
            isinstance(model_type.get(k), str) for k in ("project_task_type", "model_type")):
        raise ManifestError(f"{MODEL_TYPE} must hold the strings 'project_task_type' and 'model_type'")
    task, name = model_type["project_task_type"], model_type["model_type"]
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ManifestError(f"{WEIGHTS} is missing")
    environment = read_json(folder / ENVIRONMENT)
    if not isinstance(environment, dict):
        raise ManifestError(f"{ENVIRONMENT} must be a JSON object")
    classes = class_names(folder, environment)
    preproc = environment.get("PREPROCESSING")
    if preproc is None:
        raise ManifestError(f"{ENVIRONMENT} has no PREPROCESSING")  # as Roboflow Inference refuses it
    if isinstance(preproc, str):
        try:
            preproc = json.loads(preproc)
        except ValueError as exc:
            raise ManifestError(f"{ENVIRONMENT}'s PREPROCESSING is not valid JSON ({exc})") from None
    if not isinstance(preproc, dict):
        raise ManifestError(f"{ENVIRONMENT}'s PREPROCESSING must be a JSON object")
    input_fields, preprocessing = map_preprocessing(preproc, task)
    height, width = onnx_input_hw(weights) or (None, None)
    resize = preproc.get("resize") if isinstance(preproc.get("resize"), dict) else {}
    try:  # a static input shape wins; else PREPROCESSING's size; else 640 (OnnxRoboflowInferenceModel.initialize_model)
        input_fields["height"] = int(height or resize.get("height") or 640)
        input_fields["width"] = int(width or resize.get("width") or 640)
    except (TypeError, ValueError):
        raise ManifestError(f"PREPROCESSING's resize size must be whole numbers, got {resize}") from None
    data: dict[str, Any] = {
        "model_id": model_id, "task": task, "architecture": name,
        "files": {"weights": {"path": WEIGHTS, "sha256": sha256_file(weights), "size": weights.stat().st_size}},
        "classes": classes, "input": input_fields, "preprocessing": preprocessing,
        "multi_label": task == "classification" and bool(environment.get("MULTICLASS", False)),
    }
    colors = environment.get("COLORS")
    if isinstance(colors, dict) and all(isinstance(v, str) for v in colors.values()):
        data["class_colors"] = colors
    if task == "keypoint-detection":
        data["keypoints"] = keypoint_names(folder)
    try:
        return Manifest.from_dict(data)
    except ManifestError as exc:
        raise ManifestError(f"{MODEL_TYPE} says {task} / {name}: {exc}") from None


def map_preprocessing(preproc: dict[str, Any], task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Roboflow's PREPROCESSING -> (manifest ``input`` fields but the size, ``preprocessing`` fields).

    Follows ``inference/core/models/roboflow.py`` (the resize format, its fallbacks) and
    ``inference/core/utils/preprocess.py::prepare`` (static crop, contrast, grayscale, applied only
    when ``enabled``); auto-orient is on when the key is there, as ``preproc_image`` decides."""
    resize = preproc.get("resize")
    fmt = resize.get("format", "Stretch to") if isinstance(resize, dict) else "Stretch to"  # Roboflow's default
    if fmt in REFUSED_RESIZE:
        raise ManifestError(f"resize {fmt!r} has no equivalent here ({REFUSED_RESIZE[fmt]}); Roboflow Inference "
                            "letterboxes it in black: write a model.json with input.resize 'letterbox' to serve it so")
    if fmt not in RESIZE_FORMATS:
        raise ManifestError(f"unknown resize format {fmt!r}; known: {sorted(RESIZE_FORMATS)}")
    mode, pad = RESIZE_FORMATS[fmt]
    input_fields: dict[str, Any] = {"resize": mode, "channel_order": "rgb", "scale": 1 / 255}
    if pad is not None:
        input_fields["pad_color"] = pad
    if task == "classification":
        input_fields["mean"], input_fields["std"] = CLASSIFICATION_MEAN_STD
    out: dict[str, Any] = {"auto_orient": "auto-orient" in preproc}
    crop = enabled(preproc, "static-crop")
    if crop is not None:
        try:
            out["static_crop"] = tuple(float(crop[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"static-crop needs numeric x_min, y_min, x_max, y_max (percent), got {crop}") from None
    contrast = enabled(preproc, "contrast")
    if contrast is not None:
        kind = contrast.get("type")
        if kind in REFUSED_CONTRAST:
            raise ManifestError(f"contrast {kind!r} has no equivalent here: {REFUSED_CONTRAST[kind]}")
        if kind not in CONTRAST_TYPES:
            raise ManifestError(f"unknown contrast type {kind!r}; known: {sorted(CONTRAST_TYPES)} "
                                f"(and refused: {sorted(REFUSED_CONTRAST)})")
        out["contrast"] = CONTRAST_TYPES[kind]
    if enabled(preproc, "grayscale") is not None:
        out["grayscale"] = True
    return input_fields, out


def enabled(preproc: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The settings of step ``key`` when it is there and enabled, else None."""
    step = preproc.get(key)
    if step is None:
        return None
    if not isinstance(step, dict) or "enabled" not in step:
        raise ManifestError(f"PREPROCESSING's {key!r} must be an object with 'enabled', got {step!r}")
    return step if step["enabled"] else None


def class_names(folder: Path, environment: dict[str, Any]) -> list[str]:
    """``class_names.txt`` (non-blank lines, stripped, as ``read_text_file`` reads it), else ``CLASS_MAP``."""
    path = folder / CLASS_NAMES
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise ManifestError(f"{CLASS_NAMES} is empty")
        return names
    class_map = environment.get("CLASS_MAP")
    if not isinstance(class_map, dict) or not class_map:
        raise ManifestError(f"no {CLASS_NAMES} and no CLASS_MAP object in {ENVIRONMENT}")
    try:  # get_class_names_from_environment_file: keys "0".."n-1"
        return [str(class_map[str(i)]) for i in range(len(class_map))]
    except KeyError as exc:
        raise ManifestError(f"CLASS_MAP must have the keys '0'..'{len(class_map) - 1}'; {exc} is missing") from None


def keypoint_names(folder: Path) -> dict[str, Any]:
    """``keypoints_metadata.json`` -> ``{names, skeleton}`` (one list for the model: every class
    of the model must name the same keypoints; ``edges`` become the skeleton when given)."""
    metadata = read_json(folder / KEYPOINTS)
    if not isinstance(metadata, list) or not metadata:
        raise ManifestError(f"{KEYPOINTS} must be a non-empty list of per-class keypoint descriptions")
    described = []
    for entry in metadata:
        try:
            points = sorted((int(k), str(v)) for k, v in entry["keypoints"].items())
            edges = [(int(e["from"]), int(e["to"])) for e in entry.get("edges", [])]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ManifestError(f"{KEYPOINTS}: each entry needs 'object_class_id' and 'keypoints' "
                                "{index: name} (and 'edges' [{from, to}] if any)") from None
        if [i for i, _ in points] != list(range(len(points))):
            raise ManifestError(f"{KEYPOINTS}: keypoint indices must run 0..n-1, got {[i for i, _ in points]}")
        if any(not (0 <= a < len(points) and 0 <= b < len(points)) for a, b in edges):
            raise ManifestError(f"{KEYPOINTS}: an edge names a keypoint beyond the {len(points)} there are")
        described.append(([name for _, name in points], edges))
    names, skeleton = described[0]
    if any(other != names for other, _ in described[1:]):
        raise ManifestError(f"{KEYPOINTS}: the classes name different keypoints; this server gives one list of "
                            "keypoint names per model")
    return {"names": names, "skeleton": [list(e) for e in skeleton]}


def onnx_input_hw(weights: Path) -> tuple[int | None, int | None] | None:
    """The (height, width) of the model's first input where they are fixed numbers."""
    import onnx

    try:
        model = onnx.load(str(weights), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ManifestError(f"{WEIGHTS} is not a readable ONNX model ({type(exc).__name__})") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise ManifestError(f"{WEIGHTS} has no input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ManifestError(f"{WEIGHTS}'s input has {len(dims)} dimensions; an image model's has 4 (NCHW)")
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[2:])


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise ManifestError(f"{path.name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path.name} is not valid JSON ({exc})") from None
