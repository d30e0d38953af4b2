"""The Beam download (planning as a Beam shuffle, then one element per shard) on the DirectRunner,
then `wit shards` on its output, read back with webdataset the way OpenCLIP reads --train-data."""
from __future__ import annotations

import json
import os
import urllib.request

import braceexpand
import pyarrow.parquet as pq
import webdataset as wds

from download_testlib import image_bytes, write_balanced
from pipelines.beam_options import BeamOptions
from pipelines import download
from wit_builder.download import DownloadConfig, DownloadOptions
from wit_builder.sim.loopback import LoopbackServer
from pipelines import shards as shards_stage
from wit_builder.shards import ShardsConfig


def write_shards(images, out, progress=False, **options):
    return shards_stage.run(ShardsConfig(images, out, **options))


def test_beam_runner_downloads_resumes_and_feeds_shards(tmp_path):
    internal = LoopbackServer()
    public = LoopbackServer()
    with internal, public:
        for s in range(3):
            for i in range(4):
                public.add_route(f"/{s}/{i}.jpg", {"body": image_bytes("JPEG", (20, 10), (60 * s, 50 * i, 9)),
                                                   "headers": {"Content-Type": "image/jpeg"}})
        public.add_route("/1/2.jpg", {"status": 404})
        public.add_route("/2/3.jpg", {"redirect": internal.url("/x.jpg")})
        pairs = tmp_path / "balanced"
        pairs.mkdir()
        urls = {s: [f"http://img.test:{public.port}/{s}/{i}.jpg" for i in range(4)] for s in range(3)}
        for s in range(3):
            write_balanced(str(pairs / f"part-{s:05d}.parquet"), urls[s], first_query=10 * s)
        out = str(tmp_path / "images")
        opts = DownloadOptions(threads=4, timeout=2, image_size=32, allowed_endpoints=[f"127.0.0.1:{public.port}"],
                               resolve={"img.test": "127.0.0.1"}, samples_per_shard=4)
        summary = download.run(DownloadConfig(str(pairs), out, opts), BeamOptions("DirectRunner"), progress=False)
        # the DoFn's guard is gone after teardown (something else may have installed a default opener)
        assert getattr(urllib.request._opener, "_wit_policy", None) is None
        assert internal.requests == []
        assert (summary["samples"], summary["success"], summary["shards"]) == (12, 10, 3)
        assert summary["by_error_kind"] == {"http_404": 1, "ssrf_blocked": 1}

        # same files and markers as the local runner
        for s in range(3):
            rows = pq.read_table(f"{out}/{s:05d}.parquet").to_pylist()
            assert sorted(r["key"] for r in rows) == [f"{s:05d}{i:04d}" for i in range(4)]
            assert json.loads(open(f"{out}/{s:05d}_stats.json").read())["count"] == 4
        assert os.listdir(f"{out}/_wit/partial") == []

        # resume: a shard whose done-marker is gone is redone, the others are not fetched again
        os.remove(f"{out}/00001_stats.json")
        shard1 = sorted(r["url"].split(str(public.port))[1] for r in pq.read_table(f"{out}/00001.parquet").to_pylist())
        hits = len(public.requests)
        again = download.run(DownloadConfig(str(pairs), out, opts), BeamOptions("DirectRunner"), progress=False)
        new = [r.path for r in public.requests[hits:]]
        assert sorted(new) == shard1
        assert again["shards_already_done"] == 2 and again["samples"] == 12

    # final shards from the Beam run's output, read back like OpenCLIP's --train-data
    shards = str(tmp_path / "shards")
    manifest = write_shards(out, shards, samples_per_shard=4, progress=False)
    assert manifest["train_data"] == f"{shards}/{{00000..00002}}.tar"
    assert json.loads(open(f"{shards}/sizes.json").read()) == {"00000.tar": 4, "00001.tar": 4, "00002.tar": 2}
    ds = (wds.WebDataset(list(braceexpand.braceexpand(manifest["train_data"])), shardshuffle=False)
          .decode("pilrgb").rename(image="jpg;png;jpeg;webp", text="txt", meta="json", keep=False))
    got = list(ds)
    keys = [g["meta"]["key"] for g in got]
    assert keys == sorted(keys) and len(keys) == 10
    failed = {r["url"] for s in range(3) for r in pq.read_table(f"{out}/{s:05d}.parquet").to_pylist()
              if r["status"] != "success"}
    assert failed == {urls[1][2], urls[2][3]}
    src = {u: (s, i) for s in urls for i, u in enumerate(urls[s])}
    for g in got:
        assert g["image"].size == (32, 32)
        assert g["meta"]["url"] in src and g["meta"]["url"] not in failed and g["text"] == g["meta"]["text"]
        s, i = src[g["meta"]["url"]]
        assert g["meta"]["query_ids"] == [10 * s + i, 10 * s + i + 1]
