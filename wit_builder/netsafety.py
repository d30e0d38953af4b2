"""Network safety for a downloader that fetches attacker-chosen URLs: SSRF guard and limits.

A URL list scraped from the web may point at ``http://169.254.169.254/`` (cloud metadata),
``http://localhost:6379/`` or a public name whose DNS answer is ``10.0.0.5``; redirects can lead
there too. :func:`install_guard` (for good, in a worker process) or :func:`guarded` (for a
``with`` block, reference counted) replaces the process-wide ``urllib`` opener, which
img2dataset's ``download_image`` uses through ``urllib.request.urlopen`` from its threads, with
one built by :func:`build_opener` that:

* speaks only http and https (no ``file://``, ``ftp://``, ``data:``) and ignores proxy
  environment variables (a proxy would hide the real destination from the check);
* resolves the host once, then for every address it is about to connect to refuses loopback,
  private, link-local, multicast, reserved, unspecified and other non-global IPv4/IPv6
  addresses (IPv4-mapped, 6to4, NAT64 and Teredo IPv6 forms are checked by their embedded
  IPv4), and
  connects to the checked address itself (no second DNS lookup, so no DNS-rebinding gap); after
  connecting it checks ``sock.getpeername()`` once more. Every redirect hop opens a new
  connection through the same code, so a redirect to a private address is refused too (and a
  redirect's body is never read: a 3xx with an endless body costs nothing);
* rewrites the User-Agent, refuses disallowed Content-Types and bodies larger than
  ``max_bytes`` (by Content-Length and while reading), gives every request a wall-clock
  deadline (``max_seconds`` from the request's start to the body's end, headers and redirect
  hops included: a watchdog shuts the sockets down, so a trickling server cannot hold a
  download), refuses an empty body, and reads the image header (Pillow, no decoding) to refuse
  images with more than ``max_pixels`` pixels before anything decodes them (decompression
  bombs). Pillow itself refuses headers above twice ``PIL.Image.MAX_IMAGE_PIXELS``, so that is
  the effective ceiling of ``max_pixels``.

``NetPolicy.resolve`` is a static host -> IP table consulted before DNS, like curl's
``--resolve``: the tests use it to make a name resolve to a private address without any DNS
server. An entry may also name ports, ``"HOST:PORT" -> "IP:PORT"`` (like curl's
``--connect-to``): a URL for HOST on PORT (80 when the URL has none) then connects to IP:PORT.
The demo serves its simulated web (URLs without a port) from a loopback server on a free port
this way. The check does not
care where an address came from: a resolver answer and a ``resolve`` entry go through the same
code. ``allowed_endpoints`` lists exact ``IP:PORT`` pairs that are exempt from the address check
(an internal mirror; the tests' stand-in for "the public internet" on 127.0.0.1).
"""
from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import json
import os
import socket
import threading
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Iterator

from wit_builder.netlimits import (Deadline, DeadlineOpener, LimitExceeded, LimitsProcessor,  # noqa: F401
                                   check_image_header, deadline_connect)

__all__ = ["NetPolicy", "SSRFBlocked", "LimitExceeded", "block_reason", "build_opener",
           "install_guard", "guarded", "guarded_create_connection", "check_image_header", "DEFAULT_USER_AGENT",
           "DEFAULT_CONTENT_TYPES", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_BYTES"]

DEFAULT_USER_AGENT = ("Mozilla/5.0 (compatible; wit/0.1; image-text dataset builder; "
                      "uses img2dataset; honours X-Robots-Tag noai/noimageai)")
DEFAULT_CONTENT_TYPES = ("image/*", "application/octet-stream", "binary/octet-stream")
# Pillow's own decompression-bomb threshold (PIL.Image.MAX_IMAGE_PIXELS = 89,478,485 pixels,
# "about 0.25 GB for a 24-bit image").
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix


class SSRFBlocked(OSError):
    """Refused to connect: the destination is not a public address."""


def block_reason(ip: str) -> str | None:
    """Why a connection to ``ip`` must be refused (``None``: a global unicast address)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is None and addr.teredo is not None:
            embedded = addr.teredo[1]  # the client's (obfuscation removed) IPv4 address
        if embedded is not None:
            inner = block_reason(str(embedded))
            if inner:
                return f"{inner} (embedded in {addr})"
    checks = (("unspecified", addr.is_unspecified), ("loopback", addr.is_loopback),
              ("link-local", addr.is_link_local), ("multicast", addr.is_multicast),
              ("private", addr.is_private), ("reserved", addr.is_reserved),
              ("not globally routable", not addr.is_global))
    for name, hit in checks:
        if hit:
            return name
    return None


def _norm_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint {text!r} is not IP:PORT")
    host = host.strip("[]")
    return str(ipaddress.ip_address(host)), int(port)


def _resolve_entry(host: str, target: str) -> tuple[str, str]:
    """Normalise one ``resolve`` entry: ``host`` -> ``IP``, or ``host:port`` -> ``IP[:PORT]``."""
    name, sep, port = host.strip().rpartition(":")
    if sep and port.isdigit() and name and not name.endswith(":"):
        key = f"{name.lower().rstrip('.')}:{int(port)}"
    elif sep and not port.isdigit() and name:
        raise ValueError(f"resolve entry {host!r}: the port must be a number")
    else:
        key = host.strip().lower().rstrip(".")
    target = target.strip()
    try:
        return key, str(ipaddress.ip_address(target.strip("[]")))
    except ValueError:
        ip, port_ = _norm_endpoint(target)  # ValueError for anything else
        if ":" not in key:
            raise ValueError(f"resolve entry {host!r} -> {target!r}: a target port needs HOST:PORT "
                             "on the left") from None
        return key, f"[{ip}]:{port_}" if ":" in ip else f"{ip}:{port_}"


@dataclass
class NetPolicy:
    """What the guarded opener allows. JSON-serialisable (it travels to worker processes)."""

    allow_private_networks: bool = False
    allowed_endpoints: list[str] = field(default_factory=list)   # "IP:PORT", "[v6]:PORT"
    resolve: dict[str, str] = field(default_factory=dict)        # host[:port] -> IP[:port], before DNS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    content_types: list[str] = field(default_factory=lambda: list(DEFAULT_CONTENT_TYPES))
    allow_missing_content_type: bool = True
    user_agent: str = DEFAULT_USER_AGENT
    max_seconds: float | None = 60.0                             # per request, redirects and body included

    def __post_init__(self):
        for ep in self.allowed_endpoints:
            _norm_endpoint(ep)
        self.resolve = dict(_resolve_entry(host, ip) for host, ip in self.resolve.items())
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("max_bytes and max_pixels must be positive")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "NetPolicy":
        return cls(**json.loads(text))

    # -- checks -------------------------------------------------------------------------------
    def endpoint_allowed(self, ip: str, port: int) -> bool:
        ip = str(ipaddress.ip_address(ip.split("%", 1)[0]))
        return any(_norm_endpoint(ep) == (ip, port) for ep in self.allowed_endpoints)

    def refusal(self, ip: str, port: int) -> str | None:
        """``None`` if connecting to ``ip:port`` is allowed, else the reason."""
        if self.allow_private_networks:
            return None
        reason = block_reason(ip)
        if reason is None or self.endpoint_allowed(ip, port):
            return None
        return reason

    def content_type_allowed(self, value: str | None) -> bool:
        if not value:
            return self.allow_missing_content_type
        mime = value.split(";", 1)[0].strip().lower()
        for pattern in self.content_types:
            pattern = pattern.strip().lower()
            if pattern == mime or (pattern.endswith("/*") and mime.startswith(pattern[:-1])):
                return True
        return False

    def resolve_addresses(self, host: str, port: int) -> list[tuple]:
        """getaddrinfo for TCP, with the static ``resolve`` table consulted first (``host:port``
        entries before ``host`` ones; an ``IP:PORT`` target replaces the port too)."""
        name = host.lower().rstrip(".")
        override = self.resolve.get(f"{name}:{port}", self.resolve.get(name))
        if override is not None:
            ip = override
            if not _is_ip(ip):
                ip, port = _norm_endpoint(ip)
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sockaddr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def guarded_create_connection(policy: NetPolicy):
    """A drop-in for ``socket.create_connection`` that refuses non-public destinations.

    Every address the host resolves to is checked before a socket exists for it; the socket
    connects to that checked address (never to the name again), and the address the kernel
    reports as the peer is checked once more.
    """

    def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None,
                          *args, **kwargs):
        host, port = address
        refused: list[str] = []
        last_error: OSError | None = None
        for family, socktype, proto, _, sockaddr in policy.resolve_addresses(host, port):
            reason = policy.refusal(sockaddr[0], sockaddr[1])
            if reason:
                refused.append(f"{sockaddr[0]} is {reason}")
                continue
            sock = socket.socket(family, socktype, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                peer = sock.getpeername()
            except OSError as exc:  # this address failed: try the next one
                sock.close()
                last_error = exc
                continue
            reason = policy.refusal(peer[0], peer[1])
            if reason:  # belt and braces: the address actually reached
                sock.close()
                raise SSRFBlocked(f"blocked by SSRF guard: {host} connected to {peer[0]}, "
                                  f"which is {reason}")
            return sock
        if last_error is not None:
            raise last_error
        if refused:
            raise SSRFBlocked(f"blocked by SSRF guard: {host} -> {'; '.join(refused)} "
                              "(--allow-private-networks to allow)")
        raise OSError(f"getaddrinfo returned no address for {host}")

    return create_connection


def _connection_factory(cls, policy: NetPolicy):
    connect = guarded_create_connection(policy)

    def factory(host, *, deadline: Deadline | None = None, **kwargs):
        conn = cls(host, **kwargs)
        conn._create_connection = connect if deadline is None else deadline_connect(connect, deadline)
        return conn

    return factory


def _request_factory(factory, req):
    """``factory`` for this request's connection: bound to the request's deadline, if any."""
    return functools.partial(factory, deadline=getattr(req, "_wit_deadline", None))


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: NetPolicy):
        super().__init__()
        self._factory = _connection_factory(http.client.HTTPConnection, policy)

    def http_open(self, req):
        return self.do_open(_request_factory(self._factory, req), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: NetPolicy):
        super().__init__()
        self._factory = _connection_factory(http.client.HTTPSConnection, policy)

    def https_open(self, req):
        # TLS (SNI, certificate check) uses the URL's host name; the socket under it comes from
        # the guarded connect. check_hostname only exists before Python 3.12.
        extra = {"check_hostname": self._check_hostname} if hasattr(self, "_check_hostname") else {}
        return self.do_open(_request_factory(self._factory, req), req, context=self._context, **extra)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handler, except that it never reads a redirect's body.

    The stock handler calls ``fp.read()`` on every 3xx answer before following it: a server
    could send an endless body with its redirect. The body is useless, so it is not read; the
    connection is closed instead. The new URL goes through the same opener (and guard).
    """

    def http_error_302(self, req, fp, code, msg, headers):
        fp.read = lambda *args, **kwargs: b""
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:  # the next hop runs on the first request's deadline
            new._wit_chain_deadline = getattr(req, "_wit_deadline", None)
        return new


def build_opener(policy: NetPolicy) -> urllib.request.OpenerDirector:
    """An opener with only http/https, no proxies, the SSRF guard and the limits."""
    opener = DeadlineOpener(policy.max_seconds)
    for handler in (urllib.request.ProxyHandler({}), urllib.request.UnknownHandler(),
                    _GuardedHTTPHandler(policy), _GuardedHTTPSHandler(policy),
                    urllib.request.HTTPDefaultErrorHandler(), _RedirectHandler(),
                    urllib.request.HTTPErrorProcessor(), LimitsProcessor(policy)):
        opener.add_handler(handler)
    opener.addheaders = [("User-agent", policy.user_agent)]
    return opener


_install_lock = threading.Lock()
_active: dict = {"key": None, "opener": None, "previous": None, "count": 0}


def _policy_key(policy: NetPolicy) -> str:
    return policy.to_json()


def install_guard(policy: NetPolicy) -> urllib.request.OpenerDirector:
    """Install the guarded opener process-wide for good (pool worker processes do this).

    Idempotent: if the installed opener already enforces this exact policy it is kept. This is
    what every ``urllib.request.urlopen`` call in the process (img2dataset's included) then uses.
    """
    key = _policy_key(policy)
    with _install_lock:
        current = urllib.request._opener
        if getattr(current, "_wit_policy", None) == key:
            return current
        if _active["count"]:
            raise RuntimeError("a different network policy is active in this process")
        opener = build_opener(policy)
        opener._wit_policy = key
        urllib.request.install_opener(opener)
    _cv2_pixel_limit(policy)
    return opener


@contextlib.contextmanager
def guarded(policy: NetPolicy) -> Iterator[urllib.request.OpenerDirector]:
    """Install the guarded opener for the duration of a ``with`` block (reference counted).

    Nested or concurrent blocks (threads of one process) with the same policy share one opener;
    the previous opener comes back when the last block exits. A different policy while one is
    active is an error (there is one ``urllib`` opener per process).
    """
    key = _policy_key(policy)
    with _install_lock:
        if _active["count"] == 0:
            _active.update(key=key, previous=urllib.request._opener, opener=build_opener(policy))
            _active["opener"]._wit_policy = key
            urllib.request.install_opener(_active["opener"])
        elif _active["key"] != key:
            raise RuntimeError("a different network policy is active in this process")
        _active["count"] += 1
        opener = _active["opener"]
    _cv2_pixel_limit(policy)
    try:
        yield opener
    finally:
        with _install_lock:
            _active["count"] -= 1
            if _active["count"] == 0:
                if urllib.request._opener is _active["opener"]:
                    urllib.request._opener = _active["previous"]
                _active.update(key=None, opener=None, previous=None)


def _cv2_pixel_limit(policy: NetPolicy) -> None:
    # Second layer for OpenCV's decoder (img2dataset decodes with cv2.imdecode): OpenCV reads
    # this once, when it first decodes an image, so it must be set before that.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(policy.max_pixels))
