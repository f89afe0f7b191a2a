"""Where one request's CPU goes in our server: py-spy samples of the Gateway, ModelServer and proxy
processes under a closed loop, per route, folded into stages.

    .venv/bin/python -m benchmarks.cpu_profile [--clients 2] [--duration 15] [--rate 100]
        [--ours-tree DIR] [--out benchmarks/results/cpu_profile.json]

Starts our server as the benchmarks do (``OurServer``: one ModelServer replica, CPU provider, the
prepared ``bench-0/1`` YOLOv8n), warms it, then per route (``ours``: ``POST /infer/object_detection``
with base64 JSON; ``ours-raw``: the JPEG as the body) runs ``--clients`` closed-loop clients for
``--duration`` seconds while ``py-spy record --nonblocking --format raw`` samples each process
(idle threads are not sampled), and reads each process's CPU time from ``/proc``. A sample is
charged to the first stage (in :data:`STAGES` order) whose pattern matches a frame of its stack, so
``ORT session.run`` wins over the replica's handler that called it. Output: per route and process,
CPU ms per answered request, and per stage the share of that process's samples and its ms per
request (share x CPU ms).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import layout
from benchmarks.context import machine, stamp
from benchmarks.loadgen import ClientPlan, run_clients
from benchmarks.models import load_images
from benchmarks.servers import OurServer, first_request, log
from benchmarks.stats import summarize

PY_SPY = layout.ROOT / ".venv" / "bin" / "py-spy"
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

# (stage, regex on "function (file)" frames), first match wins: the most specific first
STAGES: list[tuple[str, str]] = [
    ("ORT session.run", r"\brun \(.*onnxruntime"),
    ("JPEG decode", r"imdecode|decode_jpeg|_decode_with_opencv|_decode_jpeg_turbo"),
    ("image header/EXIF (Pillow)", r"PIL/|_jpeg_is_complete|_exif_orientation"),
    ("base64", r"b64decode|b64encode|_decode_base64"),
    ("letterbox/preprocess", r"letterbox|preprocess|cvtColor|resize"),
    ("NMS/postprocess", r"nms|postprocess|decode_detections|non_max"),
    ("request JSON parse", r"orjson.*loads|json_object|parse_json|from_json_body"),
    ("response JSON", r"JSONResponse|render \(|dumps|finish_results|json_response"),
    ("pickle/serialisation", r"pickle|serializ|cloudpickle|_serialize|deserializ"),
    ("Ray handles/router", r"ray/serve/_private/(router|replica_scheduler|handle|request_router)|ray/_private/worker|ray/_raylet|ray/actor"),
    ("HTTP (uvicorn/starlette)", r"uvicorn|starlette|h11|httptools|asgi"),
    ("asyncio loop", r"asyncio/"),
]


# leaf frames of a thread blocked in C (py-spy's idle detection misses waits inside Ray's core
# worker and uvloop): not CPU, so left out when a process's CPU time is split over the stages
IDLE_LEAF = re.compile(r"^(Worker\.main_loop|Thread\.run|_worker|Condition\.wait|Event\.wait|"
                       r".*_run_user_code_event_loop|.*_run_router_event_loop|select|epoll|poll)\b")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (``comm``) of a process, summed over threads of one name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * TICK_S
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def stage_of(stack: str) -> str:
    """The stage a folded py-spy stack (frames joined by ``;``) is charged to.

    >>> stage_of("main (x.py:1);run (onnxruntime/capi/session.py:220)")
    'ORT session.run'
    >>> stage_of("main (x.py:1);select (selectors.py:3)")
    'idle'
    >>> stage_of("main (x.py:1);handle (serve_app/x.py:3)")
    'other'
    """
    for name, pattern in STAGES:
        if re.search(pattern, stack):
            return name
    if IDLE_LEAF.match(stack.rsplit(";", 1)[-1]):
        return "idle"
    return "other"


def fold(raw: str) -> Counter:
    """py-spy raw output (``stack count`` lines) -> samples per stage."""
    stages: Counter = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stages[stage_of(stack)] += int(count)
    return stages


def profile_route(server: OurServer, target: Any, pids: dict[str, int], clients: int, duration: float,
                  rate: int, images: list[bytes], out_dir: Path) -> dict[str, Any]:
    spies = {}
    for role, pid in pids.items():
        path = out_dir / f"{target.name}-{role}.txt"
        spies[role] = (path, subprocess.Popen(
            [str(PY_SPY), "record", "--nonblocking", "--format", "raw", "--rate", str(rate), "--duration",
             str(int(duration + 2)), "--pid", str(pid), "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(1.0)  # py-spy attached
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    threads_before = {role: thread_cpu(pid) for role, pid in pids.items()}
    plans = [ClientPlan(target=target, model_ids=(layout.model_id(0),), sequence=(0,) * 10_000,
                        images=tuple(images), deadline_s=duration, image_offset=c) for c in range(clients)]
    result = run_clients(plans, f"profile {target.name} x{clients}")
    after = {role: cpu_seconds(pid) for role, pid in pids.items()}
    threads_after = {role: thread_cpu(pid) for role, pid in pids.items()}
    for role, (path, proc) in spies.items():
        proc.wait(timeout=60)
    answered = int((result.records["status"] == 200).sum())
    doc: dict[str, Any] = {"load": summarize(result.latencies, errors=len(result.records) - answered,
                                             wall_s=result.wall_s), "processes": {}}
    for role, (path, proc) in spies.items():
        cpu_ms = (after[role] - before[role]) * 1e3 / max(answered, 1)
        stages = fold(path.read_text()) if path.exists() else Counter()
        idle = stages.pop("idle", 0)
        total = sum(stages.values()) or 1
        per_thread = {name: (threads_after[role].get(name, 0.0) - threads_before[role].get(name, 0.0)) * 1e3
                      / max(answered, 1) for name in threads_after[role]}
        doc["processes"][role] = {
            "pid": pids[role], "cpu_ms_per_request": round(cpu_ms, 2), "samples": total, "idle_samples": idle,
            "stages": {name: {"share": round(n / total, 3), "ms_per_request": round(cpu_ms * n / total, 2)}
                       for name, n in stages.most_common()},
            "threads_ms_per_request": {k: round(v, 2) for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1])
                                       if v >= 0.05}}
    return doc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--ours-tree", type=Path, default=None, help="serve this work tree's serve_app (PYTHONPATH)")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=layout.RESULTS / "cpu_profile.json")
    args = p.parse_args(argv)
    images = load_images()
    run_dir = layout.RUNS / f"cpu-profile-{stamp()}"
    server = OurServer(run_dir, overrides=args.ours_set, tree=args.ours_tree)
    doc: dict[str, Any] = {"workload": "cpu_profile", "started": stamp(), "machine": machine(),
                           "options": {k: str(v) for k, v in vars(args).items()}, "routes": {}}
    try:
        server.start()
        roles = server.processes()
        pids = {"gateway": roles["Gateway"][0], "modelserver": roles["ModelServer"][0],
                "proxy": roles["ProxyActor"][0]}
        for target in server.targets():
            for i in range(20):  # the model loads on the first, then the path is warm
                first_request(target, layout.model_id(0), images[i % len(images)])
            log(f"  profiling {target.name}")
            doc["routes"][target.name] = profile_route(server, target, pids, args.clients, args.duration,
                                                       args.rate, images, run_dir)
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    for route, got in doc["routes"].items():
        print(f"{route}: {got['load']['throughput_rps']} req/s")
        for role, proc in got["processes"].items():
            top = ", ".join(f"{k} {v['ms_per_request']}" for k, v in list(proc["stages"].items())[:7])
            threads = ", ".join(f"{k} {v}" for k, v in list(proc["threads_ms_per_request"].items())[:6])
            print(f"  {role}: {proc['cpu_ms_per_request']} ms/request: {top}\n    threads: {threads}")


if __name__ == "__main__":
    main()
