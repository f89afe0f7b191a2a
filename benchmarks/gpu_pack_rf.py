"""Print, one ``name==version`` a line, the distributions Roboflow Inference's HTTP app imports at
start-up that the GPU machine's image lacks: run with Roboflow's interpreter (``.venv-rf``);
:file:`benchmarks/gpu_pack.sh` downloads them for that machine. Imports nothing of this project.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import re
import sys
import tempfile

# The GPU machine's image (the device tool's KINDS.md), and what comes from elsewhere there:
# torch and OpenCV from the image, onnxruntime-gpu from this project's own package folder.
ON_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp opencv-python opencv-contrib-python
onnxruntime-gpu""".split()
# Imported when present (transformers probes for it) but not needed: its app starts and serves
# without it, and it is the largest of them all (124 MB of CUDA kernels).
NOT_NEEDED = ("bitsandbytes",)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Roboflow's start-up logs go to stdout: keep them out of the list
    os.environ.update(OFFLINE_MODE="true", USE_INFERENCE_MODELS="False", DISK_CACHE_CLEANUP="False",
                      MODEL_CACHE_DIR=tempfile.mkdtemp())
    os.chdir(tempfile.mkdtemp())
    for static in ("static", "_next/static"):
        os.makedirs(os.path.join("inference", "landing", "out", static))
    import uvicorn  # noqa: F401
    from inference.core.interfaces.http.http_api import HttpInterface
    from inference.core.managers.base import ModelManager
    from inference.core.registries.roboflow import RoboflowModelRegistry
    from inference.models.utils import ROBOFLOW_MODEL_TYPES
    from inference.models.yolov8 import YOLOv8ObjectDetection  # noqa: F401

    HttpInterface(ModelManager(model_registry=RoboflowModelRegistry(ROBOFLOW_MODEL_TYPES)))
    owners = md.packages_distributions()
    loaded = {d for module in list(sys.modules) for d in owners.get(module.split(".")[0], [])}
    skip = {norm(n) for n in (*ON_IMAGE, *NOT_NEEDED)}
    lines = set()
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name in loaded and norm(name) not in skip and not norm(name).startswith("nvidia-"):
            lines.add(f"{'inference-gpu' if norm(name) == 'inference-cpu' else name}=={dist.version}")
    out.write("".join(f"{line}\n" for line in sorted(lines)))
    out.flush()


if __name__ == "__main__":
    main()
