"""The committed Grafana dashboard (``serve_app/dashboards/serve_app.json``) asks for what the server
really exports: every metric its queries name, with every label they filter or group by, shows up
in the Prometheus text of a deployed app after some traffic (loads, inferences, evictions), and it
covers requests, latency by stage, loads by tier, evictions, hit ratio and memory per model and replica.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from tests.conftest import DeployedApp, deploy_app, teardown_app
from zoo.shapes import draw_scene

DASHBOARD = Path(__file__).resolve().parents[1] / "serve_app" / "dashboards" / "serve_app.json"
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                      "offset"})
_SELECTOR = re.compile(r'([A-Za-z_:][\w:]*)\s*(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?\s*(\()?')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER_LABEL = re.compile(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"')


def promql_names(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metrics a PromQL expression reads ({name: labels its matchers name}) and the labels it
    groups by. Grafana's ``label_values(selector, label)`` counts as a read of ``label``."""
    grouping: set[str] = set()
    values = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", expr, re.S)
    if values:
        expr, grouping = values.group(1), {values.group(2)}
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [5m], [$__rate_interval]

    def group(m: re.Match) -> str:
        grouping.update(label.strip() for label in m.group(1).split(",") if label.strip())
        return " "

    expr = _GROUPING.sub(group, expr)
    metrics: dict[str, set[str]] = {}
    for name, matchers, call in _SELECTOR.findall(expr):
        if (call and not matchers) or name in KEYWORDS:
            continue  # a function, or an operator word
        metrics.setdefault(name, set()).update(_MATCHER_LABEL.findall(matchers))
    return metrics, grouping


def test_the_promql_reader_finds_metrics_labels_and_groupings():
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{x=~"$x", y!="a,b}"}[$__rate_interval]))) '
            '/ on (z) group_left count(b_total) > bool 2')
    assert promql_names(expr) == ({"a_bucket": {"x", "y"}, "b_total": set()}, {"le", "stage", "z"})
    assert promql_names('label_values(m{app=~"$app"}, model)') == ({"m": {"app"}}, {"model"})


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    """Every PromQL expression: the panels' targets and the template variables' queries."""
    out = [t["expr"] for p in panels() for t in p["targets"]]
    out += [v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    return out


def test_dashboard_has_a_prometheus_datasource_variable_used_everywhere():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in panels():
        for holder in (p, *p["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    assert all(v["datasource"]["uid"] == "${datasource}" for v in variables.values() if v["type"] == "query")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(p["targets"] for p in panels())


def test_dashboard_covers_what_the_issue_asks_for():
    """requests, latency by stage, loads by tier, evictions, hit ratio, memory per model and replica."""
    wanted = {
        "requests": ("ray_serve_app_model_requests_total", {"model"}),
        "latency by stage": ("ray_serve_app_model_request_latency_ms_bucket", {"le", "stage"}),
        "loads by tier": ("ray_serve_app_model_loads_total", {"tier"}),
        "evictions": ("ray_serve_app_model_evictions_total", {"reason"}),
        "hit ratio": ("ray_serve_app_model_cache_hit_ratio", set()),
        "memory per model and replica": ("ray_serve_app_model_memory_bytes", {"model", "replica"}),
    }
    for topic, (metric, groups) in wanted.items():
        showing = [p["title"] for p in panels() for t in p["targets"]
                   if metric in promql_names(t["expr"])[0] and groups <= promql_names(t["expr"])[1]]
        assert showing, f"no panel shows {topic} ({metric} by {sorted(groups)})"
        assert any(word in " ".join(showing).lower() for word in topic.split()), (topic, showing)


def test_every_metric_the_replicas_define_is_on_the_dashboard():
    from serve_app.serving.metrics import ReplicaMetrics

    defined: dict[str, str] = {}

    class Recorder:  # ray.serve.metrics' constructors' signature: records each metric's name and kind
        def __init__(self, kind: str) -> None:
            self.kind = kind

        def __call__(self, name: str, **kwargs) -> object:
            defined[name] = self.kind
            return _Sink()

    class Factory:
        Counter, Histogram, Gauge = Recorder("counter"), Recorder("histogram"), Recorder("gauge")

    ReplicaMetrics(Factory(), 4)
    used = {name for expr in queries() for name in promql_names(expr)[0]}
    suffix = {"counter": "_total", "histogram": "_bucket", "gauge": ""}
    missing = [f"ray_{name}{suffix[kind]}" for name, kind in defined.items() if f"ray_{name}{suffix[kind]}" not in used]
    assert len(defined) >= 10 and not missing, missing


class _Sink:
    def inc(self, *a, **k) -> None:
        pass

    observe = set = inc


# -- against a deployed app's exported metrics ---------------------------------------------------------
@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    deployed = deploy_app(ray_serve, tmp_path_factory.mktemp("dash"), {"max_models_per_replica": 1})
    yield deployed
    teardown_app(deployed)


def exported(url: str) -> dict[str, set[str]]:
    """Metric name -> the label names its series carry, from Prometheus text."""
    out: dict[str, set[str]] = {}
    for line in requests.get(url, timeout=10).text.splitlines():
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})? \S+", line)
        if m:
            out.setdefault(m.group(1), set()).update(re.findall(r'(\w+)="', m.group(2) or ""))
    return out


@pytest.mark.ray
def test_dashboard_queries_name_metrics_and_labels_the_server_exports(app, ray_metrics_url):
    image = cv2.imencode(".jpg", draw_scene(np.random.default_rng(3), size=(512, 384)).image)[1].tobytes()
    # one model slot: each switch evicts (count), loads come from the origin, then the object store
    for model_id in ("shapes-det/1", "shapes-det/1", "shapes-cls/1", "shapes-det/1", "no-such/1"):
        r = app.post("/infer", data=image, headers={"serve_multiplexed_model_id": model_id})
        assert r.status_code == (404 if model_id == "no-such/1" else 200), r.text
    reads = [promql_names(expr) for expr in queries()]
    wanted = {name for metrics, _ in reads for name in metrics}
    deadline = time.time() + 60
    while True:  # Ray exports each metric once a second or so here, not all at once
        series = exported(ray_metrics_url)
        if wanted <= set(series) or time.time() > deadline:
            break
        time.sleep(1)
    assert not wanted - set(series), f"the dashboard names metrics nobody exports: {sorted(wanted - set(series))}"
    for expr, (metrics, grouping) in zip(queries(), reads):
        for name, labels in metrics.items():
            absent = (labels | grouping) - series[name]
            assert not absent, f"{name} has no label {sorted(absent)} (in {expr})"
