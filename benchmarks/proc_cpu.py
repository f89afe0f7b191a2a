"""Where a load window's CPU went: core-seconds per process role (ModelServer replicas, gateways,
HAProxy, Ray's own processes, the load generator, Roboflow Inference), read from ``/proc`` at the
window's start and end, per answer and as cores; the busiest thread of each serving role (an
event loop at one core is that process's limit, however many cores the machine has left); the
machine's busy cores; and, where nvidia-smi runs, the GPU's utilisation sampled through the window.

``benchmarks/gpu.py`` records this for every window (``cpu`` in each sweep row).
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.servers import cmdline

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# (substring of the command line, role), first match wins; Ray names its workers by process title
NAMED = (
    ("haproxy", "haproxy"),
    ("ServeController", "serve_controller"),
    ("rf_server.py", "roboflow"),
    ("raylet", "raylet"),
    ("gcs_server", "gcs"),
)
SERVE_DEPLOYMENTS = {"ModelServer": "model_server", "Gateway": "gateway"}
THREAD_ROLES = ("model_server", "gateway", "haproxy", "roboflow")


def role(cmdline: str, pid: int = 0, load_pids: frozenset[int] = frozenset()) -> str:
    """The role of a process from its command line (the load generator's by its PIDs): a Serve
    replica by its deployment, a named process, any other Ray worker by its actor class.

    >>> role("ray::ServeReplica:vision:ModelServer")
    'model_server'
    >>> role("ray::ServeReplica:vision:Gateway")
    'gateway'
    >>> role("/usr/sbin/haproxy -f /tmp/x/haproxy.cfg")
    'haproxy'
    >>> role("python -c spawn_main", pid=7, load_pids=frozenset({7}))
    'load'
    >>> role("/venv/lib/python3.12/site-packages/ray/core/src/ray/raylet/raylet --node")
    'raylet'
    >>> role("ray::ProxyActor"), role("ray::ArtifactCacheActor.get"), role("ray::ServeController")
    ('ray:ProxyActor', 'ray:ArtifactCacheActor', 'serve_controller')
    >>> role("bash")
    'other'
    """
    if pid in load_pids:
        return "load"
    if "ServeReplica:" in cmdline:
        deployment = cmdline.split("ServeReplica:", 1)[1].split()[0].rsplit(":", 1)[-1]
        return SERVE_DEPLOYMENTS.get(deployment, "ray_other")
    named = next((name for needle, name in NAMED if needle in cmdline), None)
    if named:
        return named
    if "ray::" in cmdline:
        return "ray:" + (cmdline.split("ray::", 1)[1].split() or ["?"])[0].split(".")[0]
    return "ray_other" if "ray/" in cmdline else "other"


def _ticks(stat_text: str) -> tuple[int, int]:
    """(utime + stime, start time) in clock ticks from a ``/proc/.../stat`` line.

    >>> _ticks("12 (ray::Serve Replica) S 1 2 3 4 5 6 7 8 9 10 100 50 0 0 20 0 9 0 777 0 0")
    (150, 777)
    """
    fields = stat_text[stat_text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12]), int(fields[19])


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


@dataclass
class Snapshot:
    """CPU ticks per (pid, start) and per (pid, tid, start) of the serving roles' threads."""
    at: float
    processes: dict[tuple[int, int], int] = field(default_factory=dict)
    roles: dict[tuple[int, int], str] = field(default_factory=dict)
    threads: dict[tuple[int, int, int], tuple[int, str]] = field(default_factory=dict)
    machine: tuple[int, int] = (0, 0)  # (busy, total) ticks over all cores


def machine_ticks(text: str) -> tuple[int, int]:
    """(busy, total) ticks from ``/proc/stat``'s first line (idle and iowait are not busy).

    >>> machine_ticks("cpu  100 0 50 800 50 0 0 0 0 0\\ncpu0 1 2 3")
    (150, 1000)
    """
    values = [int(v) for v in text.splitlines()[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


def snapshot(load_pids: frozenset[int] = frozenset()) -> Snapshot:
    """Every process's CPU ticks and role now, and the threads of the serving roles."""
    snap = Snapshot(at=time.monotonic(), machine=machine_ticks(_read("/proc/stat") or "cpu 0 0 0 0 0 0 0 0"))
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _read(f"/proc/{pid}/stat")
        if not stat:
            continue
        ticks, start = _ticks(stat)
        name = role(cmdline(pid), pid, load_pids)
        snap.processes[(pid, start)] = ticks
        snap.roles[(pid, start)] = name
        if name in THREAD_ROLES:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                t_stat = _read(f"/proc/{pid}/task/{tid}/stat")
                if t_stat:
                    t_ticks, _ = _ticks(t_stat)
                    snap.threads[(pid, int(tid), start)] = (t_ticks, _read(f"/proc/{pid}/task/{tid}/comm").strip())
    return snap


def cpu_between(before: Snapshot, after: Snapshot, answers: int, cores: int | None = None) -> dict:
    """Cores used per role, core-ms per answer per role, the busiest thread of each serving role, and
    the machine's busy cores between two snapshots. A process started in between counts from zero;
    one that ended in between is missing from the roles (the machine's busy cores still hold it).

    >>> b = Snapshot(at=0.0, processes={(1, 5): 100, (2, 6): 10}, roles={(1, 5): "model_server", (2, 6): "load"},
    ...              threads={(1, 1, 5): (60, "python"), (1, 9, 5): (40, "ort")}, machine=(1000, 4000))
    >>> a = Snapshot(at=2.0, processes={(1, 5): 300, (2, 6): 60, (3, 7): 20},
    ...              roles={(1, 5): "model_server", (2, 6): "load", (3, 7): "gateway"},
    ...              threads={(1, 1, 5): (240, "python"), (1, 9, 5): (60, "ort")}, machine=(1800, 5600))
    >>> s = cpu_between(b, a, answers=100, cores=4)
    >>> s["cores_by_role"] == {"model_server": round(200 * TICK_S / 2, 2), "load": round(50 * TICK_S / 2, 2),
    ...                        "gateway": round(20 * TICK_S / 2, 2)}
    True
    >>> s["busiest_thread"]["model_server"]["name"], s["busy_cores"], s["cores"]
    ('python', 2.0, 4)
    >>> s["thread_ms_per_answer"]["model_server"] == {"python": round(180 * TICK_S * 10, 2), "ort": round(20 * TICK_S * 10, 2)}
    True
    """
    seconds = max(after.at - before.at, 1e-9)
    by_role: dict[str, int] = {}
    for key, ticks in after.processes.items():
        name = after.roles[key]
        by_role[name] = by_role.get(name, 0) + ticks - before.processes.get(key, 0)
    busiest: dict[str, dict] = {}
    by_thread: dict[str, dict[str, int]] = {}  # role -> thread name -> ticks, the role's processes pooled
    for key, (ticks, comm) in after.threads.items():
        name = after.roles.get((key[0], key[2]), "other")
        spent = ticks - before.threads.get(key, (0, ""))[0]
        used = spent * TICK_S / seconds
        if used > busiest.get(name, {}).get("cores", -1.0):
            busiest[name] = {"cores": round(used, 2), "name": comm, "pid": key[0]}
        by_thread.setdefault(name, {})[comm] = by_thread.get(name, {}).get(comm, 0) + spent
    busy = after.machine[0] - before.machine[0]
    total = max(after.machine[1] - before.machine[1], 1)
    n_cores = cores or os.cpu_count() or 1
    ranked = sorted(by_role.items(), key=lambda x: -x[1])
    return {
        "seconds": round(seconds, 3),
        "cores": n_cores,
        "busy_cores": round(busy / total * n_cores, 2),
        "cores_by_role": {r: round(t * TICK_S / seconds, 2) for r, t in ranked},
        "core_ms_per_answer": {r: round(t * TICK_S * 1e3 / max(answers, 1), 2) for r, t in ranked},
        "busiest_thread": busiest,
        # a role's core-ms per answer by thread name (its 8 busiest names): which of its threads the cost is in
        "thread_ms_per_answer": {r: {comm: round(t * TICK_S * 1e3 / max(answers, 1), 2)
                                     for comm, t in sorted(names.items(), key=lambda x: -x[1])[:8] if t > 0}
                                 for r, names in by_thread.items()},
    }


def pids_by_role(roles: tuple[str, ...]) -> dict[str, list[int]]:
    """The PIDs of the processes in ``roles`` now (by :func:`role`)."""
    out: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (name := role(cmdline(int(entry)))) in roles:
            out.setdefault(name, []).append(int(entry))
    return out


class GpuSampler:
    """``nvidia-smi`` polled every ``interval_ms`` while the window lasts: mean and max utilisation (%)."""

    def __init__(self, interval_ms: int = 250) -> None:
        self.interval_ms = interval_ms
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          f"-lms={self.interval_ms}"], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return utilisation(out)


def utilisation(text: str) -> dict | None:
    """Mean and max of nvidia-smi's utilisation lines (one per GPU per sample; all GPUs pooled).

    >>> utilisation("40\\n60\\nbad\\n80\\n")
    {'samples': 3, 'mean_pct': 60.0, 'max_pct': 80.0}
    >>> utilisation("") is None
    True
    """
    values = [float(v) for v in text.split() if v.replace(".", "", 1).isdigit()]
    if not values:
        return None
    return {"samples": len(values), "mean_pct": round(sum(values) / len(values), 1), "max_pct": max(values)}


class WindowAccount:
    """A thread that snapshots at ``start_at`` and ``start_at + duration`` (monotonic clock, which
    the load processes share) and samples the GPU in between; ``result(answers)`` after ``join``."""

    def __init__(self, start_at: float, duration: float, load_pids: frozenset[int]) -> None:
        self.start_at, self.duration, self.load_pids = start_at, duration, load_pids
        self.before: Snapshot | None = None
        self.after: Snapshot | None = None
        self.gpu: dict | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        self.before = snapshot(self.load_pids)
        sampler = GpuSampler()
        sampler.start()
        time.sleep(max(0.0, self.start_at + self.duration - time.monotonic()))
        self.after = snapshot(self.load_pids)
        self.gpu = sampler.stop()

    def result(self, answers: int) -> dict | None:
        self.thread.join(timeout=30)
        if self.before is None or self.after is None:
            return None
        return {**cpu_between(self.before, self.after, answers), "gpu_utilisation": self.gpu}
