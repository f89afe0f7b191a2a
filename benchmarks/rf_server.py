"""Start Roboflow Inference's HTTP server offline, as its ``docker/config/cpu_http.py`` does.

Run with Roboflow Inference's own interpreter, from a scratch folder holding empty
``inference/landing/out/static`` and ``inference/landing/out/_next/static`` folders (the app
mounts both relative to the working folder)::

    OFFLINE_MODE=true MODEL_CACHE_DIR=... DISK_CACHE_CLEANUP=False USE_INFERENCE_MODELS=False \\
    MAX_ACTIVE_MODELS=8 .venv-rf/bin/python benchmarks/rf_server.py --port 9001

:mod:`benchmarks.servers` sets all of that up. This file imports nothing from this project.
"""
from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if os.environ.get("OFFLINE_MODE") != "true":
        raise SystemExit("refusing to start Roboflow Inference without OFFLINE_MODE=true")

    import uvicorn
    from inference.core.env import MAX_ACTIVE_MODELS
    from inference.core.interfaces.http.http_api import HttpInterface
    from inference.core.managers.base import ModelManager
    from inference.core.managers.decorators.fixed_size_cache import WithFixedSizeCache
    from inference.core.registries.roboflow import RoboflowModelRegistry
    from inference.models.utils import ROBOFLOW_MODEL_TYPES

    manager = WithFixedSizeCache(ModelManager(model_registry=RoboflowModelRegistry(ROBOFLOW_MODEL_TYPES)),
                                 max_size=MAX_ACTIVE_MODELS)
    app = HttpInterface(manager).app
    print(f"roboflow-inference: MAX_ACTIVE_MODELS={MAX_ACTIVE_MODELS}, serving on {args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
