"""Placeholder: the playground routes (filled in by the work on issue 15)."""
from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute


def routes(gateway: Any) -> list[BaseRoute]:
    return []
