"""Fetch image bytes from http(s) URLs within size, time, host and address limits.

Defences against server-side request forgery, in order: only ``http``/``https``; URLs that
parsers could read differently (backslashes, control characters) are refused; the host must
match ``url_allowed_hosts`` when that is set; unless ``allow_private_urls``, every address the
host resolves to must be public, and the connection goes to one of those checked addresses
(the host name is kept for the ``Host`` header, TLS SNI and certificate checks), so a DNS
answer that changes between check and connect (rebinding) cannot reach an internal address.
Redirects are followed by hand, at most :data:`MAX_REDIRECTS`, each checked like the first URL.
Environment proxies and ``.netrc`` are ignored (``trust_env=False``): a proxy would make the
address check meaningless and ``.netrc`` could hand credentials to any host.

Error messages show ``scheme://host[:port]/path`` only: never user info or the query string,
which may hold credentials or signed tokens.
"""
from __future__ import annotations

import http
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from serve_app.errors import ImageFetchError, PayloadTooLarge

if TYPE_CHECKING:
    from serve_app.pipeline.images import ImageLimits

__all__ = [
    "MAX_REDIRECTS",
    "fetch_image_url",
    "host_allowed",
    "is_public_address",
    "normalise_host_pattern",
]

MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024
_HEADERS = {
    "Accept": "image/*, */*;q=0.5",
    "Accept-Encoding": "identity",  # a compressed body could expand past the size limit
    "User-Agent": "serve-app-image-fetch",
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class _Target:
    """One checked URL. ``url`` is sent but never shown; ``shown`` goes into messages."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) form, lower case, no brackets
    port: int
    shown: str
    addresses: tuple[str, ...]  # checked public addresses to connect to; () = let requests resolve


def fetch_image_url(url: str, limits: ImageLimits) -> bytes:
    """GET ``url`` and return its body, within ``limits`` (see the module docstring).

    Raises ImageFetchError (scheme, host, address, HTTP status, timeout, connection, redirects)
    or PayloadTooLarge past ``limits.url_max_bytes``. ``limits.url_timeout_s`` is both the
    connect/read timeout and the deadline for the whole fetch, redirects included (DNS lookups
    are not interruptible and fall outside it).

    >>> from serve_app.pipeline.images import ImageLimits
    >>> fetch_image_url("https://images.example.com/cat.jpg", ImageLimits())  # doctest: +SKIP
    b'\\xff\\xd8\\xff...'
    """
    deadline = time.monotonic() + limits.url_timeout_s
    target = _check_target(url, limits)
    first_shown = target.shown
    for _ in range(MAX_REDIRECTS + 1):
        with _session(target) as session, _send(session, target, limits, deadline) as response:
            if response.status_code not in _REDIRECT_STATUSES:
                _check_status(response, target)
                return _read_body(response, target, limits, deadline)
            location = response.headers.get("Location")
            if not location:
                raise ImageFetchError(
                    f"fetching {target.shown} failed: HTTP {response.status_code} redirect "
                    "without a Location header"
                )
        target = _check_target(urljoin(target.url, location.strip()), limits)
    raise ImageFetchError(f"fetching {first_shown} failed: more than {MAX_REDIRECTS} redirects")


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``host`` matches one of ``patterns``: exact names, or ``*.example.com`` for any
    subdomain (not ``example.com`` itself). Case and a trailing dot are ignored.

    >>> host_allowed("img.cdn.example.com", ("*.example.com",))
    True
    >>> host_allowed("example.com", ("*.example.com",))
    False
    >>> host_allowed("evilexample.com", ("*.example.com",))
    False
    """
    host = host.rstrip(".").lower()
    for pattern in patterns:
        pattern = pattern.strip().rstrip(".").lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def normalise_host_pattern(pattern: str) -> str:
    """Check one ``url_allowed_hosts`` entry and return it lower case, without a trailing dot.
    Raises ValueError (a configuration mistake, not a client error) for anything else.

    >>> normalise_host_pattern("*.CDN.example.com.")
    '*.cdn.example.com'
    """
    host = str(pattern).strip().rstrip(".").lower()
    bare = host[2:] if host.startswith("*.") else host
    if not bare or any(c in bare for c in "*/:@ "):
        raise ValueError(
            f"url_allowed_hosts entry {pattern!r} must be a host name such as "
            "'images.example.com' or '*.example.com' (no scheme, port or path)"
        )
    return host


def is_public_address(address: str) -> bool:
    """Whether an IP address is globally routable: not loopback, private, link-local, shared
    (CGNAT), reserved, multicast or unspecified, including IPv4 inside IPv6 (mapped, 6to4, NAT64).

    >>> [is_public_address(a) for a in ("8.8.8.8", "169.254.169.254", "::ffff:10.0.0.1")]
    [True, False, False]
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            embedded = ip.sixtofour
            if embedded is None and ip in _NAT64:
                embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if embedded is not None and not is_public_address(str(embedded)):
                return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified
    )


def _check_target(url: str, limits: ImageLimits) -> _Target:
    if not isinstance(url, str) or not url.strip():
        raise ImageFetchError("image URL is empty")
    url = url.strip()
    if "\\" in url or any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise ImageFetchError("image URL contains a backslash or control characters")
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError:
        raise ImageFetchError("image URL is malformed (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        if not scheme:
            raise ImageFetchError("image URL must start with http:// or https://")
        raise ImageFetchError(f"image URL scheme {scheme[:20]!r} is not allowed; use http or https")
    host = _ascii_host(parts.hostname or "")
    bracketed = f"[{host}]" if ":" in host else host
    shown = f"{scheme}://{bracketed}{f':{explicit_port}' if explicit_port else ''}"
    shown += (parts.path or "/")[:200]
    try:  # requests parses with urllib3: both must see the same host
        other = (urllib3.util.parse_url(url).host or "").strip("[]").lower()
    except Exception:
        other = ""
    if _ascii_host(other or "-", quiet=True) != host:
        raise ImageFetchError(f"image URL {shown} is ambiguous: its host cannot be read reliably")
    if limits.url_allowed_hosts and not host_allowed(host, limits.url_allowed_hosts):
        raise ImageFetchError(
            f"image host {host!r} is not allowed; "
            f"allowed hosts: {', '.join(limits.url_allowed_hosts)}"
        )
    port = explicit_port or (443 if scheme == "https" else 80)
    addresses: tuple[str, ...] = ()
    if not limits.allow_private_urls:
        addresses = _resolve(host, port)
        if not all(is_public_address(a) for a in addresses):
            raise ImageFetchError(
                f"image host {host!r} resolves to a private, loopback, link-local or otherwise "
                "non-public address; fetching such URLs is not allowed"
            )
    return _Target(url, scheme, host, port, shown, addresses)


def _ascii_host(host: str, *, quiet: bool = False) -> str:
    host = host.rstrip(".").lower()
    if not host:
        raise ImageFetchError("image URL has no host")
    try:
        return host.encode("ascii").decode() if host.isascii() else host.encode("idna").decode()
    except UnicodeError:
        if quiet:
            return ""
        raise ImageFetchError("image URL host is not a valid host name") from None


def _resolve(host: str, port: int) -> tuple[str, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ImageFetchError(f"image host {host!r} could not be resolved") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise ImageFetchError(f"image host {host!r} could not be resolved")
    return addresses


class _PinnedTLSAdapter(HTTPAdapter):
    """HTTPS to an IP address, with SNI and certificate checks for the original host name."""

    def __init__(self, host: str) -> None:
        self._host = host
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._host
        kwargs["assert_hostname"] = self._host
        super().init_poolmanager(*args, **kwargs)


def _session(target: _Target) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", HTTPAdapter(max_retries=0))
    if target.addresses and target.scheme == "https":
        session.mount("https://", _PinnedTLSAdapter(target.host))
    return session


def _send(session: requests.Session, target: _Target, limits: ImageLimits,
          deadline: float) -> requests.Response:
    attempts: list[tuple[str, dict[str, str]]] = [(target.url, {})]
    if target.addresses:  # connect to a checked address; the name goes in Host (and SNI)
        default_port = 443 if target.scheme == "https" else 80
        host_header = f"[{target.host}]" if ":" in target.host else target.host
        if target.port != default_port:
            host_header += f":{target.port}"
        attempts = [(_pinned_url(target, a), {"Host": host_header}) for a in target.addresses]
    failure = "could not connect"
    for url, extra_headers in attempts:
        remaining = _remaining(deadline, target, limits)
        try:
            return session.get(url, headers={**_HEADERS, **extra_headers}, stream=True,
                               allow_redirects=False, timeout=(remaining, remaining))
        except requests.Timeout:
            raise _timed_out(target, limits) from None
        except requests.exceptions.SSLError:
            failure = "TLS error (certificate or handshake)"
        except requests.ConnectionError:
            continue  # try the host's next address, as a plain connect would
        except (requests.RequestException, ValueError) as exc:
            # The exception's text would repeat the URL with its query: name the class only.
            raise ImageFetchError(f"fetching {target.shown} failed: {type(exc).__name__}") from None
    raise ImageFetchError(f"fetching {target.shown} failed: {failure}")


def _pinned_url(target: _Target, address: str) -> str:
    parts = urlsplit(target.url)
    userinfo = parts.netloc.rpartition("@")[0]
    host = f"[{address}]" if ":" in address else address
    netloc = f"{userinfo}@{host}:{target.port}" if userinfo else f"{host}:{target.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _remaining(deadline: float, target: _Target, limits: ImageLimits) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timed_out(target, limits)
    return remaining


def _timed_out(target: _Target, limits: ImageLimits) -> ImageFetchError:
    return ImageFetchError(f"fetching {target.shown} timed out after {limits.url_timeout_s:g} s")


def _check_status(response: requests.Response, target: _Target) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    try:
        phrase = " " + http.HTTPStatus(status).phrase  # the server's own reason text is not echoed
    except ValueError:
        phrase = ""
    raise ImageFetchError(f"fetching {target.shown} failed: HTTP {status}{phrase}")


def _read_body(response: requests.Response, target: _Target, limits: ImageLimits,
               deadline: float) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > limits.url_max_bytes:
        raise _too_large(target, limits, f"{int(declared):,} bytes")
    raw = response.raw
    read = getattr(raw, "read1", raw.read)  # read1: whatever has arrived, so the deadline holds
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    chunks: list[bytes] = []
    total = 0
    while True:
        remaining = _remaining(deadline, target, limits)
        if sock is not None:
            sock.settimeout(remaining)
        try:
            chunk = read(_CHUNK_BYTES, decode_content=True)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
            raise _timed_out(target, limits) from None
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
            raise ImageFetchError(
                f"fetching {target.shown} failed: the connection broke before the whole "
                "image arrived"
            ) from None
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limits.url_max_bytes:
            raise _too_large(target, limits, f"more than {limits.url_max_bytes:,} bytes")
        chunks.append(chunk)


def _too_large(target: _Target, limits: ImageLimits, size: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"image at {target.shown} is {size}; the limit is {limits.url_max_bytes:,} bytes"
    )
