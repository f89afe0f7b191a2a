"""deploy/kuberay/rayservice.yaml: valid against KubeRay's RayService CRD, and a Serve config the app accepts.

The schema is KubeRay's own (tests/data/rayservice_crd_schema.json, the v1 ``openAPIV3Schema`` of
``ray.io_rayservices.yaml``; where it came from is in the sibling ``.SOURCE`` file). Kubernetes'
dialect of OpenAPI is turned into plain JSON Schema the way the API server reads it:
``x-kubernetes-int-or-string`` accepts an integer or a string, ``nullable`` accepts null, an
object that lists its ``properties`` (and does not say ``x-kubernetes-preserve-unknown-fields``)
rejects other fields, as ``kubectl apply`` does with its default ``--validate=strict``, keys of an
``x-kubernetes-list-type: map`` list are unique, ``int32``/``int64`` are range checked. CEL rules
(``x-kubernetes-validations``) are not evaluated.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
SCHEMA = ROOT / "tests" / "data" / "rayservice_crd_schema.json"
SECRET_NAMES = ("SERVE_APP_API_KEY", "SERVE_APP_ADMIN_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
SECRETISH = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)


def k8s_to_json_schema(node):
    """A copy of a Kubernetes structural schema as plain JSON Schema (see the module docstring)."""
    if isinstance(node, list):
        return [k8s_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: k8s_to_json_schema(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema):
    if schema.get("x-kubernetes-list-type") != "map" or not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(json.dumps(item.get(k)) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry for list-map keys {keys}: {item!r}")
            seen.add(key)


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -2**31 <= value < 2**31


@FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -2**63 <= value < 2**63


K8sValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                            {"x-kubernetes-list-map-keys": _list_map_keys})


@pytest.fixture(scope="module")
def validator():
    schema = k8s_to_json_schema(json.loads(SCHEMA.read_text()))
    K8sValidator.check_schema(schema)
    return K8sValidator(schema, format_checker=FORMATS)


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


@pytest.fixture(scope="module")
def rayservice(documents) -> dict:
    (rs,) = [d for d in documents if d.get("kind") == "RayService"]
    return rs


@pytest.fixture(scope="module")
def serve_config(rayservice) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def app(serve_config) -> dict:
    (application,) = serve_config["applications"]
    return application


def deployment(app: dict, name: str) -> dict:
    (d,) = [d for d in app["deployments"] if d["name"] == name]
    return d


def pods(rayservice) -> dict[str, dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    out.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    return out


def errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


def test_manifest_is_valid_against_the_rayservice_crd(validator, rayservice):
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert errors(validator, rayservice) == []


def _delete_head(rs):
    del rs["spec"]["rayClusterConfig"]["headGroupSpec"]


def _head_as_string(rs):
    rs["spec"]["rayClusterConfig"]["headGroupSpec"] = "ray-head"


def _typo(rs):
    rs["spec"]["rayClusterConfig"]["enableInTreeAutoScaling"] = rs["spec"]["rayClusterConfig"].pop(
        "enableInTreeAutoscaling")


def _replicas_as_word(rs):
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"


def _start_param_not_a_string(rs):
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0


def _bad_quantity(rs):
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "resources"]["limits"]["memory"] = "lots"


def _port_out_of_int32(rs):
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"] = 2**31


def _duplicate_env(rs):
    env = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env.append(copy.deepcopy(env[0]))


def _serve_config_as_object(rs):
    rs["spec"]["serveConfigV2"] = yaml.safe_load(rs["spec"]["serveConfigV2"])


@pytest.mark.parametrize("breaks", [_delete_head, _head_as_string, _typo, _replicas_as_word,
                                    _start_param_not_a_string, _bad_quantity, _port_out_of_int32,
                                    _duplicate_env, _serve_config_as_object])
def test_a_broken_manifest_is_rejected(validator, rayservice, breaks):
    broken = copy.deepcopy(rayservice)
    breaks(broken)
    assert errors(validator, broken), f"{breaks.__name__} was accepted"


def test_serve_config_is_valid_for_ray_serve(serve_config):
    from ray.serve.schema import ServeDeploySchema

    parse = getattr(ServeDeploySchema, "model_validate", None) or ServeDeploySchema.parse_obj
    parse(serve_config)
    assert serve_config["proxy_location"] == "EveryNode"
    assert serve_config["http_options"]["host"] == "0.0.0.0"


def test_cluster_runs_the_projects_ray(rayservice):
    import ray

    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_application_args_are_accepted_by_settings(app, monkeypatch):
    from serve_app.settings import Settings

    for var in ("SERVE_APP_STATE_DIR", "SERVE_APP_CACHE_DIR", "SERVE_APP_S3_ENDPOINT", *SECRET_NAMES):
        monkeypatch.delenv(var, raising=False)
    assert app["import_path"] == "serve_app.app:build_app"
    settings = Settings.from_args(app["args"])  # an unknown key raises
    assert settings.providers[:2] == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.repositories[0] == "/models"
    # the keys: from SERVE_APP_API_KEY / SERVE_APP_ADMIN_KEY in the pods, never in the YAML
    assert settings.api_key is None and getattr(settings, "admin_key", None) is None


def test_gateways_are_redundant_and_model_servers_use_gpus(app, rayservice):
    gateway, model_server = deployment(app, "Gateway"), deployment(app, "ModelServer")
    assert gateway["num_replicas"] >= 2
    gpus = model_server["ray_actor_options"]["num_gpus"]
    assert 0 < gpus <= 1
    scaling = model_server["autoscaling_config"]
    assert 1 <= scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"]
    # Serve's max_replicas fits in the GPU group at its maximum: otherwise the last replicas wait forever
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    per_pod = int(int(container["resources"]["limits"]["nvidia.com/gpu"]) / gpus)
    assert scaling["max_replicas"] <= per_pod * group["maxReplicas"]
    # and a pod's CPUs hold its share of ModelServers plus the Gateways
    cpus = int(container["resources"]["limits"]["cpu"])
    assert per_pod * model_server["ray_actor_options"]["num_cpus"] + gateway["ray_actor_options"]["num_cpus"] * \
        gateway["num_replicas"] <= cpus


def test_head_does_no_gpu_work_and_workers_autoscale(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    (head_container,) = head["template"]["spec"]["containers"]
    assert not any("gpu" in k for k in head_container["resources"].get("limits", {}))
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["minReplicas"] < group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1


def test_volumes_the_settings_need_are_in_every_pod(app, documents, rayservice):
    args = app["args"]
    claims = {d["metadata"]["name"]: d for d in documents if d.get("kind") == "PersistentVolumeClaim"}
    for name, spec in pods(rayservice).items():
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        mounts = container["volumeMounts"]

        def volume_of(path: str) -> dict:
            found = [m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
            assert found, f"{path} is not on a volume in the {name} pod"
            return volumes[max(found, key=lambda m: len(m["mountPath"]))["name"]]

        state = volume_of(args["state_dir"])["persistentVolumeClaim"]["claimName"]
        assert "ReadWriteMany" in claims[state]["spec"]["accessModes"], "state_dir must be shared by every pod"
        cache = volume_of(args["cache_dir"])
        assert "emptyDir" in cache or "hostPath" in cache, "cache_dir must be node-local disk"
        assert cache.get("emptyDir", {}).get("medium") != "Memory"
        models = volume_of(args["repositories"][0])["persistentVolumeClaim"]["claimName"]
        assert models in claims


def test_every_pod_has_the_same_environment_and_mounts(rayservice):
    containers = [spec["containers"][0] for spec in pods(rayservice).values()]
    specs = list(pods(rayservice).values())
    assert all(c["env"] == containers[0]["env"] for c in containers)
    assert all(c["volumeMounts"] == containers[0]["volumeMounts"] for c in containers)
    assert all(s["volumes"] == specs[0]["volumes"] for s in specs)
    assert len({c["image"] for c in containers}) == 1


def test_no_secret_in_clear(app, documents, rayservice):
    assert not [d for d in documents if d.get("kind") == "Secret"]
    assert not [k for k in app["args"] if SECRETISH.search(k)], "keys come from the environment"
    for name, spec in pods(rayservice).items():
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert set(SECRET_NAMES) <= set(env), name
        for var, entry in env.items():
            if SECRETISH.search(var):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], f"{var} in the {name} pod"
