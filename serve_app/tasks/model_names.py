"""The names people give their models -> the architectures this server decodes (``tasks/architectures.py``).

Roboflow writes a model's type as a family with a size and sometimes a release (``yolov5v2s``,
``yolov8n``, ``yolov11n``, ``yolov8n-seg``, ``yolo26s``), and gives the task separately, so
``yolov8n`` under ``instance-segmentation`` is a YOLOv8-seg model. Ultralytics names files by
family, size and head (``yolov8n-pose``, ``yolo11s-cls``, ``yolov5nu``, ``yolov9c``). Both map,
by one table (:data:`FAMILIES`), onto the output layout that family's exports have:

- YOLOv5 and YOLOv7 (original repositories): boxes with objectness, ``yolov5`` / ``yolov5-seg``;
- YOLOv8, v9, 11, 12 and Ultralytics' YOLOv5u: the anchor-free grid, ``yolov8`` and its heads;
- YOLOv10 and YOLO26: the end-to-end head (no NMS), or YOLOv8's grid when exported without it,
  ``yolov10`` and ``yolo26`` with its heads;
- RF-DETR (``rfdetr-nano`` ... ``rfdetr-large``, ``rfdetr-seg-nano`` ... ``rfdetr-seg-2xlarge``): ``rf-detr``
  and ``rf-detr-seg`` (names of their own, in :data:`OTHER`).

A name with no decoder here is refused with the list of what is supported.

>>> resolve_architecture("yolov11n", "object-detection"), resolve_architecture("yolov8n", "instance-segmentation")
('yolov8', 'yolov8-seg')
>>> resolve_architecture("yolov5v2s", "object-detection"), resolve_architecture("YOLO26s-pose")
('yolov5', 'yolo26-pose')
>>> resolve_architecture("rfdetr-nano", "object-detection"), resolve_architecture("rfdetr-seg-small")
('rf-detr', 'rf-detr-seg')
>>> task_of("yolo11n-cls"), task_of("yolov7")
('classification', None)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from serve_app.errors import ManifestError
from serve_app.tasks.architectures import ARCHITECTURES

DETECT, SEGMENT, CLASSIFY, POSE, OCR = ("object-detection", "instance-segmentation", "classification",
                                        "keypoint-detection", "ocr")
SUFFIX_TASKS = {"seg": SEGMENT, "pose": POSE, "cls": CLASSIFY}


@dataclass(frozen=True)
class Family:
    """A model family: the architecture of each task it has a decoder for here."""

    label: str  # how the family is written in messages
    by_task: dict[str, str]


_GRID = {DETECT: "yolov8", SEGMENT: "yolov8-seg", CLASSIFY: "yolov8-cls", POSE: "yolov8-pose"}
FAMILIES: dict[str, Family] = {
    "5": Family("YOLOv5 (yolov5, yolov5v2s, yolov5v6n, yolov5s-seg, ...)",
                {DETECT: "yolov5", SEGMENT: "yolov5-seg", CLASSIFY: "yolov8-cls"}),
    "5u": Family("YOLOv5u (Ultralytics: yolov5nu, ...)", {DETECT: "yolov8"}),
    "7": Family("YOLOv7 (yolov7, yolov7-tiny, yolov7-seg, ...)", {DETECT: "yolov5", SEGMENT: "yolov5-seg"}),
    "8": Family("YOLOv8 (yolov8n, yolov8s-seg, yolov8m-pose, yolov8l-cls, ...)", _GRID),
    "9": Family("YOLOv9 (yolov9t, yolov9c, yolov9e-seg, ...)", {DETECT: "yolov8", SEGMENT: "yolov8-seg"}),
    "10": Family("YOLOv10 (yolov10n ... yolov10x; end-to-end or not)", {DETECT: "yolov10"}),
    "11": Family("YOLO11 (yolo11n, yolov11n, yolo11s-seg, yolo11m-pose, yolo11l-cls, ...)", _GRID),
    "12": Family("YOLO12 (yolo12n, yolov12n, yolo12s-seg, ...)", _GRID),
    "26": Family("YOLO26 (yolo26n, yolo26s-seg, yolo26m-pose, yolo26l-cls, ...; end-to-end or not)",
                 {DETECT: "yolo26", SEGMENT: "yolo26-seg", POSE: "yolo26-pose", CLASSIFY: "yolov8-cls"}),
}
# names that are architectures of their own (not YOLO families), for the tasks they serve
OTHER: dict[str, dict[str, str]] = {
    "yolact": {SEGMENT: "yolact"}, "multi-label": {CLASSIFY: "multi-label"}, "pp-ocr": {OCR: "pp-ocr"},
    "doctr": {OCR: "doctr"},
    # RF-DETR (Roboflow's and the rfdetr package's names): one export layout for every size (tasks/detr.py)
    "rfdetr": {DETECT: "rf-detr", SEGMENT: "rf-detr-seg"},
    **{f"rfdetr-{size}": {DETECT: "rf-detr"} for size in ("nano", "small", "medium", "base", "large")},
    **{f"rfdetr-seg-{size}": {SEGMENT: "rf-detr-seg"}
       for size in ("preview", "nano", "small", "medium", "large", "xlarge", "2xlarge")},
}

# yolo / yolov, the version, an optional release (v2, v6: Roboflow's yolov5v6n), a size (n s m l x t c e b,
# or tiny / x / w6 / e6 / d6 / e6e for YOLOv7, "u" after the size for Ultralytics' YOLOv5u), then the head
_YOLO = re.compile(r"^yolo(?:v)?(?P<version>\d{1,2})(?:v\d+)?(?P<size>[a-z0-9]*?)(?P<u>u)?"
                   r"(?:-?(?P<variant>tiny|p6|w6|e6e|e6|d6|x))?(?:-(?P<head>seg|pose|cls|obb))?(?:-p6)?$")


def _parse(name: str) -> tuple[str, str | None] | None:
    """``(family key, head suffix)`` of a YOLO name, or None when it is not one."""
    m = _YOLO.match(name.strip().lower())
    if m is None or (m["size"] and not re.fullmatch(r"[nsmlxtceb]|tiny|[nsmlx]?6", m["size"])):
        return None
    version = m["version"]
    if version == "5" and m["u"]:
        version = "5u"
    return version, m["head"]


def task_of(name: str) -> str | None:
    """The task a model name says by its head suffix (``-seg``, ``-pose``, ``-cls``), if it says one."""
    parsed = _parse(name)
    return SUFFIX_TASKS.get(parsed[1] or "") if parsed else None


def resolve_architecture(name: str, task: str | None = None) -> str:
    """The architecture that decodes model type ``name`` for ``task`` (from the name's suffix when None).

    Raises ManifestError listing the supported names when none does."""
    key = name.strip().lower()
    if key in OTHER:
        found = OTHER[key].get(task or next(iter(OTHER[key])))
        if found:
            return found
        raise ManifestError(f"architecture {name!r} serves {sorted(OTHER[key])}, not {task}")
    if key in ARCHITECTURES and (task is None or ARCHITECTURES[key].task == task):
        return key
    parsed = _parse(key)
    if parsed is None:
        raise ManifestError(f"architecture {name!r} is not one this server decodes. {supported(task)}")
    family, head = parsed
    if head == "obb":
        raise ManifestError(f"architecture {name!r}: oriented boxes (-obb) have no decoder here. {supported(task)}")
    said = SUFFIX_TASKS.get(head or "")
    if said and task and said != task:
        raise ManifestError(f"architecture {name!r} is a model for {said}, but the task given is {task}")
    task = task or said or DETECT
    found = FAMILIES[family].by_task.get(task) if family in FAMILIES else None
    if found is None:
        raise ManifestError(f"architecture {name!r} has no {task} decoder here. {supported(task)}")
    return found


def supported(task: str | None = None) -> str:
    """What :func:`resolve_architecture` accepts (for ``task``, or all), in words for an error message."""
    tasks = [task] if task else [DETECT, SEGMENT, CLASSIFY, POSE, OCR]
    parts = []
    for t in tasks:
        families = [f.label for f in FAMILIES.values() if t in f.by_task]
        others = [n for n, by in OTHER.items() if t in by]
        parts.append(f"{t}: " + "; ".join(families + others))
    return "Supported model types: " + " | ".join(parts)


def ultralytics_architecture(description: str, task: str, end2end: bool) -> str:
    """The architecture of an Ultralytics export, from its metadata: every Ultralytics head writes
    YOLOv8's grid, or the end-to-end layout when exported with ``end2end`` (YOLOv10, YOLO26), so the
    layout decides; the name in ``description`` ("Ultralytics YOLOv10n model") only tells YOLOv10's
    end-to-end head from YOLO26's.

    >>> ultralytics_architecture("Ultralytics YOLOv5nu model", "object-detection", False)
    'yolov8'
    >>> ultralytics_architecture("Ultralytics YOLOv10n model", "object-detection", True)
    'yolov10'
    >>> ultralytics_architecture("Ultralytics YOLO26n-seg model", "instance-segmentation", True)
    'yolo26-seg'
    """
    if not end2end:
        return _GRID[task]
    named = re.search(r"\bUltralytics (\S+) model\b", description)
    parsed = _parse(named.group(1)) if named else None
    if parsed and parsed[0] == "10" and task == DETECT:
        return "yolov10"
    found = FAMILIES["26"].by_task.get(task)
    if found is None:
        raise ManifestError(f"an end-to-end Ultralytics {task} export has no decoder here. {supported(task)}")
    return found
