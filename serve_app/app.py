"""``build_app(args)``: binds the deployments; ``serve_config.yaml``'s ``import_path``."""
from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.serving.gateway import Gateway
from serve_app.serving.model_server import model_server_deployment
from serve_app.settings import Settings


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder: one argument, the ``args`` of serve_config.yaml."""
    return build_application(args)


def build_application(args: dict[str, Any] | None = None, *, model_server_options: dict | None = None,
                      gateway_options: dict | None = None) -> Application:
    """The application; the ``*_options`` override deployment options (the tests use them)."""
    settings = Settings.from_args(args)
    settings_args = settings.to_args()
    model_server = model_server_deployment(settings).options(**(model_server_options or {})).bind(settings_args)
    if settings.direct_ingress:
        return model_server
    return Gateway.options(**(gateway_options or {})).bind(model_server, settings_args)
