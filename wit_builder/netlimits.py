"""The limits on an image response that `wit download` enforces after the SSRF guard let the
connection through: content type, size, a wall-clock deadline per request, and the pixel count
its header declares (a decompression bomb is refused before it is decoded).

The deadline (``NetPolicy.max_seconds``) starts when a request starts and covers everything:
connecting, the response headers, every redirect hop and the body. A socket timeout alone cannot
do that (a server sending one byte every few seconds never trips it), so a :class:`Deadline`
keeps a duplicate of each socket of its request, and one monitor thread per process shuts those
sockets down when the deadline passes: a read blocked in the kernel returns at once, and the
request fails with "... took longer than Ns (too slow)".
"""
from __future__ import annotations

import http.client
import io
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings

__all__ = ["LimitExceeded", "check_image_header", "LimitsProcessor", "Deadline", "DeadlineOpener",
           "deadline_connect"]


class LimitExceeded(ValueError):
    """The response broke a size, type, time or pixel limit."""


def check_image_header(data: bytes, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (no decoding)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise LimitExceeded(f"decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return  # not something Pillow can parse; the decoder downstream decides
    if width * height > max_pixels:
        raise LimitExceeded(f"decompression bomb: {width}x{height} = {width * height} pixels "
                            f"> max {max_pixels}")


# --------------------------------------------------------------------------------------------
# the deadline of one request (redirects included)
# --------------------------------------------------------------------------------------------
class Deadline:
    """``seconds`` from now for one request and its redirects; see the module docstring."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.fired = False
        self._finished = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        _MONITOR.add(self)

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.at

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def error(self, what: str) -> LimitExceeded:
        return LimitExceeded(f"{what} took longer than {self.seconds:g}s (too slow)")

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes. A duplicate descriptor is kept (TLS
        detaches the original socket object); shutdown acts on the connection, not the fd."""
        dup = sock.dup()
        with self._lock:
            if not (self.fired or self._finished):
                self._socks.append(dup)
                return
            fired = self.fired
        if fired:
            _shutdown(dup)
        dup.close()

    def fire(self) -> None:
        with self._lock:
            if self.fired or self._finished:
                return
            self.fired = True
            socks, self._socks = self._socks, []
        for sock in socks:
            _shutdown(sock)
            sock.close()

    def finish(self) -> None:
        """The request is over (body read, closed or failed): stop watching it."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            socks, self._socks = self._socks, []
        _MONITOR.discard(self)
        for sock in socks:
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer or by us


class _Monitor:
    """One daemon thread per process that fires every deadline when it passes."""

    def __init__(self):
        self._reset()

    def _reset(self):  # also in a forked child: the parent's thread and lock state did not come along
        self._cond = threading.Condition(threading.Lock())
        self._pending: set[Deadline] = set()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            self._pending.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wit-net-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def discard(self, deadline: Deadline) -> None:
        with self._cond:
            self._pending.discard(deadline)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                now = time.monotonic()
                due = [d for d in self._pending if d.at <= now]
                self._pending.difference_update(due)
                if not due:
                    nxt = min((d.at for d in self._pending), default=None)
                    cond.wait(None if nxt is None else nxt - now)
                    continue
            for deadline in due:
                deadline.fire()


_MONITOR = _Monitor()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_MONITOR._reset)


def deadline_connect(connect, deadline: Deadline):
    """Wrap a ``socket.create_connection``-like ``connect``: never wait past ``deadline`` for the
    connection, and hand the new socket to the deadline's watchdog."""

    def create_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, *args, **kwargs):
        left = deadline.remaining()
        if left <= 0:
            raise deadline.error("request")
        if timeout is None or timeout is socket._GLOBAL_DEFAULT_TIMEOUT or timeout > left:
            timeout = left
        sock = connect(address, timeout, *args, **kwargs)
        deadline.watch(sock)
        return sock

    return create_connection


class DeadlineOpener(urllib.request.OpenerDirector):
    """An opener that gives every request a :class:`Deadline` of ``max_seconds`` (None: none),
    shared by its redirect hops. A request that fails after its deadline passed (a socket the
    watchdog shut down, a timeout capped by the deadline) fails with the deadline's message;
    oversized response headers (http.client's 64 KiB per line, 100 lines) with a clear one."""

    def __init__(self, max_seconds: float | None):
        super().__init__()
        self._max_seconds = max_seconds

    def open(self, fullurl, data=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT):
        req = urllib.request.Request(fullurl, data) if isinstance(fullurl, str) else fullurl
        chain = req.__dict__.pop("_wit_chain_deadline", None)
        hop = chain is not None  # a redirect hop runs on its first request's deadline
        deadline = req._wit_deadline = chain if hop or self._max_seconds is None else Deadline(self._max_seconds)
        try:
            resp = super().open(req, data, timeout)
        except BaseException as exc:
            if deadline is not None and not hop:
                deadline.finish()
            clear = _clearer(exc, deadline)
            if clear is exc:
                raise
            raise clear from None
        if deadline is not None and not hop and not getattr(resp, "_wit_limited", False):
            deadline.finish()  # no body to guard (LimitsProcessor did not wrap it)
        return resp


def _clearer(exc: BaseException, deadline: Deadline | None) -> BaseException:
    """The error to report for ``exc``: the deadline's when it passed, a clear one for headers
    http.client refused as too long, else ``exc`` itself."""
    if not isinstance(exc, Exception) or isinstance(exc, (LimitExceeded, urllib.error.HTTPError)):
        return exc
    if deadline is not None and deadline.expired:
        return deadline.error("request")
    if isinstance(exc, http.client.HTTPException) and str(exc).startswith("got more than"):
        return LimitExceeded(f"response headers too large: {exc}")
    return exc


# --------------------------------------------------------------------------------------------
# the response limits
# --------------------------------------------------------------------------------------------
class LimitsProcessor(urllib.request.BaseHandler):
    """Rewrites the User-Agent on requests; checks type/size/time/pixels on 2xx responses."""

    handler_order = 1100  # after HTTPErrorProcessor: only final (non-redirect) answers get here

    def __init__(self, policy):  # a wit_builder.netsafety.NetPolicy
        self.policy = policy

    def http_request(self, req):
        req.add_header("User-Agent", self.policy.user_agent)
        req.unredirected_hdrs.pop("User-agent", None)  # urllib's default would win otherwise
        return req

    https_request = http_request

    def http_response(self, req, resp):
        if getattr(resp, "_wit_limited", False) or not 200 <= resp.status < 300:
            return resp
        policy = self.policy
        ctype = resp.headers.get("Content-Type")
        if not policy.content_type_allowed(ctype):
            resp.close()
            raise LimitExceeded(f"content type {ctype!r} not allowed")
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > policy.max_bytes:
            resp.close()
            raise LimitExceeded(f"too many bytes: Content-Length {int(length)} > max {policy.max_bytes}")
        _limit_body(resp, policy, getattr(req, "_wit_deadline", None), req.get_method() == "HEAD")
        return resp

    https_response = http_response


def _limit_body(resp, policy, deadline: Deadline | None, head: bool) -> None:
    """Replace ``resp.read`` with one that enforces the byte limit and the deadline while the
    body arrives (``read1``: whatever the socket has, so the checks run between small reads)."""
    original_read, original_close = resp.read, resp.close
    read_some = getattr(resp, "read1", None) or original_read

    def read(amt=None):
        want = None if amt is None or amt < 0 else amt
        out = bytearray()
        eof = False
        try:
            while want is None or len(out) < want:
                chunk = read_some(65536 if want is None else min(65536, want - len(out)))
                if deadline is not None and deadline.expired:
                    raise deadline.error("body")  # a shut-down socket ends the body early: never return it
                if not chunk:
                    eof = True
                    break
                out += chunk
                resp._wit_bytes += len(chunk)
                if resp._wit_bytes > policy.max_bytes:
                    raise LimitExceeded(f"too many bytes: more than max {policy.max_bytes}")
        except Exception as exc:
            if deadline is not None:
                deadline.finish()
                if deadline.fired and not isinstance(exc, LimitExceeded):
                    raise deadline.error("body") from None
            raise
        if eof and getattr(resp, "length", None):  # the connection ended before Content-Length
            raise http.client.IncompleteRead(bytes(out), resp.length)
        data = bytes(out)
        if amt is None:
            if deadline is not None:
                deadline.finish()
            if not data and resp._wit_bytes == 0 and not head:
                raise LimitExceeded("empty body: the server sent 0 bytes")
            check_image_header(data, policy.max_pixels)
        return data

    def close():
        try:
            original_close()
        finally:
            if deadline is not None:
                deadline.finish()

    resp._wit_bytes = 0
    resp.read = read
    resp.close = close
    resp._wit_limited = True
