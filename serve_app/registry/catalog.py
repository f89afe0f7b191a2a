"""The model catalog: which models exist, under which ids and aliases. A plain class, no Ray.

Discovery (repositories on disk), lifecycle (add, remove, persisted) and resolution live here;
:mod:`serve_app.registry.actor` wraps it in a named, detached Ray actor.

A repository may also be a Roboflow Inference model cache (its ``MODEL_CACHE_DIR``): its
``<dataset>/<version>`` folders are read by :mod:`serve_app.registry.roboflow_cache`.

Manifests read from a repository name their files by ``path``; the catalog turns those into
absolute ``file://`` URIs so that any process can fetch them through the artifact tiers.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from serve_app.errors import InvalidParameter, ManifestError, ModelNotFound
from serve_app.registry.manifest import Manifest, split_key, validate_model_id
from serve_app.registry.roboflow_cache import discover_roboflow_models

log = logging.getLogger(__name__)
MANIFEST_NAME = "model.json"


def discover(repository: Path, skipped: dict[str, str] | None = None) -> dict[str, Manifest]:
    """Every ``<model id>/model.json`` under ``repository``, and every Roboflow Inference cache folder
    (``<dataset>/<version>/model_type.json``, see roboflow_cache.py) without one; a broken one is
    logged, skipped, and its reason kept in ``skipped`` (model id -> reason)."""
    found: dict[str, Manifest] = {}
    manifests = sorted(repository.rglob(MANIFEST_NAME))
    for path in manifests:
        model_id = path.parent.relative_to(repository).as_posix()
        try:
            data = json.loads(path.read_text())
            if data.get("model_id") != model_id:
                raise ManifestError(f"model_id {data.get('model_id')!r} does not match its folder {model_id!r}")
            found[model_id] = with_file_uris(Manifest.from_dict(data), path.parent)
        except (ManifestError, ValueError, OSError) as exc:
            log.error("skipping manifest %s: %s", path, exc)
    for entry in discover_roboflow_models(repository, skip=frozenset(p.parent for p in manifests)):
        if entry.manifest is None or entry.model_id in found:
            reason = entry.reason or f"{entry.model_id!r} is already a model of this repository"
            log.error("skipping Roboflow cache folder %s: %s", entry.folder, reason)
            if skipped is not None:
                skipped[entry.model_id] = f"its Roboflow cache folder was skipped: {reason}"
        else:
            found[entry.model_id] = with_file_uris(entry.manifest, entry.folder)
    return found


def with_file_uris(manifest: Manifest, folder: Path) -> Manifest:
    data = manifest.to_dict()
    for spec in data["files"].values():
        if not spec.get("uri"):
            spec["uri"] = (folder / spec["path"]).resolve().as_uri()
    return Manifest.from_dict(data)


class ModelCatalog:
    """Resolves ids and aliases to manifests; remembers runtime changes in ``state_path``."""

    def __init__(self, repositories: list[str], aliases: dict[str, str], state_path: Path) -> None:
        self._repositories = [Path(r) for r in repositories]
        self._state_path = state_path
        self._discovered: dict[str, Manifest] = {}
        self._skipped: dict[str, str] = {}  # model id -> why its folder was not read (said in the 404)
        for repo in self._repositories:
            if repo.is_dir():
                self._discovered.update(discover(repo, self._skipped))
            else:
                log.warning("model repository %s does not exist", repo)
        self._added: dict[str, Manifest] = {}
        self._replaced: dict[str, Manifest] = {}  # key -> a manifest replaced at run time (its copies drain)
        self._removed: set[str] = set()
        self._aliases: dict[str, str] = dict(aliases)
        self._load_state()
        log.info("catalog: %d discovered, %d added at run time, %d aliases", len(self._discovered), len(self._added),
                 len(self._aliases))

    # -- state ---------------------------------------------------------------------------------
    def _load_state(self) -> None:
        if not self._state_path.exists():
            return
        try:
            state = json.loads(self._state_path.read_text())
            # whatever the file says, a model added at run time came from a client
            self._added = {k: Manifest.from_dict(v).supplied_by_client() for k, v in state.get("added", {}).items()}
            self._removed = set(state.get("removed", []))
            self._aliases.update(state.get("aliases", {}))
        except (ValueError, ManifestError, OSError) as exc:
            log.error("catalog state %s is unreadable (%s); starting from the repositories only", self._state_path, exc)

    def _save_state(self) -> None:
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        state = {"added": {k: m.to_dict() for k, m in self._added.items()}, "removed": sorted(self._removed),
                 "aliases": self._aliases}
        fd, tmp = tempfile.mkstemp(dir=self._state_path.parent, prefix=".registry.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)

    # -- queries -------------------------------------------------------------------------------
    def _models(self) -> dict[str, Manifest]:
        models = {k: v for k, v in self._discovered.items() if k not in self._removed}
        models.update(self._added)
        return models

    def resolve(self, id_or_alias: str) -> Manifest:
        """The manifest of a model id or alias (aliases may point at aliases, up to 8 deep)."""
        validate_model_id(id_or_alias)
        models = self._models()
        name = id_or_alias
        for _ in range(8):
            if name in models:
                return models[name]
            if name not in self._aliases:
                break
            name = self._aliases[name]
        why = f"; {self._skipped[name]}" if name in self._skipped else ""
        raise ModelNotFound(f"model {id_or_alias!r} is not in the registry{why}")

    def resolve_key(self, key: str) -> Manifest:
        """The manifest of a :func:`model_key`: the current one, or one replaced lately (requests
        already routed to the old weights still load them; new requests get the new key)."""
        model_id, digest = split_key(key)
        current = self.resolve(model_id)
        if digest is None or current.digest == digest:
            return current
        old = self._replaced.get(key)
        if old is None:
            raise ModelNotFound(f"model {model_id!r} no longer has the weights {digest}; it was replaced")
        return old

    def list(self) -> list[Manifest]:
        return [self._models()[k] for k in sorted(self._models())]

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    # -- changes -------------------------------------------------------------------------------
    def add(self, manifest: Manifest, *, replace: bool = False) -> Manifest:
        """Add a client's model: its files are fetched under the client policy from then on."""
        manifest = manifest.supplied_by_client()
        if not all(f.uri for f in manifest.files.values()):
            raise InvalidParameter("a model added at run time must give each file a 'uri' (file, http(s), s3 or gs)")
        if manifest.model_id in self._aliases:
            raise InvalidParameter(f"{manifest.model_id!r} is an alias; pick another model id")
        if manifest.model_id in self._models() and not replace:
            existing = self._models()[manifest.model_id]
            if existing.to_dict() == manifest.to_dict():
                return existing
            raise InvalidParameter(f"model {manifest.model_id!r} already exists with other files; remove it first")
        previous = self._models().get(manifest.model_id)
        if previous is not None and previous.digest != manifest.digest:
            self._replaced[previous.key] = previous
            while len(self._replaced) > 64:
                self._replaced.pop(next(iter(self._replaced)))
        self._added[manifest.model_id] = manifest
        self._removed.discard(manifest.model_id)
        self._save_state()
        log.info("catalog: added %s (%s, %s)", manifest.model_id, manifest.task, manifest.architecture)
        return manifest

    def remove(self, model_id: str) -> None:
        validate_model_id(model_id)
        if model_id not in self._models():
            raise ModelNotFound(f"model {model_id!r} is not in the registry")
        self._added.pop(model_id, None)
        if model_id in self._discovered:
            self._removed.add(model_id)
        self._save_state()
        log.info("catalog: removed %s", model_id)

    def set_alias(self, alias: str, target: str) -> None:
        validate_model_id(alias)
        self.resolve(target)
        if alias in self._models():
            raise InvalidParameter(f"{alias!r} is a model id and cannot be an alias")
        self._aliases[alias] = target
        self._save_state()

    def describe(self) -> dict[str, Any]:
        return {"models": [m.model_id for m in self.list()], "aliases": self.aliases()}
