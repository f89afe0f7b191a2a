"""What a GPU result records about the machine it ran on: the card, driver and CUDA (from
nvidia-smi), ONNX Runtime, Ray and the other packages that matter, the cores and the CPU, the
load when it started and the commit. Every GPU benchmark writes this under ``machine``.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("onnxruntime-gpu", "onnxruntime", "ray", "onnxconverter-common", "onnx", "numpy", "protobuf",
            "opencv-python-headless", "opencv-python", "simplejpeg", "orjson", "torch")


def command_output(argv: list[str], timeout: float = 20) -> str | None:
    """The command's stdout, or None when it is missing, fails or hangs."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def card_facts(gpus: list[str]) -> dict[str, Any]:
    """The first card's name, driver and memory, from nvidia-smi's ``name, driver, memory`` lines.

    >>> card_facts(["NVIDIA H200, 580.159.04, 143771 MiB"])
    {'card': 'NVIDIA H200', 'driver': '580.159.04', 'gpu_memory': '143771 MiB', 'gpu_count': 1}
    >>> card_facts([])
    {'card': None, 'driver': None, 'gpu_memory': None, 'gpu_count': 0}
    """
    parts: list[str | None] = [p.strip() for p in gpus[0].split(",")] if gpus else []
    parts += [None] * (3 - len(parts))
    return {"card": parts[0], "driver": parts[1], "gpu_memory": parts[2], "gpu_count": len(gpus)}


def parse_compute_apps(text: str | None) -> dict[int, float]:
    """``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`` as {pid: MiB}.

    >>> parse_compute_apps("1057, 3604\\n1913, 4438.5\\nbad line\\n")
    {1057: 3604.0, 1913: 4438.5}
    """
    used: dict[int, float] = {}
    for line in (text or "").splitlines():
        pid, _, mib = (part.strip() for part in line.partition(","))
        if pid.isdigit() and mib.replace(".", "", 1).isdigit():
            used[int(pid)] = float(mib)
    return used


def gpu_memory_by_pid() -> dict[int, float]:
    """MiB of GPU memory per process, as nvidia-smi lists compute processes (empty without one)."""
    return parse_compute_apps(command_output(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]))


def cpu_model() -> str:
    try:
        return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
    except OSError:
        return ""


def machine(commit: str | None = None) -> dict[str, Any]:
    """The card, driver, CUDA, ONNX Runtime (and its providers), Ray, cores, CPU, load and commit."""
    smi = command_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", command_output(["nvidia-smi"]) or "")
    gpus = [g.strip() for g in (smi or "").splitlines() if g.strip()]
    try:
        import onnxruntime

        ort_version, providers = onnxruntime.__version__, onnxruntime.get_available_providers()
    except ImportError:
        ort_version, providers = None, []
    return {**card_facts(gpus), "gpus": gpus, "cuda": cuda.group(1) if cuda else None,
            "onnxruntime": ort_version, "onnxruntime_providers": providers, "ray": package_version("ray"),
            "python": platform.python_version(), "cores": os.cpu_count(), "cpu": cpu_model(),
            "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_start": list(os.getloadavg()),
            "versions": {name: package_version(name) for name in PACKAGES},
            "commit": commit or command_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"])}
