"""Shared fixtures: a real local Ray instance with Serve on a free port, and app deployment."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]

# CI runs the property tests on a fixed set of examples (reproducible); locally they explore
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")


def ray_tmp_parent() -> Path | None:
    """Ray's files inside the work tree, unless its path would push Ray's socket paths past 107 bytes."""
    if len(str(ROOT)) > 48:
        return None
    (ROOT / ".cache").mkdir(exist_ok=True)
    return ROOT / ".cache"


RAY_METRICS: dict[str, str] = {}


@pytest.fixture(scope="session")
def ray_metrics_url(ray_serve) -> str:
    """Prometheus text of the node's metrics (Ray's export port), as the session's Ray exports them."""
    return RAY_METRICS["url"]


@pytest.fixture(scope="session")
def ray_serve():
    """One local Ray instance for the session (2 CPUs), Serve's proxy on a free port."""
    import ray
    from ray import serve

    tmp = Path(tempfile.mkdtemp(prefix="r", dir=ray_tmp_parent()))
    os.environ["RAY_TMPDIR"] = str(tmp)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    metrics_port = free_port()
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")  # tests read the exported metrics
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False,
             configure_logging=False, _metrics_export_port=metrics_port)
    RAY_METRICS["url"] = f"http://127.0.0.1:{metrics_port}/metrics"
    port = free_port()  # after Ray's own processes have taken theirs
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


class DeployedApp:
    """A deployed application with its own namespace (so its registry/cache actors are its own)."""

    def __init__(self, base_url: str, settings_args: dict, name: str) -> None:
        self.url = base_url
        self.args = settings_args
        self.name = name
        self.namespace = settings_args["namespace"]

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def actor(self, name: str):
        import ray

        return ray.get_actor(name, namespace=self.namespace)


def deploy_app(base_url: str, tmp_path: Path, args: dict | None = None, *, replicas: int = 1,
               model_server_cpus: float = 0.5, env_vars: dict[str, str] | None = None,
               model_server_extra: dict | None = None, gateway_extra: dict | None = None,
               ready_path: str | None = "/readiness") -> DeployedApp:
    from ray import serve

    from serve_app.app import build_application

    settings_args = {"state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"),
                     "providers": ["CPUExecutionProvider"], "intra_op_threads": 1,
                     "namespace": f"t{uuid.uuid4().hex[:8]}", "allow_private_urls": True, **(args or {})}
    runtime_env = {"env_vars": env_vars} if env_vars else {}
    app = build_application(settings_args, model_server_options={"num_replicas": replicas, "health_check_period_s": 1,
                                                         "ray_actor_options": {"num_cpus": model_server_cpus,
                                                                               "runtime_env": runtime_env},
                                                         **(model_server_extra or {})},
                    gateway_options={"ray_actor_options": {"num_cpus": 0.1, "runtime_env": runtime_env},
                                     **(gateway_extra or {})})
    serve.run(app, name="vision", route_prefix="/", blocking=False)
    deployed = DeployedApp(base_url, settings_args, "vision")
    if ready_path is None:  # serve.run has waited for the deployments; nothing more to ask
        return deployed
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if deployed.get(ready_path, timeout=5).status_code == 200:
                return deployed
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError("the application did not become ready in 120 s")


def teardown_app(app: DeployedApp) -> None:
    import ray
    from ray import serve

    serve.delete(app.name)
    for name in ("serve_app_registry", "serve_app_artifact_cache"):
        try:
            ray.kill(ray.get_actor(name, namespace=app.namespace), no_restart=True)
        except ValueError:
            pass


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two nodes for the module (tests/cluster.py), outside this process's Ray."""
    from tests.cluster import two_nodes

    with two_nodes() as c:
        yield c
