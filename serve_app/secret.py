"""Keys the server checks but never shows: only a SHA-256 digest of a key is kept and passed on.

A :class:`Secret` is built from the key once (``Settings.from_args``); what travels to Ray actors
and deployments (``Settings.to_args``) and what any ``repr`` shows is the digest's prefix, never
the key. A request's key is checked by hashing it and comparing digests in constant time. API keys
are long random strings, so a plain SHA-256 is enough (no password stretching).

>>> s = Secret.from_plain("s3cret")
>>> s.matches("s3cret"), s.matches("wrong"), "s3cret" in repr(s)
(True, False, False)
>>> Secret.from_arg(s.to_arg()) == s
True
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Secret:
    sha256: str

    @classmethod
    def from_plain(cls, key: str) -> "Secret":
        if not isinstance(key, str) or not key.strip():
            raise ValueError("a key must be a non-empty string")
        return cls(_digest(key.strip()))

    @classmethod
    def from_arg(cls, value: Any) -> "Secret | None":
        """A setting's value: None, a key in clear (from YAML or the environment), a Secret, or the
        ``{"sha256": ...}`` form that :meth:`to_arg` writes."""
        if value is None or value == "":
            return None
        if isinstance(value, Secret):
            return value
        if isinstance(value, dict) and set(value) == {"sha256"}:
            return cls(str(value["sha256"]))
        return cls.from_plain(value)

    def to_arg(self) -> dict[str, str]:
        return {"sha256": self.sha256}

    def matches(self, given: str) -> bool:
        return hmac.compare_digest(_digest(given).encode(), self.sha256.encode())

    def __repr__(self) -> str:
        return f"Secret(sha256={self.sha256[:8]}...)"

    __str__ = __repr__


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
