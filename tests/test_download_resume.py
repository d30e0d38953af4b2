"""kill -9 `wit download` midway, re-run the same command: finished shards are kept untouched,
the partial one is redone, and the final keys have no duplicates and no gaps. Uses the real CLI
in a subprocess, with the CLI's --resolve/--allowed-endpoint/--samples-per-shard flags.

The kill is the harsh variant: SIGKILL to the parent alone, so img2dataset's spawned worker and
logger processes are orphaned mid-shard; they must notice and exit by themselves (their parent
watchdog) before the group is SIGKILLed as well (which also covers `kill -9 -PGID`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pyarrow.parquet as pq

from download_testlib import image_bytes, write_balanced
from wit_builder.download_plan import sample_order
from wit_builder.sim.loopback import LoopbackServer

SHARDS, ROWS = 4, 5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_for(predicate, timeout: float, what: str, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"wit download exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_midway_then_rerun_gives_every_key_once(tmp_path):
    routes = {f"/{s}/{i}.jpg": {"body": image_bytes("JPEG", (16, 16), (40 * s, 20 * i, 100)),
                                "headers": {"Content-Type": "image/jpeg"}}
              for s in range(SHARDS) for i in range(ROWS)}
    routes["/2/3.jpg"] = {"status": 404}  # a failure is a key too
    first_run = {"on": True}
    with LoopbackServer(routes) as srv:
        pairs = tmp_path / "balanced"
        pairs.mkdir()
        for s in range(SHARDS):
            write_balanced(str(pairs / f"part-{s:05d}-of-{SHARDS:05d}.parquet"),
                           [f"http://img.test:{srv.port}/{s}/{i}.jpg" for i in range(ROWS)])
        # the download's shards: the URLs in hash order, cut every ROWS (docs/download.md)
        order = sorted((f"http://img.test:{srv.port}/{s}/{i}.jpg" for s in range(SHARDS) for i in range(ROWS)),
                       key=sample_order)
        shard_paths = [[u.split(str(srv.port), 1)[1] for u in order[k * ROWS:(k + 1) * ROWS]] for k in range(SHARDS)]
        held, port = shard_paths[1][-1], str(srv.port)
        stall = dict(routes[held])
        # during the first run, shard 1's last image stalls: the kill lands while shard 1 is half-written
        srv.add_route(held, lambda path, headers: {**stall, "delay": 1.5 if first_run["on"] else 0})
        out = tmp_path / "images"
        cmd = [sys.executable, "-m", "pipelines.cli", "download", "--pairs", str(pairs), "--out", str(out),
               "--processes", "1", "--threads", "1", "--timeout", "2", "--image-size", "32",
               "--samples-per-shard", str(ROWS),
               "--resolve", "img.test=127.0.0.1", "--allowed-endpoint", f"127.0.0.1:{srv.port}"]
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}

        proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            # kill once shard 0 is finished and shard 1 is half-way (files under _wit/partial)
            _wait_for(lambda: (out / "00000_stats.json").exists(), 120, "shard 0 to finish", proc)
            _wait_for(lambda: srv.hits(held) > 0, 30, "shard 1 to be half-way", proc)
            os.kill(proc.pid, signal.SIGKILL)  # the parent only
            proc.wait()
            end = time.monotonic() + 30
            while _group_alive(proc.pid) and time.monotonic() < end:
                time.sleep(0.05)
            assert not _group_alive(proc.pid), f"orphaned workers still running after 30 s: {_group_members(proc.pid)}"
        finally:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

        done_before = {s for s in range(SHARDS) if (out / f"{s:05d}_stats.json").exists()}
        assert 0 in done_before and len(done_before) < SHARDS
        assert os.listdir(out / "_wit" / "partial")  # the shard in progress was left half-written
        for name in os.listdir(out):  # ... but nothing half-written is at a final name
            if name.endswith(".tar"):
                with tarfile.open(out / name) as tar:
                    tar.getmembers()
            if name.endswith(".parquet"):
                pq.read_table(out / name)
        kept = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out) if n.startswith("00000")}
        hits_before = {p: srv.hits(p) for p in routes}
        first_run["on"] = False

        rerun = subprocess.run(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=240)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"downloaded {SHARDS * ROWS - 1}/{SHARDS * ROWS} images" in rerun.stdout

        summary = json.loads((out / "_wit" / "summary.json").read_text())
        # what a kill -9 leaves besides (img2dataset's _tmp/, a worker's partial folder) goes on the
        # next run, even one with nothing left to download
        (out / "_tmp" / "1").mkdir(parents=True)
        (out / "_tmp" / "1" / "feather").write_bytes(b"x" * 100)
        (out / "_wit" / "partial" / "00002.77-88").mkdir(parents=True)
        (out / "_wit" / "partial" / "00002.77-88" / "00002.tar").write_bytes(b"x" * 100)
        again = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=240)
        assert again.returncode == 0, again.stderr[-3000:]
        assert not (out / "_tmp").exists() and not (out / "_wit" / "partial").exists()

    # finished shards untouched and not fetched again; the others fetched again
    assert {n: os.stat(out / n).st_mtime_ns for n in kept} == kept
    for s in range(SHARDS):
        again = sum(srv.hits(p) - hits_before[p] for p in shard_paths[s])
        assert again == (0 if s in done_before else ROWS), s

    # every key exactly once, in parquet and (successes) in tar; nothing partial left
    all_keys = []
    for s in range(SHARDS):
        rows = pq.read_table(out / f"{s:05d}.parquet").to_pylist()
        keys = sorted(r["key"] for r in rows)
        assert keys == [f"{s:05d}{i:04d}" for i in range(ROWS)]
        assert [r["url"].split(port, 1)[1] for r in sorted(rows, key=lambda r: r["key"])] == shard_paths[s]
        with tarfile.open(out / f"{s:05d}.tar") as tar:
            jpgs = sorted(m.name[:-4] for m in tar.getmembers() if m.name.endswith(".jpg"))
        assert jpgs == sorted(r["key"] for r in rows if r["status"] == "success")
        assert json.loads((out / f"{s:05d}_stats.json").read_text())["count"] == ROWS
        all_keys += keys
    assert len(all_keys) == len(set(all_keys)) == SHARDS * ROWS
    assert not (out / "_wit" / "lock").exists()
    assert summary["by_error_kind"] == {"http_404": 1} and summary["shards_already_done"] == len(done_before)


def _group_members(pgid: int) -> list[str]:
    """'pid state ppid cmdline' of every process of group ``pgid`` (for failure messages)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")[:160]
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(f"{pid} {fields[0]} ppid={fields[1]} {cmd}")
    return found


def _group_alive(pgid: int) -> bool:
    """Is any process of group ``pgid`` still running? (Zombies don't count: where PID 1 does not
    reap adopted orphans they linger as entries, but they run nothing.)"""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


_LATE_WATCHDOG = '''
import multiprocessing, sys, time


def child():
    time.sleep(1.0)  # the parent is killed meanwhile (as if during the worker's imports)
    from wit_builder.download_worker import _start_watchdog
    _start_watchdog()
    time.sleep(120)  # only the watchdog ends this early


if __name__ == "__main__":
    p = multiprocessing.get_context("spawn").Process(target=child)
    p.start()
    print(p.pid, flush=True)
    time.sleep(120)
'''


def test_worker_whose_parent_died_before_its_watchdog_started_exits(tmp_path):
    script = tmp_path / "late_watchdog.py"
    script.write_text(_LATE_WATCHDOG)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    try:
        int(proc.stdout.readline())  # the child exists
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        end = time.monotonic() + 60
        while _group_alive(proc.pid) and time.monotonic() < end:
            time.sleep(0.1)
        assert not _group_alive(proc.pid), f"orphan still running: {_group_members(proc.pid)}"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
