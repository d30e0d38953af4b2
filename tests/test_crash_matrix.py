"""The crash matrix: each stage killed with SIGKILL at several points, then the same command again:
the same output as an uninterrupted run, nothing stale left, and a completion record (queries,
collect, balance, dedup, shards; train resumed to a bit-identical checkpoint). `wit download`'s
kill -9 test is in test_download_resume.py (a worker killed: test_hostile_server.py)."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from collect_data import make_pages, write_queries
from download_testlib import fake_download_shard
from pipelines import cli
from wit_builder import records
from wit_builder.sim.webgen import write_wat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP = re.compile(r"\..+\.tmp-[A-Za-z0-9_]+|\.wit-work-[0-9a-f]+")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from test_dedup_cluster import _detector
    d = tmp_path_factory.mktemp("crash")
    write_queries(d / "q.parquet")
    for i in range(3):
        write_wat(make_pages(40, seed=i, start=100 * i), str(d / "in" / f"CC-{i}.warc.wat.gz"))
    (d / "images").mkdir()
    for shard in range(3):
        fake_download_shard(str(d / "images"), shard, ["success", "failed_to_download", "success", "success"] * 3)
    records.complete_folder(str(d / "images"), "download")
    _detector(d / "det.pt")
    from wit_builder.sim import dumpgen
    from wit_builder.sim.dumpgen import Page
    words = "red car blue sky old city street green tree small dog".split()
    pages = [Page(f"Title {i}", " ".join(words[(i + j) % len(words)] for j in range(40))) for i in range(60)]
    dumpgen.write_dump(pages, str(d / "enwiki-x-pages-articles.xml.bz2"))
    dumpgen.write_pageviews({"20240101-00": [("en", f"Title_{i}", 50 + i) for i in range(60)]}, str(d / "pv"))
    assert cli.main(["collect", "--queries", str(d / "q.parquet"), "--input", str(d / "in"), "--out",
                     str(d / "collected"), "--num-shards", "3", "--langs", "all"]) == 0
    return d


def _command(stage: str, d: Path, out: Path) -> list[str]:
    return {
        "queries": ["queries", "--dumps", str(d / "enwiki-x-pages-articles.xml.bz2"), "--pageviews", str(d / "pv"),
                    "--out", str(out), "--parts", "unigram,title", "--unigram-min-count", "5",
                    "--title-min-views", "60", "--title-min-hourly-views", "1"],
        "collect": ["collect", "--queries", str(d / "q.parquet"), "--input", str(d / "in"), "--out", str(out),
                    "--num-shards", "3", "--langs", "all"],
        "balance": ["balance", "--matched", str(d / "collected"), "--per-query-cap", "4", "--out", str(out)],
        "shards": ["shards", "--images", str(d / "images"), "--out", str(out), "--samples-per-shard", "5"],
        "dedup": ["dedup", "run", "--shards", str(d / "images"), "--detector", str(d / "det.pt"), "--out",
                  str(out), "--threads", "1"],
    }[stage]


# the file whose appearance triggers the kill, per stage: early (the run has just begun) and late
POINTS = {
    "queries": ["_wit/running.json", "queries.parquet"],
    "collect": ["_wit/running.json", "matched/part-00000-of-00003.parquet"],
    "balance": ["_wit/running.json", "balanced/part-00000-of-00003.parquet"],
    "shards": ["_wit/running.json", "00000.tar"],
    "dedup": ["_wit/running.json", "decisions.parquet"],
}
# the outputs that must be byte-identical to an uninterrupted run's
SAME = {
    "queries": r"queries\.(parquet|txt)",
    "collect": r"(matched|balanced)/part-.*\.parquet|counts\.parquet",
    "balance": r"balanced/part-.*\.parquet|counts\.parquet",
    "shards": r"\d{5}\.(tar|parquet)|sizes\.json",
    "dedup": r"decisions\.parquet",
}


def _digests(out: Path, pattern: str) -> dict[str, str]:
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and re.fullmatch(pattern, rel):
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _kill_when(cmd: list[str], trigger: Path, cwd: Path) -> bool:
    """Run ``wit CMD`` in its own process group; SIGKILL the group as soon as ``trigger`` exists.
    Returns whether it was killed (False: it finished first)."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *cmd], cwd=str(cwd), env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 120
    try:
        while time.monotonic() < end and proc.poll() is None:
            if trigger.exists():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("stage", sorted(POINTS))
def test_kill_9_then_the_same_command(stage, inputs, tmp_path, one_thread):
    reference = tmp_path / "reference"
    assert cli.main(_command(stage, inputs, reference)) == 0
    expected = _digests(reference, SAME[stage])
    assert expected
    killed = 0
    for i, point in enumerate(POINTS[stage]):
        out = tmp_path / f"run{i}"
        if _kill_when(_command(stage, inputs, out), out / point, tmp_path):
            killed += 1
            assert not (out / records.RECORD).exists(), f"{stage} killed at {point} but its record is there"
        assert cli.main(_command(stage, inputs, out)) == 0
        assert _digests(out, SAME[stage]) == expected, (stage, point)
        stale = [p.relative_to(out).as_posix() for p in out.rglob("*") if TMP.fullmatch(p.name)]
        assert stale == [], (stage, point, stale)
        assert (out / records.RECORD).exists() and not (out / records.RUNNING).exists()
    assert killed >= 1, f"{stage}: every run finished before the kill point"


def test_train_killed_then_resumed_ends_bit_identical(tmp_path, one_thread):
    """`wit train --resume latest` killed right after its first checkpoint, or while it writes the
    second, then the same command: the final checkpoint equals the uninterrupted run's (weights,
    optimizer, RNG states, data position), and no checkpoint temporary is left."""
    import json

    import torch

    from test_trainer_robust import MICRO, _write_shards
    from test_trainer_train import _assert_identical
    from trainer.tokenizer import train_merges
    (tmp_path / "micro.json").write_text(json.dumps(MICRO))
    merges = train_merges([f"a photo {i}" for i in range(3)] * 4, 20, str(tmp_path / "merges.txt"))
    urls = _write_shards(tmp_path, "data", bad_every=None, shards=2, per_shard=32)

    def cmd(out):
        return ["train", "--train-data", urls, "--out", str(out), "--model", str(tmp_path / "micro.json"),
                "--tokenizer", merges, "--batch-size", "4", "--epochs", "2", "--save-every", "3",
                "--workers", "0", "--threads", "1", "--no-progress", "--resume", "latest"]

    assert cli.main(cmd(tmp_path / "full")) == 0
    reference = torch.load(tmp_path / "full/checkpoints/latest.pt", weights_only=True)
    killed = 0
    for i, point in enumerate(["checkpoints/latest.pt", "checkpoints/step-00000006.pt"]):
        out = tmp_path / f"run{i}"
        killed += _kill_when(cmd(out), out / point, tmp_path)
        assert cli.main(cmd(out)) == 0
        final = torch.load(out / "checkpoints/latest.pt", weights_only=True)
        _assert_identical({k: v for k, v in reference.items() if k != "args"},
                          {k: v for k, v in final.items() if k != "args"})
        stale = [p.name for p in out.rglob("*") if TMP.fullmatch(p.name)]
        assert stale == [], stale
    assert killed >= 1
