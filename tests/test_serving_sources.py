"""Artifact sources and failures through the running server: local dir, HTTP, S3 (moto), bad
checksums, flaky and dead origins, hung loads, and actors or replicas that die."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DeployedApp, deploy_app, teardown_app
from tests.fixture_models import GREEN, RED, classifier_manifest, colour_classifier, solid_jpeg, write_repository
from tests.servers import OriginServer, free_port

pytestmark = pytest.mark.ray
BUCKET = "models"


@pytest.fixture(scope="module")
def s3_endpoint():
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="s3model/weights.onnx", Body=colour_classifier(variant=300))
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def origin():
    files = {f"/v{i}.onnx": colour_classifier(variant=100 + i) for i in range(10)}
    server = OriginServer(files)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_origin():
    server = OriginServer({"/slow.onnx": colour_classifier(variant=200)}, delay_s=8)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory, s3_endpoint, origin, slow_origin) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("src")
    repo = write_repository(tmp / "repo", {"local/1": colour_classifier(variant=1), "filler-a/1": colour_classifier(2),
                                           "filler-b/1": colour_classifier(3)})
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(repo)], "max_models_per_replica": 2,
                                           "s3_endpoint": s3_endpoint, "s3_region": "us-east-1",
                                           # clients may add models from these (loopback: allow_private_urls)
                                           "model_uri_allowed_hosts": [BUCKET, "127.0.0.1"],
                                           "load_timeout_s": 3, "source_backoff_s": 0.05},
                          # moto takes any credentials; pyarrow reads them from the actors' environment
                          env_vars={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                                    "AWS_DEFAULT_REGION": "us-east-1"})
    yield deployed
    teardown_app(deployed)


def add(app: DeployedApp, model_id: str, uri: str, variant: int, **extra) -> requests.Response:
    manifest = classifier_manifest(model_id, colour_classifier(variant=variant), uri=uri)
    return app.post("/model/add", json={"manifest": manifest, **extra})


def infer(app: DeployedApp, model: str, colour=RED) -> requests.Response:
    return app.post("/infer", data=solid_jpeg(colour), headers={"serve_multiplexed_model_id": model})


def tier_of_last_load(app: DeployedApp, model: str) -> str:
    import ray

    time.sleep(1.5)
    states = ray.get(app.actor("serve_app_registry").replicas.remote())
    loads = [e for s in states.values() for e in s["loads"] if e["model_id"] == model]
    return loads[-1]["tier"]


def evict_everything(app: DeployedApp) -> None:
    for m in ("filler-a/1", "filler-b/1"):  # cap 2 on one replica: two other models push the rest out
        assert infer(app, m).status_code == 200


def test_same_model_from_local_dir_http_and_s3(app, origin, s3_endpoint):
    assert add(app, "http-model/1", origin.url("/v0.onnx"), 100).status_code == 200
    s3_manifest = classifier_manifest("s3-model/1", colour_classifier(variant=300), uri=f"s3://{BUCKET}/s3model/weights.onnx")
    r = app.post("/model/add", json={"manifest": s3_manifest})
    assert r.status_code == 200, r.text
    for model in ("local/1", "http-model/1", "s3-model/1"):
        for colour, name in ((RED, "red"), (GREEN, "green")):
            r = infer(app, model, colour)
            assert r.status_code == 200, r.text
            assert r.json()["top"] == name
    assert origin.counts["/v0.onnx"] == 1


def test_corrupt_transfer_is_rejected_and_fetched_again(app, origin):
    origin.corrupt_next["/v1.onnx"] = 1
    assert add(app, "corrupt-once/1", origin.url("/v1.onnx"), 101, load=False).status_code == 200
    r = infer(app, "corrupt-once/1")
    assert r.status_code == 200, r.text
    assert origin.counts["/v1.onnx"] == 2


def test_always_corrupt_artifact_is_a_503(app, origin):
    origin.corrupt_next["/v2.onnx"] = 100
    assert add(app, "corrupt-always/1", origin.url("/v2.onnx"), 102, load=False).status_code == 200
    r = infer(app, "corrupt-always/1")
    assert r.status_code == 503 and r.json()["error"] == "artifact_corrupt" and "Retry-After" in r.headers
    assert "checksum" in r.json()["message"]
    assert app.get("/healthz").status_code == 200


def test_flaky_origin_is_retried(app, origin):
    origin.fail_next["/v3.onnx"] = 2
    assert add(app, "flaky/1", origin.url("/v3.onnx"), 103, load=False).status_code == 200
    assert infer(app, "flaky/1").status_code == 200
    assert origin.counts["/v3.onnx"] == 3


def test_dead_origin_with_disk_copy_still_serves(app, origin):
    import ray

    extra = OriginServer({"/d.onnx": colour_classifier(variant=104)})
    try:
        assert add(app, "disk-backed/1", extra.url("/d.onnx"), 104).status_code == 200
        assert extra.counts["/d.onnx"] == 1
    finally:
        extra.stop()
    # lose the object-store tier (the cache actor restarts empty) and the replica's copy
    ray.kill(app.actor("serve_app_artifact_cache"), no_restart=False)
    evict_everything(app)
    r = infer(app, "disk-backed/1")
    assert r.status_code == 200, r.text
    assert tier_of_last_load(app, "disk-backed/1") == "disk"


def test_hung_load_fails_with_503_after_the_timeout(app, slow_origin):
    assert add(app, "hangs/1", slow_origin.url("/slow.onnx"), 200, load=False).status_code == 200
    started = time.monotonic()
    r = infer(app, "hangs/1")
    took = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert "longer than 3" in r.json()["message"] and r.headers["Retry-After"]
    assert took < 7.5
    assert infer(app, "local/1").status_code == 200  # the replica is not stuck


def test_registry_restart_keeps_models_added_at_run_time(app, origin):
    import ray

    assert add(app, "survivor/1", origin.url("/v5.onnx"), 105).status_code == 200
    ray.kill(app.actor("serve_app_registry"), no_restart=False)
    time.sleep(2.5)  # past the gateway's resolution cache
    deadline = time.time() + 30
    while True:
        r = infer(app, "survivor/1")
        if r.status_code == 200 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    assert "survivor/1" in {m["model_id"] for m in app.get("/model/registry").json()["available"]}
    r = app.post("/model/remove", json={"model_id": "survivor/1"})
    assert r.status_code == 200
    time.sleep(2.5)
    assert infer(app, "survivor/1").status_code == 404


def test_killing_the_artifact_cache_only_costs_a_refetch(app, origin):
    import ray

    assert add(app, "refetch/1", origin.url("/v6.onnx"), 106).status_code == 200
    ray.kill(app.actor("serve_app_artifact_cache"), no_restart=False)
    evict_everything(app)
    assert infer(app, "refetch/1").status_code == 200
    assert tier_of_last_load(app, "refetch/1") == "disk"
    assert origin.counts["/v6.onnx"] == 1


def test_replica_killed_mid_request_gives_result_or_503(app):
    import ray

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "ModelServer" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    assert replicas
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    statuses: list[int] = []

    def client(i: int) -> None:
        try:
            r = requests.post(app.url + "/infer", data=solid_jpeg(RED), timeout=90,
                              headers={"serve_multiplexed_model_id": "local/1"})
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert "Retry-After" in r.headers
        except requests.RequestException as exc:  # a hang or a dropped connection fails the test
            statuses.append(-1)
            raise AssertionError(f"client {i}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    ray.kill(victim, no_restart=True)
    for t in threads:
        t.join(100)
    assert len(statuses) == 8 and set(statuses) <= {200, 503}, statuses
    deadline = time.time() + 90
    while infer(app, "local/1").status_code != 200:
        assert time.time() < deadline, "the deployment did not recover"
        time.sleep(1)
