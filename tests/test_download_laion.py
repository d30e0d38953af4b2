"""`wit download` for img2dataset and DataComp users: LAION/DataComp parquets read directly
(``--url-col``, ``--caption-col``; a uid kept or derived), img2dataset's ``--min-image-size`` and
``--max-aspect-ratio``, and ``--output-format parquet|files`` written atomically and resumed.

The planning tests call ``prepare`` (no network); the downloads use a loopback server on 127.0.0.1."""
from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from download_testlib import image_bytes, uid_of
from pipelines import cli, download
from pipelines.beam_options import BeamOptions
from wit_builder.core import WitError
from wit_builder.download import (DownloadConfig, DownloadOptions, completed_shards, download_one_shard,
                                   make_downloader, prepare)
from wit_builder.netsafety import guarded
from wit_builder.sim.loopback import LoopbackServer


def _laion(path, urls: list[str], texts: list[str]) -> str:
    """A LAION-400M-style metadata parquet: upper-case URL and TEXT, an integer SAMPLE_ID, no uid."""
    n = len(urls)
    pq.write_table(pa.table({"SAMPLE_ID": pa.array(range(100, 100 + n), pa.int64()), "URL": urls, "TEXT": texts,
                             "HEIGHT": [32] * n, "WIDTH": [32] * n, "LICENSE": ["?"] * n,
                             "similarity": [0.31] * n}), path)
    return str(path)


def _parts(out: str) -> list[dict]:
    folder = os.path.join(out, "_wit", "input")
    return [r for n in sorted(os.listdir(folder)) for r in pq.read_table(os.path.join(folder, n)).to_pylist()]


def test_laion_and_datacomp_parquets_are_planned_with_their_columns(tmp_path):
    urls = ["http://img.test/a.jpg", "http://img.test/b.jpg", "http://img.test/a.jpg"]
    texts = ["a red square", "a blue circle", "red square, again"]
    laion = _laion(tmp_path / "laion.parquet", urls, texts)
    out = str(tmp_path / "img")
    plan = prepare(laion, out, DownloadOptions(url_col="URL", caption_col="TEXT"))
    rows = {r["url"]: r for r in _parts(out)}
    assert plan.pairs == 3 and sorted(rows) == sorted(set(urls))
    # no uid column: the uid is derived from (url, caption) as `wit collect` does; the smallest wins
    a = min((uid_of(urls[0], t), t) for t in (texts[0], texts[2]))
    assert (rows[urls[0]]["uid"], rows[urls[0]]["text"], rows[urls[0]]["pairs"]) == (a[0], a[1], 2)
    assert rows[urls[1]]["uid"] == uid_of(urls[1], texts[1]) and rows[urls[1]]["query_ids"] is None
    stored = json.loads(open(f"{out}/_wit/plan.json").read())
    assert (stored["url_col"], stored["caption_col"]) == ("URL", "TEXT")
    # the Beam planner (PlanDownload) reads the same columns and writes the same shards
    prepare(laion, str(tmp_path / "img-beam"), DownloadOptions(url_col="URL", caption_col="TEXT"),
            download.beam_planner(BeamOptions("DirectRunner")))
    assert _parts(str(tmp_path / "img-beam")) == _parts(out)

    # DataComp: url, text and a hex uid, which is kept as it is
    dc = tmp_path / "datacomp.parquet"
    uids = ["00000a1f5c9e4e6bb2b0c8c1a9f0e1d2", "ffff0a1f5c9e4e6bb2b0c8c1a9f0e1d2"]
    pq.write_table(pa.table({"uid": uids, "url": urls[:2], "text": texts[:2], "original_width": [64, 64],
                             "original_height": [48, 48], "clip_b32_similarity_score": [0.3, 0.2]}), dc)
    out2 = str(tmp_path / "img2")
    prepare(str(dc), out2, DownloadOptions())
    assert {r["url"]: r["uid"] for r in _parts(out2)} == dict(zip(urls[:2], uids))
    # a download with the default columns keeps the plan of older wit versions (no new keys)
    assert not {"url_col", "caption_col", "output_format", "min_image_size"} & set(
        json.loads(open(f"{out2}/_wit/plan.json").read()))


def test_a_missing_column_is_one_line_naming_it_the_file_and_the_columns(tmp_path, capsys):
    laion = _laion(tmp_path / "laion.parquet", ["http://img.test/a.jpg"], ["a cat"])
    with pytest.raises(WitError) as err:
        prepare(laion, str(tmp_path / "img"), DownloadOptions())  # default url/text: not LAION's names
    msg = str(err.value)
    assert "['url', 'text']" in msg and laion in msg and "URL" in msg and "TEXT" in msg and "SAMPLE_ID" in msg
    assert cli.main(["download", "--pairs", laion, "--out", str(tmp_path / "img2"), "--url-col", "URL",
                     "--caption-col", "caption"]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and "['caption']" in line and laion in line and "TEXT" in line
    with pytest.raises(WitError, match="--output-format"):
        DownloadOptions(output_format="tfrecord").validate()
    with pytest.raises(WitError, match="--max-aspect-ratio"):
        DownloadOptions(max_aspect_ratio=0.5).validate()


def test_laion_parquet_to_parquet_output_with_size_and_aspect_limits(tmp_path, capsys):
    """CLI end to end: LAION columns, --output-format parquet, --min-image-size, --max-aspect-ratio;
    one request per URL, resumed without requests, another format refused, wit shards refuses it."""
    jpeg = lambda size: {"body": image_bytes("JPEG", size), "headers": {"Content-Type": "image/jpeg"}}  # noqa: E731
    routes = {f"/ok{i}.jpg": jpeg((24, 16)) for i in range(3)}
    routes |= {"/tiny.jpg": jpeg((6, 6)), "/wide.jpg": jpeg((80, 12))}
    with LoopbackServer(routes) as srv:
        host = f"http://img.test:{srv.port}"
        paths = ["/ok0.jpg", "/ok1.jpg", "/ok2.jpg", "/tiny.jpg", "/wide.jpg", "/gone.jpg"]
        urls = [host + p for p in paths]
        texts = [f"caption of {p}" for p in paths]
        laion = _laion(tmp_path / "laion.parquet", urls + [urls[0]], texts + ["another caption of ok0"])
        out = str(tmp_path / "img")
        args = ["download", "--pairs", laion, "--out", out, "--url-col", "URL", "--caption-col", "TEXT",
                "--output-format", "parquet", "--min-image-size", "10", "--max-aspect-ratio", "3",
                "--samples-per-shard", "4", "--processes", "1", "--threads", "4", "--timeout", "5",
                "--image-size", "16", "--resolve", "img.test=127.0.0.1", "--allowed-endpoint",
                f"127.0.0.1:{srv.port}"]
        assert cli.main(args) == 0
        assert all(srv.hits(p) == 1 for p in paths), [srv.hits(p) for p in paths]
        assert cli.main(args) == 0  # resumed: every shard done, no request
        assert all(srv.hits(p) == 1 for p in paths)
        assert cli.main([*args[:-6], "--output-format", "files", *args[-6:]]) == 2
    err = capsys.readouterr().err
    assert "output_format" in err

    names = sorted(n for n in os.listdir(out) if not n.startswith("_"))
    assert names == ["00000.parquet", "00000_stats.json", "00001.parquet", "00001_stats.json"]
    rows = {r["url"]: r for n in ("00000", "00001") for r in pq.read_table(f"{out}/{n}.parquet").to_pylist()}
    assert len(rows) == 6
    kinds = {p: rows[host + p]["error_kind"] for p in paths}
    assert kinds == {"/ok0.jpg": None, "/ok1.jpg": None, "/ok2.jpg": None, "/tiny.jpg": "too_small",
                     "/wide.jpg": "aspect_ratio", "/gone.jpg": "http_404"}
    for p in paths[:3]:
        r = rows[host + p]
        assert r["status"] == "success" and r["caption"] and r["uid"] == uid_of(host + p, r["caption"])
        with Image.open(io.BytesIO(r["jpg"])) as im:  # the image is inside the parquet
            assert max(im.size) == 16
    assert rows[host + "/ok0.jpg"]["pairs"] == 2 and rows[host + "/tiny.jpg"]["jpg"] is None
    summary = json.loads(open(f"{out}/_wit/summary.json").read())
    assert summary["success"] == 3 and summary["incomplete_shards"] == []
    # wit shards reads WebDataset downloads only: a clear one-line error
    assert cli.main(["shards", "--images", out, "--out", str(tmp_path / "shards")]) == 2
    line = capsys.readouterr().err.strip()
    assert "--output-format parquet" in line and len(line.splitlines()) == 1


def test_datacomp_parquet_to_files_output(tmp_path):
    """--output-format files: NNNNN/KEY.jpg, .txt, .json (with DataComp's uid) and NNNNN.parquet,
    renamed into place when complete; nothing left in the work folder."""
    jpeg = {"body": image_bytes("JPEG", (20, 20)), "headers": {"Content-Type": "image/jpeg"}}
    with LoopbackServer({f"/{i}.jpg": jpeg for i in range(3)}) as srv:
        urls = [f"http://img.test:{srv.port}/{i}.jpg" for i in range(3)] + [f"http://img.test:{srv.port}/x.jpg"]
        uids = [f"{i:032x}" for i in range(4)]
        dc = tmp_path / "dc.parquet"
        pq.write_table(pa.table({"uid": uids, "url": urls, "text": [f"t{i}" for i in range(4)]}), dc)
        out = str(tmp_path / "img")
        opts = DownloadOptions(output_format="files", processes=1, threads=4, timeout=5, image_size=16,
                               allowed_endpoints=[f"127.0.0.1:{srv.port}"], resolve={"img.test": "127.0.0.1"})
        summary = download.run(DownloadConfig(str(dc), out, opts), progress=False)
    assert (summary["samples"], summary["success"], summary["incomplete_shards"]) == (4, 3, [])
    assert sorted(n for n in os.listdir(out) if not n.startswith("_")) == ["00000", "00000.parquet",
                                                                           "00000_stats.json"]
    rows = pq.read_table(f"{out}/00000.parquet").to_pylist()
    by_uid = {r["uid"]: r for r in rows}
    assert sorted(by_uid) == uids and by_uid[uids[3]]["error_kind"] == "http_404"
    files = sorted(os.listdir(f"{out}/00000"))
    assert len(files) == 9  # 3 successes x (jpg, txt, json)
    for r in rows:
        if r["status"] != "success":
            continue
        assert open(f"{out}/00000/{r['key']}.txt").read() == r["caption"]
        assert json.loads(open(f"{out}/00000/{r['key']}.json").read())["uid"] == r["uid"]
        with Image.open(f"{out}/00000/{r['key']}.jpg") as im:
            assert im.size == (16, 16)
    assert not os.path.exists(f"{out}/_wit/partial") or not os.listdir(f"{out}/_wit/partial")
    record = json.loads(open(f"{out}/_wit/complete.json").read())
    assert any(e["path"].startswith("00000/") for e in record["outputs"])


def test_the_per_shard_downloader_of_beam_applies_the_format_and_limits(tmp_path):
    """``make_downloader`` + ``download_one_shard`` (what the Beam DoFn runs, here in this process):
    the parquet writer and img2dataset's size/aspect limits, as in the local runner."""
    jpeg = lambda size: {"body": image_bytes("JPEG", size), "headers": {"Content-Type": "image/jpeg"}}  # noqa: E731
    with LoopbackServer({"/ok.jpg": jpeg((30, 20)), "/tiny.jpg": jpeg((5, 5)), "/wide.jpg": jpeg((90, 15))}) as srv:
        urls = [f"http://img.test:{srv.port}/{n}.jpg" for n in ("ok", "tiny", "wide")]
        laion = _laion(tmp_path / "laion.parquet", urls, ["ok", "tiny", "wide"])
        out = str(tmp_path / "img")
        opts = DownloadOptions(url_col="URL", caption_col="TEXT", output_format="parquet", min_image_size=10,
                               max_aspect_ratio=2.5, threads=2, timeout=5, image_size=16,
                               allowed_endpoints=[f"127.0.0.1:{srv.port}"], resolve={"img.test": "127.0.0.1"})
        plan = prepare(laion, out, opts)
        (tmp_path / "tmp").mkdir()
        with guarded(opts.policy()):
            assert download_one_shard(plan, plan.shards[0], make_downloader(plan), str(tmp_path / "tmp"))
    assert completed_shards(out, plan.shards, "parquet") == {0} and not os.path.exists(f"{out}/00000.tar")
    assert completed_shards(out, plan.shards) == set()  # as webdataset it would lack its tar
    rows = {r["caption"]: r for r in pq.read_table(f"{out}/00000.parquet").to_pylist()}
    assert {c: r["error_kind"] for c, r in rows.items()} == {"ok": None, "tiny": "too_small", "wide": "aspect_ratio"}
    assert rows["ok"]["jpg"][:2] == b"\xff\xd8" and rows["tiny"]["jpg"] is None


def test_a_files_shard_replaces_the_folder_of_an_unfinished_try(tmp_path):
    """A shard folder left by a try that died after its move and before its stats file (a Beam
    retry in the same run) is replaced, not moved into."""
    jpeg = {"body": image_bytes("JPEG", (20, 20)), "headers": {"Content-Type": "image/jpeg"}}
    with LoopbackServer({"/a.jpg": jpeg}) as srv:
        dc = tmp_path / "dc.parquet"
        pq.write_table(pa.table({"url": [f"http://img.test:{srv.port}/a.jpg"], "text": ["a"]}), dc)
        out = str(tmp_path / "img")
        opts = DownloadOptions(output_format="files", threads=2, timeout=5, image_size=16,
                               allowed_endpoints=[f"127.0.0.1:{srv.port}"], resolve={"img.test": "127.0.0.1"})
        plan = prepare(str(dc), out, opts)
        os.makedirs(f"{out}/00000")
        open(f"{out}/00000/000000000.jpg", "wb").write(b"stale")
        (tmp_path / "tmp").mkdir()
        with guarded(opts.policy()):
            assert download_one_shard(plan, plan.shards[0], make_downloader(plan), str(tmp_path / "tmp"))
    assert sorted(os.listdir(f"{out}/00000")) == ["000000000.jpg", "000000000.json", "000000000.txt"]
    with Image.open(f"{out}/00000/000000000.jpg") as im:
        assert im.size == (16, 16)
