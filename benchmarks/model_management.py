"""Model management under a Zipf workload: cache hit ratio and latency with and without memory-aware
eviction and hot-model routing (issue 5's benchmark).

    .venv/bin/python -m benchmarks.model_management            # ~4-6 min on 2 cores
    .venv/bin/python -m benchmarks.model_management --quick    # smoke test, ~1.5 min

Self-contained: it writes 50 synthetic classifiers of different sizes (1 to 24 MiB of weights,
log-uniform: about 2 to 48 MiB once loaded on the CPU), starts a local Ray with this server (two
``ModelServer`` replicas), and sends each configuration the same Zipf-distributed sequence of
requests (popularity independent of size) from closed-loop client threads. Configurations, all
under the same memory per replica (``--budget-mib``):

- ``count-cap``: no byte budget; the count cap an operator must pick so the biggest models fit
  the memory in any mix (budget / biggest model), Serve's default router. (What Ray Serve's
  ``@serve.multiplexed`` offers.)
- ``memory``: the byte budget, count cap out of the way (50), Serve's default router.
- ``memory+routing``: the byte budget and :class:`serve_app.serving.routing.ModelAwareRouter`
  (a hot model spills, as with Serve's router, when its holders are full, but to the replica
  where loading it costs least rather than to the one with the fewest models).
- ``count-cap+routing``: the first with the router of the third (not run unless asked).

``--scenario hot``: the middle third of the measured requests sends 90% to the most popular
model, to see it spread to the second replica and come back (results in ``model_management-hot.*``).

Each run starts with a warm-up (the same distribution, not measured), then measures: client-side
latency (p50, p95, p99), throughput and errors; from the replicas' own counters, lookups, hits,
loads and evictions; every 0.5 s, the memory each replica holds and how many replicas hold each of
the three most popular models. Results: ``benchmarks/results/model_management.json`` and
``model_management.png`` (latency and hit ratio, latency CDF, replicas holding the top model).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCRATCH = ROOT / ".cache" / "mm-bench"
RESULTS = ROOT / "benchmarks" / "results"
MiB = 2**20


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the models and the workload --------------------------------------------------------------------
def write_models(root: Path, n: int, min_mib: float, max_mib: float, seed: int) -> dict[str, float]:
    """``n`` classifiers with weights log-uniform in [min_mib, max_mib]; returns id -> MiB of weights."""
    from tests.fixture_models import heavy_classifier, write_repository

    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(math.log(min_mib), math.log(max_mib), n))
    models = {f"zipf-{i:02d}/1": round(float(s), 2) for i, s in enumerate(sizes)}
    marker = root / "models.json"
    if marker.exists() and json.loads(marker.read_text()) == models:
        return models
    shutil.rmtree(root, ignore_errors=True)
    write_repository(root, {m: heavy_classifier(variant=i, megabytes=mb) for i, (m, mb) in enumerate(models.items())})
    marker.write_text(json.dumps(models))
    return models


def zipf_sequence(model_ids: list[str], count: int, s: float, seed: int) -> list[str]:
    """``count`` ids, the k-th most popular with probability proportional to 1/k^s; which model is
    k-th is a seeded shuffle, so popularity does not follow size."""
    rng = np.random.default_rng(seed)
    ranked = list(rng.permutation(model_ids))
    p = 1.0 / np.arange(1, len(ranked) + 1) ** s
    return [ranked[i] for i in rng.choice(len(ranked), size=count, p=p / p.sum())]


# -- one configuration -----------------------------------------------------------------------------------
def jpeg() -> bytes:
    from tests.fixture_models import RED, solid_jpeg

    return solid_jpeg(RED)


def drive(url: str, sequence: list[str], clients: int, timeout_s: float = 120) -> list[dict]:
    """Closed loop: ``clients`` threads take the next request of ``sequence`` as each answer arrives."""
    import requests

    body = jpeg()
    records: list[dict] = []
    lock = threading.Lock()
    position = iter(range(len(sequence)))

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(position, None)
                if i is None:
                    return
                model = sequence[i]
                start = time.perf_counter()
                try:
                    r = session.post(url + "/infer", data=body, timeout=timeout_s,
                                     headers={"serve_multiplexed_model_id": model})
                    status, replica = r.status_code, r.headers.get("X-Replica", "")
                except requests.RequestException:
                    status, replica = -1, ""
                end = time.perf_counter()
                with lock:
                    records.append({"i": i, "model": model, "status": status, "replica": replica,
                                    "start": start, "latency_ms": (end - start) * 1e3})

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(records, key=lambda r: r["i"])


class Sampler(threading.Thread):
    """Every ``period_s``: each replica's model memory, and which replicas hold the watched models."""

    def __init__(self, registry, watched: list[str], period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.registry, self.watched, self.period_s = registry, watched, period_s
        self.samples: list[dict] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        import ray

        t0 = time.perf_counter()
        while not self.stop_event.wait(self.period_s):
            try:
                states = ray.get(self.registry.replicas.remote(), timeout=5)
            except Exception:
                continue
            live = {rid: s for rid, s in states.items() if s.get("ready")}
            self.samples.append({
                "t": round(time.perf_counter() - t0, 2),
                "used_mib": {rid: round(s["memory"]["used_bytes"] / MiB, 1) for rid, s in live.items()},
                "models": {rid: len(s["models"]) for rid, s in live.items()},
                "holders": {m: sum(m in s["models"] for s in live.values()) for m in self.watched}})


def replica_counters(registry) -> dict[str, dict]:
    import ray

    return {rid: dict(s["stats"]) for rid, s in ray.get(registry.replicas.remote()).items() if s.get("ready")}


def run_config(name: str, base_url: str, repo: Path, args: dict, opts: argparse.Namespace, sequence: list[str],
               warmup: list[str], watched: list[str], phases: dict[str, tuple[int, int]]) -> dict:
    import ray
    from ray import serve

    from serve_app.app import build_application

    tmp = SCRATCH / "runs" / f"{name}-{uuid.uuid4().hex[:6]}"
    settings = {"repositories": [str(repo)], "state_dir": str(tmp / "state"), "cache_dir": str(SCRATCH / "artifacts"),
                "providers": ["CPUExecutionProvider"], "intra_op_threads": 1, "namespace": f"mm{uuid.uuid4().hex[:8]}",
                "load_timeout_s": 120, "request_timeout_s": 120, **args}
    app = build_application(settings, model_server_options={
        "num_replicas": opts.replicas, "max_ongoing_requests": opts.max_ongoing,
        "ray_actor_options": {"num_cpus": opts.replica_cpus}},
        gateway_options={"max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.1}})
    log(f"{name}: deploying ({', '.join(f'{k}={v}' for k, v in args.items())})")
    serve.run(app, name="mm", route_prefix="/", blocking=False)
    registry = None
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            registry = ray.get_actor("serve_app_registry", namespace=settings["namespace"])
            if len(replica_counters(registry)) == opts.replicas:
                break
        except Exception:
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError(f"{name}: the replicas did not come up")
    try:
        log(f"{name}: warm-up, {len(warmup)} requests")
        drive(base_url, warmup, opts.clients)
        time.sleep(1.5)  # replicas report within a second of their last request
        before = replica_counters(registry)
        sampler = Sampler(registry, watched)
        sampler.start()
        log(f"{name}: measuring, {len(sequence)} requests from {opts.clients} clients")
        started = time.perf_counter()
        records = drive(base_url, sequence, opts.clients)
        wall = time.perf_counter() - started
        sampler.stop_event.set()
        sampler.join()
        time.sleep(1.5)
        after = replica_counters(registry)
    finally:
        serve.delete("mm")
        for actor in ("serve_app_registry", "serve_app_artifact_cache"):
            try:
                ray.kill(ray.get_actor(actor, namespace=settings["namespace"]), no_restart=True)
            except ValueError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    return summarize(name, args, records, wall, before, after, sampler.samples, phases)


def summarize(name: str, args: dict, records: list[dict], wall: float, before: dict, after: dict,
              samples: list[dict], phases: dict[str, tuple[int, int]]) -> dict:
    ok = [r["latency_ms"] for r in records if r["status"] == 200]
    by_phase = {}
    for phase, (lo, hi) in phases.items():
        lat = [r["latency_ms"] for r in records if lo <= r["i"] < hi and r["status"] == 200]
        by_phase[phase] = {"requests": hi - lo, "ok": len(lat),
                           **({f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 99)} if lat else {})}
    counts = {k: sum(after[rid].get(k, 0) - before.get(rid, {}).get(k, 0) for rid in after)
              for k in ("hit", "miss", "joined", "failed", "refused", "loads", "load_failures", "evictions")}
    lookups = counts["hit"] + counts["miss"] + counts["joined"]
    pct = (lambda q: round(float(np.percentile(ok, q)), 1)) if ok else (lambda q: None)
    errors: dict[str, int] = {}
    for r in records:
        if r["status"] != 200:
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    holders = {m: round(float(np.mean([s["holders"][m] for s in samples])), 2) if samples else None
               for m in (samples[0]["holders"] if samples else {})}
    used = [v for s in samples for v in s["used_mib"].values()]
    held = [v for s in samples for v in s["models"].values()]
    out = {"name": name, "args": args, "requests": len(records), "ok": len(ok), "errors": errors,
           "seconds": round(wall, 2), "throughput_rps": round(len(ok) / wall, 2),
           "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
           "mean_ms": round(float(np.mean(ok)), 1) if ok else None,
           "hit_ratio": round(counts["hit"] / lookups, 4) if lookups else None, **counts,
           "mean_models_held": round(float(np.mean(held)), 2) if held else None,
           "max_used_mib": max(used) if used else None, "mean_holders_of_top_models": holders,
           "phases": by_phase, "samples": samples, "latencies_ms": [round(x, 2) for x in ok]}
    log(f"{name}: hit ratio {out['hit_ratio']}, p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, "
        f"{out['throughput_rps']} req/s, loads {counts['loads']}, evictions {counts['evictions']}, errors {errors}, "
        f"models held {out['mean_models_held']}, max used {out['max_used_mib']} MiB, top holders {holders}, "
        f"phases {by_phase}")
    return out


def plot(results: list[dict], path: Path, n_models: int, scenario: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    names = [r["name"] for r in results]
    colours = ["#888888", "#1f77b4", "#2ca02c", "#d62728"][:len(results)]
    axes[0].bar(names, [r["hit_ratio"] or 0 for r in results], color=colours)
    axes[0].set_title("cache hit ratio (replicas' lookups)")
    axes[0].set_ylim(0, 1)
    for i, r in enumerate(results):
        axes[0].text(i, (r["hit_ratio"] or 0) + 0.02, f"{r['hit_ratio']:.2f}\n{r['mean_models_held']} models",
                     ha="center", fontsize=8)
    width = 0.27
    x = np.arange(len(results))
    for k, (q, c) in enumerate((("p50_ms", "#9ecae1"), ("p95_ms", "#4292c6"), ("p99_ms", "#08306b"))):
        axes[1].bar(x + (k - 1) * width, [r[q] or 0 for r in results], width, label=q[:-3], color=c)
    axes[1].set_xticks(x, names)
    axes[1].set_ylabel("ms")
    axes[1].set_title("client latency")
    axes[1].legend()
    for r, c in zip(results, colours):
        lat = np.sort(r["latencies_ms"])
        if len(lat):
            axes[2].plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=r["name"], color=c)
    axes[2].set_xscale("log")
    axes[2].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[2].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[2].set_xlabel("latency (ms, log)")
    axes[2].set_title("latency CDF")
    axes[2].legend()
    hot = next(iter(results[0]["mean_holders_of_top_models"]), None)
    for r, c in zip(results, colours):
        if hot and r["samples"]:
            axes[3].step([x["t"] for x in r["samples"]], [x["holders"][hot] for x in r["samples"]], where="post",
                         label=r["name"], color=c, alpha=0.8)
    axes[3].set_ylim(-0.1, max(2, max((max(x["holders"].values(), default=0) for r in results for x in r["samples"]),
                                      default=0)) + 0.3)
    axes[3].set_xlabel("s into the measured run")
    axes[3].set_title(f"replicas holding {hot} (most requested)")
    axes[3].legend()
    fig.suptitle(f"{scenario}: Zipf workload over {n_models} models, same memory per replica")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--min-mib", type=float, default=1.0)
    p.add_argument("--max-mib", type=float, default=24.0)
    p.add_argument("--budget-mib", type=float, default=160.0, help="model memory per replica")
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--replica-cpus", type=float, default=0.5)
    p.add_argument("--max-ongoing", type=int, default=4, help="ModelServer max_ongoing_requests: where spills start")
    p.add_argument("--zipf-s", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--configs", default="count-cap,memory,memory+routing")
    p.add_argument("--scenario", choices=("zipf", "hot"), default="zipf",
                   help="zipf: one stationary Zipf sequence; hot: Zipf, then a burst where 90%% of requests go to "
                        "the most popular model, then Zipf again (results in model_management-hot.*)")
    p.add_argument("--quick", action="store_true", help="smoke test: 12 models, 150 requests")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    opts = p.parse_args(argv)
    if opts.quick:
        opts.models, opts.requests, opts.warmup = 12, 150, 40

    repo = SCRATCH / f"repo-{opts.models}-{opts.min_mib:g}-{opts.max_mib:g}-{opts.seed}"
    models = write_models(repo, opts.models, opts.min_mib, opts.max_mib, opts.seed)
    ids = sorted(models)
    loaded_mib = {m: 2 * mb for m, mb in models.items()}  # the CPU provider holds about twice the weights
    budget = int(opts.budget_mib * MiB)
    cap_for_worst_case = max(1, int(opts.budget_mib // max(loaded_mib.values())))
    sequence = zipf_sequence(ids, opts.warmup + opts.requests, opts.zipf_s, opts.seed)
    warmup, measured = sequence[:opts.warmup], sequence[opts.warmup:]
    popular = [m for m, _ in sorted(((m, measured.count(m)) for m in ids), key=lambda kv: -kv[1])[:3]]
    n = len(measured)
    phases = {"all": (0, n)}
    suffix, scenario_title = "", "stationary"
    if opts.scenario == "hot":  # the middle third: 90% of requests for the most popular model
        rng = np.random.default_rng(opts.seed + 1)
        lo, hi = n // 3, 2 * n // 3
        measured = [popular[0] if lo <= i < hi and rng.random() < 0.9 else m for i, m in enumerate(measured)]
        phases.update({"before": (0, lo), "burst": (lo, hi), "after": (hi, n)})
        suffix, scenario_title = "-hot", "hot burst in the middle third"
    log(f"{len(ids)} models, {sum(models.values()):.0f} MiB of weights (about {sum(loaded_mib.values()):.0f} MiB "
        f"loaded); budget {opts.budget_mib:g} MiB per replica = count cap {cap_for_worst_case} for the biggest "
        f"({max(loaded_mib.values()):.0f} MiB); top models {[(m, measured.count(m)) for m in popular]}")

    configs = {
        "count-cap": {"max_models_per_replica": cap_for_worst_case, "hot_model_routing": False},
        "memory": {"max_models_per_replica": 50, "replica_memory_budget_bytes": budget, "hot_model_routing": False},
        "memory+routing": {"max_models_per_replica": 50, "replica_memory_budget_bytes": budget,
                           "hot_model_routing": True},
        "count-cap+routing": {"max_models_per_replica": cap_for_worst_case, "hot_model_routing": True},
    }
    chosen = [c.strip() for c in opts.configs.split(",") if c.strip()]

    import ray
    from ray import serve

    from tests.servers import free_port

    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir=SCRATCH))
    os.environ["RAY_TMPDIR"] = str(ray_tmp)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, _temp_dir=str(ray_tmp),
             log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results = []
    try:
        for name in chosen:
            results.append(run_config(name, f"http://127.0.0.1:{port}", repo, configs[name], opts, measured, warmup,
                                      popular, phases))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    doc = {"workload": {"models": len(ids), "weights_mib": models, "budget_mib": opts.budget_mib,
                        "count_cap_for_worst_case": cap_for_worst_case, "requests": opts.requests,
                        "warmup": opts.warmup, "clients": opts.clients, "replicas": opts.replicas,
                        "replica_cpus": opts.replica_cpus, "max_ongoing_requests": opts.max_ongoing,
                        "zipf_s": opts.zipf_s, "seed": opts.seed, "top_models": popular,
                        "scenario": opts.scenario, "phases": phases,
                        "cpu_count": os.cpu_count(), "at": time.strftime("%Y-%m-%d %H:%M:%S")},
           "results": results}
    (opts.results_dir / f"model_management{suffix}.json").write_text(json.dumps(doc, indent=1))
    plot(results, opts.results_dir / f"model_management{suffix}.png", len(ids), scenario_title)
    log(f"wrote {opts.results_dir}/model_management{suffix}.json and .png")
    for r in results:
        print(f"{r['name']:>18}: hit ratio {r['hit_ratio']}, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
              f"{r['throughput_rps']} req/s, loads {r['loads']}, errors {r['errors']}")


if __name__ == "__main__":
    main()
