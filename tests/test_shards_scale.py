"""`wit shards` at scale: no step holds the whole dedup decisions table (each gets its own
download shards' rows, joined by name), output shards of the target size across a kill -9 and a
re-run, and the same bytes for any worker count."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from download_testlib import fake_download_shard
from pipelines import cli
from pipelines import shards as shards_stage
from pipelines.beam_options import BeamOptions
from wit_builder import records
from wit_builder.shards import ShardsConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S, F = "success", "failed_to_download"


def _make(folder: str, dedup: str, shards: int, rows: int) -> list[str]:
    """``shards`` download shards of ``rows`` rows (every 7th failed) and a decisions table in
    ``dedup`` laid out as `wit balance --pool` writes it (its extra columns), in small row groups
    that straddle download shards, with rows of a download shard that is not there. Returns the
    keys a run must write, in key order."""
    os.makedirs(folder)
    os.makedirs(dedup)
    decisions, expect = [], []
    for shard in range(shards):
        statuses = [F if i % 7 == 3 else S for i in range(rows)]
        for i, row in enumerate(fake_download_shard(folder, shard, statuses)):
            if row["status"] != S:
                continue
            kept = i % 5 != 2
            decisions.append({"uid": row["uid"], "key": row["key"], "cluster_id": i, "cluster_size": 1 + (not kept),
                              "kept": kept, "nearest_similarity": 0.5, "nearest_key": None,
                              "shard": f"{folder}/{shard:05d}.tar", "width": 32, "height": 32, "status": "ok",
                              "query_ids": row["query_ids"], "outcome": "kept" if kept else "dropped_by_dedup",
                              "keep_prob": 1.0, "dedup_kept": kept})
            if kept:
                expect.append(row["key"])
    for i in range(3):   # a download shard that is not in IMAGES: left out
        decisions.append({**decisions[0], "uid": "f" * 32, "key": f"{shards + 4:05d}{i:04d}", "kept": False})
    decisions.sort(key=lambda d: d["key"])
    pq.write_table(pa.Table.from_pylist(decisions), f"{dedup}/decisions.parquet", row_group_size=7)
    records.complete_folder(folder, "download")
    return sorted(expect)


@pytest.fixture()
def corpus(tmp_path):
    folder, dedup = str(tmp_path / "images"), str(tmp_path / "dedup")
    return folder, dedup, _make(folder, dedup, shards=4, rows=12)


def _written_keys(out: str) -> list[str]:
    keys = []
    for path in sorted(glob.glob(f"{out}/[0-9][0-9][0-9][0-9][0-9].parquet")):
        keys += pq.read_table(path, columns=["key"]).column("key").to_pylist()
    return keys


def _digests(out: str) -> dict[str, str]:
    """sha256 of every shard file and sizes.json; the per-shard stats files by their counts
    (they also hold wall-clock start and end times, as img2dataset's do)."""
    got = {}
    for p in sorted(glob.glob(f"{out}/[0-9]*.*")) + [f"{out}/sizes.json"]:
        if p.endswith("_stats.json"):
            stats = json.loads(open(p).read())
            got[os.path.basename(p)] = repr((stats["count"], stats["successes"], stats["status_dict"]))
        else:
            got[os.path.basename(p)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return got


def test_each_step_gets_only_its_own_download_shards_decisions(corpus, tmp_path, monkeypatch):
    """The counting step of a download shard gets that shard's decisions only, the writing step
    of an output shard those of the download shards it draws from, and the table is read one
    row group per element (never whole, never on the launcher)."""
    folder, dedup, expect = corpus
    seen_count, seen_write, groups = [], [], []
    count_kept, write_output_shard = shards_stage.count_kept, shards_stage.write_output_shard
    read_group = getattr(shards_stage, "read_decision_group", None)

    def spy_count(images, name, decisions):
        seen_count.append((name, dict(decisions)))
        return count_kept(images, name, decisions)

    def spy_write(cfg, index, ranges, decisions):
        seen_write.append((index, ranges, decisions))
        return write_output_shard(cfg, index, ranges, decisions)

    def spy_group(decisions, group, route):
        groups.append(group)
        return read_group(decisions, group, route)

    monkeypatch.setattr(shards_stage, "count_kept", spy_count)
    monkeypatch.setattr(shards_stage, "write_output_shard", spy_write)
    if read_group is not None:
        monkeypatch.setattr(shards_stage, "read_decision_group", spy_group)
    out = str(tmp_path / "shards")
    manifest = shards_stage.run(ShardsConfig(folder, out, dedup=dedup, samples_per_shard=5))

    table = pq.read_table(f"{dedup}/decisions.parquet")
    assert pq.ParquetFile(f"{dedup}/decisions.parquet").metadata.num_row_groups > 4
    assert sorted(name for name, _ in seen_count) == ["00000", "00001", "00002", "00003"]
    for name, decisions in seen_count:
        own = {k for k in table.column("key").to_pylist() if k.startswith(name)}
        assert set(decisions) == own, name
    assert sorted(i for i, *_ in seen_write) == list(range(len(manifest["shards"])))
    for index, ranges, decisions in seen_write:
        assert set(decisions) == {name for name, _, _ in ranges}, index
        assert all(k.startswith(name) for name, d in decisions.items() for k in d)
    # every row group read once per pass, one per element
    row_groups = pq.ParquetFile(f"{dedup}/decisions.parquet").metadata.num_row_groups
    assert sorted(groups) == sorted(list(range(row_groups)) * 2)

    assert _written_keys(out) == expect
    assert manifest["inputs"]["decisions"] == table.num_rows
    t = manifest["totals"]
    assert t["not_in_dedup"] == 0 and t["samples"] == len(expect)
    assert t["dropped_by_dedup"] == t["download_rows"] - t["download_failed"] - len(expect)


def test_bad_decisions_are_one_line_errors(corpus, tmp_path, capsys):
    folder, dedup, _ = corpus
    out = str(tmp_path / "shards")
    path = f"{dedup}/decisions.parquet"
    table = pq.read_table(path)
    # a key twice, in two row groups: found where that download shard's rows meet
    pq.write_table(pa.concat_tables([table, table.slice(5, 1)]), path, row_group_size=7)
    assert cli.main(["shards", "--images", folder, "--dedup", dedup, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"key {table.column('key')[5].as_py()} appears twice in {path}" in err and err.count("\n") == 1
    pq.write_table(table.drop_columns(["kept"]), path)
    assert cli.main(["shards", "--images", folder, "--dedup", dedup, "--out", out]) == 2
    assert "is not a decisions table (no kept column)" in capsys.readouterr().err
    with open(path, "wb") as fh:
        fh.write(b"not parquet")
    assert cli.main(["shards", "--images", folder, "--dedup", dedup, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "is not a decisions table" in err and err.count("\n") == 1
    assert not os.path.exists(f"{out}/manifest.json")


def test_kill_9_mid_write_then_rerun_gives_full_shards_each_key_once(tmp_path):
    """`wit shards` killed (SIGKILL, whole process group) as soon as its first output shard
    appears, then the same command: shards of exactly --samples-per-shard samples (the last one
    fewer), every kept key exactly once, nothing stale."""
    folder, dedup = str(tmp_path / "images"), str(tmp_path / "dedup")
    expect = _make(folder, dedup, shards=8, rows=20)
    out = tmp_path / "shards"
    cmd = ["shards", "--images", folder, "--dedup", dedup, "--out", str(out), "--samples-per-shard", "3"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *cmd], cwd=str(tmp_path), env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed, end = False, time.monotonic() + 180
    try:
        while time.monotonic() < end and proc.poll() is None:
            if (out / "00000.tar").exists():
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed, "`wit shards` finished before its first output shard was seen"
    assert not (out / "manifest.json").exists() and not (out / records.RECORD).exists()

    assert cli.main(cmd) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    sizes = json.loads((out / "sizes.json").read_text())
    counts = [sizes[f"{i:05d}.tar"] for i in range(len(sizes))]
    assert counts[:-1] == [3] * (len(counts) - 1) and 1 <= counts[-1] <= 3
    keys = _written_keys(str(out))
    assert keys == expect and len(set(keys)) == len(keys)
    assert manifest["totals"]["samples"] == len(expect) == sum(counts)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert (out / records.RECORD).exists() and not (out / records.RUNNING).exists()


def test_one_and_two_workers_write_the_same_bytes(corpus, tmp_path):
    folder, dedup, expect = corpus
    got = []
    for workers in (1, 2):
        out = str(tmp_path / f"w{workers}")
        shards_stage.run(ShardsConfig(folder, out, dedup=dedup, samples_per_shard=4), BeamOptions(workers=workers))
        assert _written_keys(out) == expect
        got.append(_digests(out))
    assert got[0] == got[1] and len(got[0]) > 3
