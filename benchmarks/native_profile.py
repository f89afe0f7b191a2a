"""Where a serving process's CPU goes, native frames included: ``py-spy record --native`` on every
ModelServer and Gateway process through one load window, folded three ways per role.

``benchmarks/gpu.py --profile-clients N`` runs it during its level-``N`` window of the raw route
(a window of its own, after the measured one, so the sampling's pauses cost no measured figure).
Per role (the replicas of a deployment pooled):

- ``stages``: a sample is charged to the first of :data:`STAGES` whose pattern matches a frame of
  its stack (outermost pattern first in the list: CUDA's driver calls beat ONNX Runtime, which
  beats the replica's handler that called it);
- ``leaves``: the innermost frame (what the CPU was executing), the most common first;
- ``python``: the innermost Python frame (the Python function that asked for that work).

Shares are of the samples of running threads (py-spy samples waiting ones too once it unwinds
native frames: :func:`is_idle` sets those apart);
``core_ms_per_answer`` (from ``/proc``, in the same window) turns a share into milliseconds.
py-spy cannot unwind native stacks without pausing the process, so it pauses each one ``rate``
times a second: the profiled window is slower than the measured one.
"""
from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

# (stage, regex on a folded stack's frames), the first that matches wins
STAGES: list[tuple[str, str]] = [
    ("CUDA driver and runtime", r"\((libcuda\.so|libcudart\.so)[^)]*\)"),
    ("cuDNN / cuBLAS host side", r"\((libcudnn[^)]*|libcublas[^)]*)\)"),
    ("ONNX Runtime host side", r"onnxruntime|Ort[A-Z]\w+ \(|\(libonnxruntime"),
    ("JPEG decode", r"simplejpeg|decode_jpeg|libjpeg|libturbojpeg|imdecode|nvimgcodec"),
    ("pickle / serialisation", r"pickle|serializ|msgpack|_serialize|deserializ|cloudpickle"),
    ("NumPy", r"numpy/|_multiarray_umath"),
    ("OpenCV", r"cv2|libopencv"),
    ("Ray core worker (C++)", r"ray::core::|ray::rpc::|ray::gcs::|\(_raylet\.so\)|grpc|absl::|boost::asio"),
    ("Ray Serve (Python)", r"ray/serve/"),
    ("Ray (Python)", r"ray/_private/|ray/_raylet|ray/actor|ray/util/|ray/_common/"),
    ("HTTP (uvicorn, starlette)", r"uvicorn|starlette|h11|httptools"),
    ("asyncio loop", r"asyncio/|uvloop"),
    ("serve_app (Python)", r"serve_app/"),
]


# a thread waiting, not running: py-spy samples it anyway once it unwinds native frames
IDLE_LEAF = re.compile(r"^(epoll_wait|epoll_pwait|poll|ppoll|select|pselect|pthread_cond_wait|pthread_cond_timedwait|"
                       r"futex|syscall|sem_wait|sem_timedwait|sem_clockwait|nanosleep|clock_nanosleep|"
                       r"__lll_lock_wait|accept|recv|recvmsg|read) ")
# the innermost Python frame of a thread that waits in C (its leaf an unnamed libc address)
IDLE_PYTHON = re.compile(r"^(Condition\.wait|Event\.wait|_worker \(concurrent/futures/thread|Worker\.main_loop|"
                         r"select \(selectors|Thread\.run \(threading|_run_user_code_event_loop|"
                         r"_run_router_event_loop|_wait_for_tstate_lock)")


def is_idle(frames: list[str]) -> bool:
    """Whether a sample is of a thread waiting (see :data:`IDLE_LEAF`, :data:`IDLE_PYTHON`).

    >>> is_idle(["main (a.py:1)", "epoll_wait (libc.so.6)"]), is_idle(["_worker (concurrent/futures/thread.py:9)", "0x7f (libc.so.6)"])
    (True, True)
    >>> is_idle(["run (onnxruntime/x.py:5)", "0x7f (libc.so.6)"]), is_idle(["_worker (concurrent/futures/thread.py:9)"])
    (False, False)
    """
    leaf = frame_name(frames[-1])
    if IDLE_LEAF.match(leaf):
        return True
    return leaf.startswith("? (libc") and bool(IDLE_PYTHON.match(innermost_python(frames)))


def stage_of(stack: str) -> str:
    """The stage a folded py-spy stack (frames joined by ``;``) is charged to.

    >>> stage_of("infer (serve_app/serving/model_server.py:3);run (onnxruntime/capi/x.py:2);cuLaunchKernel (libcuda.so.1)")
    'CUDA driver and runtime'
    >>> stage_of("infer (serve_app/serving/model_server.py:3);run (onnxruntime/capi/x.py:2)")
    'ONNX Runtime host side'
    >>> stage_of("0x7f (libc.so.6);main (x.py:1)")
    'other'
    """
    for name, pattern in STAGES:
        if re.search(pattern, stack):
            return name
    return "other"


def frame_name(frame: str) -> str:
    """A frame without its line number (``run (onnxruntime/x.py:275)`` -> ``run (onnxruntime/x.py)``),
    an unnamed address as its library (``0x7f8d (libc.so.6)`` -> ``? (libc.so.6)``).

    >>> frame_name("run (onnxruntime/capi/x.py:275)"), frame_name("0x7f8d5e64524a (libc.so.6)")
    ('run (onnxruntime/capi/x.py)', '? (libc.so.6)')
    """
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"^0x[0-9a-f]+ ", "? ", frame)


def innermost_python(frames: list[str]) -> str:
    """The innermost frame of Python source (``file.py``), or ``(native only)``.

    >>> innermost_python(["main (a.py:1)", "run (onnxruntime/x.py:5)", "cuLaunchKernel (libcuda.so.1)"])
    'run (onnxruntime/x.py)'
    """
    for frame in reversed(frames):
        if re.search(r"\.py(:\d+)?\)$", frame):
            return frame_name(frame)
    return "(native only)"


def fold(raw: str) -> dict[str, Counter]:
    """py-spy's raw output (``stack count`` lines) -> samples per stage, per leaf and per Python frame.

    Samples of waiting threads (:func:`is_idle`) are counted as ``idle`` alone.

    >>> f = fold("a (x.py:1);b (libc.so.6) 3\\na (x.py:2);run (onnxruntime/y.py:4) 2\\nm (z.py:1);epoll_wait (libc.so.6) 4\\n")
    >>> dict(f["stages"]), f["leaves"].most_common(1), dict(f["python"]), f["idle"]["samples"]
    ({'other': 3, 'ONNX Runtime host side': 2}, [('b (libc.so.6)', 3)], {'a (x.py)': 3, 'run (onnxruntime/y.py)': 2}, 4)
    """
    out = {"stages": Counter(), "leaves": Counter(), "python": Counter(), "idle": Counter()}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if is_idle(frames):
            out["idle"]["samples"] += n
            continue
        out["stages"][stage_of(stack)] += n
        out["leaves"][frame_name(frames[-1])] += n
        out["python"][innermost_python(frames)] += n
    return out


class NativeProfile:
    """``py-spy record --native`` on each of ``pids`` (role -> PIDs) for ``duration`` seconds."""

    def __init__(self, py_spy: str, pids: dict[str, list[int]], duration: float, out_dir: Path,
                 rate: int = 50) -> None:
        self.out_dir = out_dir
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.spies: list[tuple[str, int, Path, subprocess.Popen]] = []
        for role, role_pids in pids.items():
            for pid in role_pids:
                path = out_dir / f"{role}-{pid}.txt"
                self.spies.append((role, pid, path, subprocess.Popen(
                    [py_spy, "record", "--native", "--format", "raw", "--rate", str(rate), "--duration",
                     str(max(1, round(duration))), "--pid", str(pid), "--output", str(path)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        time.sleep(0.5)  # attached

    def result(self, core_ms_per_answer: dict[str, float], top: int = 25) -> dict[str, Any]:
        """Per role: samples, errors and the three foldings (top ``top`` of leaves and Python frames),
        each entry as (share of the role's samples, core-ms per answer)."""
        pooled: dict[str, dict[str, Counter]] = {}
        errors: list[str] = []
        for role, pid, path, proc in self.spies:
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode != 0 or not path.exists():
                errors.append(f"{role} {pid}: py-spy exit {proc.returncode}: {(err or '').strip()[-300:]}")
                continue
            folded = fold(path.read_text(errors="replace"))
            mine = pooled.setdefault(role, {k: Counter() for k in folded})
            for key, counts in folded.items():
                mine[key].update(counts)
        doc: dict[str, Any] = {"errors": errors, "roles": {}}
        for role, folded in pooled.items():
            total = sum(folded["stages"].values()) or 1
            ms = core_ms_per_answer.get(role, 0.0)

            def rows(counts: Counter, limit: int | None = None) -> list[list]:
                return [[name, round(n / total, 4), round(ms * n / total, 3)] for name, n in counts.most_common(limit)]

            doc["roles"][role] = {"samples": total, "idle_samples": folded["idle"]["samples"], "core_ms_per_answer": ms,
                                  "stages": rows(folded["stages"]), "leaves": rows(folded["leaves"], top),
                                  "python": rows(folded["python"], top)}
        return doc


def package_roots(py_spy: str, pids: list[int], package: str = "serve_app", tries: int = 20) -> list[str]:
    """The folders ``package`` is imported from in processes ``pids``, read from their stacks
    (``py-spy dump``, every 0.25 s until a stack shows the package): which tree a server really
    runs. Call it while they work (an idle replica's stacks are Ray's)."""
    roots: set[str] = set()
    for _ in range(tries):
        for pid in pids:
            try:
                dump = subprocess.run([py_spy, "dump", "--full-filenames", "--pid", str(pid)], capture_output=True,
                                      text=True, timeout=30).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            roots.update(re.findall(rf"(/[^\s():]*?)/{package}/", dump))
        if roots:
            break
        time.sleep(0.25)
    return sorted(roots)
