"""Start and stop what the benchmark measures: this server (``serve run``), Roboflow Inference and
the throttled origin, each a subprocess whose whole process tree is stopped by PID afterwards.

Stopping: SIGINT to the process we started (``serve run`` then shuts Serve and its local Ray
down), SIGTERM if it lingers, SIGKILL last; then every process that was in its family when we
began stopping (its descendants, and any process whose command line or environment names this
run's private Ray temp folder) gets SIGTERM, then SIGKILL. A process counts only if its PID and
start time both still match, so a reused PID is never signalled. Nothing is stopped by name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from benchmarks import layout
from benchmarks.loadgen import Target

INFER_PARAMS = {"confidence": 0.4, "iou_threshold": 0.3, "max_detections": 300}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- /proc ------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def process_table() -> dict[int, tuple[int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                table[int(entry)] = st
    return table


def family(pid: int, marker: str | None = None) -> dict[int, int]:
    """``pid``'s descendants (and processes naming ``marker``) -> their start times; not ``pid`` itself."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    found: dict[int, int] = {}
    stack = list(children.get(pid, []))
    while stack:
        p = stack.pop()
        if p not in found and p in table:
            found[p] = table[p][1]
            stack.extend(children.get(p, []))
    if marker:  # the whole path, ended: a folder named like ours plus a suffix is not ours
        needles = (marker.encode() + b"/", marker.encode() + b"\0")
        # never this process's own ancestors: the shell that started a benchmark may name the marker
        # (a command that reads the run's logs afterwards) and was stopped with the server
        ours, p = set(), os.getpid()
        while p in table and p not in ours:
            ours.add(p)
            p = table[p][0]
        for p, (_, start) in table.items():
            if p != pid and p not in found and p not in ours:
                text = _read(f"/proc/{p}/cmdline") + b"\0" + _read(f"/proc/{p}/environ")
                if any(n in text for n in needles):
                    found[p] = start
    return found


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def memory(pid: int) -> dict[str, float] | None:
    """RSS, PSS and their anonymous / shared-memory parts of ``pid``, in MiB (``smaps_rollup``)."""
    text = _read(f"/proc/{pid}/smaps_rollup").decode()
    if not text:
        return None
    out = {}
    for key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Anonymous"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[key.lower() + "_mib"] = round(int(m.group(1)) / 1024, 2)
    return out


def _same(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start


class ManagedProcess:
    """A subprocess in its own session, its output in ``log_path``, stopped with its whole family."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                 marker: str | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.marker = marker
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        # if the benchmark itself is killed, this says what to stop (by PID) by hand
        (log_path.parent / f"{name}.pid").write_text(f"{self.popen.pid}\n")
        self.start_time = _stat(self.popen.pid)[1] if _stat(self.popen.pid) else 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def family(self) -> dict[int, int]:
        return family(self.pid, self.marker)

    def stop(self, int_grace_s: float = 40.0, term_grace_s: float = 10.0) -> dict[str, Any]:
        """Stop the process and its family; SIGINT/SIGTERM sent to the benchmark meanwhile wait until done."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            return self._stop(int_grace_s, term_grace_s)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _stop(self, int_grace_s: float, term_grace_s: float) -> dict[str, Any]:
        members = self.family()
        how = "exited"
        for sig, grace in ((signal.SIGINT, int_grace_s), (signal.SIGTERM, term_grace_s), (signal.SIGKILL, 5.0)):
            if not self.alive():
                break
            how = sig.name
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        members.update({p: s for p, s in self.family().items() if p not in members})
        leftovers = {p: s for p, s in members.items() if _same(p, s)}
        names = sorted({cmdline(p)[:60] for p in leftovers})
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            for p, s in leftovers.items():
                if _same(p, s):
                    try:
                        os.kill(p, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_same(p, s) for p, s in leftovers.items()):
                time.sleep(0.1)
        still = [p for p, s in leftovers.items() if _same(p, s)]
        self._log.close()
        return {"stopped_by": how, "exit_code": self.popen.returncode, "family": len(members),
                "leftovers_signalled": len(leftovers), "leftover_names": names, "still_alive": still}

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_http(url: str, proc: ManagedProcess, timeout_s: float, what: str) -> float:
    """Poll ``url`` until it answers 200; returns seconds waited. Fails early if ``proc`` exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not proc.alive():
            raise RuntimeError(f"{what} exited while starting (code {proc.popen.returncode}); last log lines:\n"
                               f"{proc.tail()}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s; last log lines:\n{proc.tail()}")


def _post_json(url: str, body: dict, timeout: float = 120) -> requests.Response:
    return requests.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=timeout)


def first_request(target: Target, model_id: str, image: bytes) -> tuple[float, int, str]:
    """One request (e.g. to warm up or time a cold start): (seconds, status, body start)."""
    import base64

    started = time.monotonic()
    if target.style == "raw":
        r = requests.post(target.url, data=image, headers={target.header: model_id, "Content-Type": "image/jpeg"},
                          timeout=300)
    else:
        r = _post_json(target.url, {"model_id": model_id, "image": {"type": "base64",
                                                                   "value": base64.b64encode(image).decode()},
                                    **target.extra}, timeout=300)
    return time.monotonic() - started, r.status_code, r.text[:300]


@dataclass
class StartInfo:
    seconds: float
    url: str


# -- this server ------------------------------------------------------------------------------
def set_dotted(config: dict, key: str, value: Any) -> None:
    """Apply one ``--ours-set`` override to the generated serve config.

    ``args.<name>`` sets an application argument; ``<Deployment>.<option>[.<sub>...]`` a
    deployment option (``ModelServer.max_ongoing_requests``); anything else a top-level path.

    >>> c = {"applications": [{"args": {}, "deployments": [{"name": "ModelServer"}]}]}
    >>> set_dotted(c, "args.intra_op_threads", 2); set_dotted(c, "ModelServer.ray_actor_options.num_cpus", 2)
    >>> c["applications"][0]["args"], c["applications"][0]["deployments"][0]["ray_actor_options"]
    ({'intra_op_threads': 2}, {'num_cpus': 2})
    """
    app = config["applications"][0]
    head, *rest = key.split(".")
    deployments = {d["name"]: d for d in app.get("deployments", [])}
    if head == "args":
        node = app.setdefault("args", {})
    elif head in deployments:
        node = deployments[head]
    else:
        node, rest = config, [head, *rest]
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value


class OurServer:
    """``serve run <generated config>``: serve_config.yaml with the benchmark's repository, a free
    port, cache and state under the run folder, the CPU provider and a fixed replica count."""

    name = "ours"

    def __init__(self, run_dir: Path, *, cap: int = 8, replicas: int = 1, repositories: list[Path] | None = None,
                 overrides: list[str] | None = None, cache_dir: Path | None = None, tree: Path | None = None) -> None:
        self.run_dir = run_dir
        self.tree = tree  # another work tree whose serve_app to serve (PYTHONPATH, cwd); None: this one
        self.cap = cap
        self.replicas = replicas
        self.repositories = repositories or [layout.REPOSITORY]
        self.overrides = overrides or []
        self.cache_dir = cache_dir or run_dir / "artifacts"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ray_tmp: Path | None = None
        self.proc: ManagedProcess | None = None
        self.config_path = run_dir / "serve_config.yaml"

    def config(self) -> dict:
        config = yaml.safe_load(layout.SERVE_CONFIG.read_text())
        config["http_options"]["port"] = self.port
        app = config["applications"][0]
        app["args"].update({
            "repositories": [str(r) for r in self.repositories], "aliases": {}, "max_models_per_replica": self.cap,
            "providers": ["CPUExecutionProvider"], "cache_dir": str(self.cache_dir),
            "state_dir": str(self.run_dir / "state"), "namespace": f"bench_{self.run_dir.name.replace('-', '_')}",
        })
        for d in app["deployments"]:
            if d["name"] == "ModelServer":
                d.pop("autoscaling_config", None)
                d["num_replicas"] = self.replicas
        for item in self.overrides:
            key, _, raw = item.partition("=")
            set_dotted(config, key.strip(), yaml.safe_load(raw))
        return config

    def start(self, timeout_s: float = 300.0) -> StartInfo:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        # Ray's socket paths must stay under 107 bytes: a short private folder
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir=layout.BENCH))
        env = {**os.environ, "RAY_TMPDIR": str(self.ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
               "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        if self.tree is not None:  # Ray's workers import serve_app from there, ahead of the venv's editable install
            env["PYTHONPATH"] = os.pathsep.join([str(self.tree), *filter(None, [env.get("PYTHONPATH")])])
        log(f"  starting ours: serve run {self.config_path.relative_to(layout.ROOT)} on port {self.port}"
            + (f" from {self.tree}" if self.tree else ""))
        self.proc = ManagedProcess("ours", [str(layout.SERVE), "run", "--address", "local", str(self.config_path)],
                                   cwd=self.tree or layout.ROOT, env=env, log_path=self.run_dir / "serve.log",
                                   marker=str(self.ray_tmp))
        waited = wait_http(self.url + "/readiness", self.proc, timeout_s, "serve run")
        return StartInfo(waited, self.url)

    def targets(self) -> list[Target]:
        query = "&".join(f"{k}={v}" for k, v in INFER_PARAMS.items())
        # "ours": the very route and body Roboflow Inference gets; "ours-raw": the header route, JPEG body
        return [Target("ours", self.url + "/infer/object_detection", "json", {"api_key": "dummy", **INFER_PARAMS}),
                Target("ours-raw", f"{self.url}/infer?{query}", "raw")]

    def processes(self) -> dict[str, list[int]]:
        """Role -> PIDs: the Serve replicas and actors by their process titles, and the rest."""
        if not self.proc:
            return {}
        roles: dict[str, list[int]] = {}
        for pid in [self.proc.pid, *self.proc.family()]:
            title = cmdline(pid)
            m = re.match(r"ray::(ServeReplica:\w+:(\w+)|\w+)", title)
            role = m.group(2) or m.group(1) if m else ("serve run" if pid == self.proc.pid else title.split(" ")[0])
            roles.setdefault(role, []).append(pid)
        return roles

    def replica_pids(self) -> list[int]:
        return self.processes().get("ModelServer", [])

    def registry(self) -> dict:
        return requests.get(self.url + "/model/registry", timeout=30).json()

    def load_log(self) -> list[dict]:
        """The replicas' "artifacts from <tier> in <ms>, session ... in <ms> (warm-up <ms>)" lines."""
        if not self.ray_tmp:
            return []
        pattern = re.compile(r"model (\S+): artifacts from (\w+) in (\d+) ms, session on .* in (\d+) ms "
                             r"\(warm-up (\d+) ms\)")
        found = []
        # serve_app logs through Python's logging to the replica's stderr: Ray's worker-*.err
        for path in sorted(p for d in self._session_dirs() for p in d.glob("logs/worker-*.err")):
            for line in path.read_text(errors="replace").splitlines():
                m = pattern.search(line)
                if m:
                    found.append({"model_id": m.group(1), "tier": m.group(2), "fetch_ms": float(m.group(3)),
                                  "session_ms": float(m.group(4)), "warmup_ms": float(m.group(5))})
        return found

    def stop(self, keep_ray_tmp: bool = False) -> dict:
        if not self.proc:
            return {}
        for session in self._session_dirs():  # keep Serve's logs with the run
            for path in [*session.glob("logs/serve/*.log"), *session.glob("logs/worker-*.err")]:
                if path.stat().st_size:
                    shutil.copy(path, self._logs_dir() / path.name)
        info = self.proc.stop()
        log(f"  stopped ours: {info}")
        if self.ray_tmp and not keep_ray_tmp:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
        if not keep_ray_tmp and self.cache_dir.parent == self.run_dir:  # this run's disk cache: model copies
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.proc = None
        return info

    def _session_dirs(self) -> list[Path]:
        """This run's Ray session folders (``$RAY_TMPDIR/ray/session_<date>...``; not ``session_latest``)."""
        if not self.ray_tmp:
            return []
        return sorted(d for base in (self.ray_tmp, self.ray_tmp / "ray") for d in base.glob("session_2*") if d.is_dir())

    def _logs_dir(self) -> Path:
        d = self.run_dir / "serve-logs"
        d.mkdir(parents=True, exist_ok=True)
        return d


# -- Roboflow Inference -----------------------------------------------------------------------
class RoboflowServer:
    """Roboflow Inference offline (classic ONNX path), one uvicorn worker, on a free loopback port."""

    name = "rf"

    def __init__(self, run_dir: Path, *, cap: int = 8, cache: Path = layout.RF_CACHE) -> None:
        self.run_dir = run_dir
        self.cap = cap
        self.cache = cache
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: ManagedProcess | None = None

    def start(self, timeout_s: float = 300.0) -> StartInfo:
        if not layout.RF_PYTHON.exists():
            raise RuntimeError(f"Roboflow Inference's venv is missing ({layout.RF_PYTHON}); see benchmarks/README.md")
        scratch = self.run_dir / "rf"
        for static in ("static", "_next/static"):  # the app mounts both, relative to the working folder
            (scratch / "inference" / "landing" / "out" / static).mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "LANG": "C.UTF-8",
               "OFFLINE_MODE": "true", "MODEL_CACHE_DIR": str(self.cache), "DISK_CACHE_CLEANUP": "False",
               "USE_INFERENCE_MODELS": "False", "MAX_ACTIVE_MODELS": str(self.cap), "METRICS_ENABLED": "False",
               "ENABLE_STREAM_API": "False", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        log(f"  starting rf: Roboflow Inference on port {self.port} (MAX_ACTIVE_MODELS={self.cap})")
        self.proc = ManagedProcess("rf", [str(layout.RF_PYTHON), str(layout.ROOT / "benchmarks" / "rf_server.py"),
                                          "--port", str(self.port)],
                                   cwd=scratch, env=env, log_path=self.run_dir / "rf.log")
        waited = wait_http(self.url + "/info", self.proc, timeout_s, "Roboflow Inference")
        return StartInfo(waited, self.url)

    def targets(self) -> list[Target]:
        return [Target("rf", self.url + "/infer/object_detection", "json", {"api_key": "dummy", **INFER_PARAMS})]

    def processes(self) -> dict[str, list[int]]:
        if not self.proc:
            return {}
        return {"uvicorn": [self.proc.pid], "children": list(self.proc.family())}

    def replica_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def stop(self) -> dict:
        if not self.proc:
            return {}
        info = self.proc.stop(int_grace_s=20)
        log(f"  stopped rf: {info}")
        self.proc = None
        return info


# -- the throttled origin ---------------------------------------------------------------------
class ThrottledOrigin:
    def __init__(self, run_dir: Path, root: Path = layout.ORIGIN, rate_mb: float = 50.0) -> None:
        self.run_dir = run_dir
        self.root = root
        self.rate_mb = rate_mb
        self.proc: ManagedProcess | None = None
        self.url = ""

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.proc = ManagedProcess("origin", [str(layout.VENV_PYTHON), "-m", "benchmarks.origin", "--root",
                                              str(self.root), "--rate-mb", str(self.rate_mb), "--port", str(port)],
                                   cwd=layout.ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                   log_path=self.run_dir / "origin.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if f"port {port}" in self.proc.tail(5):
                self.url = f"http://127.0.0.1:{port}"
                return self.url
            if not self.proc.alive():
                break
            time.sleep(0.1)
        raise RuntimeError(f"the throttled origin did not start: {self.proc.tail()}")

    def stop(self) -> dict:
        if not self.proc:
            return {}
        info = self.proc.stop(int_grace_s=5)
        self.proc = None
        return info
