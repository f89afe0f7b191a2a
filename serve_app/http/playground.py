"""The playground: a browser page to try the served models (``GET /`` and ``GET /playground``).

Plain HTML, CSS and one script from ``http/static/`` (no build step, no CDN: the server may be
offline). The page calls the public API itself: ``GET /model/registry`` for the model list,
``POST /infer`` with Roboflow's JSON body for answers (their ``Server-Timing`` header becomes a
table), and draws the predictions on a ``<canvas>``. Two small routes here give it what the
registry does not say:

- ``GET /playground/models/{model_id}``: how to draw a model's answers (a colour per class, as
  ``format=image`` draws them, and the keypoint names and skeleton), behind the API key;
- ``GET /playground/samples``: one sample image per built-in model (``zoo/samples.py`` writes
  them into ``http/static/``).

The page and its assets are public, like the probes: a browser cannot send a key on navigation,
and they hold no data; the page asks for the key (kept in the browser's ``localStorage``) and
sends it as ``Authorization: Bearer``. Every answer here carries a Content-Security-Policy that
allows only this origin (plus ``data:`` images: the chosen picture is shown from its bytes), so
nothing the models return (class names, OCR text: set as text, never as HTML) can run as script.
Assets are served from a list read once at start-up, never by a path from the request.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from serve_app.errors import RouteNotFound
from serve_app.http.visualize import class_colour
from serve_app.registry.manifest import Manifest

STATIC = Path(__file__).with_name("static")
PAGE = "playground.html"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".js": "text/javascript; charset=utf-8", ".jpg": "image/jpeg", ".png": "image/png",
               ".svg": "image/svg+xml"}
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.[a-z]+$")

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}

# model id -> (sample file in http/static/, what it shows); zoo/samples.py draws them
SAMPLES: dict[str, tuple[str, str]] = {
    "shapes-det/1": ("sample-shapes.jpg", "shapes scene"),
    "shapes-seg/1": ("sample-shapes.jpg", "shapes scene"),
    "shapes-det-v5/1": ("sample-shapes.jpg", "shapes scene"),
    "shapes-det-26/1": ("sample-shapes.jpg", "shapes scene"),
    "shapes-pose/1": ("sample-triangles.jpg", "triangles"),
    "shapes-cls/1": ("sample-square.jpg", "one square"),
    "ocr/1": ("sample-text.jpg", "a line of text"),
}


def load_assets(folder: Path = STATIC) -> dict[str, bytes]:
    """Every servable file of ``folder`` (plain name, known suffix): its bytes by name."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())
            if path.is_file() and _ASSET_NAME.match(path.name) and path.suffix in MEDIA_TYPES}


def drawing_hints(manifest: Manifest) -> dict[str, Any]:
    """What the page needs to draw a model's answers: colours by class, keypoint names and skeleton.

    Colours are the ones ``http/visualize.py`` draws with (the manifest's ``class_colors``, else
    Roboflow's palette by class id), as ``#RRGGBB``. Nothing about files or where they live.
    """
    colours = {name: bgr_to_hex(class_colour(name, i, manifest.class_colors)) for i, name in enumerate(manifest.classes)}
    keypoints = manifest.keypoints
    return {"model_id": manifest.model_id, "task": manifest.task, "classes": list(manifest.classes),
            "colors": colours, "keypoint_names": list(keypoints.names) if keypoints else [],
            "skeleton": [list(edge) for edge in keypoints.skeleton] if keypoints else []}


def sample_list(samples: Mapping[str, tuple[str, str]], assets: Mapping[str, bytes]) -> list[dict[str, str]]:
    """The samples whose image ships (``assets``), with the URL the page loads them from."""
    return [{"model_id": model_id, "title": title, "url": f"playground/static/{name}"}
            for model_id, (name, title) in samples.items() if name in assets]


def bgr_to_hex(bgr: tuple[int, int, int]) -> str:
    """>>> bgr_to_hex((0, 128, 255))
    '#FF8000'
    """
    b, g, r = bgr
    return f"#{r:02X}{g:02X}{b:02X}"


def routes(gateway: Any) -> list[BaseRoute]:
    """The page at ``/`` and ``/playground``, its assets, the samples and the drawing hints.

    ``gateway`` is the Gateway deployment (duck-typed: ``api_key`` and ``core.resolve``).
    """
    assets = load_assets()
    samples = sample_list(SAMPLES, assets)

    async def page(request: Request) -> Response:
        return asset_response(PAGE, assets[PAGE])

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            raise RouteNotFound(f"no playground asset {name[:60]!r}")
        return asset_response(name, assets[name])

    async def sample_index(request: Request) -> Response:
        return JSONResponse(samples, headers=SECURITY_HEADERS)

    async def model_hints(request: Request) -> Response:
        gateway.api_key.check(bearer=request.headers.get("authorization"), query=request.query_params.get("api_key"))
        manifest = await gateway.core.resolve(request.path_params["model_id"])
        return JSONResponse(drawing_hints(manifest), headers=SECURITY_HEADERS)

    return [
        Route("/", page, methods=["GET"]),
        Route("/playground", page, methods=["GET"]),
        Route("/playground/samples", sample_index, methods=["GET"]),
        Route("/playground/static/{name}", asset, methods=["GET"]),
        Route("/playground/models/{model_id:path}", model_hints, methods=["GET"]),
    ]


def asset_response(name: str, body: bytes) -> Response:
    """A file's bytes with its media type and the page's security headers."""
    return Response(body, media_type=MEDIA_TYPES[Path(name).suffix], headers=SECURITY_HEADERS)
