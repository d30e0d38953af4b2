"""Completion records: a later stage refuses the output of a killed run and the leftovers of an
earlier one, and takes data no wit stage wrote as it is."""
import os

import pytest

from collect_data import make_pages, write_queries
from download_testlib import fake_download_shard, write_balanced
from pipelines import cli
from pipelines import shards as shards_stage
from wit_builder import records
from wit_builder.core import WitError
from wit_builder.download import plan_inputs
from wit_builder.shards import ShardsConfig
from wit_builder.sim.webgen import write_wat


def test_the_record_rules(tmp_path):
    out = str(tmp_path / "st")
    os.makedirs(f"{out}/part")
    for i in range(2):
        (tmp_path / "st" / "part" / f"{i}.parquet").write_bytes(b"x" * (i + 1))
    files = [f"{out}/part/{i}.parquet" for i in range(2)]
    assert records.verify_inputs(files, "--in") == files          # no record, no marker: foreign data
    records.begin(out, "balance")
    with pytest.raises(WitError, match=r"unfinished `wit balance` run.*re-run `wit balance`"):
        records.verify_inputs(files, "--in")
    rec = records.complete_folder(out, "balance", counts={"rows": 3})
    assert [e["path"] for e in rec["outputs"]] == ["part/0.parquet", "part/1.parquet"]
    assert not os.path.exists(f"{out}/{records.RUNNING}")
    assert records.verify_inputs(files, "--in") == files
    (tmp_path / "st" / "part" / "9.parquet").write_bytes(b"old")   # left by an earlier run
    with pytest.raises(WitError, match="9.parquet is not an output of the finished `wit balance`"):
        records.verify_inputs([*files, f"{out}/part/9.parquet"], "--in")
    (tmp_path / "st" / "part" / "1.parquet").write_bytes(b"changed")
    with pytest.raises(WitError, match="changed after `wit balance` finished"):
        records.verify_inputs(files, "--in")


def test_download_refuses_the_output_of_a_killed_balance_overwrite(tmp_path, monkeypatch, capsys):
    from pipelines import balance as balance_stage
    write_queries(tmp_path / "q.parquet")
    write_wat(make_pages(40), str(tmp_path / "in" / "a.warc.wat.gz"))
    assert cli.main(["collect", "--queries", str(tmp_path / "q.parquet"), "--input", str(tmp_path / "in"),
                     "--out", str(tmp_path / "c"), "--num-shards", "4", "--langs", "all"]) == 0
    bal = tmp_path / "b"
    args = ["balance", "--matched", str(tmp_path / "c"), "--out", str(bal)]
    assert cli.main([*args, "--per-query-cap", "5"]) == 0
    assert len(plan_inputs(str(bal / "balanced"))[0]) == 4

    def killed(*a, **k):  # the process dies after the run started, before any part is rewritten
        raise KeyboardInterrupt
    monkeypatch.setattr(balance_stage, "remove_stale_parts", killed)
    assert cli.main([*args, "--per-query-cap", "7", "--overwrite"]) == 130
    with pytest.raises(WitError, match="unfinished `wit balance` run"):
        plan_inputs(str(bal / "balanced"))
    capsys.readouterr()
    assert cli.main(["download", "--pairs", str(bal / "balanced"), "--out", str(tmp_path / "img")]) == 2
    assert "re-run `wit balance`" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main([*args, "--per-query-cap", "7", "--overwrite"]) == 0
    assert len(plan_inputs(str(bal / "balanced"))[0]) == 4


def test_shards_of_a_killed_rerun_are_refused_and_stale_ones_named(tmp_path, monkeypatch):
    images = str(tmp_path / "images")
    os.makedirs(images)
    fake_download_shard(images, 0, ["success"] * 6)
    records.complete_folder(images, "download")
    out = str(tmp_path / "shards")
    manifest = shards_stage.run(ShardsConfig(images, out, samples_per_shard=2))
    tars = [f"{out}/{s['tar']}" for s in manifest["shards"]]
    assert records.verify_inputs(tars, "--train-data") == tars

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(shards_stage, "assign_output_shards", killed)
    with pytest.raises(KeyboardInterrupt):
        shards_stage.run(ShardsConfig(images, out, samples_per_shard=3))
    with pytest.raises(WitError, match="unfinished `wit shards` run"):
        records.verify_inputs(tars, "--train-data")
    monkeypatch.undo()
    manifest = shards_stage.run(ShardsConfig(images, out, samples_per_shard=3))
    assert len(manifest["shards"]) == 2
    with open(f"{out}/00007.tar", "wb") as fh:   # a shard no run of this set wrote
        fh.write(b"\0" * 1024)
    with pytest.raises(WitError, match="00007.tar is not an output of the finished `wit shards`"):
        records.verify_inputs([f"{out}/{n}.tar" for n in ("00000", "00001", "00007")], "--train-data")


def test_download_output_of_an_unfinished_run_is_refused_by_shards(tmp_path):
    images = str(tmp_path / "images")
    os.makedirs(images)
    fake_download_shard(images, 0, ["success"] * 3)
    records.begin(images, "download")
    with pytest.raises(WitError, match="unfinished `wit download` run"):
        shards_stage.run(ShardsConfig(images, str(tmp_path / "s")))
    manifest = shards_stage.run(ShardsConfig(images, str(tmp_path / "s"), allow_incomplete=True))
    assert manifest["totals"]["samples"] == 3
    write_balanced(str(tmp_path / "mine.parquet"), ["http://a.test/1.jpg"])   # a user's own table
    assert len(plan_inputs(str(tmp_path / "mine.parquet"))[0]) == 1


def test_train_refuses_shards_of_an_unfinished_shards_run(tmp_path, capsys):
    images = str(tmp_path / "images")
    os.makedirs(images)
    fake_download_shard(images, 0, ["success"] * 4)
    out = str(tmp_path / "shards")
    shards_stage.run(ShardsConfig(images, out, samples_per_shard=2))
    records.begin(out, "shards")  # what a re-run that was killed leaves
    import json

    from test_trainer_robust import MICRO
    from trainer.tokenizer import train_merges
    (tmp_path / "micro.json").write_text(json.dumps(MICRO))
    merges = train_merges(["caption 0-1"] * 4, 20, str(tmp_path / "merges.txt"))
    code = cli.main(["train", "--train-data", f"{out}/{{00000..00001}}.tar", "--out", str(tmp_path / "run"),
                     "--model", str(tmp_path / "micro.json"), "--tokenizer", merges, "--batch-size", "2",
                     "--epochs", "1", "--no-progress"])
    assert code == 2
    assert "unfinished `wit shards` run" in capsys.readouterr().err


def test_a_rewritten_input_under_the_same_name_is_not_taken_for_the_old_one(tmp_path, capsys):
    import time

    from wit_builder.download import DownloadOptions, prepare
    # collect: a table whose text changed but not its size -> not "already complete"
    write_queries(tmp_path / "q.parquet")
    table = tmp_path / "in" / "pairs.csv"
    table.parent.mkdir()
    table.write_text("url,caption\nhttps://a.test/1.jpg,a red car in the city\n")
    args = ["collect", "--queries", str(tmp_path / "q.parquet"), "--input", str(table), "--out", str(tmp_path / "c"),
            "--langs", "all"]
    assert cli.main(args) == 0
    time.sleep(0.01)
    table.write_text("url,caption\nhttps://a.test/2.jpg,a red car in the town\n")
    assert cli.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    # balance: matched/ re-collected under the same names -> balanced again, not "already complete"
    assert cli.main(args + ["--overwrite"]) == 0
    bal = ["balance", "--matched", str(tmp_path / "c"), "--per-query-cap", "3", "--out", str(tmp_path / "b")]
    assert cli.main(bal) == 0
    table.write_text("url,caption\nhttps://a.test/3.jpg,a red car in the street\n")
    assert cli.main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    assert cli.main(bal) == 2
    assert "other inputs or options" in capsys.readouterr().err
    # download: an input parquet rewritten with as many rows -> the old shards are not reused
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    write_balanced(str(pairs / "part-00000-of-00001.parquet"), ["http://a.test/1.jpg"])
    prepare(str(pairs), str(tmp_path / "img"), DownloadOptions())
    write_balanced(str(pairs / "part-00000-of-00001.parquet"), ["http://a.test/2.jpg"])
    with pytest.raises(WitError, match="holds a download with other inputs"):
        prepare(str(pairs), str(tmp_path / "img"), DownloadOptions())


def test_begin_removes_what_a_killed_run_left(tmp_path):
    out = tmp_path / "dd"
    (out / "embeddings").mkdir(parents=True)
    (out / "other").mkdir()
    stale = [out / ".stats.json.tmp-ho6tenp9", out / "embeddings" / ".00000-1a2b3c4d.parquet.tmp-x_y1z2w3"]
    kept = [out / "other" / ".notes.txt.tmp-abcdefgh", out / "decisions.parquet", out / ".hidden"]
    for p in stale + kept:
        p.write_bytes(b"x")
    records.begin(str(out), "dedup", ("embeddings",))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
