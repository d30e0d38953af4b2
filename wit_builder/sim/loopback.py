"""A small threaded HTTP server on 127.0.0.1 for tests, benchmarks and the demo's simulated web.

It binds ``127.0.0.1`` on an OS-chosen free port (port 0), serves a table of routes from a
background thread, and records every request it receives (so a test can prove that a refused
URL never reached it).

API
---
``LoopbackServer(routes=None, *, host="127.0.0.1", port=0, default=None)``
    ``routes`` maps a path (``"/a.jpg"``; a query string is part of the key only if you put
    it there: a request is looked up by its full path-with-query first, then by its path alone)
    to a *response spec*:

    - a ``dict`` with any of
      ``status`` (int, default 200, or 302 when ``redirect`` is given),
      ``headers`` (dict of header name -> value; ``Content-Length`` is added for you),
      ``body`` (bytes or str; str is UTF-8 encoded; default empty),
      ``delay`` (seconds to sleep before answering, e.g. to exceed a client's timeout),
      ``redirect`` (a ``Location``: absolute URL, or a path on this same server),
      ``no_length`` (true: send no ``Content-Length``, close the connection after the body),
      ``chunk_delay`` (seconds to sleep between 1 KiB pieces of the body: a trickling server);
    - or a callable ``fn(path: str, headers: dict) -> dict`` returning such a spec, called per
      request (for generated content or request-dependent answers).

    Paths not in the table get ``default`` (a spec or a callable like a route; by default a 404
    with a short body).

Use it as a context manager (``with LoopbackServer(routes) as srv: ...``) or call
``start()`` / ``stop()``. Once started:

- ``srv.port`` and ``srv.base_url`` (``"http://127.0.0.1:PORT"``); ``srv.url("/a.jpg")``
  builds a full URL;
- ``srv.add_route(path, spec)`` adds or replaces a route while running (thread-safe);
- ``srv.requests`` is a list of ``Request(path, method, headers, time)`` in arrival order;
  ``srv.hits(path)`` counts requests for one path (path-with-query or bare path).

GET and HEAD are served (HEAD sends no body). The server thread and handler threads are
daemons; ``stop()`` shuts the listener down and closes the socket.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

__all__ = ["LoopbackServer", "Request"]

Spec = Mapping[str, Any]
Route = Spec | Callable[[str, dict], Spec]


@dataclass(frozen=True)
class Request:
    path: str
    method: str
    headers: dict = field(default_factory=dict)
    time: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    server_version = "wit-loopback/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _serve(self, send_body: bool) -> None:
        owner: LoopbackServer = self.server.owner  # type: ignore[attr-defined]
        headers = {k: v for k, v in self.headers.items()}
        owner._record(Request(self.path, self.command, headers, time.time()))
        spec = owner._lookup(self.path, headers)
        delay = float(spec.get("delay", 0) or 0)
        if delay > 0:
            time.sleep(delay)
        redirect = spec.get("redirect")
        status = int(spec.get("status", 302 if redirect else 200))
        body = spec.get("body", b"")
        if isinstance(body, str):
            body = body.encode("utf-8")
        chunk_delay = float(spec.get("chunk_delay", 0) or 0)
        try:
            self.send_response(status)
            for name, value in dict(spec.get("headers", {}) or {}).items():
                self.send_header(name, str(value))
            if redirect:
                self.send_header("Location", redirect)
            if spec.get("no_length"):
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body and body:
                if chunk_delay > 0:
                    for start in range(0, len(body), 1024):
                        self.wfile.write(body[start:start + 1024])
                        self.wfile.flush()
                        time.sleep(chunk_delay)
                else:
                    self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # client gave up (e.g. its timeout)
            self.close_connection = True

    def do_GET(self):  # noqa: N802
        self._serve(True)

    def do_HEAD(self):  # noqa: N802
        self._serve(False)


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of parallel connects (8 download threads)
    # on a busy machine overflows it, and a dropped SYN is retried only after 1 s, which a test
    # client with a 1 s timeout reports as a timeout that never reached the server.
    request_queue_size = 128
    daemon_threads = True
    block_on_close = False


class LoopbackServer:
    """Threaded HTTP server bound to 127.0.0.1 (see the module docstring for the API)."""

    def __init__(self, routes: Mapping[str, Route] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, default: Route | None = None):
        self._routes: dict[str, Route] = dict(routes or {})
        self._default: Route = default or {"status": 404, "body": b"not found",
                                           "headers": {"Content-Type": "text/plain"}}
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "LoopbackServer":
        if self._httpd is not None:
            return self
        httpd = _Server((self._host, self._port), _Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        httpd.owner = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"loopback-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("LoopbackServer is not running")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # -- routes and request log ------------------------------------------------------------------
    def add_route(self, path: str, spec: Route) -> None:
        with self._lock:
            self._routes[path] = spec

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def hits(self, path: str) -> int:
        bare = urlsplit(path).path
        return sum(1 for r in self.requests if r.path == path or (path == bare and urlsplit(r.path).path == bare))

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _lookup(self, raw_path: str, headers: dict) -> Spec:
        with self._lock:
            route = self._routes.get(raw_path)
            if route is None:
                route = self._routes.get(urlsplit(raw_path).path)
        if route is None:
            route = self._default
        if callable(route):
            return dict(route(raw_path, headers))
        return route
