"""The OpenAPI document (``http/openapi.py``): a valid OpenAPI 3.1 document (and a valid 3.0 view for
the docs page), exactly the routes of ``http/routes.py``, parameters that agree with the validator,
and, against a real Ray Serve app, real answers of every kind that fit their schemas; ``/docs``
loads its assets from the server and renders the operations in a headless Chromium.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import typing
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import cv2
import jsonschema
import numpy as np
import pytest
import requests
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator, validate

from serve_app.errors import SchemaError
from serve_app.http import openapi, roboflow
from serve_app.http.routes import build_routes
from serve_app.http.schema import as_openapi_30
from serve_app.tasks.params import InferenceParams
from tests.conftest import ROOT, DeployedApp, deploy_app, teardown_app
from tests.fixture_models import classifier_manifest, colour_classifier, solid_jpeg

KEY = "openapi-test-key"
MAX_BODY = 4 * 2**20
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(openapi.document_bytes()[0])


# -- helpers: resolving the document -------------------------------------------------------------
def response_schema(doc: dict, path: str, method: str, status: int | str, media: str = "application/json") -> dict:
    """The schema of an operation's answer (a response ``$ref`` followed to its component)."""
    response = doc["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"][media]["schema"]


def errors_of(doc: dict, schema: dict, body: object) -> list[str]:
    """Why ``body`` does not fit ``schema`` (JSON Schema 2020-12, as OpenAPI 3.1 has it; its
    ``$ref``s resolved in the document's components)."""
    root = {"components": doc["components"], **schema}
    jsonschema.Draft202012Validator.check_schema(root)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft202012Validator(root).iter_errors(body)]


def fits(doc: dict, schema: dict, body: object) -> None:
    problems = errors_of(doc, schema, body)
    assert not problems, f"{problems[:5]} in {json.dumps(body)[:600]}"


def component(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


class AnyHandler:
    """Stands in for the Gateway when only the route table is read: every handler is one no-op."""

    def __getattr__(self, name: str):
        async def handler(request):  # pragma: no cover - never called
            raise AssertionError(name)
        return handler


# -- the document itself -------------------------------------------------------------------------
def test_document_is_valid_openapi_31_and_its_docs_view_valid_30(doc):
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)
    view = json.loads(openapi.document_bytes()[1])
    assert view["openapi"] == "3.0.3"
    validate(view, cls=OpenAPIV30SpecValidator)
    assert view == as_openapi_30(doc) and view["paths"].keys() == doc["paths"].keys()


def test_a_broken_document_is_refused():
    broken = openapi.build_document()
    broken["paths"]["/infer"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] = {"$ref": 5}
    with pytest.raises(Exception):
        validate(broken, cls=OpenAPIV31SpecValidator)


def test_every_route_is_in_the_document_and_nothing_else():
    """Each operation belongs to the first route that Starlette would match it to, and each route
    (with each of its methods) owns at least one operation."""
    routes = build_routes(AnyHandler())
    doc = openapi.build_document()
    owned: dict[tuple[str, str], list[str]] = {(r.path, m): [] for r in routes for m in r.methods if m != "HEAD"}
    for path, item in doc["paths"].items():
        for method in (m for m in item if m in METHODS):
            owner = next((r for r in routes if r.path_regex.match(path) and method.upper() in r.methods), None)
            assert owner is not None, f"{method.upper()} {path} is in the document but no route serves it"
            owned[(owner.path, method.upper())].append(path)
            named = set(re.findall(r"{(\w+)}", path))
            assert named <= set(owner.param_convertors), (path, owner.path)
            declared = {p["name"] for p in item[method].get("parameters", []) if p["in"] == "path"}
            assert declared == named, f"{method.upper()} {path}: path parameters {declared} vs {named}"
    missing = [f"{m} {p}" for (p, m), paths in owned.items() if not paths]
    assert not missing, f"routes missing from the document: {missing}"
    assert sorted(owned[("/infer/{task}", "POST")]) == sorted(f"/infer/{t}" for t in roboflow.TASK_ROUTES)


def test_operation_ids_are_unique(doc):
    ids = [op["operationId"] for item in doc["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids))


def test_inference_parameters_are_what_the_parser_reads(doc):
    params = openapi.inference_parameters(openapi.SchemaSet())
    assert set(params) == set(roboflow._PARAM_FIELDS)
    defaults = InferenceParams()
    for name in ("confidence", "iou_threshold", "max_detections", "max_candidates", "keypoint_confidence"):
        assert params[name]["default"] == getattr(defaults, name)
    assert params["response_mask_format"]["default"] == defaults.mask_format
    assert openapi.MAX_STROKE == roboflow._MAX_STROKE
    assert set(openapi.PARAM_DOCS) == {f.name for f in dataclasses.fields(InferenceParams)} - {"overrides"}
    assert set(openapi.TASK_ANSWERS) == set(roboflow.TASK_ROUTES)
    from serve_app.pipeline import images

    assert doc["components"]["schemas"]["ImageObject"]["properties"]["type"]["enum"] == list(images._ACCEPTED_TYPES)


@pytest.mark.parametrize("name", sorted(openapi.PARAM_RANGES))
def test_parameter_ranges_are_the_validators(name):
    lo, hi = openapi.PARAM_RANGES[name]
    integer = typing.get_type_hints(InferenceParams)[name] is int
    step = 1 if integer else 1e-6
    for value in (lo, hi):
        assert getattr(InferenceParams.from_request({name: value}), name) == value
    for value in (lo - step, hi + step, *((lo + 0.5,) if integer else ())):
        with pytest.raises(SchemaError):
            InferenceParams.from_request({name: value})


def test_mask_formats_are_the_validators():
    for fmt in openapi.MASK_FORMATS:
        assert InferenceParams.from_request({"response_mask_format": fmt}).mask_format == fmt
    with pytest.raises(SchemaError):
        InferenceParams.from_request({"response_mask_format": "bitmap"})


def test_every_error_status_has_its_response(doc):
    statuses = set(openapi.error_codes())
    assert statuses - {500} == set(openapi.ERROR_RESPONSES)
    for status, codes in openapi.error_codes().items():
        assert doc["components"]["schemas"][f"Error{status}"]["properties"]["error"]["enum"] == codes


def test_wrong_bodies_do_not_fit(doc):
    """The schemas are strict enough to fail: a field the type lacks, a wrong type, a missing field."""
    box = {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0, "confidence": 0.9, "class": "circle", "class_id": 0,
           "detection_id": "d"}
    answer = {"inference_id": "i", "time": 0.1, "image": {"width": 10, "height": 10}, "predictions": [box]}
    fits(doc, component("ObjectDetectionResponse"), answer)
    wrong = [{**answer, "extra": 1}, {**answer, "time": "fast"}, {k: v for k, v in answer.items() if k != "image"},
             {**answer, "predictions": [{**box, "points": [{"x": 1, "y": 2}]}]},  # a polygon is not a box
             {**answer, "predictions": [{**box, "confidence": None}]}]
    for body in wrong:
        assert errors_of(doc, component("ObjectDetectionResponse"), body), body
    assert errors_of(doc, component("InstanceSegmentationResponse"), answer)  # no points
    error = {"error": "model_not_found", "message": "no such model", "status": 404}
    fits(doc, response_schema(doc, "/infer", "post", 404), error)
    assert errors_of(doc, response_schema(doc, "/infer", "post", 400), error)  # a 404's code
    assert errors_of(doc, response_schema(doc, "/infer", "post", 404), {**error, "status": 400})


# -- against a running server ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    tmp = tmp_path_factory.mktemp("openapi")
    repo = tmp / "repo" / "colours-multi" / "1"
    repo.mkdir(parents=True)
    weights = colour_classifier()
    (repo / "weights.onnx").write_bytes(weights)
    manifest = {**classifier_manifest("colours-multi/1", weights), "architecture": "multi-label"}
    (repo / "model.json").write_text(json.dumps(manifest))
    deployed = deploy_app(ray_serve, tmp, {"repositories": [str(ROOT / "configs" / "models"), str(tmp / "repo")],
                                           "api_key": KEY, "max_body_bytes": MAX_BODY})
    yield deployed
    teardown_app(deployed)


def call(app: DeployedApp, method: str, path: str, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {KEY}", **kw.pop("headers", {})}
    return requests.request(method, app.url + path, headers=headers, timeout=120, **kw)


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def b64(data: bytes) -> dict:
    return {"type": "base64", "value": base64.b64encode(data).decode()}


def scene() -> bytes:
    from zoo.shapes import draw_scene

    return jpeg(draw_scene(np.random.default_rng(3), size=(512, 384), max_shapes=3, min_extent=90,
                           max_extent=150).image)


def triangles() -> bytes:
    from zoo.shapes import draw_scene

    return jpeg(draw_scene(np.random.default_rng(21), size=(512, 384), max_shapes=3, min_extent=90, max_extent=150,
                           classes=("triangle",)).image)


def text_image() -> bytes:
    image = np.full((120, 520, 3), 255, np.uint8)
    cv2.putText(image, "OPEN API 31", (20, 80), cv2.FONT_HERSHEY_DUPLEX, 2.0, (0, 0, 0), 4, cv2.LINE_AA)
    return jpeg(image)


def square() -> bytes:
    from zoo.shapes import draw_dominant_shape

    return jpeg(draw_dominant_shape(np.random.default_rng(8), "square").image)


TASK_CASES = [  # /infer/{task}, model, image, extra fields, the component the answer must fit
    ("object_detection", "shapes-det/1", scene, {}, "ObjectDetectionResponse"),
    ("object_detection", "shapes-det-v5/1", scene, {"visualize_predictions": True}, "ObjectDetectionResponse"),
    ("instance_segmentation", "shapes-seg/1", scene, {"response_mask_format": "rle"}, "InstanceSegmentationResponse"),
    ("instance_segmentation", "shapes-seg/1", scene, {}, "InstanceSegmentationResponse"),
    ("keypoints_detection", "shapes-pose/1", triangles, {"keypoint_confidence": 0.0}, "KeypointsDetectionResponse"),
    ("classification", "shapes-cls/1", square, {}, "ClassificationResponse"),
    ("classification", "colours-multi/1", lambda: solid_jpeg((0, 0, 255)), {}, "MultiLabelClassificationResponse"),
    ("ocr", "ocr/1", text_image, {}, "OcrResponse"),
]


@pytest.mark.parametrize("task,model_id,image,extra,name", TASK_CASES, ids=[f"{c[1]}{'+' if c[3] else ''}"
                                                                           for c in TASK_CASES])
def test_task_answers_fit(app, doc, task, model_id, image, extra, name):
    r = call(app, "POST", f"/infer/{task}", json={"model_id": model_id, "image": b64(image()), **extra})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body.get("predictions"), "an answer without predictions would not test their schema"
    fits(doc, response_schema(doc, f"/infer/{task}", "post", 200), body)
    fits(doc, component(name), body)
    if "visualize_predictions" in extra:
        assert body["visualization"]
    if extra.get("response_mask_format") == "rle":
        assert all("rle_mask" in p for p in body["predictions"])


def test_batch_and_header_route_answers_fit(app, doc):
    r = call(app, "POST", "/infer/object_detection", json={"model_id": "shapes-det/1", "image": [b64(scene())] * 2})
    assert r.status_code == 200 and isinstance(r.json(), list) and len(r.json()) == 2
    fits(doc, response_schema(doc, "/infer/object_detection", "post", 200), r.json())
    r = call(app, "POST", "/infer?confidence=0.3", data=scene(),
             headers={"serve_multiplexed_model_id": "shapes-det/1", "content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    fits(doc, response_schema(doc, "/infer", "post", 200), r.json())


def test_legacy_route_answers_fit(app, doc):
    r = call(app, "POST", "/shapes-det/1?confidence=40&overlap=30", data=base64.b64encode(scene()))
    assert r.status_code == 200, r.text
    fits(doc, response_schema(doc, "/{dataset}/{version}", "post", 200), r.json())
    fits(doc, component("ObjectDetectionResponse"), r.json())
    r = call(app, "POST", "/shapes-det/1?format=image_and_json", files={"file": ("s.jpg", scene(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["visualization"]
    fits(doc, response_schema(doc, "/{dataset}/{version}", "post", 200), r.json())
    r = call(app, "POST", "/shapes-det/1?format=image", data=scene())
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert "image/jpeg" in doc["paths"]["/{dataset}/{version}"]["post"]["responses"]["200"]["content"]


def test_registry_info_and_probe_answers_fit(app, doc):
    call(app, "POST", "/infer/object_detection", json={"model_id": "shapes-det/1", "image": b64(scene())})
    for method, path, kw in [("GET", "/model/registry", {}), ("GET", "/info", {}), ("GET", "/healthz", {}),
                             ("GET", "/readiness", {}),
                             ("POST", "/model/alias", {"json": {"alias": "the-shapes", "model_id": "shapes-det/1"}}),
                             ("POST", "/model/add", {"json": {"model_id": "shapes-cls/1"}}),
                             ("POST", "/model/remove", {"json": {"model_id": "colours-multi/1"}}),
                             ("POST", "/model/clear", {})]:
        r = call(app, method, path, **kw)
        assert r.status_code == 200, (path, r.text)
        fits(doc, response_schema(doc, path, method.lower(), 200), r.json())
    view = call(app, "GET", "/model/registry").json()
    assert view["available"] and view["aliases"]["the-shapes"] == "shapes-det/1" and view["replicas"]


ERROR_CASES = [  # method, path, request, status, the operation whose answer it is (None: any path's)
    ("POST", "/infer/object_detection", {"json": {"model_id": "../x", "image": b64(b"x")}}, 400,
     "/infer/object_detection"),
    ("POST", "/infer", {"data": b"not an image at all \x00\x01", "headers": {
        "serve_multiplexed_model_id": "shapes-det/1", "content-type": "application/pdf"}}, 400, "/infer"),
    ("POST", "/infer/ocr", {"json": {"model_id": "ocr/1", "image": b64(b"x")}, "headers": {"Authorization": "Bearer no"}},
     401, "/infer/ocr"),
    ("GET", "/info", {"headers": {"Authorization": ""}}, 401, "/info"),
    ("POST", "/infer/object_detection", {"json": {"model_id": "no-such/1", "image": b64(b"x")}}, 404,
     "/infer/object_detection"),
    ("POST", "/infer/no_such_task", {"json": {"image": b64(b"x")}}, 404, None),
    ("GET", "/no/such/path", {}, 404, None),
    ("POST", "/healthz", {}, 405, None),
    ("POST", "/model/registry", {}, 405, "/{dataset}/{version}"),
    ("POST", "/infer/object_detection", {"data": b"{" + b" " * (MAX_BODY + 10) + b"}",
                                         "headers": {"content-type": "application/json"}}, 413,
     "/infer/object_detection"),
    ("POST", "/infer/classification", {"json": {"model_id": "shapes-cls/1"}}, 422, "/infer/classification"),
    ("POST", "/model/alias", {"json": {"alias": "x"}}, 400, "/model/alias"),
]


@pytest.mark.parametrize("method,path,kw,status,operation", ERROR_CASES,
                         ids=[f"{c[3]}-{c[0]}-{c[1]}" for c in ERROR_CASES])
def test_error_answers_fit(app, doc, method, path, kw, status, operation):
    r = call(app, method, path, **kw)
    assert r.status_code == status, r.text
    if operation is None:  # no operation for this path and method: the shared response
        schema = doc["components"]["responses"][openapi.ERROR_RESPONSES[status]]["content"]["application/json"]
        fits(doc, schema["schema"], r.json())
    else:
        fits(doc, response_schema(doc, operation, method.lower(), status), r.json())
    if status == 401:
        assert r.headers["WWW-Authenticate"] == "Bearer"
    if status == 405 and operation is None:  # Starlette's 405 (the legacy route's guard sends no Allow)
        assert r.headers["Allow"]


def test_415_is_not_answered():
    """No route refuses a media type: raw bodies are told apart by content (an unknown one is a 400
    invalid_image, above), so the document lists no 415."""
    assert 415 not in openapi.error_codes() and 415 not in openapi.ERROR_RESPONSES


def test_the_document_served_is_the_document_built(app, doc):
    r = requests.get(app.url + "/openapi.json", timeout=30)  # no key: public
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == doc


# -- /docs ---------------------------------------------------------------------------------------------
class Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(("script", a["src"] or ""))
        if tag == "link" and a.get("href"):
            self.urls.append((a.get("rel") or "", a["href"] or ""))
        if tag == "script" and not a.get("src"):
            self.urls.append(("inline-script", ""))


def test_docs_page_loads_its_assets_from_the_server(app):
    page_url = app.url + "/docs"
    r = requests.get(page_url, timeout=30)  # no key: public
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    parser = Assets()
    parser.feed(r.text)
    kinds = {kind for kind, _ in parser.urls}
    assert "inline-script" not in kinds and {"script", "stylesheet"} <= kinds
    expected = {"script": "text/javascript", "stylesheet": "text/css", "icon": "image/png"}
    for kind, src in parser.urls:
        url = urljoin(page_url, src)
        assert url.startswith(app.url + "/docs/"), url  # this server, no CDN
        got = requests.get(url, timeout=30)
        assert got.status_code == 200 and got.headers["content-type"].startswith(expected[kind]), (url, got.headers)
        assert len(got.content) > 200
        if src.endswith("docs.js"):
            assert "validatorUrl: null" in got.text and not re.search(r"https?://", got.text)
            spec = re.search(r'new URL\("([^"]+)"', got.text).group(1)
            view = requests.get(urljoin(url, spec), timeout=30)
            assert view.status_code == 200 and view.json()["openapi"] == "3.0.3"
            validate(view.json(), cls=OpenAPIV30SpecValidator)
    assert requests.get(app.url + "/docs/index.html", timeout=30).status_code == 404


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through chromedriver (Debian's), a fresh profile; stopped at the end."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"the /docs browser test needs {' and '.join(missing)} (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-docs")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1050", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_docs_page_renders_every_operation(app, doc, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(app.url + "/docs")
    operations = sum(1 for item in doc["paths"].values() for m in item if m in METHODS)
    blocks = WebDriverWait(browser, 60, poll_frequency=0.2).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= operations
        or d.find_elements(By.CSS_SELECTOR, ".errors-wrapper, .version-pragma, .loading-container .errors"),
        "Swagger UI rendered neither the operations nor an error")
    assert blocks is True, browser.find_element(By.TAG_NAME, "body").text[:500]
    assert "Unable to render" not in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("serve_app")
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
