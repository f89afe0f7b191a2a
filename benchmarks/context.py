"""What every workload shares: its options, the contenders' lifecycles, the run's metadata, and
writing results.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from benchmarks import layout
from benchmarks.loadgen import ClientPlan, Target
from benchmarks.servers import OurServer, RoboflowServer, first_request, log

SERVERS = ("rf", "ours")
OUR_VARIANTS = ("ours", "ours-raw")


@dataclass
class Options:
    contenders: list[str] = field(default_factory=lambda: ["floor", "rf", "ours"])
    variants: list[str] = field(default_factory=lambda: list(OUR_VARIANTS))
    cap: int = 8
    requests: int = 300
    duration_s: float = 20.0
    warmup: int = 20
    clients: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    models: list[int] = field(default_factory=lambda: [12, 50])
    patterns: list[str] = field(default_factory=lambda: ["rr", "zipf"])
    switch_clients: list[int] = field(default_factory=lambda: [1, 4])
    rates: list[float] = field(default_factory=lambda: [5, 10, 15, 20, 25, 30])
    samples: int = 3
    zipf_s: float = 1.1
    origin_mb_s: float = 50.0
    ours_set: list[str] = field(default_factory=list)
    results_dir: Path = layout.RESULTS
    keep_runs: bool = False
    merge: bool = False
    label: str = ""  # names a configuration of ours: results under "ours@<label>", "ours-raw@<label>"
    ours_tree: Path | None = None  # serve this work tree's serve_app instead of this one's
    images: list[bytes] = field(default_factory=list)

    def servers(self) -> list[str]:
        return [c for c in SERVERS if c in self.contenders]

    def server_args(self) -> dict[str, Any]:
        """The application arguments ``--ours-set args.<name>=...`` gives our server (the floor mirrors them)."""
        import yaml

        out = {}
        for item in self.ours_set:
            key, _, raw = item.partition("=")
            if key.strip().startswith("args."):
                out[key.strip()[5:]] = yaml.safe_load(raw)
        return out

    def describe(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items() if k != "images"}
        out["image_bytes"] = [len(i) for i in self.images]
        return out


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


@contextmanager
def running(kind: str, workload: str, opts: Options, **kwargs: Any) -> Iterator[Any]:
    """Start ``kind`` ("ours" or "rf") for one workload, yield it, always stop it."""
    run_dir = layout.RUNS / f"{workload}-{kind}-{stamp()}"
    server = (OurServer(run_dir, cap=opts.cap, overrides=opts.ours_set, tree=opts.ours_tree, **kwargs) if kind == "ours"
              else RoboflowServer(run_dir, cap=opts.cap))
    started = time.monotonic()
    try:
        info = server.start()
        log(f"  {kind} answered after {info.seconds:.1f} s (logs: {run_dir.relative_to(layout.ROOT)})")
        server.start_seconds = time.monotonic() - started
        yield server
    finally:
        if kind == "ours":
            server.stop(keep_ray_tmp=opts.keep_runs)
        else:
            server.stop()


def targets_of(server: Any, opts: Options) -> list[Target]:
    chosen = [t for t in server.targets() if t.name == "rf" or t.name in opts.variants]
    if opts.label:
        chosen = [replace(t, name=f"{t.name}@{opts.label}") if t.name.startswith("ours") else t for t in chosen]
    return chosen


def warm(target: Target, model_id: str, opts: Options, count: int | None = None) -> float:
    """First request (waits for the model to load), then ``count`` more; returns the first's seconds."""
    seconds, status, body = first_request(target, model_id, opts.images[0])
    if status != 200:
        raise RuntimeError(f"{target.name}: warm-up request for {model_id} failed: HTTP {status}: {body}")
    for i in range(count if count is not None else opts.warmup):
        first_request(target, model_id, opts.images[(i + 1) % len(opts.images)])
    return seconds


def plan(target: Target, model_ids: tuple[str, ...], sequence: list[int] | tuple[int, ...], opts: Options,
         deadline_s: float, **kwargs: Any) -> ClientPlan:
    return ClientPlan(target=target, model_ids=model_ids, sequence=tuple(sequence), images=tuple(opts.images),
                      deadline_s=deadline_s, **kwargs)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=layout.ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip("\n")
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(python: Path, module: str) -> str | None:
    if not python.exists():
        return None
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "loadavg": list(os.getloadavg())}


def metadata(workload: str, opts: Options) -> dict[str, Any]:
    import onnxruntime
    import ray

    prepared = json.loads(layout.PREPARED.read_text()) if layout.PREPARED.exists() else {}
    return {"workload": workload, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "git": {"commit": _git("rev-parse", "HEAD"),
                    "uncommitted": [line for line in _git("status", "--porcelain").splitlines()
                                    if not line[3:].startswith("benchmarks/results/")]},
            "versions": {"ray": ray.__version__, "onnxruntime": onnxruntime.__version__,
                         "inference-cpu": _version(layout.RF_PYTHON, "inference-cpu"),
                         "onnxruntime (Roboflow venv)": _version(layout.RF_PYTHON, "onnxruntime")},
            "model": {k: prepared.get(k) for k in ("base_sha256", "model_bytes", "ultralytics_version", "image_size")},
            "options": opts.describe()}


def check_quiet(opts: Options) -> str | None:
    """A warning when the machine is busy (the 1-minute load average above half a core)."""
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        return (f"the machine is busy (1-minute load average {load1:.2f} on {os.cpu_count()} cores): "
                "these figures measure contention as much as the servers")
    return None


def merge_earlier(doc: dict, earlier: dict) -> list[str]:
    """Copy into ``doc`` the contenders (and floor) that ``earlier`` has and ``doc`` lacks.

    >>> doc = {"contenders": {"ours": 1}, "runs": {"rr": {"contenders": {"ours": 2}}}}
    >>> merge_earlier(doc, {"contenders": {"rf": 3}, "runs": {"rr": {"contenders": {"rf": 4}}}, "floor": 5})
    ['rf', 'runs.rr.rf', 'floor']
    >>> doc["contenders"], doc["runs"]["rr"]["contenders"], doc["floor"]
    ({'ours': 1, 'rf': 3}, {'ours': 2, 'rf': 4}, 5)
    """
    taken = []
    for name, value in earlier.get("contenders", {}).items():
        if name not in doc.setdefault("contenders", {}):
            doc["contenders"][name] = value
            taken.append(name)
    for key, run in earlier.get("runs", {}).items():
        mine = doc.setdefault("runs", {}).setdefault(key, {k: v for k, v in run.items() if k != "contenders"})
        for name, value in run.get("contenders", {}).items():
            if name not in mine.setdefault("contenders", {}):
                mine["contenders"][name] = value
                taken.append(f"runs.{key}.{name}")
    if "floor" in earlier and "floor" not in doc:
        doc["floor"] = earlier["floor"]
        taken.append("floor")
    return taken


def write_result(name: str, doc: dict, opts: Options, ratios: Callable[[dict], dict] | None = None) -> Path:
    """Write ``<results>/<name>.json``; with ``--merge``, keep what an earlier run measured and
    this one did not (recorded in ``meta.merged``), then compute the ratios."""
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    doc.setdefault("meta", {})["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["meta"]["loadavg_at_end"] = list(os.getloadavg())
    path = opts.results_dir / f"{name}.json"
    if opts.merge and path.exists():
        earlier = json.loads(path.read_text())
        taken = merge_earlier(doc, earlier)
        if taken:
            doc["meta"]["merged"] = {"from_run_started": earlier.get("meta", {}).get("started"), "entries": taken}
            log(f"  merged from the earlier {name} run: {', '.join(taken)}")
    if ratios is not None:
        doc["ratios"] = ratios(doc)
    path.write_text(json.dumps(doc, indent=1))
    log(f"wrote {path.relative_to(layout.ROOT) if path.is_relative_to(layout.ROOT) else path}")
    return path


def start_document(workload: str, opts: Options) -> dict[str, Any]:
    """A result document for ``workload``, warning (in it and on stderr) when the machine is busy."""
    from benchmarks.servers import log

    log(f"== {workload}")
    doc: dict[str, Any] = {"meta": metadata(workload, opts), "contenders": {}}
    warning = check_quiet(opts)
    if warning:
        log(f"WARNING: {warning}")
        doc["meta"]["warning"] = warning
    return doc
