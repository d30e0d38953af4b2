"""The SSRF guard and limits of wit_builder.netsafety, in-process, against loopback servers.

Everything here talks only to 127.0.0.1. Where a test needs a name that resolves to a private
or link-local address (10.x, 169.254.169.254), the socket module the guard uses is replaced by
one that fails the test if a socket is ever created, so a broken guard cannot send a packet.
"""
from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request

import pytest

from download_testlib import image_bytes, png_bomb
from wit_builder import netsafety
from wit_builder.sim.loopback import LoopbackServer
from wit_builder.netsafety import LimitExceeded, NetPolicy, SSRFBlocked, block_reason, guarded

JPEG = image_bytes("JPEG")


@pytest.mark.parametrize("ip, reason", [
    ("127.0.0.1", "loopback"), ("127.8.9.1", "loopback"), ("10.1.2.3", "private"),
    ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("169.254.169.254", "link-local"),
    ("100.64.0.1", "not globally routable"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved|private"), ("255.255.255.255", "private|reserved"), ("::1", "loopback"), ("::", "unspecified"),
    ("fe80::1%eth0", "link-local"), ("fc00::1", "private"), ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("2002:7f00:1::", "loopback"),
    ("64:ff9b::a9fe:a9fe", "link-local"), ("8.8.8.8", None), ("1.1.1.1", None),
    ("2606:4700:4700::1111", None), ("not-an-ip", "not an IP address"),
])
def test_block_reason_covers_every_non_public_range(ip, reason):
    got = block_reason(ip)
    if reason is None:
        assert got is None
    else:
        # Python versions differ in which name they give 240/4 and the broadcast address
        assert got is not None and got.startswith(tuple(reason.split("|"))), (ip, got)


def test_policy_validates_and_round_trips():
    p = NetPolicy(allowed_endpoints=["127.0.0.1:8080", "[::1]:81"], resolve={"Img.Test.": " [::1] "})
    assert p.resolve == {"img.test": "::1"}
    assert NetPolicy.from_json(p.to_json()) == p
    assert p.endpoint_allowed("127.0.0.1", 8080) and not p.endpoint_allowed("127.0.0.1", 8081)
    assert p.refusal("::1", 81) is None and p.refusal("::1", 82) == "loopback"
    for bad in (dict(allowed_endpoints=["localhost:80"]), dict(allowed_endpoints=["127.0.0.1"]),
                dict(resolve={"a.test": "nowhere"}), dict(max_bytes=0)):
        with pytest.raises(ValueError):
            NetPolicy(**bad)
    assert p.content_type_allowed("image/webp; q=1") and p.content_type_allowed(None)
    assert not p.content_type_allowed("text/html")


@pytest.fixture()
def servers():
    """A 'public' image host and an 'internal' service, both on 127.0.0.1."""
    internal = LoopbackServer({"/secret": {"body": "metadata-token", "headers": {"Content-Type": "image/jpeg"}}})
    public = LoopbackServer()
    with internal, public:
        yield public, internal


def policy_for(public, **kw) -> NetPolicy:
    """The tests' stand-in for the internet: only the public server's IP:PORT is allowed."""
    return NetPolicy(allowed_endpoints=[f"127.0.0.1:{public.port}"],
                     resolve={"img.test": "127.0.0.1", "internal.test": "127.0.0.1"}, **kw)


def fetch(url: str, timeout: float = 2) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def test_default_policy_refuses_loopback_before_any_request(servers):
    public, internal = servers
    public.add_route("/a.jpg", {"body": JPEG, "headers": {"Content-Type": "image/jpeg"}})
    with guarded(NetPolicy()):
        for url in (public.url("/a.jpg"), f"http://localhost:{public.port}/a.jpg",
                    f"http://[::ffff:127.0.0.1]:{public.port}/a.jpg", f"http://2130706433:{public.port}/a.jpg",
                    f"http://0x7f.0.0.1:{public.port}/a.jpg", f"https://127.0.0.1:{public.port}/a.jpg"):
            with pytest.raises(urllib.error.URLError, match="blocked by SSRF guard"):
                fetch(url)
    assert public.requests == []
    assert fetch(public.url("/a.jpg")) == JPEG  # the guard is gone after the block


def test_allowed_endpoint_and_resolve_table(servers):
    public, internal = servers
    public.add_route("/a.jpg", {"body": JPEG, "headers": {"Content-Type": "image/jpeg"}})
    with guarded(policy_for(public, user_agent="wit-test-agent/1")):
        assert fetch(f"http://img.test:{public.port}/a.jpg") == JPEG
        # same host name, another port: the internal service is not an allowed endpoint
        with pytest.raises(urllib.error.URLError, match="127.0.0.1 is loopback"):
            fetch(f"http://internal.test:{internal.port}/secret")
        with pytest.raises(urllib.error.URLError, match="blocked by SSRF guard"):
            fetch(internal.url("/secret"))
    assert [r.path for r in public.requests] == ["/a.jpg"]
    assert public.requests[0].headers["User-Agent"] == "wit-test-agent/1"
    assert internal.requests == []


def test_https_goes_through_the_guarded_connection(servers):
    """An https URL to an allowed endpoint connects (the plain-HTTP test server then fails the
    TLS handshake); the same URL under the default policy never connects at all."""
    public, _ = servers
    with guarded(policy_for(public)):
        with pytest.raises(urllib.error.URLError) as err:
            fetch(f"https://img.test:{public.port}/a.jpg")
        assert isinstance(err.value.reason, ssl.SSLError)  # it connected and tried TLS
    assert public.requests == []  # a TLS ClientHello is not an HTTP request
    with guarded(NetPolicy(resolve={"img.test": "127.0.0.1"})):
        with pytest.raises(urllib.error.URLError, match="blocked by SSRF guard"):
            fetch(f"https://img.test:{public.port}/a.jpg")


def test_redirects_are_checked_hop_by_hop(servers):
    public, internal = servers
    public.add_route("/a.jpg", {"body": JPEG, "headers": {"Content-Type": "image/jpeg"}})
    public.add_route("/hop1", {"redirect": "/hop2"})
    public.add_route("/hop2", {"redirect": f"http://img.test:{public.port}/a.jpg", "status": 301})
    public.add_route("/to-internal", {"redirect": internal.url("/secret")})
    public.add_route("/to-localhost", {"redirect": f"http://localhost:{internal.port}/secret", "status": 307})
    public.add_route("/to-file", {"redirect": "file:///etc/passwd"})
    public.add_route("/loop", {"redirect": "/loop"})
    with guarded(policy_for(public)):
        assert fetch(f"http://img.test:{public.port}/hop1") == JPEG
        for path in ("/to-internal", "/to-localhost"):
            with pytest.raises(urllib.error.URLError, match="blocked by SSRF guard"):
                fetch(public.url(path))
        with pytest.raises(urllib.error.HTTPError, match="not allowed"):
            fetch(public.url("/to-file"))
        with pytest.raises(urllib.error.HTTPError, match="infinite loop"):
            fetch(public.url("/loop"))
        for url in ("file:///etc/passwd", "ftp://img.test/a.jpg", "data:image/png;base64,AAAA"):
            with pytest.raises(urllib.error.URLError, match="unknown url type"):
                fetch(url)
    assert internal.requests == []  # no refused hop ever reached the internal service
    assert public.hits("/hop2") == 1 and public.hits("/a.jpg") == 1


def test_redirect_body_is_never_read():
    class Body:
        def read(self, *a):
            raise AssertionError("the redirect body was read")

        def close(self):
            self.closed = True

    handler = netsafety._RedirectHandler()
    opened = []

    class Parent:
        def open(self, req, timeout=None):
            opened.append(req.full_url)
            return "next"

    handler.parent = Parent()
    req = urllib.request.Request("http://img.test/a")
    req.timeout = 1
    headers = {"location": "http://img.test/b"}
    fp = Body()
    import email.message
    msg = email.message.Message()
    for k, v in headers.items():
        msg[k] = v
    assert handler.http_error_302(req, fp, 302, "Found", msg) == "next"
    assert opened == ["http://img.test/b"] and fp.closed


class NoSocketModule:
    """The socket module, except that creating a socket fails the test."""

    def __getattr__(self, name):
        return getattr(socket, name)

    @staticmethod
    def socket(*args, **kwargs):
        raise AssertionError("the guard created a socket for a refused address")


def test_names_resolving_to_private_addresses_are_refused_without_a_socket(monkeypatch):
    policy = NetPolicy(resolve={"private.test": "10.1.2.3", "meta.test": "169.254.169.254",
                                "v6.test": "fd00::5", "mapped.test": "::ffff:192.168.0.1"})
    monkeypatch.setattr(netsafety, "socket", NoSocketModule())
    connect = netsafety.guarded_create_connection(policy)
    for host, why in (("private.test", "private"), ("meta.test", "link-local"), ("v6.test", "private"),
                      ("mapped.test", "private"), ("169.254.169.254", "link-local"), ("0.0.0.0", "unspecified")):
        with pytest.raises(SSRFBlocked, match=why):
            connect((host, 80), 1)
    with guarded(policy):
        with pytest.raises(urllib.error.URLError, match="10.1.2.3 is private"):
            fetch("http://private.test/cat.jpg")
        with pytest.raises(urllib.error.URLError, match="169.254.169.254 is link-local"):
            fetch("http://169.254.169.254/latest/meta-data/")


def test_peer_address_is_checked_after_connecting(servers):
    """If the address reached differs from the one checked (the check passes once, then fails),
    the connection is dropped before any request is sent."""
    public, _ = servers

    class FlakyPolicy(NetPolicy):
        calls = 0

        def refusal(self, ip, port):
            FlakyPolicy.calls += 1
            return None if FlakyPolicy.calls == 1 else "loopback"

    connect = netsafety.guarded_create_connection(FlakyPolicy())
    with pytest.raises(SSRFBlocked, match="connected to 127.0.0.1, which is loopback"):
        connect(("127.0.0.1", public.port), 2)
    assert public.requests == []


def test_limits(servers):
    public, _ = servers
    big = b"\xff\xd8" + b"x" * 5000
    public.add_route("/html", {"body": "<html>", "headers": {"Content-Type": "text/html"}})
    public.add_route("/big", {"body": big, "headers": {"Content-Type": "image/jpeg"}})
    public.add_route("/big-nolength", {"body": big, "no_length": True, "headers": {"Content-Type": "image/jpeg"}})
    public.add_route("/bomb.png", {"body": png_bomb(), "headers": {"Content-Type": "image/png"}})
    public.add_route("/large.png", {"body": image_bytes("PNG", (300, 300)), "headers": {"Content-Type": "image/png"}})
    public.add_route("/trickle", {"body": b"\xff" * 3000, "chunk_delay": 0.3, "headers": {"Content-Type": "image/jpeg"}})
    public.add_route("/ok.png", {"body": image_bytes("PNG"), "no_length": True})  # no Content-Type at all
    with guarded(policy_for(public, max_bytes=4000, max_pixels=50_000, max_seconds=0.5)):
        base = f"http://img.test:{public.port}"
        with pytest.raises(LimitExceeded, match="content type 'text/html' not allowed"):
            fetch(base + "/html")
        with pytest.raises(LimitExceeded, match="too many bytes: Content-Length 5002"):
            fetch(base + "/big")
        with pytest.raises(LimitExceeded, match="too many bytes: more than max 4000"):
            fetch(base + "/big-nolength")
        with pytest.raises(LimitExceeded, match="decompression bomb"):
            fetch(base + "/bomb.png")
        with pytest.raises(LimitExceeded, match="decompression bomb: 300x300 = 90000 pixels > max 50000"):
            fetch(base + "/large.png")
        with pytest.raises(LimitExceeded, match="body took longer than 0.5s"):
            fetch(base + "/trickle")
        assert fetch(base + "/ok.png") == image_bytes("PNG")
    with guarded(policy_for(public)):  # the default limits: only the bomb is refused
        with pytest.raises(LimitExceeded, match="decompression bomb"):
            fetch(f"http://img.test:{public.port}/bomb.png")
        assert fetch(f"http://img.test:{public.port}/large.png") == image_bytes("PNG", (300, 300))


def test_guarded_nests_and_restores(servers):
    public, _ = servers
    before = urllib.request._opener
    p = policy_for(public)
    with guarded(p) as outer:
        with guarded(NetPolicy.from_json(p.to_json())) as inner:
            assert inner is outer and urllib.request._opener is outer
        assert urllib.request._opener is outer
        with pytest.raises(RuntimeError, match="different network policy"):
            with guarded(NetPolicy()):
                pass
        assert netsafety.install_guard(p) is outer  # idempotent for the active policy
    assert urllib.request._opener is before


def test_resolve_entries_with_ports_connect_elsewhere(servers):
    """``HOST:PORT -> IP:PORT`` (curl's --connect-to): a port-less URL reaches a loopback server
    on another port, still only through an allowed endpoint."""
    public, internal = servers
    public.add_route("/a.jpg", {"body": JPEG, "headers": {"Content-Type": "image/jpeg"}})
    p = NetPolicy(allowed_endpoints=[f"127.0.0.1:{public.port}"],
                  resolve={"Img.Test.:80": f"127.0.0.1:{public.port}", "img.test": "10.0.0.1",
                           "internal.test:80": f"127.0.0.1:{internal.port}"})
    assert p.resolve["img.test:80"] == f"127.0.0.1:{public.port}"
    assert NetPolicy.from_json(p.to_json()) == p
    assert NetPolicy(resolve={"v6.test:443": "[::1]:8443"}).resolve == {"v6.test:443": "[::1]:8443"}
    for bad in ({"a.test": "127.0.0.1:80"}, {"a.test:x": "127.0.0.1"}, {"a.test:80": "nowhere:80"}):
        with pytest.raises(ValueError):
            NetPolicy(resolve=bad)
    with guarded(p):
        assert fetch("http://img.test/a.jpg") == JPEG
        assert public.requests[-1].headers["Host"] == "img.test"
        # the mapped target is checked like any address: the internal server is not allowed
        with pytest.raises(urllib.error.URLError, match="127.0.0.1 is loopback"):
            fetch("http://internal.test/secret")
    assert internal.requests == []
