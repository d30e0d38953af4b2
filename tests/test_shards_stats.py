"""`wit shards` writes what DataComp's resharder and img2dataset's tools read besides the tars:
``NNNNN_stats.json`` per shard (img2dataset's per-shard stats: ``count``, ``successes``, ...),
names of a chosen width (``--shard-digits 8``: DataComp's ``00000000.tar``), and refuses a
download that is not WebDataset (synthetic, no network)."""
from __future__ import annotations

import json
import os

import braceexpand
import pytest
import webdataset as wds

from download_testlib import fake_download_shard
from pipelines import cli
from pipelines import shards as shards_stage
from wit_builder.core import WitError
from wit_builder.shards import ShardsConfig

S, F = "success", "failed_to_download"
I2D_STATS_FIELDS = {"count", "successes", "failed_to_download", "failed_to_resize", "duration", "start_time",
                    "end_time", "status_dict"}  # img2dataset's logger.write_stats


@pytest.fixture()
def images(tmp_path):
    folder = str(tmp_path / "images")
    os.makedirs(folder)
    fake_download_shard(folder, 0, [S, F, S, S, S, F, S])
    fake_download_shard(folder, 1, [S, S, F, S, S])
    return folder  # 9 successful images


def _tar_samples(path: str) -> int:
    return sum(1 for _ in wds.WebDataset(path, shardshuffle=False))


def test_every_shard_has_img2dataset_stats_matching_its_tar(images, tmp_path):
    out = str(tmp_path / "shards")
    assert cli.main(["shards", "--images", images, "--out", out, "--samples-per-shard", "4"]) == 0
    manifest = json.loads(open(f"{out}/manifest.json").read())
    assert [s["name"] for s in manifest["shards"]] == ["00000", "00001", "00002"]
    counts = []
    for s in manifest["shards"]:
        stats = json.loads(open(f"{out}/{s['name']}_stats.json").read())
        assert set(stats) == I2D_STATS_FIELDS and s["stats"] == f"{s['name']}_stats.json"
        n = _tar_samples(f"{out}/{s['tar']}")
        # what DataComp's resharder takes as the shard's size, and img2dataset's totals
        assert stats["successes"] == stats["count"] == n == s["samples"]
        assert (stats["failed_to_download"], stats["failed_to_resize"], stats["status_dict"]) == (0, 0, {"success": n})
        assert stats["end_time"] >= stats["start_time"] and stats["duration"] >= 0
        counts.append(n)
    assert counts == [4, 4, 1]

    # a smaller re-run removes the stats files of the shards it no longer writes
    shards_stage.run(ShardsConfig(images, out, samples_per_shard=100))
    assert sorted(n for n in os.listdir(out) if n.endswith("_stats.json")) == ["00000_stats.json"]
    assert json.loads(open(f"{out}/00000_stats.json").read())["successes"] == 9


def test_shard_digits_gives_datacomp_names_and_pattern(images, tmp_path):
    out = str(tmp_path / "shards")
    assert cli.main(["shards", "--images", images, "--out", out, "--samples-per-shard", "5",
                     "--shard-digits", "8"]) == 0
    names = sorted(n for n in os.listdir(out) if not n.startswith(("_", ".")))
    assert names == ["00000000.parquet", "00000000.tar", "00000000_stats.json", "00000001.parquet",
                     "00000001.tar", "00000001_stats.json", "manifest.json", "sizes.json"]
    manifest = json.loads(open(f"{out}/manifest.json").read())
    assert manifest["train_data"] == f"{out}/{{00000000..00000001}}.tar"
    assert json.loads(open(f"{out}/sizes.json").read()) == {"00000000.tar": 5, "00000001.tar": 4}
    urls = list(braceexpand.braceexpand(manifest["train_data"]))
    assert sum(_tar_samples(u) for u in urls) == 9
    # back to 5 digits: the 8-digit files of the earlier run are gone
    m = shards_stage.run(ShardsConfig(images, out, samples_per_shard=5))
    assert m["train_data"] == f"{out}/{{00000..00001}}.tar"
    assert not [n for n in os.listdir(out) if n.startswith("0000000")]
    with pytest.raises(WitError, match="--shard-digits 4"):
        ShardsConfig(images, out, shard_digits=4)


@pytest.mark.parametrize("fmt", ["parquet", "files"])
def test_a_download_in_another_format_is_a_one_line_error(images, tmp_path, capsys, fmt):
    with open(f"{images}/_wit/plan.json", "w") as fh:
        json.dump({"inputs": [["a", 7], ["b", 5]], "output_format": fmt}, fh)
    out = str(tmp_path / "shards")
    assert cli.main(["shards", "--images", images, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--output-format {fmt}" in err and "webdataset" in err and len(err.splitlines()) == 1
    assert not os.path.exists(f"{out}/manifest.json")
