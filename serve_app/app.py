"""``build_app(args)``: binds the deployments; ``serve_config.yaml``'s ``import_path``."""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from ray.serve import Application

from serve_app.serving.gateway import Gateway
from serve_app.serving.model_server import model_server_deployment
from serve_app.settings import Settings

log = logging.getLogger("serve_app.app")


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder: one argument, the ``args`` of serve_config.yaml."""
    return build_application(args)


def build_application(args: dict[str, Any] | None = None, *, model_server_options: dict | None = None,
                      gateway_options: dict | None = None) -> Application:
    """The application; the ``*_options`` override deployment options (the tests use them)."""
    settings = ingress_settings(Settings.from_args(args), haproxy=os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1")
    settings_args = settings.to_args()
    model_server = model_server_deployment(settings).options(**(model_server_options or {})).bind(settings_args)
    if settings.direct_ingress:
        return model_server
    return Gateway.options(**(gateway_options or {})).bind(model_server, settings_args)


def ingress_settings(settings: Settings, haproxy: bool) -> Settings:
    """The settings the deployments get. Behind Serve's HAProxy front (``RAY_SERVE_ENABLE_HA_PROXY=1``)
    the ingress deployment's requests are balanced by HAProxy, and Ray 2.60 refuses to deploy an
    ingress with a custom request router (the app never starts): with ``direct_ingress`` the
    ModelServer is the ingress, so it goes without :class:`ModelAwareRouter` there (no model
    affinity: HAProxy spreads every model over every replica).

    >>> s = Settings.from_args({"direct_ingress": True})
    >>> ingress_settings(s, haproxy=True).hot_model_routing, ingress_settings(s, haproxy=False).hot_model_routing
    (False, True)
    >>> ingress_settings(Settings.from_args({}), haproxy=True).hot_model_routing
    True
    """
    if settings.direct_ingress and haproxy and settings.hot_model_routing:
        log.warning("direct_ingress behind HAProxy: HAProxy balances the ModelServer's requests itself, so "
                    "hot_model_routing is off (no model affinity; every replica may load every model)")
        return replace(settings, hot_model_routing=False)
    return settings
