"""serve_app's imports point one way: no circles, and no import against the layer order.

The graph is built from the source with ``ast`` (every ``import``, those inside functions and
``if TYPE_CHECKING:`` blocks included), so a deferred import cannot hide a circle. The order,
lowest first; a module may import its own layer and the layers below it, never one above:

    base       errors, fetch_policy, secret, options (and the package itself): no layer
    settings   the one settings object: imports base only, and only the Ray wrappers read it
               (artifacts, registry, serving, app); the pipeline, tasks and http take option objects
    pipeline   images, preprocessing (owns InputSpec/PreprocessingSpec), sessions: no Ray, no HTTP
    tasks      decoders, the architecture table, VisionModel: read a ModelSpec, not the registry
    artifacts  sources, disk cache, the object-store cache actor
    registry   manifests (built from the pipeline's and tasks' types), catalog, the registry actor
    http       request parsing into the request contract, response shapes, errors -> responses,
               drawing, the Starlette app builder, the direct-ingress handler: no deployment
    serving    the deployments (Gateway, ModelServer) and replica bookkeeping: import http
    app        binds the deployments
    cli        the command line (an HTTP client; ``serve`` execs Ray Serve's own command)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "serve_app"
BASE = frozenset({"serve_app", "errors", "fetch_policy", "secret", "options"})
ORDER = ("base", "settings", "pipeline", "tasks", "artifacts", "registry", "http", "serving", "app", "cli")
SETTINGS_READERS = frozenset({"artifacts", "registry", "serving", "app"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """``serve_app.pipeline.images`` -> ``pipeline``; the base modules -> ``base``."""
    first = module.split(".")[1] if "." in module else "serve_app"
    return "base" if first in BASE else first


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The serve_app modules ``path`` imports, anywhere in the file (``from a import b``: ``a.b`` if
    that is a module, else ``a``)."""
    found: set[str] = set()
    here = module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "serve_app")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importing module's package
                package = here.split(".")[:len(here.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base.split(".")[0] != "serve_app":
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
            found.update(subs or {base})
            if len(subs) < len(node.names):
                found.add(base)
    found.discard(here)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as one path that returns to its start (one per strongly connected set)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_within(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A circle through a strongly connected set, to show in the failure."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in component)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return [*path, start]
        step = next((w for w in nxt if w not in seen), None)
        if step is None:
            return [*path, start]
        path.append(step)
        seen.add(step)


def against_the_order(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = layer(module)
        for target in sorted(targets):
            theirs = layer(target)
            if theirs == "settings" and mine not in SETTINGS_READERS | {"settings"}:
                wrong.append(f"{module} ({mine}) imports {target}: only {sorted(SETTINGS_READERS)} read settings")
            elif mine == "settings" and theirs not in ("base", "settings"):
                wrong.append(f"{module} imports {target} ({theirs}): settings imports base modules only")
            elif ORDER.index(theirs) > ORDER.index(mine):
                wrong.append(f"{module} ({mine}) imports {target} ({theirs}), a layer above it")
    return wrong


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    assert {layer(m) for m in graph} <= set(ORDER), sorted({layer(m) for m in graph} - set(ORDER))
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the scan sees the real package


def test_no_import_circles(graph):
    assert circles(graph) == []


def test_imports_follow_the_layer_order(graph):
    assert against_the_order(graph) == []


def test_imports_inside_functions_and_cycles_are_seen(tmp_path):
    # gateway's handle_info imports the package's version inside the function
    assert "serve_app" in import_graph()["serve_app.serving.gateway"]
    fake = {"serve_app.pipeline.a": {"serve_app.serving.b"}, "serve_app.serving.b": {"serve_app.pipeline.a"},
            "serve_app.settings": {"serve_app.pipeline.a"}, "serve_app.tasks.c": {"serve_app.settings"}}
    assert circles(fake) == [["serve_app.pipeline.a", "serve_app.serving.b", "serve_app.pipeline.a"]]
    assert against_the_order(fake) == [
        "serve_app.pipeline.a (pipeline) imports serve_app.serving.b (serving), a layer above it",
        "serve_app.settings imports serve_app.pipeline.a (pipeline): settings imports base modules only",
        "serve_app.tasks.c (tasks) imports serve_app.settings: only ['app', 'artifacts', 'registry', 'serving'] "
        "read settings"]
