"""A replica's models: a memory-aware LRU with a count cap, pinning, single-flight loads and
remembered failures. Plain asyncio, no Ray: the source of models and the memory probe are passed in.

Why not Ray Serve's ``@serve.multiplexed`` LRU: it counts models, not bytes; it loads one model at
a time under one lock per replica; it evicts before it knows what the new model needs; it does not
wait for requests still using the evicted model; and it retries a broken model on every request.
Here:

- **Memory**: each model's size is measured when it loads (see :mod:`.memory`); a model never
  seen is estimated from its artifact bytes. A load first makes room -- evicting least recently
  used, unpinned models until the estimate fits the budget and the count cap -- and reserves it,
  so concurrent loads never overcommit; a model that cannot fit even alone (beside the pinned
  ones) is refused with :class:`InsufficientMemory` before anything is evicted. An evicted model
  still serving requests keeps counting until its last request ends (it *drains*).
- **Concurrency**: one load per model however many requests miss at once (they wait on it);
  loads of different models fetch their artifacts at the same time. Only the session build and
  warm-up run one at a time (``_build_lock``, and on a GPU the probe's lock file per device, which
  replicas sharing the GPU take too): what the memory probe sees then belongs to one model, and a
  build is CPU- or GPU-bound, so two at once finish no sooner.
- **Failures**: a model that failed to load answers from the remembered failure, with
  ``Retry-After``, until its backoff (doubling per failed attempt) runs out.
- **Leases**: :meth:`acquire` hands a model out with a lease already taken, so an eviction between
  the load and the request's use cannot release it; :meth:`lease` gives it back.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Protocol

from serve_app.errors import InsufficientMemory, ModelLoadError, Overloaded, ServeAppError
from serve_app.serving.loaded_model import LoadedModel
from serve_app.serving.memory import HostMemory, MemoryProbe, trim_heap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A model whose artifacts are at hand, before it takes memory: its size on disk and how to build it."""

    model_id: str
    artifact_bytes: int
    tier: str
    build: Callable[[], Any]  # blocking (session + warm-up); run in a thread, under the build lock
    fetch_seconds: float = 0.0


class ModelSource(Protocol):
    async def prepare(self, model_id: str, admit: Callable[[int], None]) -> Prepared:
        """Resolve the manifest and fetch the artifacts; raise a :class:`ServeAppError` on failure.

        ``admit(artifact_bytes)`` is called as soon as the artifacts' size is known (from the
        manifest, before fetching, where it lists sizes): it raises :class:`InsufficientMemory`
        for a model that cannot fit, so a refused model costs no download.
        """


@dataclass(frozen=True)
class CachePolicy:
    max_models: int = 8
    budget_bytes: int | None = None      # None: the count cap alone
    estimate_factor: float = 2.0         # a model never measured: artifact bytes x this
    load_timeout_s: float = 60.0         # fetch + waiting for room + build
    backoff_s: float = 5.0               # a failed model is not retried for this long ...
    backoff_max_s: float = 300.0         # ... doubling per failure, up to this
    protect_recent_s: float = 0.0        # a model used this recently is not evicted (0: plain LRU)


@dataclass
class Failure:
    error: ServeAppError
    failed_at: float
    retry_at: float
    attempts: int


class CacheEvents:
    """What the cache tells the outside (metrics, routing, reports). Every method is optional."""

    def lookup(self, model_id: str, result: str) -> None:
        """``hit`` (held), ``miss`` (this request starts a load), ``joined`` (a load is under way),
        ``failed`` (answered from a remembered failure), ``refused`` (known not to fit)."""

    def loaded(self, model_id: str, tier: str, seconds: float, memory_bytes: int) -> None: ...

    def load_failed(self, model_id: str, outcome: str, seconds: float) -> None:
        """``outcome``: ``failed`` or ``refused`` (does not fit the budget)."""

    def evicted(self, model_id: str, reason: str, resident_s: float, idle_s: float, memory_bytes: int) -> None: ...

    def changed(self) -> None:
        """The models held or loading, or the memory they take, changed."""


class Broadcast(CacheEvents):
    """Events to several listeners; one that raises is logged and never breaks a load."""

    def __init__(self, *listeners: CacheEvents) -> None:
        self._listeners = listeners

    def _send(self, name: str, *args: Any) -> None:
        for listener in self._listeners:
            try:
                getattr(listener, name)(*args)
            except Exception:
                log.exception("cache event listener %r failed on %s", listener, name)

    def lookup(self, *args: Any) -> None:
        self._send("lookup", *args)

    def loaded(self, *args: Any) -> None:
        self._send("loaded", *args)

    def load_failed(self, *args: Any) -> None:
        self._send("load_failed", *args)

    def evicted(self, *args: Any) -> None:
        self._send("evicted", *args)

    def changed(self) -> None:
        self._send("changed")


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def mib(n: int | float) -> str:
    return f"{n / 2**20:.1f} MiB"


class ModelCache:
    def __init__(self, source: ModelSource, policy: CachePolicy, *, probe: MemoryProbe | None = None,
                 events: CacheEvents | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if policy.max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {policy.max_models}")
        self.policy = policy
        self._source = source
        self._probe = probe or HostMemory()
        self._events = events or CacheEvents()
        self._clock = clock
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._draining: dict[int, LoadedModel] = {}                  # evicted, requests still in flight
        self._loading: dict[str, asyncio.Task] = {}
        self._reserved: dict[str, int] = {}                           # room made for loads under way
        self._waiting: dict[str, int] = {}                            # requests waiting on a load, per model
        self._pinned: set[str] = set()
        self._sizes: dict[str, int] = {}                              # last measured bytes per model
        self._too_big: dict[str, int] = {}                            # refused: the bytes it needs
        self._failures: dict[str, Failure] = {}
        self._build_lock = threading.Lock()
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.evictions: list[dict] = []
        self.loads: list[dict] = []
        self.stats = {"hit": 0, "miss": 0, "joined": 0, "failed": 0, "refused": 0, "loads": 0, "load_failures": 0,
                      "evictions": 0}

    # -- what it holds ---------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._probe.device

    @property
    def held_bytes(self) -> int:
        """Memory of the models held and of those evicted but still draining."""
        return sum(m.memory_bytes for m in self._models.values()) + sum(m.memory_bytes for m in self._draining.values())

    @property
    def reserved_bytes(self) -> int:
        return sum(self._reserved.values())

    @property
    def pinned(self) -> frozenset[str]:
        return frozenset(self._pinned)

    def model_ids(self) -> list[str]:
        """Held and loading models: what the router should send here."""
        return list(dict.fromkeys([*self._models, *self._loading]))

    def held(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._models

    def pin(self, model_id: str) -> None:
        self._pinned.add(model_id)
        if model_id in self._models:
            self._models[model_id].pinned = True

    def describe(self) -> dict:
        now_wall, now = time.time(), self._clock()
        return {
            "device": self.device, "budget_bytes": self.policy.budget_bytes, "used_bytes": self.held_bytes,
            "reserved_bytes": self.reserved_bytes, "max_models": self.policy.max_models,
            "models": {m: {"memory_bytes": lm.memory_bytes, "pinned": lm.pinned, "tier": lm.tier,
                           "loaded_at": lm.loaded_at, "last_used": lm.last_used,
                           "idle_s": round(now_wall - lm.last_used, 3),
                           "load_seconds": lm.load_seconds, "requests": lm.requests, "in_flight": lm.in_flight,
                           "providers": list(getattr(lm.model, "providers", None) or []),
                           "batch_sessions": list(getattr(lm.model, "batch_sessions", None) or []),
                           "graph_cache_hit": bool(getattr(lm.model, "graph_cache_hit", False)),
                           "candidate_filter": bool(getattr(lm.model, "candidate_filter", False)),
                           "quick_start_pending": bool(getattr(lm.model, "tuning_pending", False)),
                           "load_phases": {k: round(v, 4) for k, v in lm.phases.items()}}
                       for m, lm in self._models.items()},
            "loading": list(self._loading), "draining": [m.model_id for m in self._draining.values()],
            "failures": {m: {"message": f.error.message, "attempts": f.attempts,
                             "retry_in_s": round(max(0.0, f.retry_at - now), 3)} for m, f in self._failures.items()},
            "stats": dict(self.stats),
        }

    # -- getting a model ---------------------------------------------------------------------------
    @asynccontextmanager
    async def lease(self, model_id: str) -> AsyncIterator[LoadedModel]:
        """``async with cache.lease(id) as loaded:`` the model, loaded if need be, held for the block."""
        loaded = await self.acquire(model_id)
        try:
            yield loaded
        finally:
            loaded.release()

    async def acquire(self, model_id: str) -> LoadedModel:
        """The model with a lease taken (give it back with ``release()``), loading it if need be."""
        self._loop = asyncio.get_running_loop()
        for _ in range(3):
            loaded = self._models.get(model_id)
            if loaded is not None and loaded.try_acquire():
                self._models.move_to_end(model_id)
                self._count("hit", model_id)
                return loaded
            task = self._loading.get(model_id)
            if task is None:
                self._raise_if_remembered(model_id)
                task = asyncio.get_running_loop().create_task(self._run_load(model_id), name=f"load {model_id}")
                task.add_done_callback(_retrieve)  # every waiter may have gone (client timeouts)
                self._loading[model_id] = task
                self._count("miss", model_id)
                self._events.changed()
            else:
                self._count("joined", model_id)
            # until this request resumes and takes its lease, the model it waited for is not evicted
            self._waiting[model_id] = self._waiting.get(model_id, 0) + 1
            try:
                loaded = await asyncio.shield(task)
            finally:
                self._waiting[model_id] -= 1
                if not self._waiting[model_id]:
                    del self._waiting[model_id]
                    self._signal()
            if loaded.try_acquire():
                if model_id in self._models:
                    self._models.move_to_end(model_id)
                return loaded
        raise Overloaded(f"model {model_id!r} was evicted as soon as it loaded, three times: this replica's "
                         "memory is too contended; retry")

    async def preload(self, model_id: str, *, pin: bool = False) -> LoadedModel:
        """Load (and optionally pin) a model ahead of requests."""
        if pin:
            self.pin(model_id)
        loaded = await self.acquire(model_id)
        loaded.release()
        return loaded

    def _count(self, result: str, model_id: str) -> None:
        self.stats[result] += 1
        self._events.lookup(model_id, result)

    def _raise_if_remembered(self, model_id: str) -> None:
        need = self._too_big.get(model_id)
        if need is not None:
            self._count("refused", model_id)
            raise self._refusal(model_id, need)
        failure = self._failures.get(model_id)
        if failure is None:
            return
        now = self._clock()
        if now >= failure.retry_at:
            return  # backoff over: try again (the attempt count is kept until a success)
        self._count("failed", model_id)
        wait = failure.retry_at - now
        raise type(failure.error)(f"{failure.error.message} (failed {now - failure.failed_at:.1f} s ago, attempt "
                                  f"{failure.attempts}; not retried for another {wait:.1f} s)",
                                  retry_after=round(max(wait, 0.1), 1))

    # -- loading ---------------------------------------------------------------------------------
    async def _run_load(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        try:
            loaded = await self._load(model_id)
        except InsufficientMemory:
            self.stats["load_failures"] += 1
            self._events.load_failed(model_id, "refused", time.perf_counter() - started)
            raise
        except ServeAppError as exc:
            self.stats["load_failures"] += 1
            self._events.load_failed(model_id, "failed", time.perf_counter() - started)
            if isinstance(exc, ModelLoadError):
                self._remember_failure(model_id, exc)
            raise
        else:
            self._failures.pop(model_id, None)
            return loaded
        finally:
            self._loading.pop(model_id, None)
            self._signal()
            self._events.changed()

    async def _load(self, model_id: str) -> LoadedModel:
        started = time.perf_counter()
        pinned = model_id in self._pinned
        timeout = self.policy.load_timeout_s
        try:
            async with asyncio.timeout(timeout):
                prepared = await self._source.prepare(model_id, lambda size: self._admit(model_id, size, pinned))
                fetched = time.perf_counter()
                need = self._need(model_id, prepared.artifact_bytes)
                await self._make_room(model_id, need, pinned)
                roomed = time.perf_counter()
                try:
                    model, measured, built = await asyncio.to_thread(self._measured, prepared.build)
                finally:
                    self._reserved.pop(model_id, None)
        except TimeoutError:
            log.error("model %s: load did not finish in %.1f s", model_id, timeout)
            raise ModelLoadError(f"loading model {model_id!r} took longer than {timeout:g} s; retry later",
                                 retry_after=timeout) from None
        except ServeAppError as exc:
            log.error("model %s: load failed: %s", model_id, exc.message)
            raise
        except Exception as exc:
            log.exception("model %s: load failed", model_id)
            raise ModelLoadError(f"model {model_id!r} could not be loaded: {type(exc).__name__}") from None
        seconds = time.perf_counter() - started
        size = max(measured, prepared.artifact_bytes)  # the weights are somewhere: a floor under a noisy probe
        self._sizes[model_id] = size
        loaded = LoadedModel(model_id, model, prepared.tier, seconds, on_close=self._on_released,
                             memory_bytes=size, pinned=pinned)
        # where the load's time went (a first request's Server-Timing shows it): the artifacts, room
        # made, waiting for the build lock, then the build's own phases and the memory measurement
        loaded.phases = {"fetch": fetched - started, "room": roomed - fetched, **built,
                         **getattr(model, "load_phases", {})}
        room = self._room_for(pinned)
        if room is not None and size > room:
            loaded.close()
            self._too_big[model_id] = size
            raise self._refusal(model_id, size)
        self._models[model_id] = loaded
        self._shrink_to_budget(keep=model_id)
        self.stats["loads"] += 1
        self.loads.append({"model_id": model_id, "tier": prepared.tier, "seconds": round(seconds, 4),
                           "memory_bytes": size, "estimate_bytes": need, "started": time.time() - seconds,
                           "finished": time.time(), "phases": {k: round(v, 4) for k, v in loaded.phases.items()}})
        del self.loads[:-200]
        log.info("model %s: loaded from %s in %.0f ms, measured %s on the %s (estimated %s); %s of %s in use, "
                 "%d model(s)",
                 model_id, prepared.tier, seconds * 1e3, mib(size), self.device, mib(need), mib(self.held_bytes),
                 mib(self.policy.budget_bytes) if self.policy.budget_bytes else "no budget", len(self._models))
        self._events.loaded(model_id, prepared.tier, seconds, size)
        return loaded

    def _measured(self, build: Callable[[], Any]) -> tuple[Any, int, dict[str, float]]:
        """``build()``, the memory it took, measured alone, and the seconds spent waiting for the
        locks (``lock``) and measuring (``measure``)."""
        # the host's heap is trimmed around a host measurement only: what the build freed (copies of
        # the weights) must not count as the model's; a GPU's use is the device's, and glibc's
        # trim walks the whole heap of a process that holds many models
        trim = trim_heap if self._probe.device == "host" else (lambda: None)
        asked = time.perf_counter()
        # the probe's own lock too: replicas sharing a GPU must not measure each other's loads
        with self._build_lock, self._probe.exclusive():
            locked = time.perf_counter()
            trim()
            before = self._probe.used_bytes()
            started = time.perf_counter()
            built = build()
            ended = time.perf_counter()
            trim()
            after = self._probe.used_bytes()
            measured = time.perf_counter()
        return built, max(0, after - before), {"lock": locked - asked,
                                               "measure": (started - locked) + (measured - ended)}

    async def grow(self, loaded: LoadedModel, build: Callable[[], Any]) -> int:
        """Run ``build`` (more of a held model, such as its deferred batch sessions) measured as a
        load is, and count what it took as the model's; returns those bytes (0: the model was
        closing and nothing ran). The model stays leased meanwhile, so it is not released under it."""
        if not loaded.try_acquire():
            return 0
        try:
            _, grown, _ = await asyncio.to_thread(self._measured, build)
        finally:
            loaded.release()
        loaded.memory_bytes += grown
        if self._models.get(loaded.model_id) is loaded:  # (a load's estimate stays what a load takes)
            self._shrink_to_budget(keep=loaded.model_id)
        log.info("model %s: grew by %s on the %s, %s in all; %s of %s in use", loaded.model_id, mib(grown),
                 self.device, mib(loaded.memory_bytes), mib(self.held_bytes),
                 mib(self.policy.budget_bytes) if self.policy.budget_bytes else "no budget")
        self._events.changed()
        return grown

    def _remember_failure(self, model_id: str, exc: ServeAppError) -> None:
        cause = getattr(exc, "cause", None)  # Ray's RayTaskError(ArtifactCorrupt): keep the error itself
        if isinstance(cause, ServeAppError):
            exc = cause
        previous = self._failures.get(model_id)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.policy.backoff_s * 2 ** (attempts - 1), self.policy.backoff_max_s)
        now = self._clock()
        self._failures[model_id] = Failure(exc, now, now + delay, attempts)
        log.warning("model %s: failed to load (attempt %d); remembered for %.1f s: %s", model_id, attempts, delay,
                    exc.message)

    def forget_failure(self, model_id: str) -> None:
        """Drop a remembered failure or refusal (a model replaced in the registry gets a fresh try)."""
        self._failures.pop(model_id, None)
        self._too_big.pop(model_id, None)
        self._sizes.pop(model_id, None)

    # -- room --------------------------------------------------------------------------------------
    def _room_for(self, pinned: bool) -> int | None:
        """The most a model can take: the budget, less what pinned models hold (unless it is pinned)."""
        budget = self.policy.budget_bytes
        if budget is None:
            return None
        if pinned:
            return budget
        held_by_pinned = sum(m.memory_bytes for m in self._models.values() if m.pinned)
        held_by_pinned += sum(b for m, b in self._reserved.items() if m in self._pinned)
        return budget - held_by_pinned

    def _refusal(self, model_id: str, need: int) -> InsufficientMemory:
        budget = self.policy.budget_bytes or 0
        pinned = budget - (self._room_for(False) or 0)
        beside = f" beside the pinned models' {mib(pinned)}" if pinned > 0 and model_id not in self._pinned else ""
        return InsufficientMemory(f"model {model_id!r} needs about {mib(need)} of {self.device} memory and does not "
                                  f"fit this replica's budget of {mib(budget)}{beside}")

    def _fits(self, need: int) -> tuple[bool, str]:
        if len(self._models) + len(self._reserved) + 1 > self.policy.max_models:
            return False, "count"
        budget = self.policy.budget_bytes
        if budget is not None and self.held_bytes + self.reserved_bytes + need > budget:
            return False, "memory"
        return True, ""

    def _need(self, model_id: str, artifact_bytes: int) -> int:
        """What a load reserves: the model's last measured size, else its estimate."""
        return self._sizes.get(model_id) or int(artifact_bytes * self.policy.estimate_factor)

    def _admit(self, model_id: str, artifact_bytes: int, pinned: bool) -> None:
        """Refuse a model that cannot fit even alone (beside the pinned ones), before anything else."""
        need = self._need(model_id, artifact_bytes)
        room = self._room_for(pinned)
        if room is not None and need > room:
            self._too_big[model_id] = need
            raise self._refusal(model_id, need)

    async def _make_room(self, model_id: str, need: int, pinned: bool) -> None:
        """Evict LRU models until ``need`` more bytes and one more model fit, then reserve them."""
        room = self._room_for(pinned)
        if room is not None and need > room:
            self._too_big[model_id] = need
            raise self._refusal(model_id, need)
        while True:
            fits, reason = self._fits(need)
            if fits:
                self._reserved[model_id] = need
                return
            victim, protected = self._victim()
            if victim is not None:
                self._evict(victim, reason)
                continue
            awaited = any(m in self._models for m in self._waiting)
            if self._reserved or self._draining or awaited:  # room will come: a load ends, a model drains,
                # or the requests a held model was loaded for take it (then it may go)
                await self._wait_for_change()
                continue
            if pinned:  # pinned models may exceed the cap: they are the operator's promise
                self._reserved[model_id] = need
                return
            if protected:
                raise Overloaded(f"model {model_id!r} cannot be loaded now: every model this replica could evict "
                                 f"was used in the last {self.policy.protect_recent_s:g} s", retry_after=1.0)
            raise InsufficientMemory(f"model {model_id!r} cannot be loaded: every slot of this replica "
                                     f"({self.policy.max_models}) is held by pinned models")

    def _victim(self) -> tuple[LoadedModel | None, bool]:
        """The least recently used model that may go (not pinned, not used in the protected window),
        and whether a model was passed over only for being recent."""
        protect = self.policy.protect_recent_s
        now = time.time()
        protected = False
        for loaded in self._models.values():
            if loaded.pinned or loaded.model_id in self._waiting:
                continue
            if protect and now - loaded.last_used < protect:
                protected = True
                continue
            return loaded, protected
        return None, protected

    def _shrink_to_budget(self, keep: str) -> None:
        """After a load measured more than it reserved: evict more LRU models (never ``keep``)."""
        budget = self.policy.budget_bytes
        while budget is not None and self.held_bytes + self.reserved_bytes > budget:
            victim = next((m for m in self._models.values()
                           if not m.pinned and m.model_id != keep and m.model_id not in self._waiting), None)
            if victim is None:
                log.warning("replica holds %s over its budget of %s with nothing left to evict",
                            mib(self.held_bytes + self.reserved_bytes), mib(budget))
                return
            self._evict(victim, "memory")

    def _evict(self, loaded: LoadedModel, reason: str) -> None:
        self._models.pop(loaded.model_id, None)
        self._draining[id(loaded)] = loaded
        now = time.time()
        resident, idle = now - loaded.loaded_at, now - loaded.last_used
        self.stats["evictions"] += 1
        self.evictions.append({"model_id": loaded.model_id, "reason": reason, "resident_s": round(resident, 3),
                               "idle_s": round(idle, 3), "memory_bytes": loaded.memory_bytes, "at": now})
        del self.evictions[:-200]
        log.info("model %s evicted (%s; %s, idle %.1f s, resident %.1f s)", loaded.model_id, reason,
                 mib(loaded.memory_bytes), idle, resident)
        self._events.evicted(loaded.model_id, reason, resident, idle, loaded.memory_bytes)
        loaded.close()  # now if idle, else when its last request ends (-> _on_released)
        self._events.changed()

    def evict(self, model_id: str) -> bool:
        """Unload a model on request (pinned ones too); False if it is not held."""
        loaded = self._models.get(model_id)
        if loaded is None:
            return False
        self._evict(loaded, "request")
        return True

    def _on_released(self, loaded: LoadedModel) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:  # released from another thread (a collection): hop onto the loop
                loop.call_soon_threadsafe(self._released, loaded)
                return
        self._released(loaded)

    def _released(self, loaded: LoadedModel) -> None:
        if self._draining.pop(id(loaded), None) is not None:
            self._signal()
            self._events.changed()

    # -- waking loads that wait for room ---------------------------------------------------------------
    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self) -> None:
        await self._changed.wait()
