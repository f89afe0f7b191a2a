"""The playground page on a real Ray Serve app, in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium): the page loads without console errors, lists the registry's
models, sends an image and draws the answer (pixels of the canvas checked at a predicted box's edge),
shows the JSON (the server's own answer to the same image) and the Server-Timing stages, renders
every built-in model's sample, and works behind an API key once the key is entered.

``SAVE_SCREENSHOT=docs/playground.png`` also writes the detection screenshot there (the docs' picture).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from serve_app.http.playground import CONTENT_SECURITY_POLICY, SAMPLES, STATIC
from tests.conftest import ROOT, DeployedApp, deploy_app, teardown_app

pytestmark = pytest.mark.ray
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1050", "--hide-scrollbars")
SCENE = ROOT / "tests" / "data" / "images" / "scene0.jpg"
KEY = "playground-test-key"
WAIT_S = 90
MODEL_ID_HEADER = "serve_multiplexed_model_id"


# -- the app, deployed once per configuration -----------------------------------------------------
class Deployments:
    """One app at a time (they share Serve's route prefix): redeployed when a test asks for other settings."""

    def __init__(self, base_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.base_url, self.tmp = base_url, tmp_path_factory
        self.current: tuple[dict, DeployedApp] | None = None

    def get(self, **args) -> DeployedApp:
        if self.current is not None and self.current[0] == args:
            return self.current[1]
        self.close()
        self.current = (args, deploy_app(self.base_url, self.tmp.mktemp("playground"), args))
        return self.current[1]

    def close(self) -> None:
        if self.current is not None:
            teardown_app(self.current[1])
            self.current = None


@pytest.fixture(scope="module")
def deployments(ray_serve, tmp_path_factory):
    apps = Deployments(ray_serve, tmp_path_factory)
    yield apps
    apps.close()


@pytest.fixture
def app(deployments) -> DeployedApp:
    return deployments.get()


@pytest.fixture
def keyed_app(deployments) -> DeployedApp:
    return deployments.get(api_key=KEY)


# -- the browser -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium driven by chromedriver (both Debian's), a fresh profile; both stopped at the end."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"the playground's browser test needs {' and '.join(missing)}: install Debian's "
                    "'chromium chromium-driver' packages (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()  # closes Chromium, then stops chromedriver
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver, allowed: str | None = None) -> list[str]:
    """The browser console's errors since the last call (``allowed``: a pattern of expected ones)."""
    entries = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return [m for m in entries if not (allowed and re.search(allowed, m))]


def wait(driver, condition, message: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def open_page(driver, url: str, path: str = "/playground") -> None:
    """Load the page with an empty localStorage (no key left from another test); wait for the registry."""
    driver.get(url + path)
    driver.execute_script("localStorage.clear()")
    driver.get(url + path)
    wait(driver, lambda d: by_id(d, "model").get_property("options") or "error" in by_id(d, "status").get_attribute("class"),
         "the page never filled the model list nor said why")


def model_options(driver) -> list[str]:
    return [o.get_attribute("value") for o in by_id(driver, "model").get_property("options")]


def choose_model(driver, model_id: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, "model")).select_by_value(model_id)
    wait(driver, lambda d: model_id in d.execute_script("return document.getElementById('model').value")
         and by_id(d, "model-info").text, f"{model_id} was not chosen")


def wait_for_answer(driver, model_id: str) -> dict:
    """The JSON the page shows once its answer for ``model_id`` is drawn (fails on the page's error)."""
    output = by_id(driver, "output")
    wait(driver, lambda d: output.get_attribute("data-state") in ("done", "error"), "no answer appeared")
    status = by_id(driver, "status").text
    assert output.get_attribute("data-state") == "done", f"the page showed an error: {status}"
    assert output.get_attribute("data-model") == model_id, status
    return json.loads(by_id(driver, "json").get_property("textContent"))


def click_sample(driver, model_id: str) -> None:
    from selenium.webdriver.common.by import By

    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#samples button[data-model="{model_id}"]'),
         f"no sample button for {model_id}")
    driver.find_element(By.CSS_SELECTOR, f'#samples button[data-model="{model_id}"]').click()


def canvas_differences(driver, image_bytes: bytes, points: list[tuple[int, int]]) -> list[int]:
    """For each (x, y): how far the page's canvas is from the bare image there (sum of |RGB| over 3x3)."""
    src = "data:image/jpeg;base64," + base64.b64encode(image_bytes).decode()
    script = """
        const [src, points, done] = arguments;
        const image = new Image();
        image.onerror = () => done(null);
        image.onload = () => {
          const bare = document.createElement("canvas");
          bare.width = image.naturalWidth; bare.height = image.naturalHeight;
          const b = bare.getContext("2d");
          b.drawImage(image, 0, 0);
          const shown = document.getElementById("canvas");
          if (shown.width !== bare.width || shown.height !== bare.height) { done(["size", shown.width, shown.height]); return; }
          const s = shown.getContext("2d");
          done(points.map(([x, y]) => {
            const p = b.getImageData(x - 1, y - 1, 3, 3).data, q = s.getImageData(x - 1, y - 1, 3, 3).data;
            let d = 0;
            for (let i = 0; i < p.length; i += 4) d += Math.abs(p[i] - q[i]) + Math.abs(p[i + 1] - q[i + 1]) + Math.abs(p[i + 2] - q[i + 2]);
            return d;
          }));
        };
        image.src = src;
    """
    out = driver.execute_async_script(script, src, [list(map(int, p)) for p in points])
    assert isinstance(out, list) and out and out[0] != "size", f"the canvas is not the image's size: {out}"
    return out


def changed_pixels(driver, image_bytes: bytes) -> int:
    """How many canvas pixels differ from the bare image (the drawing's area)."""
    h, w = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    grid = [(x, y) for y in range(2, h - 2, 4) for x in range(2, w - 2, 4)]
    return sum(1 for d in canvas_differences(driver, image_bytes, grid) if d > 30)


def direct_answer(app: DeployedApp, model_id: str, image: bytes, **params) -> dict:
    r = app.post("/infer", data=image, params=params,
                 headers={MODEL_ID_HEADER: model_id, "content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    return r.json()


def boxes(answer: dict) -> list[tuple[str, float, float, float, float]]:
    return sorted((p["class"], p["x"], p["y"], p["width"], p["height"]) for p in answer["predictions"])


def timing_stages(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [row.get_attribute("data-stage") for row in driver.find_elements(By.CSS_SELECTOR, "#timing tbody tr")]


def save_screenshot(driver, tmp_path: Path) -> Path:
    """The page as PNG in the test's tmp dir, and where ``SAVE_SCREENSHOT`` says if it is set (that copy
    in 256 colours, so the docs' picture stays near 300 KB: the noisy scene does not compress)."""
    from PIL import Image

    size = driver.get_window_size()
    driver.set_window_size(1400, 1300)  # the whole result: picture, scores, timing table and JSON
    try:
        shot = tmp_path / "playground.png"
        assert driver.save_screenshot(str(shot)), "no screenshot"
    finally:
        driver.set_window_size(size["width"], size["height"])
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[0] > 800, "the screenshot is not an image of the page"
    if os.environ.get("SAVE_SCREENSHOT"):
        target = Path(os.environ["SAVE_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(colors=256).save(target, optimize=True)
    return shot


def sample_bytes(model_id: str) -> bytes:
    return (STATIC / SAMPLES[model_id][0]).read_bytes()


# -- the page over plain HTTP ---------------------------------------------------------------------
def test_page_and_assets_are_served_with_a_strict_policy_and_nothing_about_the_host(app):
    for path in ("/", "/playground"):
        r = app.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    html = app.get("/playground").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script (the policy would block it)"
    assert not re.search(r"\sstyle=|\son[a-z]+=", html), "inline style or event handler attributes"
    linked = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert linked and all(u.startswith("playground/static/") for u in linked), linked  # no CDN, nothing absolute
    for name, media in (("playground.js", "text/javascript"), ("playground.css", "text/css"),
                        ("icon.svg", "image/svg+xml"), ("sample-shapes.jpg", "image/jpeg")):
        r = app.get(f"/playground/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), name
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    served = html + app.get("/playground/static/playground.js").text + app.get("/playground/static/playground.css").text
    assert not re.search(r"https?://(?!example\.com/)", served), "the page names another origin"
    for secret in (socket.gethostname(), str(ROOT)):
        assert not re.search(rf"\b{re.escape(secret)}\b", served), f"the page tells {secret!r}"
    for bad in ("nope.js", "..%2Fplayground.py", "%2E%2E/routes.py", "playground.py", ".hidden.js"):
        assert app.get(f"/playground/static/{bad}").status_code == 404, bad
    assert app.post("/playground/samples").status_code == 405  # a playground path is never a legacy model
    assert app.post("/playground/static").status_code == 404
    assert app.get("/healthz").json() == {"status": "ok"}


def test_drawing_hints_and_samples(app):
    pose = app.get("/playground/models/shapes-pose/1").json()
    manifest = json.loads((ROOT / "configs/models/shapes-pose/1/model.json").read_text())
    assert pose["skeleton"] == manifest["keypoints"]["skeleton"]
    assert pose["keypoint_names"] == manifest["keypoints"]["names"]
    assert pose["colors"] == {k: v.upper() for k, v in manifest["class_colors"].items()}
    assert not {"files", "uri", "path"} & set(pose), "the hints tell where the files are"
    assert app.get("/playground/models/shapes").json()["model_id"] == "shapes-det/1"  # aliases resolve
    missing = app.get("/playground/models/no-such-model/1")
    assert missing.status_code == 404 and missing.json()["error"] == "model_not_found"
    assert app.get("/playground/models/..%2Fx").status_code == 400
    samples = app.get("/playground/samples").json()
    assert {s["model_id"] for s in samples} == set(SAMPLES)
    for sample in samples:
        assert (ROOT / "configs/models" / sample["model_id"] / "model.json").exists(), sample
        body = app.get("/" + sample["url"]).content
        assert len(body) < 80_000 and cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None


def test_samples_are_what_the_script_draws():
    from zoo.samples import JPEG_QUALITY, sample_images

    for name, image in sample_images().items():
        shipped = cv2.imread(str(STATIC / name))
        drawn = cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1], cv2.IMREAD_COLOR)
        assert shipped is not None and shipped.shape == drawn.shape, name
        assert float(np.abs(shipped.astype(float) - drawn).mean()) < 1, f"{name} is not what zoo/samples.py draws"


# -- the page in Chromium -------------------------------------------------------------------------
def test_detection_from_a_file_is_drawn_beside_its_json_and_timing(app, browser):
    open_page(browser, app.url)
    assert console_errors(browser) == []
    registry = app.get("/model/registry").json()
    assert set(model_options(browser)) == {m["model_id"] for m in registry["available"]} >= set(SAMPLES)
    choose_model(browser, "shapes-det/1")
    info = by_id(browser, "model-info").text
    assert "object-detection" in info and all(c in info for c in ("circle", "square", "triangle")), info
    by_id(browser, "file").send_keys(str(SCENE))
    wait(browser, lambda d: by_id(d, "run").is_enabled(), "Run stayed disabled after a file was chosen")
    by_id(browser, "run").click()
    shown = wait_for_answer(browser, "shapes-det/1")

    direct = direct_answer(app, "shapes-det/1", SCENE.read_bytes(), confidence=0.4, iou_threshold=0.3)
    assert [b[0] for b in boxes(shown)] == [b[0] for b in boxes(direct)] and len(shown["predictions"]) >= 3
    for a, b in zip(boxes(shown), boxes(direct)):
        assert np.allclose(a[1:], b[1:], atol=0.5), (a, b)
    assert shown["image"] == direct["image"]

    edges = [(p["x"] - p["width"] / 2, p["y"]) for p in shown["predictions"]]  # left edge, half-way down
    edges += [(p["x"], p["y"] + p["height"] / 2) for p in shown["predictions"]]  # bottom edge, half-way along
    assert all(d > 30 for d in canvas_differences(browser, SCENE.read_bytes(), edges)), "a box is not drawn"
    far = far_from_boxes(shown)
    assert canvas_differences(browser, SCENE.read_bytes(), [far]) == [0], "the canvas is not the image itself"

    stages = timing_stages(browser)
    assert {"decode", "inference", "gateway", "browser round trip"} <= set(stages), stages
    summary = by_id(browser, "summary").text
    assert f"{len(shown['predictions'])} predictions" in summary and "circle" in summary, summary
    assert by_id(browser, "replica").text.startswith("Answered by replica")
    assert console_errors(browser) == []


def far_from_boxes(answer: dict, margin: float = 40) -> tuple[int, int]:
    """A pixel at least ``margin`` px from every predicted box (and its label)."""
    w, h = answer["image"]["width"], answer["image"]["height"]
    for y in range(5, h - 5, 7):
        for x in range(5, w - 5, 7):
            if all(abs(x - p["x"]) > p["width"] / 2 + margin or abs(y - p["y"]) > p["height"] / 2 + margin
                   for p in answer["predictions"]):
                return x, y
    raise AssertionError("no pixel away from the boxes")


def test_a_sample_is_one_click_away_and_the_screenshot(app, browser, tmp_path):
    open_page(browser, app.url, "/")
    choose_model(browser, "ocr/1")  # the sample chooses its own model
    click_sample(browser, "shapes-det/1")
    shown = wait_for_answer(browser, "shapes-det/1")
    assert browser.execute_script("return document.getElementById('model').value") == "shapes-det/1"
    direct = direct_answer(app, "shapes-det/1", sample_bytes("shapes-det/1"))
    assert [b[0] for b in boxes(shown)] == [b[0] for b in boxes(direct)] and len(direct["predictions"]) >= 5
    assert changed_pixels(browser, sample_bytes("shapes-det/1")) > 200
    shot = save_screenshot(browser, tmp_path)
    assert shot.stat().st_size > 10_000
    assert console_errors(browser) == []


@pytest.mark.parametrize("model_id", ["shapes-seg/1", "shapes-pose/1", "shapes-cls/1", "ocr/1", "shapes-det-v5/1"])
def test_every_sample_renders(app, browser, model_id):
    open_page(browser, app.url)
    click_sample(browser, model_id)
    shown = wait_for_answer(browser, model_id)
    image = sample_bytes(model_id)
    direct = direct_answer(app, model_id, image)
    summary = by_id(browser, "summary").text
    if model_id == "shapes-cls/1":
        assert shown["top"] == direct["top"] == "square" and f"square ({shown['confidence']:.2f})" in summary
        assert all(c in summary for c in ("circle", "square", "triangle")), summary  # the score list
    elif model_id == "ocr/1":
        from zoo.samples import OCR_TEXT

        assert shown["result"] == direct["result"] == OCR_TEXT
        assert by_id(browser, "summary").find_element("css selector", ".ocr-text").text == OCR_TEXT
    else:
        assert [b[0] for b in boxes(shown)] == [b[0] for b in boxes(direct)] and shown["predictions"], summary
        assert f"{len(shown['predictions'])} predictions" in summary
    if model_id == "shapes-seg/1":
        assert all(len(p["points"]) >= 3 for p in shown["predictions"])
    if model_id == "shapes-pose/1":  # the skeleton's first edge, half-way between its two keypoints
        hints = app.get("/playground/models/shapes-pose/1").json()
        a, b = hints["skeleton"][0]
        mids = []
        for p in shown["predictions"]:
            kp = {k["class_id"]: k for k in p["keypoints"]}
            mids.append(((kp[a]["x"] + kp[b]["x"]) / 2, (kp[a]["y"] + kp[b]["y"]) / 2))
        assert all(d > 10 for d in canvas_differences(browser, image, mids)), "a skeleton edge is not drawn"
    assert changed_pixels(browser, image) > 20, "nothing drawn on the canvas"
    assert "gateway" in timing_stages(browser)
    assert console_errors(browser) == []


def test_an_image_url_is_fetched_and_drawn_by_the_server(app, browser):
    """The page cannot read another origin's pixels (nor may it load them: the policy is self only), so
    for a URL it asks the server to fetch the image and to draw the answer on it."""
    from tests.servers import OriginServer

    origin = OriginServer({"/scene.jpg": SCENE.read_bytes()})
    try:
        open_page(browser, app.url)
        choose_model(browser, "shapes-det/1")
        by_id(browser, "url").send_keys(origin.url("/scene.jpg"))
        wait(browser, lambda d: by_id(d, "run").is_enabled(), "Run stayed disabled after a URL was typed")
        by_id(browser, "run").click()
        shown = wait_for_answer(browser, "shapes-det/1")
        assert origin.counts["/scene.jpg"] == 1  # the server fetched it; the browser did not
    finally:
        origin.stop()
    direct = direct_answer(app, "shapes-det/1", SCENE.read_bytes())
    assert [b[0] for b in boxes(shown)] == [b[0] for b in boxes(direct)]
    assert shown["visualization"].startswith("<") and "base64 characters" in shown["visualization"]
    assert "Drawn by the server" in by_id(browser, "picture-note").text
    size = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height]")
    assert size == [direct["image"]["width"], direct["image"]["height"]]
    assert console_errors(browser) == []


def test_an_answer_with_markup_is_shown_as_text(app, browser):
    """A class name or OCR text holding HTML stays text: the page inserts nothing as HTML."""
    text = np.full((120, 720, 3), 255, np.uint8)
    cv2.putText(text, "<B>ONNX</B>", (20, 80), cv2.FONT_HERSHEY_DUPLEX, 2.0, (0, 0, 0), 4, cv2.LINE_AA)
    path = Path(app.args["state_dir"]).parent / "markup.jpg"
    cv2.imwrite(str(path), text)
    open_page(browser, app.url)
    choose_model(browser, "ocr/1")
    by_id(browser, "file").send_keys(str(path))
    wait(browser, lambda d: by_id(d, "run").is_enabled(), "Run stayed disabled")
    by_id(browser, "run").click()
    shown = wait_for_answer(browser, "ocr/1")
    assert "<" in shown["result"] and "ONNX" in shown["result"], shown["result"]
    ocr = by_id(browser, "summary").find_element("css selector", ".ocr-text")
    assert ocr.text == shown["result"] and ocr.get_property("childElementCount") == 0
    assert browser.execute_script("return document.querySelectorAll('#summary b').length") == 0
    assert console_errors(browser) == []


# -- behind an API key (a redeployment: keep these last) ------------------------------------------
def test_with_an_api_key_the_page_says_so_then_works_once_the_key_is_entered(keyed_app, browser, tmp_path):
    page = keyed_app.get("/playground")
    assert page.status_code == 200  # the page holds no data; everything it loads from the API needs the key
    assert keyed_app.get("/playground/models/shapes-det/1").status_code == 401
    assert keyed_app.get("/playground/models/shapes-det/1",
                         headers={"Authorization": f"Bearer {KEY}"}).json()["model_id"] == "shapes-det/1"

    open_page(browser, keyed_app.url)
    status = by_id(browser, "status")
    assert "error" in status.get_attribute("class") and "needs a valid API key" in status.text, status.text
    assert model_options(browser) == [] and not by_id(browser, "run").is_enabled()

    key_field = by_id(browser, "api-key")
    key_field.send_keys("wrong-key")
    by_id(browser, "key-save").click()
    wait(browser, lambda d: "not valid" in by_id(d, "status").text, "a wrong key was not called out")
    key_field.clear()
    key_field.send_keys(KEY)
    by_id(browser, "key-save").click()
    wait(browser, lambda d: model_options(d), "the model list stayed empty with the right key")
    click_sample(browser, "shapes-det/1")
    shown = wait_for_answer(browser, "shapes-det/1")
    assert shown["predictions"] and "gateway" in timing_stages(browser)

    browser.refresh()  # the key is kept in localStorage
    wait(browser, lambda d: model_options(d), "the stored key was not used after a reload")
    assert browser.execute_script("return localStorage.getItem('serve_app.playground.api_key')") == KEY
    assert console_errors(browser, allowed=r"status of 401") == []
    by_id(browser, "key-forget").click()
    wait(browser, lambda d: "needs a valid API key" in by_id(d, "status").text, "forgetting the key kept access")
    console_errors(browser)  # the 401 just provoked
    assert requests.get(keyed_app.url + "/model/registry", timeout=30).status_code == 401
