"""The benchmark's pure helpers (no servers, no Ray): sequences, summaries, targets, config edits."""
from __future__ import annotations

import doctest
import io

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks import context, gpu, gpu_machine, loadgen, models, native_profile, origin, proc_cpu, servers, stats


@pytest.mark.parametrize("module", [stats, loadgen, models, context, servers, origin, gpu, gpu_machine, proc_cpu,
                                    native_profile])
def test_doctests(module) -> None:
    failures, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failures == 0


def test_window_account_charges_a_busy_process_to_its_role() -> None:
    """A child spinning for the whole window is charged about one core (of a 2 s window, about
    200 ms per answer of 10), to the load role because its PID is named as a load process."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 4: pass"])
    try:
        account = proc_cpu.WindowAccount(time.monotonic() + 0.5, 2.0, frozenset({child.pid}))
        got = account.result(answers=10)
    finally:
        child.kill()
        child.wait()
    assert got is not None and got["seconds"] >= 1.9
    assert 0.6 <= got["cores_by_role"]["load"] <= 1.05, got
    assert 60 <= got["core_ms_per_answer"]["load"] <= 210, got
    assert got["busy_cores"] >= 0.6, got


def test_round_robin_over_more_models_than_the_cap_misses_every_time() -> None:
    assert stats.lru_misses(stats.round_robin(12, 120), 8) == 120
    assert stats.lru_misses(stats.round_robin(8, 120), 8) == 8


def test_zipf_is_reproducible_and_skewed() -> None:
    a, b = stats.zipf(50, 500, seed=3), stats.zipf(50, 500, seed=3)
    assert a == b
    assert stats.lru_misses(a, 8) < stats.lru_misses(stats.round_robin(50, 500), 8)


def test_split_sequence_keeps_every_request_once() -> None:
    seq = stats.zipf(12, 101)
    parts = loadgen.split_sequence(seq, 4)
    assert sorted(x for p in parts for x in p) == sorted(seq)
    assert [len(p) for p in parts] == [26, 25, 25, 25]


def test_summarize_empty_and_throughput() -> None:
    assert stats.summarize([], errors=3)["p50_ms"] is None
    s = stats.summarize(np.full(10, 0.05), wall_s=0.5)
    assert (s["p50_ms"], s["p99_ms"], s["throughput_rps"]) == (50.0, 50.0, 20.0)


def test_targets_pass_fail_and_missing() -> None:
    results = {
        "sequential": {"floor": {"pipeline": {"p50_ms": 35.0}},
                       "contenders": {"ours": {"p50_ms": 40.0}, "rf": {"p50_ms": 39.0}}},
        "concurrency": {"contenders": {"ours": {"1": {"throughput_rps": 25.0}, "4": {"throughput_rps": 30.0}},
                                       "rf": {"4": {"throughput_rps": 20.0}}}},
        "switching": {"runs": {"rr-12-c1": {"contenders": {"ours": {"p50_ms": 50.0, "p99_ms": 100.0},
                                                           "rf": {"p50_ms": 200.0, "p99_ms": 700.0}}}}},
    }
    verdicts = {t["target"]: t["verdict"] for t in stats.evaluate_targets(results)}
    assert verdicts["sequential p50: ours / raw ONNX Runtime floor"] == "pass"       # 1.14 <= 1.25
    assert verdicts["sequential p50: ours / Roboflow Inference"] == "fail"           # 1.026 > 1.0
    assert verdicts["best throughput: ours / Roboflow Inference"] == "pass"          # 1.5 >= 1.2
    assert verdicts["switching rr-12-c1: Roboflow p50 / ours p50"] == "pass"         # 4 >= 3
    assert verdicts["switching rr-12-c1: Roboflow p99 / ours p99"] == "pass"         # 7 >= 5
    assert verdicts["load: throttled origin / object store (whole load)"] == "not measured"


def test_with_metadata_adds_one_entry_onnxruntime_reads(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": "{0: 'a'}"})
    data = models.with_metadata(model.SerializeToString(), "bench_copy", "7")
    meta = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta == {"names": "{0: 'a'}", "bench_copy": "7"}
    assert onnx.load_model_from_string(data).graph.node[0].op_type == "Identity"


def test_paced_chunks_keeps_every_byte() -> None:
    data = bytes(range(256)) * 40
    out = io.BytesIO()
    for part in origin.paced_chunks(data, 10e6, chunk=1000):
        out.write(part)
    assert out.getvalue() == data


def test_a_servers_family_never_holds_the_shell_that_started_the_benchmark(tmp_path):
    """``family`` stops whatever names the server's Ray folder; a shell that started the benchmark
    and names that folder too (to read its logs afterwards) is an ancestor and must survive."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    marker = str(tmp_path / "ray")
    probe = ("import json, os; from benchmarks.servers import family; "
             f'print(json.dumps([os.getppid(), sorted(family(-1, "{marker}"))]))')
    shell = f"{sys.executable} -c '{probe}' && echo {marker}/logs"  # the shell's own command line names it
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    parent, found = json.loads(done.stdout.splitlines()[0])
    assert parent not in found
    # a stranger naming it (as Ray's processes do, in RAY_TMPDIR) is in the family
    holder = subprocess.Popen(["sleep", "30"], env={"PATH": os.environ["PATH"], "RAY_TMPDIR": marker})
    try:
        for _ in range(100):  # until the child has exec'd sleep
            if servers.cmdline(holder.pid).startswith("sleep"):
                break
            time.sleep(0.02)
        assert holder.pid in servers.family(-1, marker)
    finally:
        holder.kill()
        holder.wait()
