"""The ``Server-Timing`` header: where a request's time went, as the benchmarks read it."""
from __future__ import annotations

from collections.abc import Mapping


def server_timing(stages: Mapping[str, float], gateway_total_s: float | None = None) -> str:
    """The replica's stages and the gateway's total as a ``Server-Timing`` header (milliseconds).

    >>> server_timing({"decode": 0.002}, 0.0105)
    'decode;dur=2.00, gateway;dur=10.50'
    """
    parts = [f"{name};dur={seconds * 1e3:.2f}" for name, seconds in stages.items()]
    if gateway_total_s is not None:
        parts.append(f"gateway;dur={gateway_total_s * 1e3:.2f}")
    return ", ".join(parts)
