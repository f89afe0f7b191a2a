"""The app on a Ray cluster of two nodes on this machine (issue 11, item 7).

Two ``ray start`` nodes (head and one worker, 2 logical CPUs each, their own ports and temp
folders; tests/cluster.py), the app deployed with ``serve run --address <head>`` from a copy of
serve_config.yaml: 2 Gateways and 2 ModelServers (fixed, not autoscaling), Serve's proxy on the
head only (both nodes share 127.0.0.1, so proxies on every node would compete for the port).
The tests talk to it over HTTP; where replicas live is read from the head's GCS.

1. replicas on both nodes, and ``GET /model/registry`` says which node each ModelServer is on;
2. a model added at run time is fetched from a counting loopback origin once while replicas on
   both nodes load it (the other node's copy comes through the object store; both nodes share
   this machine's disk, so the cache folder is the same one);
3. the worker node killed (SIGKILL) under load: answers counted by status; the only 500s are
   Serve's proxy's, for requests that were in flight on the dead node's Gateway; service resumes
   within a few seconds (the nodes run with the GCS health checks the README recommends).

The tests run in order in one module-scoped cluster; the last one kills the worker node.
``KEEP_CLUSTER_FILES=1`` keeps the cluster's folder (Ray's and Serve's logs, serve.log) afterwards.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import requests

from tests.cluster import ROOT, LocalCluster, ServeRun
from tests.fixture_models import RED, colour_classifier, solid_jpeg
from tests.servers import OriginServer, free_port
from zoo.shapes import draw_scene

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

MODEL_SERVER_CPUS = 0.5
ADDED = "added-cls/1"
REPLICA_FIELDS = {"replica", "node_id", "pid", "models", "ready", "reported_s_ago", "loads", "evictions", "memory"}


@pytest.fixture(scope="module")
def app(cluster):
    port = free_port()
    config = ServeRun.config_from(
        ROOT / "serve_config.yaml", cluster.root, port,
        # a loopback origin: allowed here; admin routes are open because http binds 127.0.0.1
        args={"allow_private_urls": True, "max_models_per_replica": 4, "load_timeout_s": 120,
              "request_timeout_s": 60},
        deployments={
            "Gateway": {"num_replicas": 2, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.25}},
            # few requests per replica, so that 4+ clients spill a model onto the second replica
            "ModelServer": {"num_replicas": 2, "max_ongoing_requests": 2,
                            "ray_actor_options": {"num_cpus": MODEL_SERVER_CPUS, "num_gpus": 0}},
        })
    with ServeRun(cluster, config, port).running(replicas={"Gateway": 2, "ModelServer": 2}) as run:
        yield run


@pytest.fixture(scope="module")
def origin():
    server = OriginServer({"/added.onnx": colour_classifier(variant=77)}, delay_s=0.5)
    yield server
    server.stop()


def placement(cluster: LocalCluster) -> dict[str, dict[str, dict]]:
    """Live Serve replicas by deployment, from the GCS: {deployment: {replica id: {node, node_id, pid}}}."""
    out: dict[str, dict[str, dict]] = {}
    for a in cluster.gcs(actors=True)["actors"]:
        if a["state"] != "ALIVE" or not a["name"].startswith("SERVE_REPLICA::"):
            continue
        _, deployment, replica = a["name"].split("::", 1)[1].split("#")
        out.setdefault(deployment, {})[replica] = {"node": cluster.node_name_of(a["node_id"]),
                                                   "node_id": a["node_id"], "pid": a["pid"]}
    return out


def named_actors(cluster: LocalCluster) -> dict[str, str | None]:
    """Where the app's named actors and Serve's controller and proxy live (node names)."""
    return {a["name"] or a["class_name"]: cluster.node_name_of(a["node_id"])
            for a in cluster.gcs(actors=True)["actors"]
            if a["state"] == "ALIVE" and not a["name"].startswith("SERVE_REPLICA::")}


def registry(app: ServeRun) -> dict:
    r = requests.get(app.url + "/model/registry", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def holders(view: dict, model_id: str) -> dict[str, dict]:
    entry = next((m for m in view["models"] if m["model_id"] == model_id), None)
    return {h["replica"]: h for h in (entry or {}).get("loaded_on", [])}


def load_everywhere(app: ServeRun, model_id: str, body: bytes, replicas: int = 2, timeout: float = 120) -> dict:
    """Send bursts of concurrent requests until ``replicas`` replicas report holding the model."""
    deadline = time.time() + timeout
    statuses: Counter = Counter()

    def one(_: int) -> int:
        return requests.post(app.url + "/infer", data=body, headers={"serve_multiplexed_model_id": model_id},
                             timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        while True:
            statuses.update(pool.map(one, range(16)))
            time.sleep(1.5)  # replicas report what they hold within about a second
            held = holders(registry(app), model_id)
            if len(held) >= replicas:
                return held
            assert time.time() < deadline, f"{model_id} held by {sorted(held)} only after {timeout} s; {statuses}"


def test_1_replicas_on_both_nodes_and_the_registry_says_where(cluster, app):
    where = placement(cluster)
    print("\nreplicas:", {d: {r: p["node"] for r, p in reps.items()} for d, reps in where.items()})
    print("named actors:", named_actors(cluster))
    for deployment in ("Gateway", "ModelServer"):
        assert len(where.get(deployment, {})) == 2, where
        assert {p["node"] for p in where[deployment].values()} == {"head", "worker0"}, (deployment, where)

    # the registry view lists the ModelServer replicas with their node (they report within ~1-10 s)
    deadline = time.time() + 30
    while True:
        view = registry(app)
        listed = view.get("replicas")
        assert isinstance(listed, list), f"GET /model/registry has no 'replicas' list; keys: {sorted(view)}"
        if len(listed) >= 2 or time.time() > deadline:
            break
        time.sleep(1)
    for entry in listed:
        assert REPLICA_FIELDS <= set(entry), (sorted(REPLICA_FIELDS - set(entry)), entry)
    by_replica = {e["replica"]: e for e in listed}
    assert set(by_replica) == set(where["ModelServer"]), (sorted(by_replica), where["ModelServer"])
    for rid, p in where["ModelServer"].items():
        assert by_replica[rid]["node_id"] == p["node_id"], (rid, by_replica[rid], p)
        assert by_replica[rid]["pid"] == p["pid"], (rid, by_replica[rid], p)
        assert by_replica[rid]["ready"] is True
    assert len({e["node_id"] for e in listed}) == 2


def test_2_added_model_fetched_from_origin_once_while_both_nodes_load_it(cluster, app, origin):
    r = requests.post(app.url + "/model/add", json={"model_id": ADDED, "weights_uri": origin.url("/added.onnx")},
                      timeout=120)
    assert r.status_code == 200, r.text
    started = time.time()
    held = load_everywhere(app, ADDED, solid_jpeg(RED))
    where = placement(cluster)["ModelServer"]
    nodes = {rid: where.get(rid, {}).get("node") for rid in held}
    print(f"\n{ADDED} held on {nodes} after {time.time() - started:.1f} s; tiers "
          f"{ {rid: h.get('tier') for rid, h in held.items()} }; origin GETs {dict(origin.counts)}")
    assert set(nodes.values()) == {"head", "worker0"}, nodes
    r = requests.post(app.url + "/infer", data=solid_jpeg(RED), headers={"serve_multiplexed_model_id": ADDED},
                      timeout=60)
    assert r.status_code == 200 and r.json()["top"] == "red", r.text
    assert origin.counts["/added.onnx"] == 1, (
        f"origin fetched {origin.counts['/added.onnx']} times for one added model "
        f"(tiers per replica: { {nodes[rid]: h.get('tier') for rid, h in held.items()} })")


# the GCS health checks on these nodes mark a dead node in about 3 s (1 s period x 3 failures)
PROXY_DETECTS_DEATH_S = 4.0


def test_3_node_killed_under_load(cluster, app):
    """4 clients for 25 s, the worker node SIGKILLed at 5 s. Ray marks a dead node about 15 s after
    it dies, so 20 s after the kill leave room for that and for what restarts then.

    Measured here (2-core box): the requests in flight on the dead node's Gateway come back from
    Serve's proxy as plain 500s (1-2 per run, about 1.5 s after the kill); the survivors on the
    head then answer nothing for 10-15 s (their Python threads idle: waiting inside Ray's core)
    until the GCS declares the node dead. With the GCS health checks at 1 s x 3
    (``RAY_health_check_period_ms=1000 RAY_health_check_failure_threshold=3
    RAY_health_check_timeout_ms=1000`` on the nodes, as tests/cluster.py starts them) that gap
    was 1.4-2.2 s."""
    rng = np.random.default_rng(11)
    body = cv2.imencode(".jpg", draw_scene(rng, size=(640, 480), max_shapes=4).image)[1].tobytes()
    load_everywhere(app, "shapes-det/1", body)
    before = placement(cluster)
    actors_before = named_actors(cluster)
    worker = next(n for n in cluster.nodes if n.name == "worker0")
    replica_node = {rid: p["node"] for reps in before.values() for rid, p in reps.items()}

    duration, kill_at, clients, resumed_window = 25.0, 5.0, 4, 4.0
    results: list[tuple[float, float, str, str]] = []  # (sent, answered, status or error, replica), s from start
    lock = threading.Lock()
    t0 = time.time()

    def client() -> None:
        session = requests.Session()
        while time.time() - t0 < duration:
            sent = time.time() - t0
            replica = ""
            try:
                r = session.post(app.url + "/infer", data=body, headers={"serve_multiplexed_model_id": "shapes-det/1"},
                                 timeout=60)
                outcome, replica = str(r.status_code), r.headers.get("X-Replica", "")
                if r.status_code >= 500 and r.headers.get("content-type", "").startswith("application/json"):
                    outcome += "-ours"  # one of our JSON errors, not Serve's proxy's plain text
            except requests.RequestException as exc:
                outcome = f"error:{type(exc).__name__}"
                session = requests.Session()
            with lock:
                results.append((sent, time.time() - t0, outcome, replica))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(kill_at)
    cluster.kill_node(worker)
    killed = worker.killed_at - t0
    for t in threads:
        t.join(120)
    results.sort(key=lambda r: r[1])

    counts = Counter(o for _, _, o, _ in results)
    after = [r for r in results if r[1] >= killed]
    bad = [(round(s, 2), round(a, 2), o) for s, a, o, _ in results if o != "200"]
    ok_times = [killed] + [a for _, a, o, _ in after if o == "200"]
    gap = max(b - a for a, b in zip(ok_times, ok_times[1:] + [max(duration, ok_times[-1])]))
    slowest = max(((round(a - s, 2), round(s, 2)) for s, a, o, _ in after), default=None)
    # service resumed: the requests sent in the last seconds were answered, all with 200
    late = [o for s, _, o, _ in results if s >= duration - resumed_window]
    by_node = {when: dict(Counter(replica_node.get(rep, "new" if rep else "-") for s, a, o, rep in results
                                  if o == "200" and (a < killed) == (when == "before")))
               for when in ("before", "after")}
    summary = (f"{len(results)} answers in {duration:.0f} s, {clients} clients, worker killed at {killed:.2f} s: "
               f"{dict(counts)}; before the kill {dict(Counter(o for _, a, o, _ in results if a < killed))}, "
               f"after {dict(Counter(o for _, _, o, _ in after))}; 200s by the ModelServer's node {by_node}; "
               f"longest time without a 200 after the kill {gap:.2f} s; slowest request after the kill "
               f"(seconds, sent at) {slowest}; last non-200 answered at {bad[-1][1] if bad else None} s; "
               f"sent in the last {resumed_window:.0f} s: {dict(Counter(late))}; named actors {actors_before}; "
               f"non-200s (sent, answered, status): {bad[:40]}")
    print("\n" + summary)
    print("replicas before:", {d: {r: p["node"] for r, p in reps.items()} for d, reps in before.items()})
    try:
        print("replicas after:", {d: {r: p["node"] for r, p in reps.items()} for d, reps in placement(cluster).items()})
        print("registry replicas after:", [(e.get("replica"), e.get("node_id", "")[:8]) for e in
                                           registry(app).get("replicas", [])])
    except Exception as exc:  # the record above is what this test is for
        print("after the kill, asking failed:", exc)

    # Serve's proxy answers a plain 500 for a request it handed to a Gateway whose node died (the
    # hop proxy -> Gateway has no retry). It keeps handing requests there until it hears of the
    # death (about 1.5 s here; CI once saw one sent 0.03 s after the kill), so: at most one per
    # client, all answered within the detection window after the kill, none later
    proxy_500s = [(s, a) for s, a, o, _ in results if o == "500"]
    assert all(a < killed + PROXY_DETECTS_DEATH_S for _, a in proxy_500s) and len(proxy_500s) <= clients, \
        "500s beyond the requests handed to the lost node's Gateway: " + summary
    assert not [o for o in counts if o.endswith("-ours") and not o.startswith("503")], \
        "our own 5xx other than 503: " + summary
    assert not [o for o in counts if o.startswith("error")], "connection errors: " + summary
    assert gap < 8.0, "too long without service after the node died: " + summary
    assert late and all(o == "200" for o in late), "service did not resume: " + summary
