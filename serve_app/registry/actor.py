"""The ``ModelRegistry`` Ray actor: a named, detached, restartable wrapper around :class:`ModelCatalog`.

It also keeps what the replicas report (which models each holds, in LRU order), so that
``GET /model/registry`` can say where each model is loaded.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import ray

from serve_app.artifacts.actor import artifact_cache_handle
from serve_app.artifacts.sources import checked_uri
from serve_app.errors import ManifestError, ServeAppError
from serve_app.registry.catalog import ModelCatalog
from serve_app.registry.manifest import (FileSpec, Manifest, manifest_from_ultralytics_metadata, split_key,
                                         validate_model_id)
from serve_app.settings import Settings

ACTOR_NAME = "serve_app_registry"
# The named actors live on the head node: a worker node's loss must not take them (and the head
# is the one node a cluster cannot lose). Ray gives every head node this resource.
ON_HEAD_NODE = {"node:__internal_head__": 0.001}
log = logging.getLogger(__name__)


class ModelRegistryActor:
    def __init__(self, settings_args: dict) -> None:
        logging.basicConfig(level=logging.INFO)
        self._settings = Settings(**settings_args)
        self._catalog = ModelCatalog(list(self._settings.repositories), self._settings.aliases,
                                     Path(self._settings.state_dir) / "registry.json")
        self._replicas: dict[str, dict] = {}

    def resolve(self, id_or_alias: str) -> dict:
        return self._catalog.resolve(id_or_alias).to_dict()

    def resolve_key(self, key: str) -> dict:
        """The manifest of a ``model_id@digest`` key (what replicas load)."""
        return self._catalog.resolve_key(key).to_dict()

    def list_models(self) -> list[dict]:
        return [m.to_dict() for m in self._catalog.list()]

    def aliases(self) -> dict[str, str]:
        return self._catalog.aliases()

    async def add(self, request: dict) -> dict:
        """Add a full manifest (``{"manifest": {...}}``) or just weights (``{"model_id", "weights_uri"}``).

        Every URI is checked against the client policy before anything is fetched; weights without
        a manifest are read through the artifact cache (one origin download for the metadata and
        every replica's load).
        """
        policy = self._settings.client_model_policy
        if "manifest" in request:
            manifest = Manifest.from_dict(request["manifest"])
            for spec in manifest.files.values():
                if spec.uri:  # a file without one is refused by the catalog (nothing is fetched before)
                    await asyncio.to_thread(checked_uri, spec.uri, policy)
        else:
            model_id = validate_model_id(request.get("model_id"))
            uri = request.get("weights_uri")
            if not isinstance(uri, str) or not uri:
                raise ManifestError("add needs 'manifest' or 'weights_uri' (an Ultralytics-exported ONNX file)")
            await asyncio.to_thread(checked_uri, uri, policy)
            manifest = await self._manifest_from_weights(model_id, uri)
        return self._catalog.add(manifest, replace=bool(request.get("replace", False))).to_dict()

    async def _manifest_from_weights(self, model_id: str, uri: str) -> Manifest:
        got = await artifact_cache_handle(self._settings).get_uri.remote(uri, "client")
        blob = await got["ref"][0]
        meta = await asyncio.to_thread(_onnx_metadata, blob)
        return manifest_from_ultralytics_metadata(model_id, meta,
                                                  FileSpec(sha256=got["sha256"], size=got["size"], uri=uri))

    def remove(self, model_id: str) -> None:
        self._catalog.remove(model_id)

    def set_alias(self, alias: str, target: str) -> None:
        self._catalog.set_alias(alias, target)

    def report_replica(self, replica_id: str, state: dict) -> None:
        self._replicas[replica_id] = {**state, "reported_at": time.time()}

    def forget_replica(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def replicas(self) -> dict[str, dict]:
        """The live replicas' reports: one not renewed for ``replica_report_ttl_s`` has stopped or died
        (replicas report every 2 s, and a stopping replica says so itself)."""
        cutoff = time.time() - self._settings.replica_report_ttl_s
        for rid in [rid for rid, s in self._replicas.items() if s["reported_at"] < cutoff]:
            log.info("replica %s stopped reporting; dropped from the view", rid)
            del self._replicas[rid]
        return dict(self._replicas)

    def hot_models(self, count: int) -> list[str]:
        """The keys (``model_id@digest``, current weights only) of the models with the most requests
        per second across the live replicas: what a new replica prewarms."""
        rates: dict[str, float] = {}
        for state in self.replicas().values():
            for key, rate in (state.get("rates") or {}).items():
                rates[key] = rates.get(key, 0.0) + rate
        hot = []
        for key, rate in sorted(rates.items(), key=lambda kv: -kv[1]):
            model_id, digest = split_key(key)
            try:
                if self._catalog.resolve(model_id).digest != digest:
                    continue
            except ServeAppError:
                continue
            hot.append(key)
            if len(hot) >= count:
                break
        return hot

    def sole_held(self, replica_id: str, recent_s: float) -> list[str]:
        """The keys that ``replica_id`` alone holds among the live replicas and used in the last ``recent_s``."""
        live = self.replicas()
        mine = live.get(replica_id)
        if mine is None:
            return []
        elsewhere = {info.get("key") for rid, s in live.items() if rid != replica_id
                     for info in s.get("models", {}).values()}
        now = time.time()
        return [info["key"] for info in mine.get("models", {}).values()
                if info.get("key") not in elsewhere and now - (info.get("last_used") or 0) <= recent_s]

    def ready_replicas(self) -> list[str]:
        """Live model server replicas (see :meth:`replicas`) that loaded their pinned, preloaded and
        prewarmed models."""
        return [rid for rid, s in self.replicas().items() if s.get("ready")]

    def ping(self) -> bool:
        return True


def _onnx_metadata(blob: Any) -> dict[str, str]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(bytes(memoryview(blob)), providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    except Exception:
        raise ManifestError("the weights at the given URI are not a loadable ONNX model") from None


def registry_handle(settings: Settings) -> Any:
    return ray.remote(ModelRegistryActor).options(
        name=ACTOR_NAME, namespace=settings.namespace, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=-1, num_cpus=0, max_concurrency=32, resources=ON_HEAD_NODE,
    ).remote(settings.to_args())
