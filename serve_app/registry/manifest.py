"""The model manifest: what a model is, which files it needs and how to feed it.

A manifest lives at ``<repository>/<model id>/model.json``; Ultralytics-exported ONNX files carry
enough metadata (``names``, ``task``, ``imgsz``, ``kpt_shape``) to build one from the weights
alone (:func:`manifest_from_ultralytics_metadata`).

>>> m = Manifest.from_dict({"model_id": "a/1", "task": "classification", "architecture": "yolov8-cls",
...     "files": {"weights": {"path": "w.onnx", "sha256": "0" * 64, "size": 1}}, "classes": ["x"],
...     "input": {"width": 64, "height": 64}})
>>> m.input.resize, m.weights.path
('letterbox', 'w.onnx')
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field, fields
from typing import Any

from serve_app.errors import ManifestError
from serve_app.pipeline.preprocess import InputSpec, PreprocessingSpec
from serve_app.tasks.architectures import ARCHITECTURES as ARCHITECTURE_TABLE
from serve_app.tasks.architectures import names_by_task
from serve_app.tasks.model_names import resolve_architecture, ultralytics_architecture

ARCHITECTURES = names_by_task()  # task -> its architectures, the default first (tasks/architectures.py)
TASKS = tuple(ARCHITECTURES)
MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,49})?$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
ULTRALYTICS_TASKS = {"detect": "object-detection", "segment": "instance-segmentation", "classify": "classification",
                     "pose": "keypoint-detection"}


def validate_model_id(model_id: object) -> str:
    """Return ``model_id`` if it is a safe id (``name`` or ``name/version``), else raise.

    >>> validate_model_id("shapes-det/1")
    'shapes-det/1'
    """
    from serve_app.errors import InvalidModelId

    if not isinstance(model_id, str) or not model_id:
        raise InvalidModelId("model id must be a non-empty string like 'name/1'")
    if len(model_id) > 150:
        raise InvalidModelId(f"model id is {len(model_id)} characters long; the limit is 150")
    if ".." in model_id or not MODEL_ID_PATTERN.match(model_id):
        raise InvalidModelId(
            "model id may hold letters, digits, '.', '_', '-' and one '/' between name and version, "
            "and must not start with a dot or contain '..'")
    return model_id


def model_key(model_id: str, digest: str) -> str:
    """What a replica keeps a loaded model under, and Serve routes on: the id and its weights' digest.

    >>> model_key("shapes-det/1", "3f2a9c1b00000000")
    'shapes-det/1@3f2a9c1b00000000'
    """
    return f"{model_id}@{digest}"


def split_key(key: str) -> tuple[str, str | None]:
    """``(model_id, digest)`` of a :func:`model_key` (digest None for a bare model id).

    >>> split_key("shapes-det/1@3f2a"), split_key("shapes-det/1")
    (('shapes-det/1', '3f2a'), ('shapes-det/1', None))
    """
    model_id, _, digest = key.partition("@")
    return model_id, digest or None


@dataclass(frozen=True)
class FileSpec:
    """One artifact: ``path`` is relative to the manifest's folder; ``uri`` (file, http, s3, gs) wins if set."""

    sha256: str
    size: int | None = None
    path: str | None = None
    uri: str | None = None

    def __post_init__(self) -> None:
        if not SHA256_PATTERN.match(self.sha256 or ""):
            raise ManifestError(f"file sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not self.path and not self.uri:
            raise ManifestError("a file needs a 'path' (relative to the manifest) or a 'uri'")
        if self.path and (self.path.startswith("/") or ".." in self.path.split("/")):
            raise ManifestError(f"file path must stay inside the model folder, got {self.path!r}")


@dataclass(frozen=True)
class KeypointSpec:
    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Manifest:
    model_id: str
    task: str
    architecture: str
    files: dict[str, FileSpec]
    classes: tuple[str, ...]
    input: InputSpec = field(default_factory=InputSpec)
    preprocessing: PreprocessingSpec = field(default_factory=PreprocessingSpec)
    class_colors: dict[str, str] = field(default_factory=dict)
    keypoints: KeypointSpec | None = None
    ocr: dict[str, Any] | None = None
    multi_label: bool = False
    # added by a client at run time: its URIs are fetched under the strict client policy
    client_supplied: bool = False

    @property
    def weights(self) -> FileSpec:
        return self.files["weights"]

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files.values())

    @property
    def fetch_policy(self) -> str:
        """The name of the policy its files are fetched under (see artifacts/object_cache.py)."""
        return "client" if self.client_supplied else "operator"

    @property
    def digest(self) -> str:
        """What identifies this model's weights: the files' sha256s, combined (a loaded copy is
        kept under its id *and* this, so replacing the files serves the new weights)."""
        import hashlib

        joined = ",".join(f"{name}={spec.sha256}" for name, spec in sorted(self.files.items()))
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        return model_key(self.model_id, self.digest)

    def supplied_by_client(self) -> "Manifest":
        import dataclasses

        return dataclasses.replace(self, client_supplied=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError(f"a manifest must be a JSON object, got {type(data).__name__}")
        try:
            model_id = validate_model_id(data.get("model_id"))
        except Exception as exc:  # InvalidModelId -> ManifestError keeps one story for bad manifests
            raise ManifestError(f"manifest model_id: {exc}") from None
        task = data.get("task")
        if task not in TASKS:
            raise ManifestError(f"manifest task must be one of {TASKS}, got {task!r}")
        arch = data.get("architecture") or ARCHITECTURES[task][0]
        if not isinstance(arch, str) or len(arch) > 64:
            raise ManifestError("manifest 'architecture' must be a model type name such as 'yolov8n' or 'yolo26s'")
        arch = resolve_architecture(arch, task)
        if arch not in ARCHITECTURES[task]:
            raise ManifestError(f"architecture {arch!r} is not one of {ARCHITECTURES[task]} for task {task}")
        raw_files = data.get("files")
        if not isinstance(raw_files, dict) or not raw_files:
            raise ManifestError("manifest 'files' must map names to {path|uri, sha256, size}")
        files = {name: _build(FileSpec, spec, f"files.{name}") for name, spec in raw_files.items()}
        required = {"pp-ocr": ("detector", "recognizer", "alphabet"), "doctr": ("detector", "recognizer")}.get(
            arch, ("weights",))
        missing = [r for r in required if r not in files]
        if missing:
            raise ManifestError(f"manifest for task {task} lacks files {missing}")
        if task == "ocr":  # the pipeline's settings are checked now (a 400), not when a replica loads it
            from serve_app.tasks.doctr import DoctrConfig
            from serve_app.tasks.ocr import OcrConfig

            (DoctrConfig if arch == "doctr" else OcrConfig).from_manifest(data.get("ocr") or {})
        classes = data.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ManifestError("manifest 'classes' must be a non-empty list of strings")
        raw_input = {**dict(ARCHITECTURE_TABLE[arch].input_defaults), **dict(data.get("input") or {})}
        for key in ("pad_color", "mean", "std"):
            if key in raw_input:
                raw_input[key] = tuple(raw_input[key])
        raw_pre = dict(data.get("preprocessing") or {})
        if raw_pre.get("static_crop") is not None:
            raw_pre["static_crop"] = tuple(raw_pre["static_crop"])
        keypoints = None
        if data.get("keypoints"):
            kp = data["keypoints"]
            keypoints = KeypointSpec(tuple(kp["names"]), tuple(tuple(e) for e in kp.get("skeleton", ())))
        if task == "keypoint-detection" and keypoints is None:
            raise ManifestError("a keypoint-detection manifest needs 'keypoints': {names, skeleton}")
        return cls(
            model_id=model_id, task=task, architecture=arch, files=files, classes=tuple(classes),
            input=_build(InputSpec, raw_input, "input"), preprocessing=_build(PreprocessingSpec, raw_pre, "preprocessing"),
            class_colors=dict(data.get("class_colors") or {}), keypoints=keypoints, ocr=data.get("ocr"),
            multi_label=bool(data.get("multi_label", arch == "multi-label")),
            client_supplied=bool(data.get("client_supplied", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model_id": self.model_id, "task": self.task, "architecture": self.architecture,
            "files": {n: {k: v for k, v in vars(f).items() if v is not None} for n, f in self.files.items()},
            "classes": list(self.classes), "class_colors": self.class_colors,
            "input": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.input).items()},
            "preprocessing": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.preprocessing).items()},
            "multi_label": self.multi_label,
        }
        if self.keypoints:
            out["keypoints"] = {"names": list(self.keypoints.names), "skeleton": [list(e) for e in self.keypoints.skeleton]}
        if self.ocr is not None:
            out["ocr"] = self.ocr
        if self.client_supplied:
            out["client_supplied"] = True
        return out


def _build(kind: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {where} must be an object, got {type(data).__name__}")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ManifestError(f"manifest {where} has unknown keys {unknown}; known: {sorted(known)}")
    try:
        return kind(**data)
    except TypeError as exc:
        raise ManifestError(f"manifest {where}: {exc}") from None


def manifest_from_ultralytics_metadata(model_id: str, metadata: dict[str, str], weights: FileSpec) -> Manifest:
    """Build a manifest from an Ultralytics ONNX file's metadata (``names``, ``task``, ``imgsz``...).

    The architecture follows the head's layout (``end2end`` in the metadata: YOLOv10, YOLO26) by
    :func:`~serve_app.tasks.model_names.ultralytics_architecture`."""
    try:
        task = metadata["task"]
        names = ast.literal_eval(metadata["names"])
        imgsz = ast.literal_eval(metadata.get("imgsz", "[640, 640]"))
    except (KeyError, ValueError, SyntaxError) as exc:
        raise ManifestError(f"the ONNX file has no usable Ultralytics metadata ({exc}); send a full manifest") from None
    if task not in ULTRALYTICS_TASKS:
        raise ManifestError(f"Ultralytics task {task!r} is not served; supported: {sorted(ULTRALYTICS_TASKS)}")
    classes = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    arch = ultralytics_architecture(metadata.get("description", ""), ULTRALYTICS_TASKS[task],
                                    metadata.get("end2end", "").lower() == "true")
    data: dict[str, Any] = {
        "model_id": model_id, "task": ULTRALYTICS_TASKS[task], "architecture": arch,
        "files": {"weights": {k: v for k, v in vars(weights).items() if v is not None}},
        "classes": classes,
        "input": {"width": width, "height": height,
                  "resize": "center-crop" if task == "classify" else "letterbox"},
    }
    if task == "pose":
        kpt_shape = ast.literal_eval(metadata.get("kpt_shape", "[17, 3]"))
        data["keypoints"] = {"names": [f"kp{i}" for i in range(kpt_shape[0])]}
    return Manifest.from_dict(data)
