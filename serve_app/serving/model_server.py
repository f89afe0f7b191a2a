"""The ``ModelServer`` deployment: a replica's models, inference, and what it tells the router.

The replica keeps its models in its own :class:`~serve_app.serving.model_cache.ModelCache`
(memory-aware LRU, pinning, single-flight loads, remembered failures) instead of Ray Serve's
``@serve.multiplexed`` LRU, and tells Serve's router which model ids it holds or is loading the
way ``@serve.multiplexed`` does (:class:`~serve_app.serving.routing.RoutingReport`), so requests
for a model still go to the replicas that hold it. With ``hot_model_routing`` the deployment uses
:class:`~serve_app.serving.routing.ModelAwareRouter`, fed by ``ModelServer.record_routing_stats``.

Pinned and preloaded models load (with their warm-up inference) in the replica's constructor:
Serve sends a replica no traffic before its constructor returns, and the replica reports
``ready`` to the registry only then.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from serve_app.artifacts.actor import artifact_cache_handle
from serve_app.artifacts.disk_cache import DiskCache
from serve_app.errors import ArtifactError, SchemaError, ServeAppError
from serve_app.http.direct import direct_infer
from serve_app.http.requests import MAX_IMAGES_PER_REQUEST, ModelRequest  # noqa: F401 (the name stays here too)
from serve_app.http.visualize import render
from serve_app.options import SessionOptions
from serve_app.pipeline.cuda_env import limit_cublas_workspace
from serve_app.pipeline.gpu_jpeg import gpu_jpeg_decoder
from serve_app.pipeline.images import load_source
from serve_app.registry.actor import registry_handle
from serve_app.registry.manifest import Manifest, split_key
from serve_app.serving.batcher import TensorBatcher
from serve_app.serving.loader import ModelLoader
from serve_app.serving.memory import default_budget, probe_for, steady_allocator
from serve_app.serving.metrics import NoMetrics, ReplicaMetrics
from serve_app.serving.model_cache import Broadcast, CacheEvents, CachePolicy, ModelCache
from serve_app.serving.routing import (RATES_REPORTED, BusyTime, ModelAwareRouter, RequestRates, RoutingReport,
                                      routing_stats)
from serve_app.serving.scheduler import inference_executor, run_as
from serve_app.settings import Settings

log = logging.getLogger("serve_app.model_server")
ROUTING_PUSH_INTERVAL_S = 0.1  # as @serve.multiplexed pushes its model ids
REPORT_INTERVAL_S = 1.0        # last-use times and request counts to the registry
HEARTBEAT_S = 2.0              # an idle replica still reports this often (the registry ages reports out)
HANDOFF_RECENT_S = 60.0        # a leaving replica hands off the models used this recently that it alone holds
HANDOFF_TIMEOUT_S = 10.0


class _Notify(CacheEvents):
    def __init__(self, core: "ModelServerCore") -> None:
        self._core = core

    def changed(self) -> None:
        self._core.mark_changed()


class ModelServerCore:
    """What a replica does, minus the decorators: fetch artifacts, load, decode, infer, report."""

    def __init__(self, settings_args: dict, metrics_factory: Any = None, routing: RoutingReport | None = None) -> None:
        self.settings = s = Settings(**settings_args)
        limited = limit_cublas_workspace(s.cublas_workspace_kib)  # before anything makes a CUDA handle
        self.registry = registry_handle(s)
        self.artifacts = artifact_cache_handle(s)
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (tests of the core)
            self.replica_id = f"local-{os.getpid()}"
        probe = probe_for(s.providers)
        self.loader = ModelLoader(self._resolve, self._fetch, session_options_for(s, probe.device))
        self.node_disk = DiskCache(Path(s.cache_dir), s.disk_cache_max_bytes)  # this node's disk tier
        self._background_tasks: set[asyncio.Future] = set()
        steady_allocator()  # so that host memory measurements see what a model keeps, not heap churn
        budget = s.replica_memory_budget_bytes
        if budget is None:
            budget = default_budget(probe, s.replica_memory_fraction, _gpu_share())
        policy = CachePolicy(max_models=s.max_models_per_replica, budget_bytes=budget,
                             estimate_factor=s.model_memory_estimate_factor, load_timeout_s=s.load_timeout_s,
                             backoff_s=s.load_failure_backoff_s, backoff_max_s=s.load_failure_backoff_max_s,
                             protect_recent_s=s.eviction_protect_recent_s)
        self.metrics = (ReplicaMetrics(metrics_factory, s.metrics_max_model_labels, s.pinned) if metrics_factory
                        else NoMetrics())
        self.cache = ModelCache(self.loader, policy, probe=probe, events=Broadcast(self.metrics, _Notify(self)))
        self.metrics.attach(self.cache)
        self.routing = routing or RoutingReport()
        self.rates = RequestRates()
        self.busy = BusyTime(clock=time.perf_counter)
        self.ready = False
        self._routing_dirty = True
        self._report_due = 0.0
        self._background: asyncio.Task | None = None
        # "fair" (serving/scheduler.py): per-model queues and a thread left for the other models, so a
        # slow model cannot hold a fast one's requests hostage; "fifo": one shared queue, 1 thread on the
        # CPU (ONNX Runtime already uses every core it is given), 2 on a GPU (one model's host copies and
        # kernel launches overlap another's)
        self.infer_pool = inference_executor(s.inference_scheduler, s.inference_threads, s.inference_model_threads,
                                             gpu=probe.device == "gpu")
        self.jpeg_decoder = None
        if s.gpu_jpeg_decode and _gpu_ids():
            self.jpeg_decoder = gpu_jpeg_decoder(0)  # Ray's CUDA_VISIBLE_DEVICES makes the replica's GPU device 0
        elif s.gpu_jpeg_decode:
            log.warning("replica %s: gpu_jpeg_decode asked, but Ray gave this replica no GPU; JPEGs decode on the CPU",
                        self.replica_id)
        log.info("replica %s: models measured on the %s, budget %s, at most %d models%s", self.replica_id, probe.device,
                 f"{budget / 2**20:.0f} MiB" if budget else "none (count cap only)", s.max_models_per_replica,
                 f"; cuBLAS workspaces {limited}" if limited else "")

    # -- start-up ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Pinned and preloaded models, loaded and warmed; then the replica is ready.

        A pinned model that cannot load fails the replica's start (Serve retries it and reports the
        deployment unhealthy): the configuration promised it. A preloaded one is only logged.
        """
        self._background = asyncio.get_running_loop().create_task(self._keep_reporting(), name="replica reports")
        wanted = list(dict.fromkeys([*self.settings.pinned, *self.settings.preload]))
        if wanted:
            log.info("replica %s: loading %d pinned/preloaded model(s) before taking traffic: %s", self.replica_id,
                     len(wanted), ", ".join(wanted))
            started = time.perf_counter()
            resolved = await asyncio.gather(*(self._canonical(m) for m in wanted), return_exceptions=True)
            canonical, pinned = [], set()
            for asked, got in zip(wanted, resolved):
                if isinstance(got, BaseException):
                    if asked in self.settings.pinned:
                        raise got
                    log.warning("preloaded model %s is unknown: %s", asked, got)
                    continue
                canonical.append(got)
                if asked in self.settings.pinned:
                    pinned.add(got)
                    self.cache.pin(got)
                    self.metrics.labels(got)  # pinned models keep a metrics label of their own
            results = await asyncio.gather(*(self.cache.preload(c, pin=c in pinned) for c in canonical),
                                           return_exceptions=True)
            for model_id, result in zip(canonical, results):
                if isinstance(result, BaseException):
                    if model_id in pinned:
                        raise result
                    log.warning("preloaded model %s did not load: %s", model_id, result)
            log.info("replica %s: %d pinned/preloaded model(s) ready in %.1f s", self.replica_id,
                     len(canonical), time.perf_counter() - started)
        await self._prewarm()
        self.ready = True
        self.mark_changed()

    async def _prewarm(self) -> None:
        """Load the cluster's hottest models before taking traffic, so that an upscale adds replicas
        that already hold what the load is for (and the router sends them their share at once)."""
        count, timeout = self.settings.prewarm_models, self.settings.prewarm_timeout_s
        if count <= 0 or timeout <= 0:
            return
        try:
            hot = await asyncio.wait_for(self.registry.hot_models.remote(count), 5)
        except Exception as exc:
            log.warning("replica %s: no prewarm (the registry did not answer: %s)", self.replica_id, exc)
            return
        hot = [key for key in hot if key not in self.cache][:count]
        if not hot:
            return
        log.info("replica %s: prewarming %d hot model(s) %s, for at most %.0f s before taking traffic",
                 self.replica_id, len(hot), hot, timeout)
        started = time.perf_counter()
        done, pending = await asyncio.wait([asyncio.ensure_future(self.cache.preload(k)) for k in hot],
                                           timeout=timeout)
        for task in pending:  # still loading: it finishes in the background, serving when it does
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        failed = [t for t in done if t.exception() is not None]
        log.info("replica %s: prewarmed %d of %d hot model(s) %s in %.1f s%s", self.replica_id,
                 len(done) - len(failed), len(hot), hot, time.perf_counter() - started,
                 f" ({len(pending)} still loading)" if pending else "")

    async def leave(self, deployment: str | None, app: str | None) -> None:
        """This replica is being stopped (scale-down, a new version): the models used lately that no
        other replica holds are loaded elsewhere first, then the registry forgets it."""
        try:
            sole = await asyncio.wait_for(self.registry.sole_held.remote(self.replica_id, HANDOFF_RECENT_S), 5)
            if not sole:
                log.info("replica %s leaving: every model it used lately is held elsewhere too", self.replica_id)
            elif deployment and app:
                handle = serve.get_deployment_handle(deployment, app_name=app)
                started = time.perf_counter()
                results = await asyncio.wait_for(asyncio.gather(
                    *(handle.options(multiplexed_model_id=key).load.remote() for key in sole),
                    return_exceptions=True), HANDOFF_TIMEOUT_S)
                moved = [r.get("replica") for r in results if isinstance(r, dict)]
                log.info("replica %s leaving: handed off %s to %s in %.1f s", self.replica_id, sole, moved,
                         time.perf_counter() - started)
        except Exception as exc:
            log.warning("replica %s leaving: hand-off failed (%s)", self.replica_id, exc)
        finally:
            try:
                await asyncio.wait_for(self.registry.forget_replica.remote(self.replica_id), 5)
            except Exception:
                pass

    async def _canonical(self, model_id: str) -> str:
        """The key (``model_id@digest``) of an id or alias: what the cache and the router use."""
        return Manifest.from_dict(await self._resolve(model_id)).key

    # -- the tiers ----------------------------------------------------------------------------------
    async def _resolve(self, key: str) -> dict:
        return await self.registry.resolve_key.remote(key)

    async def _fetch(self, files: dict[str, dict]) -> dict[str, tuple[Any, str]]:
        """The files' bytes: from the cluster's object store (through the cache actor), else from this
        node's disk tier when the actor cannot answer; what came from elsewhere is kept on this node's
        disk too, so every node that runs replicas has its own disk copy."""
        for attempt in range(2):
            try:
                got = await self.artifacts.get.remote(files)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                local = await asyncio.to_thread(self._from_node_disk, files)
                if local is None:
                    raise ArtifactError("the artifact cache is unavailable; retry", retry_after=2) from exc
                log.warning("artifact cache unavailable (%s); loaded from this node's disk", type(exc).__name__)
                return local
            try:
                blobs = await asyncio.gather(*(entry["ref"][0] for entry in got.values()))
            except (ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError):
                # the cache actor restarted and its objects died with it: ask again (it refetches)
                log.warning("artifact objects were lost (cache actor restarted?); asking again")
                continue
            fetched = {name: (blob, entry["tier"]) for (name, entry), blob in zip(got.items(), blobs)}
            self._background_tasks.add(task := asyncio.ensure_future(
                asyncio.to_thread(self._keep_on_node_disk, files, fetched)))
            task.add_done_callback(self._background_tasks.discard)
            return fetched
        raise ArtifactError("artifact objects were lost twice in a row; retry", retry_after=2)

    def _keep_on_node_disk(self, files: dict[str, dict], fetched: dict[str, tuple[Any, str]]) -> None:
        for name, (blob, _) in fetched.items():
            spec = files[name]
            try:
                if not self.node_disk.contains(spec["sha256"]):
                    view = memoryview(np.ascontiguousarray(blob)).cast("B")
                    self.node_disk.get_or_fetch(spec["sha256"], spec.get("size"), lambda f, v=view: f.write(v))
            except Exception as exc:  # a full or read-only disk costs only this tier
                log.warning("could not keep artifact %s on this node's disk: %s", spec["sha256"][:12], exc)

    def _from_node_disk(self, files: dict[str, dict]) -> dict[str, tuple[Any, str]] | None:
        out = {}
        for name, spec in files.items():
            if not self.node_disk.contains(spec["sha256"]):
                return None

            def refuse(f: Any) -> int:
                raise ArtifactError("not on this node's disk")

            try:
                cached = self.node_disk.get_or_fetch(spec["sha256"], spec.get("size"), refuse)
            except ArtifactError:
                return None
            out[name] = (np.fromfile(cached.path, dtype=np.uint8), "disk")
        return out

    # -- requests ----------------------------------------------------------------------------------
    async def load(self, key: str) -> dict:
        async with self.cache.lease(key) as loaded:
            self._drop_other_weights(key)
            return {"replica": self.replica_id, "model_id": split_key(loaded.model_id)[0], "key": loaded.model_id,
                    "tier": loaded.tier, "memory_bytes": loaded.memory_bytes}

    def _drop_other_weights(self, key: str) -> None:
        """A model's new weights are loaded: its copies with other weights go (once no request uses them)."""
        model_id = split_key(key)[0]
        for other in self.cache.model_ids():
            if other != key and split_key(other)[0] == model_id:
                log.info("replica %s: %s has new weights; releasing %s", self.replica_id, model_id, other)
                self.cache.evict(other)

    def decode_images(self, request: ModelRequest) -> list[np.ndarray]:
        """The request's images as pixels: decoded once, here (checked and base64-decoded where it was parsed)."""
        auto_orient = not request.params.overrides.disable_preproc_auto_orient
        limits = self.settings.image_limits
        out = []
        for i, source in enumerate(request.images):
            try:
                out.append(load_source(source, limits, auto_orient=auto_orient, jpeg_decoder=self.jpeg_decoder))
            except ServeAppError as exc:
                raise type(exc)(f"image[{i}]: {exc.message}" if len(request.images) > 1 else exc.message) from None
        return out

    async def infer(self, request: ModelRequest) -> dict:
        """Run ``request`` (decode, queue, preprocess, session, postprocess, and draw if asked)."""
        received = time.perf_counter()
        model_id = request.key
        stages: dict[str, float] = {}
        ok = False
        self.rates.add(model_id)
        try:
            params = request.params
            if not request.images:
                raise SchemaError("the request has no image: send 'image' in the JSON body or the image as the body")
            images = await asyncio.to_thread(self.decode_images, request)
            decoded = time.perf_counter()
            stages["decode"] = decoded - received
            held = model_id in self.cache
            loaded = await self.cache.acquire(model_id)
            queued = time.perf_counter()
            if not held:
                stages["load_wait"] = queued - decoded
                stages.update({f"load_{phase}": seconds for phase, seconds in loaded.phases.items()})
                self._drop_other_weights(model_id)
            try:
                model = loaded.model
                run_as(model_id)  # the executor's calls from here (the batcher's too) count as this model's
                loop = asyncio.get_running_loop()
                # batching pays on an accelerator; on the CPU one session call already uses every core
                on_cpu = not model.providers or model.providers[0] == "CPUExecutionProvider"
                if model.batchable and self.settings.max_batch_size > 1 and not on_cpu:
                    # prepare in parallel threads, run stacked with other requests, decode in parallel
                    t0 = time.perf_counter()
                    tensor, transforms = await asyncio.to_thread(model.prepare, images, params)
                    if model.pending_batch_sizes and loaded.in_flight > 1:
                        self._add_batch_sessions(loaded)
                    run_started = time.perf_counter()
                    outputs = await self._batcher(loaded).submit(tensor, model.score_floor(params))
                    run_ended = time.perf_counter()
                    results = await asyncio.to_thread(model.decode, outputs, transforms, params, images)
                    timings = {"preprocess": run_started - t0, "inference": run_ended - run_started,
                               "postprocess": time.perf_counter() - run_ended}
                    run_started = t0
                else:
                    def run() -> tuple[list[dict], dict[str, float], float, float]:
                        started = time.perf_counter()
                        results = model.predict(images, params)
                        return results, dict(model.timings), started, time.perf_counter()

                    results, timings, run_started, run_ended = await loop.run_in_executor(self.infer_pool, run)
                self.busy.add(run_started, run_ended)
            finally:
                loaded.release()
            if getattr(model, "tuning_pending", False):  # once its first answer is on its way
                self._tune(loaded)
            stages["queue"] = run_started - queued
            stages.update(timings)
            pictures = None
            if request.draw is not None:  # on the images decoded above: the gateway decodes none
                drawn = time.perf_counter()
                manifest = model.manifest
                skeleton = manifest.keypoints.skeleton if manifest.keypoints else ()
                pictures = await asyncio.to_thread(render, images, results, manifest.class_colors, skeleton,
                                                   request.draw)
                stages["visualize"] = time.perf_counter() - drawn
            ok = True
            self._report_due = self._report_due or time.monotonic() + REPORT_INTERVAL_S
            return {"results": results, "replica": self.replica_id, "timings": stages, "visualizations": pictures}
        finally:
            stages["total"] = time.perf_counter() - received
            self.metrics.request(model_id, ok, stages)

    def _batcher(self, loaded: Any) -> TensorBatcher:
        """The model's batcher, made on first use and dropped with the loaded model."""
        batcher = getattr(loaded, "batcher", None)
        if batcher is None:
            model, configured = loaded.model, self.settings.buckets
            batcher = TensorBatcher(model.run, self.settings.max_batch_size, self.settings.batch_wait_timeout_s,
                                    self.infer_pool, buckets=lambda: model.ready_buckets(configured),
                                    in_flight=lambda: loaded.in_flight)
            loaded.batcher = batcher
        return batcher

    def _tune(self, loaded: Any) -> None:
        """A quick start's model: its tuned main session, built in the background; requests go on
        through the quick session meanwhile (SessionOptions.quick_start)."""
        self._grow_in_background(loaded, "tuning", loaded.model.tune_session,
                                 "tuned session not built (%s); it keeps its quick start's")

    def _add_batch_sessions(self, loaded: Any) -> None:
        """The model has company: its deferred bucket sessions, built in the background; its batches
        run row by row through batch 1 meanwhile."""
        self._grow_in_background(loaded, "adding_batch_sessions", loaded.model.add_batch_sessions,
                                 "bucket sessions not built (%s); its batches run row by row")

    def _grow_in_background(self, loaded: Any, task: str, build: Any, failure: str) -> None:
        """Run ``build`` (bound now, while the caller's lease holds the model) through ``cache.grow``
        in the background, once per loaded model (the task kept as ``loaded.<task>``): measured and
        counted as its memory. A failure is logged and the model keeps serving as it is."""
        if getattr(loaded, task, None) is not None:
            return

        async def grow() -> None:
            try:
                await self.cache.grow(loaded, build)
            except Exception as exc:  # noqa: BLE001 - the model keeps serving as it is
                log.warning("model %s: " + failure, loaded.model_id,
                            str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
            self.mark_changed()

        setattr(loaded, task, asyncio.get_running_loop().create_task(grow()))

    # -- what it tells others --------------------------------------------------------------------------
    def mark_changed(self) -> None:
        """The models held or loading changed: tell the router and the registry soon."""
        self._routing_dirty = True
        self._report_due = time.monotonic()

    async def _keep_reporting(self) -> None:
        last_report = 0.0
        while True:
            try:
                if self._routing_dirty:
                    self._routing_dirty = False
                    self.routing.push(self.cache.model_ids())
                now = time.monotonic()
                if (self._report_due and now >= self._report_due) or now - last_report >= HEARTBEAT_S:
                    self._report_due = 0.0
                    last_report = now
                    self._report()
            except Exception:
                log.exception("replica reporting failed")
            await asyncio.sleep(ROUTING_PUSH_INTERVAL_S)

    def state(self) -> dict:
        """What the registry keeps for ``GET /model/registry``: per model, its memory, last use, tier."""
        cache = self.cache.describe()
        # keyed by model id for people (a model's old weights, while they drain, are listed under "draining")
        models = {split_key(m)[0]: {"key": m, "digest": split_key(m)[1], "loaded_at": info["loaded_at"],
                                    "last_used": info["last_used"], "tier": info["tier"],
                      "load_seconds": info["load_seconds"], "requests": info["requests"],
                      "memory_bytes": info["memory_bytes"], "pinned": info["pinned"], "providers": info["providers"],
                      "batch_sessions": info["batch_sessions"], "graph_cache_hit": info["graph_cache_hit"],
                      "candidate_filter": info["candidate_filter"],
                      "quick_start_pending": info["quick_start_pending"],
                      "load_phases": info["load_phases"]}
                  for m, info in cache["models"].items()}
        return {"models": models, "ready": self.ready, "pid": os.getpid(), "gpu_ids": _gpu_ids(),
                "node_id": _node_id(), "rates": self.rates.top(RATES_REPORTED),
                "evictions": [split_key(e["model_id"])[0] for e in self.cache.evictions[-100:]],
                "loads": [{"model_id": split_key(e["model_id"])[0], "key": e["model_id"],
                           **{k: e[k] for k in ("tier", "seconds", "memory_bytes", "started", "finished")}}
                          for e in self.cache.loads[-100:]],
                "memory": {k: cache[k] for k in ("device", "budget_bytes", "used_bytes", "reserved_bytes",
                                                 "max_models")},
                "loading": [split_key(k)[0] for k in cache["loading"]], "draining": cache.get("draining", []),
                "failures": {split_key(k)[0]: v for k, v in cache["failures"].items()}, "stats": cache["stats"]}

    def _report(self) -> None:
        self.registry.report_replica.remote(self.replica_id, self.state())
        self.metrics.refresh()

    def routing_stats(self) -> dict:
        return routing_stats(self.cache.describe(), self.rates.top(RATES_REPORTED), self.busy.utilization())

    def describe(self) -> dict:
        return {"replica": self.replica_id, "ready": self.ready, "loaded": list(self.cache.held()),
                "jpeg_decoder": "gpu" if self.jpeg_decoder is not None else "cpu",
                "evictions": [e["model_id"] for e in self.cache.evictions], **self.cache.describe()}


def session_options_for(settings: Settings, device: str) -> SessionOptions:
    """The settings' session options for a replica whose models run on ``device`` ("gpu" or "cpu"):
    on the CPU without the candidate filter, whose graph ops cost more CPU there than the copies and
    NumPy work they save (YOLOv8n, one thread: 77.6 against 75.4 core-ms per image).

    >>> session_options_for(Settings(), "cpu").candidate_filter, session_options_for(Settings(), "gpu").candidate_filter
    (False, True)
    """
    options = settings.session_options
    return options if device == "gpu" else replace(options, candidate_filter=False)


def _node_id() -> str | None:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def _gpu_ids() -> list[str]:
    """The GPUs Ray gave this replica (empty on the CPU or outside Ray)."""
    try:
        return [str(g) for g in ray.get_gpu_ids()]
    except Exception:
        return []


def _gpu_share() -> float:
    """The fraction of a GPU this replica was given (``num_gpus``); 1.0 when Ray gave none."""
    try:
        share = ray.get_runtime_context().get_assigned_resources().get("GPU")
    except Exception:
        share = None
    return float(share) if share else 1.0


@serve.deployment(name="ModelServer")
class ModelServer:
    async def __init__(self, settings_args: dict) -> None:
        from ray.serve import metrics

        logging.basicConfig(level=logging.INFO)
        self.core = ModelServerCore(settings_args, metrics_factory=metrics)
        self._left = False
        await self.core.start()  # pinned, preloaded and prewarmed models, warmed, before any traffic

    async def __del__(self) -> None:
        """Serve calls this once the replica's requests have drained (and Python may call it again)."""
        if getattr(self, "_left", True):
            return
        self._left = True
        context = serve.get_replica_context()
        await self.core.leave(context.deployment, context.app_name)

    async def infer(self, request: ModelRequest) -> dict:
        return await self.core.infer(request)

    async def __call__(self, request: Any) -> Any:
        """Direct ingress (``direct_ingress: true``): see ``http/direct.py``."""
        s = self.core.settings
        return await direct_infer(request, serve.get_multiplexed_model_id(), resolve=self.core._canonical,
                                  infer=self.core.infer, limits=s.image_limits, max_body_bytes=s.max_body_bytes)

    async def load(self) -> dict:
        return await self.core.load(serve.get_multiplexed_model_id())

    async def describe(self) -> dict:
        return self.core.describe()

    async def unload(self) -> dict:
        """Unload the model this call was routed for (``multiplexed_model_id``) from this replica."""
        model_id = serve.get_multiplexed_model_id()
        return {"replica": self.core.replica_id, "model_id": model_id, "unloaded": self.core.cache.evict(model_id)}

    async def record_routing_stats(self) -> dict:
        """Room for another model and the busiest models, for :class:`ModelAwareRouter`."""
        return self.core.routing_stats()

    async def check_health(self) -> None:
        task = self.core._background
        if task is not None and task.done():
            raise RuntimeError("the replica's reporting task stopped")


def model_server_deployment(settings: Settings):
    """The ``ModelServer`` deployment, with :class:`ModelAwareRouter` when ``hot_model_routing`` is on.

    (The model cap used to be fixed here, in ``@serve.multiplexed``; the replica's own cache now
    reads it, and every other limit, from the settings.)
    """
    if not settings.hot_model_routing:
        return ModelServer
    from ray.serve.config import RequestRouterConfig

    return ModelServer.options(request_router_config=RequestRouterConfig(
        request_router_class=ModelAwareRouter,
        request_router_kwargs={"spread_at_ongoing": settings.spread_at_ongoing},
        request_routing_stats_period_s=settings.routing_stats_period_s,
        request_routing_stats_timeout_s=max(1.0, settings.routing_stats_period_s)))
