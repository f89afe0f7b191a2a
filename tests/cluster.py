"""A Ray cluster of several nodes on this one machine, driven from outside the test process.

The rest of the suite shares one ``ray.init(address="local")`` inside the pytest process, and a
multi-node cluster cannot share it, so :class:`LocalCluster` starts each node as its own
``ray start --block`` process (own ports, own temp folder, own session) and :class:`ServeRun`
deploys the app with ``serve run --address <head>`` as a subprocess. The tests talk to the app
over HTTP only; what they ask Ray (nodes, actors and where they live) goes to the head's GCS from
a one-off subprocess (:meth:`LocalCluster.gcs`), which needs no ``ray.init`` and no dashboard.

Stopping never goes through Ray's own stop command (it ends every Ray process on the host, other
people's too): each process was started in its own session, and :meth:`LocalCluster.stop` kills those sessions
and then any process left whose session or command line is one of ours, found in ``/proc``.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Asks the head's GCS for its nodes and actors (no ray.init: no driver, no dashboard), as JSON.
_GCS_QUERY = r"""
import json, sys
from ray._raylet import GcsClient
from ray.core.generated import gcs_pb2
c = GcsClient(address=sys.argv[1])
out = {"nodes": [], "actors": []}
for n in c.get_all_node_info(timeout=20).values():
    out["nodes"].append({"node_id": n.node_id.hex(), "alive": n.state == 0, "is_head": n.is_head_node,
                         "name": n.node_name, "port": n.node_manager_port, "temp_dir": n.temp_dir,
                         "resources": dict(n.resources_total)})
if "actors" in sys.argv[2:]:
    import asyncio
    async def actors():
        return await c.async_get_all_actor_info(timeout=20)
    for a in asyncio.run(actors()).values():
        out["actors"].append({"actor_id": a.actor_id.hex(), "name": a.name, "namespace": a.ray_namespace,
                              "class_name": a.class_name, "pid": a.pid, "node_id": a.address.node_id.hex(),
                              "state": gcs_pb2.ActorTableData.ActorState.Name(a.state),
                              "num_restarts": a.num_restarts})
print(json.dumps(out))
"""


# Every process of the cluster (nodes, serve run, GCS queries) shares this token: Ray 2.60 turns
# token authentication on by itself when ~/.ray/auth_token exists (someone on this host may have
# made one), and then a process without the token is refused. One token of our own, in the
# environment only, keeps the cluster independent of that file and closed to other processes.
_TOKEN = secrets.token_hex(32)


# Waits (in a one-off driver, never in the test process) until Serve says the application runs
# with exactly the wanted number of RUNNING replicas per deployment; prints what it saw, as JSON.
_SERVE_WAIT = r"""
import json, sys, time
import ray
from ray import serve
address, app_name, timeout, want = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
deadline = time.time() + timeout
while True:
    app = serve.status().applications.get(app_name)
    states = {d: {str(k): v for k, v in o.replica_states.items()} for d, o in app.deployments.items()} if app else {}
    ok = bool(app) and str(app.status).endswith("RUNNING") and all(
        states.get(d, {}).get("RUNNING") == n and sum(states[d].values()) == n for d, n in want.items())
    if ok or time.time() > deadline:
        print(json.dumps({"ok": ok, "status": str(app.status) if app else None, "states": states}))
        break
    time.sleep(1)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_TMPDIR", "RAY_AUTH_TOKEN_PATH") and not k.startswith("RAY_SERVE_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_TOKEN,
               # SIGTERM to `ray start --block` drains the node for 30 s first; the tests stop nodes at once
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               # the GCS declares a silent node dead after ~3 s instead of ~15 s (README "Scale-out")
               RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
               RAY_health_check_failure_threshold="3")
    return env


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # the fields after "(comm)": state ppid pgrp session


def _cmdline_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.time() + timeout
    while pids and time.time() < deadline:
        pids = {p for p in pids if _state_of(p) not in ("Z", "X")}
        if pids:
            time.sleep(0.2)
    return pids


def _state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _scratch(prefix: str) -> Path:
    """A new folder in the work tree's ``.cache``, or in /tmp if the tree's path is too long for Ray's
    socket paths (at most 107 bytes): ``<root>/.cache/cXXXXXXXX`` gets about 64 more bytes,
    ``/h/session_<date>_<time>_<pid>/sockets/plasma_store``."""
    parent: Path | None = ROOT / ".cache"
    if len(str(ROOT)) > 24:
        parent = None
    else:
        parent.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log_path: Path
    ports: dict[str, int]
    resources: dict[str, float]
    temp_dir: Path
    node_id: str | None = None  # known once the GCS lists it
    killed_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """Nodes as ``ray start --block`` processes under one short scratch folder (Ray's socket paths
    must stay under 107 bytes, so the folder lives in ``.cache`` of a short work tree or in /tmp)."""

    root: Path = field(default_factory=lambda: _scratch("c"))
    object_store_bytes: int = 200 * 2**20
    nodes: list[Node] = field(default_factory=list)
    gcs_address: str | None = None
    _sessions: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # -- starting nodes ------------------------------------------------------------------------
    def _ports(self, head: bool) -> dict[str, int]:
        names = ["node_manager", "object_manager", "dashboard_agent_listen", "dashboard_agent_grpc",
                 "runtime_env_agent", "metrics_export"] + (["gcs", "ray_client", "dashboard"] if head else [])
        ports: dict[str, int] = {}
        while len(set(ports.values())) != len(names):
            ports = {n: free_port() for n in names}
        # a range for this node's workers: below the ports free_port draws from and the ephemeral
        # range, away from Ray's default 10002-19999 (other people's Ray instances on this host use it)
        taken = {n.ports["min_worker"] for n in self.nodes}
        base = random.choice([b for b in range(20000, 26000, 200) if b not in taken])
        ports.update(min_worker=base, max_worker=base + 199)
        return ports

    def _start(self, name: str, short: str, head: bool, num_cpus: float, resources: dict[str, float]) -> Node:
        ports = self._ports(head)
        temp_dir = self.root / short  # its own temp folder, a short name (for the socket paths)
        cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats",
               f"--num-cpus={num_cpus}", "--num-gpus=0", f"--resources={json.dumps(resources)}",
               f"--object-store-memory={self.object_store_bytes}", f"--temp-dir={temp_dir}",
               f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
               f"--min-worker-port={ports['min_worker']}", f"--max-worker-port={ports['max_worker']}",
               f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
               f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
               f"--runtime-env-agent-port={ports['runtime_env_agent']}",
               f"--metrics-export-port={ports['metrics_export']}"]
        if head:
            cmd += ["--head", f"--port={ports['gcs']}", f"--ray-client-server-port={ports['ray_client']}",
                    # without the dashboard Ray still starts a minimal one (usage stats) on 8265
                    "--include-dashboard=false", f"--dashboard-port={ports['dashboard']}"]
        else:
            assert self.gcs_address, "start the head first"
            cmd += [f"--address={self.gcs_address}"]
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._sessions.add(proc.pid)
        node = Node(name, proc, log_path, ports, resources, temp_dir)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: float = 2, resources: dict[str, float] | None = None,
                   timeout: float = 120) -> Node:
        node = self._start("head", "h", True, num_cpus, resources or {"node_head": 1})
        self.gcs_address = f"127.0.0.1:{node.ports['gcs']}"
        self.wait_nodes(1, timeout)
        return node

    def add_node(self, num_cpus: float = 2, resources: dict[str, float] | None = None,
                 timeout: float = 120) -> Node:
        index = sum(1 for n in self.nodes if n.name.startswith("worker"))
        node = self._start(f"worker{index}", f"w{index}", False, num_cpus, resources or {f"node_w{index}": 1})
        self.wait_nodes(sum(1 for n in self.nodes if n.killed_at is None), timeout)
        return node

    # -- asking the GCS ------------------------------------------------------------------------
    def gcs(self, actors: bool = False, timeout: float = 60) -> dict[str, list[dict[str, Any]]]:
        """The head's GCS view: ``nodes`` (and ``actors`` if asked), from a one-off subprocess."""
        assert self.gcs_address
        args = [str(BIN / "python"), "-c", _GCS_QUERY, self.gcs_address] + (["actors"] if actors else [])
        out = subprocess.run(args, cwd=self.root, env=_env(), capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"GCS query failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_nodes(self, alive: int, timeout: float = 120) -> list[dict[str, Any]]:
        """Wait until the GCS lists ``alive`` live nodes, and learn our nodes' ids (by temp folder)."""
        deadline = time.time() + timeout
        last: Any = None
        while True:
            for node in self.nodes:
                if not node.alive and node.killed_at is None:
                    raise RuntimeError(f"node {node.name} exited: {node.log_tail()}")
            try:
                nodes = self.gcs()["nodes"]
                live = [n for n in nodes if n["alive"]]
                for node in self.nodes:
                    for n in live:
                        if n["temp_dir"] == str(node.temp_dir) and not node.node_id:
                            node.node_id = n["node_id"]
                if len(live) == alive and all(n.node_id for n in self.nodes if n.killed_at is None):
                    return live
                last = nodes
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
                last = exc
            if time.time() > deadline:
                raise TimeoutError(f"{alive} live nodes not seen in {timeout} s; last: {last}; "
                                   + " | ".join(f"{n.name}: {n.log_tail(800)}" for n in self.nodes))
            time.sleep(1)

    def node_name_of(self, node_id: str) -> str | None:
        return next((n.name for n in self.nodes if n.node_id == node_id), None)

    # -- stopping ------------------------------------------------------------------------------
    def kill_node(self, node: Node) -> None:
        """SIGKILL the node's ``ray start`` session: its raylet, object store, agents and workers."""
        node.killed_at = time.time()
        self._kill_session(node.proc.pid, signal.SIGKILL)
        node.proc.wait(30)

    def _kill_session(self, sid: int, sig: int) -> set[int]:
        pids = {pid for pid in self._our_pids() if _session_of(pid) == sid}
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def _our_pids(self) -> set[int]:
        """Processes in one of our sessions, or whose command line names our scratch folder."""
        mine, root = os.getpid(), str(self.root)
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == mine:
                continue
            pid = int(entry.name)
            if _state_of(pid) in ("Z", "X"):
                continue
            if _session_of(pid) in self._sessions or root in _cmdline_of(pid):
                found.add(pid)
        return found

    def adopt(self, proc: subprocess.Popen) -> None:
        """Stop ``proc``'s session (started with ``start_new_session``) with the cluster."""
        self._sessions.add(proc.pid)

    def stop(self, keep_files: bool = False) -> None:
        """Stop every node (head last), then anything of ours that is left; remove the scratch folder."""
        for node in reversed(self.nodes):
            if node.alive:
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)  # ray start --block stops its processes
                except ProcessLookupError:
                    pass
        for node in self.nodes:
            try:
                node.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        left = self._our_pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        left = _wait_gone(left, 10)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(left, 10)
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(10)
        if not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def two_nodes() -> Iterator[LocalCluster]:
    """A head and one worker, 2 logical CPUs each (custom resources ``node_head``/``node_w0``);
    ``KEEP_CLUSTER_FILES=1`` keeps Ray's and Serve's logs afterwards."""
    c = LocalCluster()
    try:
        c.start_head(num_cpus=2, resources={"node_head": 1})
        c.add_node(num_cpus=2, resources={"node_w0": 1})
        yield c
    finally:
        c.stop(keep_files=bool(os.environ.get("KEEP_CLUSTER_FILES")))


class ServeRun:
    """``serve run --address <head> <config>`` as a subprocess (it stays up as the driver)."""

    def __init__(self, cluster: LocalCluster, config: dict[str, Any], port: int) -> None:
        self.cluster = cluster
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = cluster.root / "serve.yaml"
        self.log_path = cluster.root / "serve.log"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def config_from(base: Path, tmp: Path, port: int, *, args: dict[str, Any] | None = None,
                    deployments: dict[str, dict[str, Any]] | None = None,
                    proxy_location: str = "HeadOnly") -> dict[str, Any]:
        """A copy of ``base`` (serve_config.yaml) on ``port`` with scratch state/cache folders, the CPU
        provider, one intra-op thread; ``deployments`` (name -> options) replaces the deployments' list."""
        config = yaml.safe_load(base.read_text())
        config["proxy_location"] = proxy_location
        config["http_options"] = {"host": "127.0.0.1", "port": port}
        app = config["applications"][0]
        app["args"].update(state_dir=str(tmp / "state"), cache_dir=str(tmp / "cache"),
                           providers=["CPUExecutionProvider"], intra_op_threads=1, **(args or {}))
        if deployments:
            app["deployments"] = [{"name": name, **opts} for name, opts in deployments.items()]
        return config

    def start(self, timeout: float = 180) -> "ServeRun":
        self.config_path.write_text(yaml.safe_dump(self.config))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "serve"), "run", "--address", str(self.cluster.gcs_address), str(self.config_path)],
                cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.cluster.adopt(self.proc)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if requests.get(self.url + "/readiness", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"/readiness not 200 in {timeout} s: {self.log_tail()}")
            time.sleep(1)

    @contextmanager
    def running(self, timeout: float = 240, replicas: dict[str, int] | None = None) -> Iterator["ServeRun"]:
        """Started (and, with ``replicas``, running that many of each deployment) for the ``with``; stopped after."""
        try:
            self.start(timeout)
            if replicas:
                self.wait_running(replicas, timeout=180)
            yield self
        finally:
            self.stop()

    def wait_running(self, replicas: dict[str, int], timeout: float = 180, app_name: str = "vision") -> dict:
        """Wait until Serve runs ``app_name`` with exactly ``replicas`` (deployment -> count) RUNNING
        replicas (``/readiness`` answers as soon as one Gateway is up)."""
        args = [str(BIN / "python"), "-c", _SERVE_WAIT, str(self.cluster.gcs_address), app_name, str(timeout),
                json.dumps(replicas)]
        out = subprocess.run(args, cwd=self.cluster.root, env=_env(), capture_output=True, text=True,
                             timeout=timeout + 60)
        if out.returncode != 0:
            raise RuntimeError(f"serve status failed: {out.stderr[-2000:]}")
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        if not seen["ok"]:
            raise TimeoutError(f"{app_name} not running with {replicas} in {timeout} s: {seen}; {self.log_tail()}")
        return seen

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> None:
        """Ctrl-C: ``serve run`` deletes the app and shuts Serve down on the cluster; then its session."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
