"""The ``ArtifactCache`` Ray actor: a thin wrapper that owns the objects it puts."""
from __future__ import annotations

import logging
from pathlib import Path

import ray

from serve_app.artifacts.disk_cache import DiskCache
from serve_app.artifacts.object_cache import ArtifactStore
from serve_app.settings import Settings

ACTOR_NAME = "serve_app_artifact_cache"


class ArtifactCacheActor:
    def __init__(self, settings_args: dict) -> None:
        logging.basicConfig(level=logging.INFO)
        s = Settings(**settings_args)
        disk = DiskCache(Path(s.cache_dir), s.disk_cache_max_bytes)
        self._store = ArtifactStore(disk, s.source_options, s.object_store_cache_bytes, ray.put,
                                    s.client_model_policy)

    async def get(self, files: dict[str, dict]) -> dict[str, dict]:
        return await self._store.get(files)

    async def get_uri(self, uri: str, policy: str = "client") -> dict:
        return await self._store.get_uri(uri, policy)

    def forget(self, sha256: str) -> None:
        self._store.forget(sha256)

    def describe(self) -> dict:
        return self._store.describe()

    def ping(self) -> bool:
        return True


def artifact_cache_handle(settings: Settings) -> ray.actor.ActorHandle:
    """The cluster's one artifact cache actor (created on first use, restarted if it dies)."""
    return ray.remote(ArtifactCacheActor).options(
        name=ACTOR_NAME, namespace=settings.namespace, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=-1, num_cpus=0, max_concurrency=64,
        resources={"node:__internal_head__": 0.001},  # on the head node: a worker's loss does not take it
    ).remote(settings.to_args())
