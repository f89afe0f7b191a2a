"""One fetch policy for every URI the server is given: image URLs, model weights, manifest files.

A :class:`FetchPolicy` says what a URI may reach: its scheme, its host (or bucket), whether the
host may resolve to a private, loopback or link-local address, which local folders ``file://``
URIs and absolute paths may name, how many bytes and how long. Image URLs from clients, weights
URIs sent to ``/model/add`` and the files of the operator's repositories all go through this one
module, each with its own policy built from settings (``Settings.image_policy``,
``Settings.client_model_policy``, ``OPERATOR_POLICY``).

Defences against server-side request forgery, in order: the scheme must be in the policy; URLs
that parsers could read differently (backslashes, control characters) are refused; the host must
match ``allowed_hosts`` when that is set; unless ``allow_private``, every address the host
resolves to must be public, and the connection goes to one of those checked addresses (the host
name is kept for the ``Host`` header, TLS SNI and certificate checks), so a DNS answer that
changes between check and connect (rebinding) cannot reach an internal address. Redirects are
followed by hand, at most :data:`MAX_REDIRECTS`, each checked like the first URL. Environment
proxies and ``.netrc`` are ignored (``trust_env=False``). A local path is judged by its real path
(symlinks resolved) against ``local_roots`` before the file is opened, so the answer for a refused
path is the same whether a file exists there or not.

Refusals raise :class:`FetchRefused`, transport failures :class:`FetchFailed` (``transient`` says
whether another attempt may succeed), and bodies past ``max_bytes`` :class:`FetchTooLarge`; the
callers (``pipeline/image_urls.py``, ``artifacts/sources.py``) map them to the server's errors.
Messages show ``scheme://host[:port]/path`` only: never user info or the query string.
"""
from __future__ import annotations

import http
import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

__all__ = [
    "MAX_REDIRECTS", "OPERATOR_POLICY", "CheckedUri", "FetchFailed", "FetchPolicy", "FetchRefused",
    "FetchTooLarge", "check_uri", "host_allowed", "http_chunks", "is_public_address", "normalise_host_pattern",
    "read_http",
]

MAX_REDIRECTS = 3
SCHEMES = ("file", "http", "https", "s3", "gs")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK_BYTES = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchRefused(Exception):
    """The policy does not allow this URI. Raised before any byte is sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FetchFailed(Exception):
    """The fetch was allowed but failed; ``transient``: another attempt may succeed."""

    def __init__(self, shown: str, detail: str, *, transient: bool = False, retry_after: float | None = None) -> None:
        message = f"fetching {shown} {detail}" if detail.startswith("timed out") else \
            f"fetching {shown} failed: {detail}"
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after


class FetchTooLarge(Exception):
    """The body is larger than the policy's ``max_bytes``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FetchPolicy:
    """What a URI may reach. ``noun`` names it in messages ("image URL ...", "weights host ...").

    ``allowed_hosts``: host names or ``*.example.com`` wildcards for http(s), bucket names (same
    patterns) for ``s3://`` and ``gs://``; empty means any public host and, for s3/gs, any bucket
    only when ``any_bucket``. ``local_roots``: folders under which ``file://`` URIs and absolute
    paths may point (``file`` must be in ``schemes`` too). ``deadline_s``: the whole fetch, redirects
    included (None: only the per-read timeouts hold, for large artifacts).

    >>> FetchPolicy(noun="weights", schemes=("https",)).schemes
    ('https',)
    """

    noun: str = "image"
    schemes: tuple[str, ...] = ("http", "https")
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    any_bucket: bool = False
    local_roots: tuple[str, ...] = ()
    max_bytes: int | None = 20 * 2**20
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    deadline_s: float | None = 10.0
    headers: dict[str, str] = field(default_factory=lambda: {"Accept": "*/*"})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.schemes) - set(SCHEMES))
        if unknown:
            raise ValueError(f"unknown URI schemes {unknown}; known: {list(SCHEMES)}")
        object.__setattr__(self, "allowed_hosts", tuple(normalise_host_pattern(h) for h in self.allowed_hosts))
        object.__setattr__(self, "local_roots", tuple(os.path.realpath(r) for r in self.local_roots))
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0 or None, got {self.max_bytes}")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")


# The operator's own configuration (repositories, manifests on disk): anything it names is reachable.
OPERATOR_POLICY = FetchPolicy(noun="artifact", schemes=SCHEMES, allow_private=True, any_bucket=True,
                              local_roots=("/",), max_bytes=None, connect_timeout_s=5.0, read_timeout_s=30.0,
                              deadline_s=None)


@dataclass(frozen=True)
class CheckedUri:
    """A URI the policy allows. ``kind``: ``http`` | ``local`` | ``object_store``; ``url`` is sent but
    never shown; ``shown`` goes into messages; ``addresses`` are the checked addresses to connect
    to (() = let requests resolve: private addresses allowed)."""

    kind: str
    url: str
    scheme: str
    shown: str
    host: str = ""
    port: int = 0
    addresses: tuple[str, ...] = ()
    path: str = ""  # local: the real path; object store: bucket/key


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
    """Check one allowed-host entry and return it lower case, without a trailing dot.
    Raises ValueError (a configuration mistake, not a client error) for anything else.

    >>> normalise_host_pattern("*.CDN.example.com.")
    '*.cdn.example.com'
    """
    host = str(pattern).strip().rstrip(".").lower()
    bare = host[2:] if host.startswith("*.") else host
    if not bare or any(c in bare for c in "*/:@ "):
        raise ValueError(
            f"allowed host entry {pattern!r} must be a host name such as "
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


def check_uri(uri: str, policy: FetchPolicy) -> CheckedUri:
    """Whether ``policy`` lets ``uri`` be fetched; raises :class:`FetchRefused` if not.

    Resolves an http(s) host (unless private addresses are allowed) and returns the addresses
    to connect to; judges a local path by its real path; sends nothing, opens nothing.
    """
    noun = policy.noun
    if not isinstance(uri, str) or not uri.strip():
        raise FetchRefused(f"{noun} URL is empty")
    uri = uri.strip()
    if "\\" in uri or any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise FetchRefused(f"{noun} URL contains a backslash or control characters")
    try:
        parts = urlsplit(uri)
        explicit_port = parts.port
    except ValueError:
        raise FetchRefused(f"{noun} URL is malformed (bad host or port)") from None
    scheme = parts.scheme.lower()
    if not scheme and uri.startswith("/"):
        scheme = "file"
        parts = urlsplit("file://" + uri)
    allowed = [s for s in policy.schemes if s != "file" or policy.local_roots]
    if scheme not in allowed:
        listed = " or ".join(allowed) or "nothing"
        if not scheme:
            raise FetchRefused(f"{noun} URL must start with {' or '.join(s + '://' for s in allowed)}")
        raise FetchRefused(f"{noun} URL scheme {scheme[:20]!r} is not allowed; use {listed}")
    if scheme == "file":
        return _check_local(parts, policy)
    if scheme in ("s3", "gs"):
        return _check_bucket(uri, scheme, parts, policy)
    return _check_http(uri, scheme, parts, explicit_port, policy)


def _check_local(parts: Any, policy: FetchPolicy) -> CheckedUri:
    if parts.netloc not in ("", "localhost"):
        raise FetchRefused(f"{policy.noun} file URI must not name a host")
    real = os.path.realpath(unquote(parts.path) or "/")
    if not any(real == root or real.startswith(root.rstrip("/") + "/") for root in policy.local_roots):
        raise FetchRefused(f"{policy.noun} path is outside the folders this server may read")
    return CheckedUri("local", real, "file", shown=f"file://{real}" if policy.local_roots == ("/",) else
                      f"file://.../{os.path.basename(real)}", path=real)


def _check_bucket(uri: str, scheme: str, parts: Any, policy: FetchPolicy) -> CheckedUri:
    bucket = parts.netloc.lower()
    shown = f"{scheme}://{bucket}{parts.path[:200]}"
    if not bucket or parts.path.strip("/") == "":
        raise FetchRefused(f"{policy.noun} URI must be {scheme}://bucket/key")
    if policy.allowed_hosts:
        if not host_allowed(bucket, policy.allowed_hosts):
            raise FetchRefused(f"{policy.noun} bucket {bucket!r} is not allowed")
    elif not policy.any_bucket:
        raise FetchRefused(f"{policy.noun} bucket {bucket!r} is not allowed: this server reads {scheme}:// "
                           "only from the buckets its operator lists")
    return CheckedUri("object_store", uri, scheme, shown=shown, host=bucket, path=bucket + unquote(parts.path))


def _check_http(uri: str, scheme: str, parts: Any, explicit_port: int | None, policy: FetchPolicy) -> CheckedUri:
    noun = policy.noun
    host = _ascii_host(parts.hostname or "", noun)
    bracketed = f"[{host}]" if ":" in host else host
    shown = f"{scheme}://{bracketed}{f':{explicit_port}' if explicit_port else ''}"
    shown += (parts.path or "/")[:200]
    try:  # requests parses with urllib3: both must see the same host
        other = (urllib3.util.parse_url(uri).host or "").strip("[]").lower()
    except Exception:
        other = ""
    if _ascii_host(other or "-", noun, quiet=True) != host:
        raise FetchRefused(f"{noun} URL {shown} is ambiguous: its host cannot be read reliably")
    if policy.allowed_hosts and not host_allowed(host, policy.allowed_hosts):
        raise FetchRefused(f"{noun} host {host!r} is not allowed; allowed hosts: {', '.join(policy.allowed_hosts)}")
    port = explicit_port or (443 if scheme == "https" else 80)
    addresses: tuple[str, ...] = ()
    if not policy.allow_private:
        addresses = _resolve(host, port, noun)
        if not all(is_public_address(a) for a in addresses):
            raise FetchRefused(
                f"{noun} host {host!r} resolves to a private, loopback, link-local or otherwise "
                "non-public address; fetching such URLs is not allowed"
            )
    return CheckedUri("http", uri, scheme, shown=shown, host=host, port=port, addresses=addresses)


def _ascii_host(host: str, noun: str, *, quiet: bool = False) -> str:
    host = host.rstrip(".").lower()
    if not host:
        raise FetchRefused(f"{noun} URL has no host")
    try:
        return host.encode("ascii").decode() if host.isascii() else host.encode("idna").decode()
    except UnicodeError:
        if quiet:
            return ""
        raise FetchRefused(f"{noun} URL host is not a valid host name") from None


def _resolve(host: str, port: int, noun: str) -> tuple[str, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchRefused(f"{noun} host {host!r} could not be resolved") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise FetchRefused(f"{noun} host {host!r} could not be resolved")
    return addresses


# -- http(s) ------------------------------------------------------------------------------------------
class _PinnedTLSAdapter(HTTPAdapter):
    """HTTPS to an IP address, with SNI and certificate checks for the original host name."""

    def __init__(self, host: str) -> None:
        self._host = host
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._host
        kwargs["assert_hostname"] = self._host
        super().init_poolmanager(*args, **kwargs)


class _Deadline:
    def __init__(self, policy: FetchPolicy, shown: str) -> None:
        self.policy = policy
        self.shown = shown
        self.at = None if policy.deadline_s is None else time.monotonic() + policy.deadline_s

    def timeouts(self) -> tuple[float, float]:
        if self.at is None:
            return self.policy.connect_timeout_s, self.policy.read_timeout_s
        remaining = self.remaining()
        return min(remaining, self.policy.connect_timeout_s), min(remaining, self.policy.read_timeout_s)

    def remaining(self) -> float:
        if self.at is None:
            return self.policy.read_timeout_s
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise self.timed_out()
        return remaining

    def timed_out(self) -> FetchFailed:
        if self.policy.deadline_s is None:
            return FetchFailed(self.shown, f"read timed out after {self.policy.read_timeout_s:g} s", transient=True)
        return FetchFailed(self.shown, f"timed out after {self.policy.deadline_s:g} s", transient=True)


def http_chunks(uri: str, policy: FetchPolicy, checked: CheckedUri | None = None) -> Iterator[bytes]:
    """GET an http(s) ``uri`` under ``policy`` and yield its body in chunks (see the module docstring).

    Raises FetchRefused (before anything is sent, or at a redirect), FetchFailed, FetchTooLarge.
    """
    target = checked or check_uri(uri, policy)
    if target.kind != "http":
        raise FetchRefused(f"{policy.noun} URL {target.shown} is not an http(s) URL")
    deadline = _Deadline(policy, target.shown)
    first_shown = target.shown
    for _ in range(MAX_REDIRECTS + 1):
        with _session(target) as session, _send(session, target, policy, deadline) as response:
            if response.status_code not in _REDIRECT_STATUSES:
                _check_status(response, target)
                yield from _body(response, target, policy, deadline)
                return
            location = response.headers.get("Location")
            if not location:
                raise FetchFailed(target.shown, f"HTTP {response.status_code} redirect "
                                  "without a Location header")
        target = check_uri(urljoin(target.url, location.strip()), policy)
        if target.kind != "http":
            raise FetchRefused(f"{policy.noun} URL scheme {target.scheme!r} is not allowed in a redirect")
        deadline.shown = target.shown
    raise FetchFailed(first_shown, f"more than {MAX_REDIRECTS} redirects")


def read_http(uri: str, policy: FetchPolicy) -> bytes:
    """The whole body of an http(s) ``uri`` under ``policy`` (for small things such as images)."""
    return b"".join(http_chunks(uri, policy))


def _session(target: CheckedUri) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", HTTPAdapter(max_retries=0))
    if target.addresses and target.scheme == "https":
        session.mount("https://", _PinnedTLSAdapter(target.host))
    return session


def _send(session: requests.Session, target: CheckedUri, policy: FetchPolicy,
          deadline: _Deadline) -> requests.Response:
    attempts: list[tuple[str, dict[str, str]]] = [(target.url, {})]
    if target.addresses:  # connect to a checked address; the name goes in Host (and SNI)
        default_port = 443 if target.scheme == "https" else 80
        host_header = f"[{target.host}]" if ":" in target.host else target.host
        if target.port != default_port:
            host_header += f":{target.port}"
        attempts = [(_pinned_url(target, a), {"Host": host_header}) for a in target.addresses]
    failure = "could not connect"
    headers = {**policy.headers, "Accept-Encoding": "identity", "User-Agent": "serve-app-fetch"}
    for url, extra_headers in attempts:
        try:
            return session.get(url, headers={**headers, **extra_headers}, stream=True,
                               allow_redirects=False, timeout=deadline.timeouts())
        except requests.Timeout:
            raise deadline.timed_out() from None
        except requests.exceptions.SSLError:
            failure = "TLS error (certificate or handshake)"
        except requests.ConnectionError as exc:
            if "refused" in str(exc).lower():
                failure = "could not connect (connection refused)"
            continue  # try the host's next address, as a plain connect would
        except (requests.RequestException, ValueError) as exc:
            # The exception's text would repeat the URL with its query: name the class only.
            raise FetchFailed(target.shown, f"{type(exc).__name__}") from None
    raise FetchFailed(target.shown, f"{failure}", transient=True)


def _pinned_url(target: CheckedUri, address: str) -> str:
    parts = urlsplit(target.url)
    userinfo = parts.netloc.rpartition("@")[0]
    host = f"[{address}]" if ":" in address else address
    netloc = f"{userinfo}@{host}:{target.port}" if userinfo else f"{host}:{target.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _check_status(response: requests.Response, target: CheckedUri) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    try:
        phrase = " " + http.HTTPStatus(status).phrase  # the server's own reason text is not echoed
    except ValueError:
        phrase = ""
    retry_after = None
    value = response.headers.get("Retry-After")
    if value and value.strip().isdigit():
        retry_after = float(value)
    raise FetchFailed(target.shown, f"HTTP {status}{phrase}",
                      transient=status in _RETRY_STATUSES or status >= 500, retry_after=retry_after)


def _body(response: requests.Response, target: CheckedUri, policy: FetchPolicy,
          deadline: _Deadline) -> Iterator[bytes]:
    limit = policy.max_bytes
    declared = response.headers.get("Content-Length", "")
    if limit is not None and declared.strip().isdigit() and int(declared) > limit:
        raise FetchTooLarge(f"{policy.noun} at {target.shown} is {int(declared):,} bytes; "
                            f"the limit is {limit:,} bytes")
    raw = response.raw
    read = getattr(raw, "read1", raw.read)  # read1: whatever has arrived, so the deadline holds
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    total = 0
    while True:
        remaining = deadline.remaining()
        if sock is not None:
            sock.settimeout(remaining)
        try:
            chunk = read(_CHUNK_BYTES, decode_content=True)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
            raise deadline.timed_out() from None
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
            raise FetchFailed(target.shown, f"the connection closed before the body ended "
                              f"(the whole {policy.noun} did not arrive)", transient=True) from None
        if not chunk:
            return
        total += len(chunk)
        if limit is not None and total > limit:
            raise FetchTooLarge(f"{policy.noun} at {target.shown} is more than {limit:,} bytes; "
                                f"the limit is {limit:,} bytes")
        yield chunk
