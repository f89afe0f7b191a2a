"""The README's quickstart runs as written: every bash and Python block of its "Quickstart" section,
against a served instance of the built-in models, from a folder that looks like a checkout (so what
the snippets write lands in a temporary folder, not in the repository)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tests.conftest import DeployedApp, deploy_app, teardown_app

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCUMENTED_URL = "http://127.0.0.1:8000"


def quickstart_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced bash/python block in the README's Quickstart sections."""
    blocks = []
    for section in re.split(r"\n(?=## )", README):
        if section.startswith("## Quickstart"):
            blocks += re.findall(r"```(bash|python)\n(.*?)```", section, re.S)
    return blocks


def test_the_quickstart_has_blocks_to_run():
    langs = [lang for lang, _ in quickstart_blocks()]
    assert langs.count("bash") >= 1 and langs.count("python") >= 1, langs
    assert all(DOCUMENTED_URL in code for _, code in quickstart_blocks()), "every block talks to the served URL"


@pytest.fixture(scope="module")
def app(ray_serve, tmp_path_factory) -> DeployedApp:
    deployed = deploy_app(ray_serve, tmp_path_factory.mktemp("readme"))
    yield deployed
    teardown_app(deployed)


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """A folder whose top-level entries link to the repository's: paths in the snippets resolve, writes stay here."""
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".cache"}:
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


@pytest.mark.parametrize("index", range(len(quickstart_blocks())))
def test_quickstart_block_runs(app, checkout, index):
    lang, code = quickstart_blocks()[index]
    code = code.replace(DOCUMENTED_URL, app.url)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    before = {p.name for p in checkout.iterdir()}
    if lang == "bash":
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=checkout, env=env, capture_output=True,
                             text=True, timeout=120)
    else:
        run = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 0, f"block {index} ({lang}) failed:\n{code}\n--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}"
    # what the block printed as JSON is an answer, not an error body
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            body = json.loads(line)
            assert "error" not in body and body.get("predictions"), line
    # every image a block wrote is a real, non-empty picture
    for name in {p.name for p in checkout.iterdir()} - before:
        if name.endswith((".jpg", ".png")):
            picture = cv2.imread(str(checkout / name))
            assert picture is not None and picture.size > 0, name
