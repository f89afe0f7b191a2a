"""Fetch image bytes from http(s) URLs under the image policy (``serve_app/fetch_policy.py``).

The rules (schemes, allowed hosts, no private, loopback or link-local addresses unless
``allow_private_urls``, DNS pinned, redirects checked, size and time limits) are the same ones
that guard model weights URIs; only the limits differ. Errors: :class:`ImageFetchError` (400) and
:class:`PayloadTooLarge` (413), showing ``scheme://host[:port]/path`` only.
"""
from __future__ import annotations

from serve_app.errors import ImageFetchError, PayloadTooLarge
from serve_app.fetch_policy import (MAX_REDIRECTS, FetchFailed, FetchPolicy, FetchRefused, FetchTooLarge,
                                    host_allowed, is_public_address, normalise_host_pattern, read_http)
from serve_app.options import ImageLimits

__all__ = ["MAX_REDIRECTS", "fetch_image_url", "host_allowed", "image_policy", "is_public_address",
           "normalise_host_pattern"]


def image_policy(limits: ImageLimits) -> FetchPolicy:
    """The fetch policy of client image URLs: http(s) only, the whole fetch within ``url_timeout_s``."""
    return FetchPolicy(noun="image", schemes=("http", "https"), allowed_hosts=limits.url_allowed_hosts,
                       allow_private=limits.allow_private_urls, max_bytes=limits.url_max_bytes,
                       connect_timeout_s=limits.url_timeout_s, read_timeout_s=limits.url_timeout_s,
                       deadline_s=limits.url_timeout_s, headers={"Accept": "image/*, */*;q=0.5"})


def fetch_image_url(url: str, limits: ImageLimits) -> bytes:
    """GET ``url`` and return its body, within ``limits``.

    Raises ImageFetchError (scheme, host, address, HTTP status, timeout, connection, redirects)
    or PayloadTooLarge past ``limits.url_max_bytes``.

    >>> fetch_image_url("https://images.example.com/cat.jpg", ImageLimits())  # doctest: +SKIP
    b'\\xff\\xd8\\xff...'
    """
    try:
        return read_http(url, image_policy(limits))
    except (FetchRefused, FetchFailed) as exc:
        raise ImageFetchError(exc.message) from None
    except FetchTooLarge as exc:
        raise PayloadTooLarge(exc.message) from None
