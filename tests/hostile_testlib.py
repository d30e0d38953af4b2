"""Helpers of tests/test_hostile_server.py: a raw-socket HTTP server for byte-level hostile
answers, and a stand-in for img2dataset's ``Downloader`` that runs in a spawned worker process
(so this module imports little)."""
from __future__ import annotations

import os
import socket
import threading
import time

TRICKLE_FOR = 6.0   # seconds a trickle lasts at most (then the server closes the connection)
DRIP = 0.2          # seconds between two trickled bytes


class RawServer:
    """A threaded TCP server on 127.0.0.1: reads a request head, then runs ``routes[path](conn)``
    (404 for other paths). Handlers write raw bytes; ``self.stopped`` ends their loops."""

    def __init__(self, routes):
        self.routes = routes
        self.stopped = threading.Event()
        self.paths: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []

    def url(self, path: str) -> str:
        return f"http://img.test:{self.port}{path}"

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self._sock.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1].decode()
            self.paths.append(path)
            handler = self.routes.get(path)
            if handler is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            else:
                handler(self, conn, path)
        except OSError:
            pass  # the client gave up: what these tests want
        finally:
            conn.close()

    def drip(self, conn, data: bytes) -> None:
        """Send ``data`` one byte per DRIP seconds, for at most TRICKLE_FOR seconds."""
        end = time.monotonic() + TRICKLE_FOR
        for byte in data:
            if self.stopped.is_set() or time.monotonic() > end:
                return
            conn.sendall(bytes([byte]))
            time.sleep(DRIP)



class HoldingDownloader:
    """Answers img2dataset's ``(ok, row)`` for each shard ``(shard_id, path)`` at once, except
    that the first ``hold[shard_id]`` tries of a shard write ``FOLDER/ID.pid`` and then wait
    (for a test to kill the process). Tries are counted in ``FOLDER/ID.tries``."""

    def __init__(self, folder: str, hold: dict[int, int]):
        self.folder = folder
        self.hold = dict(hold)

    def __call__(self, row):
        shard_id = row[0]
        tries_path = os.path.join(self.folder, f"{shard_id}.tries")
        tries = int(open(tries_path).read()) + 1 if os.path.exists(tries_path) else 1
        with open(tries_path, "w") as fh:
            fh.write(str(tries))
        if tries <= self.hold.get(shard_id, 0):
            with open(os.path.join(self.folder, f"{shard_id}.pid.tmp"), "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(os.path.join(self.folder, f"{shard_id}.pid.tmp"), os.path.join(self.folder, f"{shard_id}.pid"))
            time.sleep(60)
        open(os.path.join(self.folder, f"{shard_id}.done"), "w").close()
        return True, row
