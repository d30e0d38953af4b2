"""`wit shards`: final WebDataset + Parquet shards from `wit download` output (synthetic, no network)."""
from __future__ import annotations

import glob
import hashlib
import json
import os

import braceexpand
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from download_testlib import fake_download_shard
from pipelines import cli
from wit_builder.core import WitError
from pipelines import shards as shards_stage
from wit_builder.shards import SHARD_SCHEMA, ShardsConfig

S, F = "success", "failed_to_download"


@pytest.fixture()
def images(tmp_path):
    """Two finished download shards, rows and tar members in completion (not key) order."""
    folder = str(tmp_path / "images")
    os.makedirs(folder)
    rows = fake_download_shard(folder, 0, [S, F, S, S, S, F, S], order=[3, 0, 6, 1, 2, 5, 4])
    rows += fake_download_shard(folder, 1, [S, S, F, S, S], order=[4, 2, 0, 3, 1])
    return folder, rows


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def read_webdataset(manifest: dict) -> list[tuple]:
    """Read the set back the way OpenCLIP does: brace pattern, decode, rename to image/text."""
    urls = list(braceexpand.braceexpand(manifest["train_data"]))
    ds = (wds.WebDataset(urls, shardshuffle=False)
          .decode("pilrgb")
          .rename(image="jpg;png;jpeg;webp", text="txt", meta="json", key="__key__", keep=False)
          .to_tuple("key", "image", "text", "meta"))
    samples = list(ds)
    assert samples or not manifest.get("shards"), "shards listed but no sample read back"
    return samples


def write_shards(images, out, progress=False, **options):
    return shards_stage.run(ShardsConfig(images, out, **options))


def test_shards_hold_successes_in_key_order_and_load_with_webdataset(images, tmp_path):
    folder, rows = images
    out = str(tmp_path / "shards")
    manifest = write_shards(folder, out, samples_per_shard=3, progress=False)
    ok = sorted((r for r in rows if r["status"] == S), key=lambda r: r["key"])
    assert [s["samples"] for s in manifest["shards"]] == [3, 3, 3]
    assert manifest["train_data"] == f"{out}/{{00000..00002}}.tar"
    t = manifest["totals"]
    assert (t["samples"], t["download_rows"], t["download_failed"], t["dropped_by_dedup"]) == (9, 12, 3, None)

    samples = read_webdataset(manifest)
    assert [k for k, *_ in samples] == [r["key"] for r in ok]  # key order, across shards too
    for (key, image, text, meta), row in zip(samples, ok):
        assert image.size == (32, 32) and text == row["caption"]
        assert meta["uid"] == row["uid"] and meta["url"] == row["url"] and meta["text"] == row["caption"]
        assert meta["query_ids"] == row["query_ids"] and meta["sha256"] == row["sha256"]
        assert (meta["original_width"], meta["original_height"]) == (40, 30)
        assert meta["cluster_id"] is None and meta["cluster_size"] is None
    # the image bytes are the downloaded ones, unchanged
    first = samples[0][0]
    raw = next(iter(wds.WebDataset(f"{out}/00000.tar", shardshuffle=False)))
    assert raw["__key__"] == first and hashlib.sha256(raw["jpg"]).hexdigest() == ok[0]["sha256"]

    sizes = json.loads(open(f"{out}/sizes.json").read())
    assert sizes == {"00000.tar": 3, "00001.tar": 3, "00002.tar": 3}
    for s in manifest["shards"]:
        assert sha(f"{out}/{s['tar']}") == s["tar_sha256"] and os.path.getsize(f"{out}/{s['tar']}") == s["tar_bytes"]
        assert sha(f"{out}/{s['parquet']}") == s["parquet_sha256"]
        table = pq.read_table(f"{out}/{s['parquet']}")
        assert table.schema.equals(SHARD_SCHEMA, check_metadata=False)
        assert table.column("key").to_pylist() == [k for k, *_ in samples][int(s["name"]) * 3:int(s["name"]) * 3 + 3]
    assert sorted(os.listdir(out)) == ["00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet",
                                       "00001.tar", "00001_stats.json", "00002.parquet", "00002.tar",
                                       "00002_stats.json", "_wit", "manifest.json", "sizes.json"]


def test_dedup_decisions_drop_kept_false_and_are_counted(images, tmp_path):
    folder, rows = images
    ok = sorted((r for r in rows if r["status"] == S), key=lambda r: r["key"])
    keys = [r["key"] for r in ok]
    # cluster 0: keys 0,1,2 (keep 0); undecodable: keys[3]; keys[4:] singletons; keys[-1] not in the table
    decisions = []
    for i, r in enumerate(ok[:-1]):
        if i < 3:
            d = (0, 3, i == 0)
        elif i == 3:
            d = (-1, 0, False)
        else:
            d = (i, 1, True)
        decisions.append({"uid": r["uid"], "key": r["key"], "shard": f"{folder}/x.tar", "cluster_id": d[0],
                          "cluster_size": d[1], "kept": d[2]})
    dedup = tmp_path / "dedup"
    dedup.mkdir()
    pq.write_table(pa.Table.from_pylist(decisions), dedup / "decisions.parquet")

    out = str(tmp_path / "shards")
    assert cli.main(["shards", "--images", folder, "--dedup", str(dedup), "--out", out,
                     "--samples-per-shard", "4"]) == 0
    manifest = json.loads(open(f"{out}/manifest.json").read())
    t = manifest["totals"]
    assert (t["dropped_by_dedup"], t["dropped_undecodable"], t["not_in_dedup"]) == (3, 1, 1)
    samples = read_webdataset(manifest)
    expect = [keys[0]] + keys[4:]
    assert [k for k, *_ in samples] == expect and t["samples"] == len(expect)
    meta = {k: m for k, _, _, m in samples}
    assert (meta[keys[0]]["cluster_id"], meta[keys[0]]["cluster_size"]) == (0, 3)
    assert meta[keys[-1]]["cluster_id"] is None  # not in the decisions: kept, counted

    # decisions of another download (same key, other uid) are refused
    decisions[0]["uid"] = "0" * 32
    pq.write_table(pa.Table.from_pylist(decisions), dedup / "decisions.parquet")
    with pytest.raises(WitError, match="decisions of another download"):
        write_shards(folder, out, dedup=str(dedup), progress=False)


def test_rerun_is_byte_identical_and_drops_stale_shards(images, tmp_path):
    folder, _ = images
    out = str(tmp_path / "shards")
    m1 = write_shards(folder, out, samples_per_shard=2, progress=False)
    assert len(m1["shards"]) == 5
    m2 = write_shards(folder, out, samples_per_shard=2, progress=False)
    assert [s["tar_sha256"] for s in m1["shards"]] == [s["tar_sha256"] for s in m2["shards"]]
    m3 = write_shards(folder, out, samples_per_shard=100, progress=False)
    assert [s["name"] for s in m3["shards"]] == ["00000"]
    assert sorted(os.listdir(out)) == ["00000.parquet", "00000.tar", "00000_stats.json", "_wit", "manifest.json",
                                       "sizes.json"]
    assert len(read_webdataset(m3)) == 9


def test_unfinished_download_is_refused_unless_allowed(tmp_path, capsys):
    folder = str(tmp_path / "images")
    os.makedirs(folder)
    fake_download_shard(folder, 0, [S, S])
    fake_download_shard(folder, 1, [S, S], done=False)  # killed before its stats file
    with open(f"{folder}/_wit/plan.json", "w") as fh:
        json.dump({"inputs": [["a", 2], ["b", 2]]}, fh)
    out = str(tmp_path / "shards")
    assert cli.main(["shards", "--images", folder, "--out", out]) == 2
    assert "only 1 of 2 download shards are finished" in capsys.readouterr().err
    m = write_shards(folder, out, allow_incomplete=True, progress=False)
    assert m["inputs"]["image_shards"] == ["00000"] and m["totals"]["samples"] == 2
    with pytest.raises(WitError, match="no finished download shards"):
        write_shards(str(tmp_path), out, progress=False)


def test_bad_download_shards_are_one_line_errors_and_leave_no_set(tmp_path, capsys):
    """Checked on the launcher after the counting pass: a key twice in one download shard,
    download shards whose keys overlap, and nothing left to write (all dropped by dedup)."""
    import pyarrow.parquet as pq
    folder = str(tmp_path / "images")
    os.makedirs(folder)
    fake_download_shard(folder, 0, [S, S, S])
    fake_download_shard(folder, 1, [S, S])
    out = str(tmp_path / "shards")
    # shard 1's keys renamed into shard 0's range: the shards overlap
    t = pq.read_table(f"{folder}/00001.parquet")
    keys = [k.replace("00001", "00000", 1) for k in t.column("key").to_pylist()]
    pq.write_table(t.set_column(t.schema.get_field_index("key"), "key", pa.array(keys)), f"{folder}/00001.parquet")
    assert cli.main(["shards", "--images", folder, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "download shards overlap" in err and err.count("\n") == 1 and "Traceback" not in err
    # a key twice in one download shard
    t = pq.read_table(f"{folder}/00000.parquet")
    pq.write_table(pa.concat_tables([t, t.slice(0, 1)]), f"{folder}/00000.parquet")
    assert cli.main(["shards", "--images", folder, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "appears twice in shard 00000" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(f"{out}/manifest.json") and not glob.glob(f"{out}/.wit-work-*")


def test_empty_and_unreadable_images_are_dropped_and_counted_without_dedup(tmp_path):
    folder = str(tmp_path / "images")
    os.makedirs(folder)
    fake_download_shard(folder, 0, [S] * 5, bodies={1: b"", 3: b"<html>not an image</html>"})
    m = write_shards(folder, str(tmp_path / "out"))
    t = m["totals"]
    assert (t["samples"], t["bad_image"], t["truncated_tar"]) == (3, 2, 0)
    keys = [k for k, *_ in read_webdataset(m)]
    assert keys == ["000000000", "000000002", "000000004"]


def test_a_truncated_download_tar_gives_its_whole_images_and_counts_the_rest(tmp_path):
    folder = str(tmp_path / "images")
    os.makedirs(folder)
    fake_download_shard(folder, 0, [S] * 6)
    raw = open(f"{folder}/00000.tar", "rb").read()
    with open(f"{folder}/00000.tar", "wb") as fh:
        fh.write(raw[:len(raw) // 2])
    m = write_shards(folder, str(tmp_path / "out"))
    t = m["totals"]
    assert t["truncated_tar"] == 1 and 0 < t["samples"] < 6
    assert t["samples"] + t["missing_in_tar"] + t["bad_image"] == 6
    assert len(read_webdataset(m)) == t["samples"]


def test_a_rerun_removes_what_a_killed_run_left(images, tmp_path):
    folder, _ = images
    out = tmp_path / "shards"
    out.mkdir()
    stale = [out / ".00000.tar.tmp-k3x9a1b2", out / ".manifest.json.tmp-0a1b2c3d", out / ".wit-work-0123456789"]
    stale[0].write_bytes(b"\0" * 4096)
    stale[1].write_text("{")
    (stale[2] / "plans").mkdir(parents=True)
    mine = out / "notes.txt"     # not ours: kept
    mine.write_text("keep me")
    write_shards(folder, str(out), samples_per_shard=4)
    assert not any(p.exists() for p in stale) and mine.read_text() == "keep me"
