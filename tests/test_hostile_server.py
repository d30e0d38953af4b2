"""Hostile HTTP servers on 127.0.0.1 against `wit download`'s opener and local runner.

Servers that trickle the body or the headers one byte at a time, stall after the headers,
redirect slowly or forever, send a huge header or an empty body; and a download whose worker
process is killed with SIGKILL. Every case must end in about its limit with a clear, one-line
reason (``error_kind`` as the download stats count it), never hang.

The byte-level servers are raw sockets (``hostile_testlib.RawServer``): http.server cannot send
half a header. Every trickle stops by itself after ``TRICKLE_FOR`` seconds, so a client without
a working deadline fails these tests (too slow to give up) instead of hanging them.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from download_testlib import image_bytes, write_balanced
from hostile_testlib import DRIP, TRICKLE_FOR, HoldingDownloader, RawServer
from wit_builder import netlimits
from wit_builder.download_layout import error_kind
from wit_builder.download_plan import sample_order
from wit_builder.netsafety import LimitExceeded, NetPolicy, guarded
from wit_builder.sim.loopback import LoopbackServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JPEG = image_bytes("JPEG")


HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"


def trickle_body(srv, conn, path):
    conn.sendall(HEAD_OK + b"Content-Length: 100000\r\n\r\n")
    srv.drip(conn, JPEG * 100)


def trickle_body_no_length(srv, conn, path):  # ends at EOF: a cut-off body must not pass as complete
    conn.sendall(HEAD_OK + b"\r\n")
    srv.drip(conn, JPEG * 100)


def trickle_headers(srv, conn, path):
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    srv.drip(conn, b"X-Slow: " + b"a" * 1000 + b"\r\n\r\n")


def stall_after_headers(srv, conn, path):
    conn.sendall(HEAD_OK + b"Content-Length: 5000\r\n\r\n")
    srv.stopped.wait(TRICKLE_FOR)


def slow_redirect(srv, conn, path):  # /hop/N -> /hop/N+1, each answer after 0.4 s
    time.sleep(0.4)
    nxt = int(path.rsplit("/", 1)[1]) + 1
    conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: /hop/{nxt}\r\nContent-Length: 0\r\n"
                 "Connection: close\r\n\r\n".encode())


def endless_redirect(srv, conn, path):  # every hop a new URL: urllib's loop check never repeats
    nxt = int(path.rsplit("/", 1)[1]) + 1
    srv.routes[f"/loop/{nxt}"] = endless_redirect
    conn.sendall(f"HTTP/1.1 301 Moved\r\nLocation: /loop/{nxt}\r\nContent-Length: 0\r\n\r\n".encode())


def huge_header(srv, conn, path):
    conn.sendall(HEAD_OK + b"X-Huge: " + b"h" * 100_000 + b"\r\n\r\n")


def many_headers(srv, conn, path):
    conn.sendall(HEAD_OK + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n")


def empty_body(srv, conn, path):
    conn.sendall(HEAD_OK + b"Content-Length: 0\r\n\r\n")


def good_image(srv, conn, path):
    conn.sendall(HEAD_OK + b"Content-Length: %d\r\n\r\n" % len(JPEG) + JPEG)


ROUTES = {"/trickle": trickle_body, "/trickle-nolength": trickle_body_no_length,
          "/trickle-headers": trickle_headers, "/stall": stall_after_headers, "/hop/0": slow_redirect,
          "/loop/0": endless_redirect, "/huge-header": huge_header, "/many-headers": many_headers,
          "/empty": empty_body, "/ok.jpg": good_image}
for _n in range(1, 12):
    ROUTES[f"/hop/{_n}"] = slow_redirect


@pytest.fixture()
def raw():
    with RawServer(dict(ROUTES)) as srv:
        yield srv


def policy(srv, **kw) -> NetPolicy:
    return NetPolicy(allowed_endpoints=[f"127.0.0.1:{srv.port}"], resolve={"img.test": "127.0.0.1"}, **kw)


def fetch(url: str, timeout: float) -> bytes:
    """What img2dataset's download_image does: urlopen, then read() the whole body."""
    with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as r:
        return r.read()


def failure(url: str, timeout: float) -> tuple[str, float]:
    """(error message, seconds taken) of a fetch that must fail."""
    started = time.monotonic()
    with pytest.raises(Exception) as err:
        fetch(url, timeout)
    return str(err.value), time.monotonic() - started


@pytest.mark.parametrize("path", ["/trickle", "/trickle-nolength", "/trickle-headers", "/hop/0"])
def test_the_deadline_fires_while_bytes_trickle(raw, path):
    """Body, headers or a chain of slow redirects: each byte (or hop) comes well within the
    socket timeout, so only the request's deadline can stop it, at about max_seconds."""
    with guarded(policy(raw, max_seconds=1.0)):
        message, took = failure(raw.url(path), timeout=5)
    assert "too slow" in message and error_kind("failed_to_download", message) == "too_slow", message
    assert 0.9 < took < 2.0, (path, took, message)


def test_the_deadline_covers_a_trickling_tls_handshake():
    """https: a server that drips a TLS record one byte at a time holds the handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB, then drops of it
            end = time.monotonic() + TRICKLE_FOR
            while not stop.wait(DRIP) and time.monotonic() < end:
                conn.sendall(b"\x02")

    threading.Thread(target=serve, daemon=True).start()
    try:
        with guarded(NetPolicy(allowed_endpoints=[f"127.0.0.1:{port}"], resolve={"img.test": "127.0.0.1"},
                               max_seconds=1.0)):
            message, took = failure(f"https://img.test:{port}/a.jpg", timeout=5)
    finally:
        stop.set()
        listener.close()
    assert error_kind("failed_to_download", message) == "too_slow" and 0.9 < took < 2.0, (message, took)


def test_stall_after_headers_the_timeout_or_the_deadline_fires(raw):
    with guarded(policy(raw, max_seconds=5.0)):  # socket timeout first
        message, took = failure(raw.url("/stall"), timeout=0.5)
    assert error_kind("failed_to_download", message) == "timeout" and took < 1.5, (message, took)
    with guarded(policy(raw, max_seconds=1.0)):  # deadline first: a long timeout does not matter
        message, took = failure(raw.url("/stall"), timeout=4)
    assert error_kind("failed_to_download", message) == "too_slow" and 0.9 < took < 2.0, (message, took)


def test_trickling_servers_do_not_hold_parallel_threads(raw):
    """img2dataset downloads from many threads through one opener: each gets its own deadline."""
    results = []
    with guarded(policy(raw, max_seconds=1.0)):
        def one(path):
            results.append((path, *failure(raw.url(path), timeout=5)))
        threads = [threading.Thread(target=one, args=(p,)) for p in ("/trickle", "/trickle-headers",
                                                                      "/stall", "/trickle-nolength") * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert fetch(raw.url("/ok.jpg"), timeout=5) == JPEG  # and a good image still comes through
    assert len(results) == 8
    for path, message, took in results:
        assert error_kind("failed_to_download", message) == "too_slow" and took < 2.5, (path, message, took)
    assert not netlimits._MONITOR._pending  # every request's watch ended with it


def test_endless_redirect_huge_header_and_empty_body_have_clear_reasons(raw):
    with guarded(policy(raw, max_seconds=5.0)):
        message, took = failure(raw.url("/loop/0"), timeout=2)
        assert error_kind("failed_to_download", message) == "redirect_loop" and took < 3, message
        assert raw.paths.count("/loop/0") == 1 and len(raw.paths) <= 12  # bounded: 10 hops at most
        for path in ("/huge-header", "/many-headers"):
            with pytest.raises(LimitExceeded, match="response headers too large") as err:
                fetch(raw.url(path), timeout=2)
            assert error_kind("failed_to_download", str(err.value)) == "headers_too_large"
        with pytest.raises(LimitExceeded, match="empty body") as err:
            fetch(raw.url("/empty"), timeout=2)
        assert error_kind("failed_to_download", str(err.value)) == "empty_body"
        assert fetch(raw.url("/ok.jpg"), timeout=2) == JPEG


# --------------------------------------------------------------------------------------------
# through img2dataset: the per-row error column
# --------------------------------------------------------------------------------------------
def test_download_rows_get_one_line_reasons(raw, tmp_path):
    """img2dataset's Downloader with our writer (in this process, as the Beam runner uses it):
    each hostile row gets its reason in the error columns, on one line, within the deadline."""
    from wit_builder.download import DownloadOptions, download_one_shard, make_downloader, prepare
    cases = {"/ok.jpg": ("success", None), "/trickle": ("failed_to_download", "too_slow"),
             "/trickle-headers": ("failed_to_download", "too_slow"),
             "/empty": ("failed_to_download", "empty_body"),
             "/huge-header": ("failed_to_download", "headers_too_large")}
    pairs = tmp_path / "balanced"
    pairs.mkdir()
    (tmp_path / "tmp").mkdir()
    write_balanced(str(pairs / "part-00000.parquet"), [raw.url(p) for p in cases])
    opts = DownloadOptions(processes=1, threads=8, timeout=5, max_seconds=1.5, image_size=32,
                           allowed_endpoints=[f"127.0.0.1:{raw.port}"], resolve={"img.test": "127.0.0.1"})
    plan = prepare(str(pairs), str(tmp_path / "images"), opts)
    downloader = make_downloader(plan)
    with guarded(opts.policy()):
        started = time.monotonic()
        assert download_one_shard(plan, plan.shards[0], downloader, str(tmp_path / "tmp"))
        took = time.monotonic() - started
    rows = {r["url"].rsplit(raw.url(""), 1)[1]: r
            for r in pq.read_table(tmp_path / "images" / "00000.parquet").to_pylist()}
    for path, (status, kind) in cases.items():
        r = rows[path]
        assert (r["status"], r["error_kind"]) == (status, kind), (path, r["error_message"])
        assert "\n" not in (r["error_message"] or "") and "OpenCV" not in (r["error_message"] or "")
    assert took < 1.5 + 3, took  # the trickles ended at the deadline, not when the server gave up


# --------------------------------------------------------------------------------------------
# a download worker killed with SIGKILL
# --------------------------------------------------------------------------------------------
def _wit_download(pairs, out, port, *extra):
    cmd = [sys.executable, "-m", "pipelines.cli", "download", "--pairs", str(pairs), "--out", str(out),
           "--processes", "1", "--threads", "2", "--timeout", "20", "--max-seconds", "30",
           "--image-size", "32", "--samples-per-shard", "3", "--resolve", "img.test=127.0.0.1", "--allowed-endpoint",
           f"127.0.0.1:{port}", *extra]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TQDM_DISABLE": "1"}
    return subprocess.Popen(cmd, env=env, cwd=str(out.parent), start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"wit download still running {timeout:.0f} s after its worker was killed (hung)\n{err[-2000:]}")
    return proc.returncode, out, err


def _kill_worker_of(out, shard: str, proc, timeout: float = 120) -> int:
    """SIGKILL the worker process holding ``shard`` (its pid names its _wit/partial folder)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        partial = out / "_wit" / "partial"
        names = [n for n in (os.listdir(partial) if partial.is_dir() else []) if n.startswith(shard + ".")]
        if names:
            pid = int(names[0].split(".", 1)[1].split("-")[0])
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker started shard {shard}")


@pytest.fixture()
def held_web(tmp_path):
    """Two shards of 3 images (--samples-per-shard 3: the URLs in hash order, cut every 3);
    shard 1's last image is held until the test lets it go. Yields the paths of shard 0 too."""
    release = threading.Event()

    def held(path, headers):
        release.wait(150)
        return {"body": JPEG, "headers": {"Content-Type": "image/jpeg"}}

    routes = {f"/{s}/{i}.jpg": {"body": JPEG, "headers": {"Content-Type": "image/jpeg"}}
              for s in range(2) for i in range(3)}
    with LoopbackServer(routes) as srv:
        pairs = tmp_path / "balanced"
        pairs.mkdir()
        for s in range(2):
            write_balanced(str(pairs / f"part-{s:05d}.parquet"),
                           [f"http://img.test:{srv.port}/{s}/{i}.jpg" for i in range(3)])
        order = sorted(routes, key=lambda p: sample_order(f"http://img.test:{srv.port}{p}"))
        srv.add_route(order[5], held)
        yield srv, pairs, release, order[:3]
        release.set()


def _run_pool(tmp_path, hold: dict[int, int], max_shard_retry: int, kills: int):
    """Run ShardPool (1 process) over shards 0-2 with a HoldingDownloader; SIGKILL each held try.
    Returns (pool, pids killed)."""
    from wit_builder.download_local import ShardPool
    pool = ShardPool(str(tmp_path))
    downloader = HoldingDownloader(str(tmp_path), hold)
    runner = threading.Thread(target=pool, args=(1, downloader, iter([(i, f"in-{i}") for i in range(3)]),
                                                 0, max_shard_retry), daemon=True)
    runner.start()
    killed: list[int] = []
    end = time.monotonic() + 30
    while runner.is_alive() and time.monotonic() < end:
        pid_file = tmp_path / "1.pid"
        if len(killed) < kills and pid_file.exists():
            pid = int(pid_file.read_text())
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.02)
    runner.join(0.1)
    assert not runner.is_alive(), "the pool still waits for a worker that was killed (hung)"
    return pool, killed


def test_pool_retries_the_shard_of_a_dead_worker(tmp_path):
    pool, killed = _run_pool(tmp_path, {1: 1}, max_shard_retry=1, kills=1)
    assert len(killed) == 1 and pool.dead == {}
    assert {p.name for p in tmp_path.glob("*.done")} == {"0.done", "1.done", "2.done"}
    assert (tmp_path / "1.tries").read_text() == "2"


def test_pool_gives_up_on_a_shard_after_its_retries(tmp_path):
    pool, killed = _run_pool(tmp_path, {1: 9}, max_shard_retry=1, kills=2)
    assert len(killed) == 2 and list(pool.dead) == [1]
    assert pool.dead[1].startswith("its worker process was killed by SIGKILL") and "try 2 of 2" in pool.dead[1]
    assert {p.name for p in tmp_path.glob("*.done")} == {"0.done", "2.done"}  # the others finished


def test_dead_worker_every_try_fails_in_one_line_and_a_rerun_resumes(held_web, tmp_path):
    srv, pairs, release, shard0 = held_web
    out = tmp_path / "images"
    proc = _wit_download(pairs, out, srv.port, "--max-shard-retry", "0")
    _kill_worker_of(out, "00001", proc)   # generous waits: worker start-up is slow on a loaded machine
    rc, stdout, stderr = _finish(proc, 90)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2 and lines, (rc, stderr[-2000:])
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("wit download: error: shard 00001: its worker process was killed by SIGKILL")
    assert "re-run" in lines[0]
    assert (out / "00000_stats.json").exists() and not (out / "00001_stats.json").exists()

    release.set()
    proc = _wit_download(pairs, out, srv.port, "--max-shard-retry", "0")
    rc, stdout, stderr = _finish(proc, 60)
    assert rc == 0, stderr[-2000:]
    assert "downloaded 6/6 images" in stdout
    assert all(srv.hits(p) == 1 for p in shard0)  # shard 0 was kept, not fetched again
