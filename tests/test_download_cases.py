"""`wit download` (local img2dataset runner) against loopback servers: every case gets the right
status and error in the shard parquet, and refused URLs never reach any server.

Two servers on 127.0.0.1 stand in for the internet and for an internal service. The policy
allows exactly the public server's IP:PORT (``allowed_endpoints``) and maps the simulated host
names with ``resolve``; everything else keeps the default refusal of non-public addresses, so
the redirect to 127.0.0.1 and the name resolving to the internal service are refused exactly as
they would be on a cloud worker. (Names resolving to 10.x / 169.254.169.254 are covered
in-process by test_download_netsafety.py, where a broken guard could not send a packet.)
"""
from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from download_testlib import image_bytes, png_bomb, write_balanced
from wit_builder.core import WitError
from pipelines import download
from wit_builder.download import DownloadConfig, DownloadOptions, error_kind, plan_inputs
from wit_builder.sim.loopback import LoopbackServer

JPEG_H = {"Content-Type": "image/jpeg"}
CONTRACT_COLUMNS = ["key", "url", "caption", "status", "error_message", "error_kind", "width", "height",
                    "original_width", "original_height", "sha256", "uid", "query_ids", "page_url"]


def test_every_case_gets_its_status_and_error(tmp_path):
    internal = LoopbackServer({"/secret": {"body": image_bytes("JPEG"), "headers": JPEG_H}})
    public = LoopbackServer()
    with internal, public:
        host = f"http://img.test:{public.port}"
        routes = {
            "/a.jpg": {"body": image_bytes("JPEG", (40, 20)), "headers": JPEG_H},
            "/b.png": {"body": image_bytes("PNG", (20, 40)), "headers": {"Content-Type": "image/png"}},
            "/c.webp": {"body": image_bytes("WEBP", (30, 30)), "headers": {"Content-Type": "image/webp"}},
            "/e500": {"status": 500, "body": "oops"},
            "/slow.jpg": {"delay": 4.5, "body": image_bytes("JPEG"), "headers": JPEG_H},
            "/r1": {"redirect": "/r2"},
            "/r2": {"redirect": "/r3", "status": 301},
            "/r3": {"redirect": f"{host}/c.webp", "status": 307},
            "/to-loopback": {"redirect": internal.url("/secret")},
            "/optout.jpg": {"body": image_bytes("JPEG"), "headers": {**JPEG_H, "X-Robots-Tag": "noai"}},
            "/optout-wit.jpg": {"body": image_bytes("JPEG"), "headers": {**JPEG_H, "X-Robots-Tag": "wit: noimageai"}},
            "/optout-otherbot.jpg": {"body": image_bytes("JPEG"), "headers": {**JPEG_H, "X-Robots-Tag": "otherbot: noai"}},
            "/notimage.jpg": {"body": b"this is certainly not a JPEG", "headers": JPEG_H},
            "/bomb.png": {"body": png_bomb(), "headers": {"Content-Type": "image/png"}},
            "/page.html": {"body": "<html></html>", "headers": {"Content-Type": "text/html"}},
            "/huge.jpg": {"body": b"\xff\xd8" + bytes(300_000), "headers": JPEG_H},
        }
        for path, spec in routes.items():
            public.add_route(path, spec)
        cases = [  # url, status, error_kind
            (f"{host}/a.jpg", "success", None),
            (f"{host}/b.png", "success", None),
            (f"{host}/c.webp", "success", None),
            (f"{host}/missing.jpg", "failed_to_download", "http_404"),
            (f"{host}/e500", "failed_to_download", "http_500"),
            (f"{host}/slow.jpg", "failed_to_download", "timeout"),
            (f"{host}/r1", "success", None),
            (f"{host}/to-loopback", "failed_to_download", "ssrf_blocked"),
            (f"http://internal.test:{internal.port}/secret", "failed_to_download", "ssrf_blocked"),
            (f"http://127.0.0.1:{internal.port}/secret", "failed_to_download", "ssrf_blocked"),
            (f"{host}/optout.jpg", "failed_to_download", "opted_out"),
            (f"{host}/optout-wit.jpg", "failed_to_download", "opted_out"),
            (f"{host}/optout-otherbot.jpg", "success", None),
            (f"{host}/notimage.jpg", "failed_to_resize", "decode_error"),
            (f"{host}/bomb.png", "failed_to_download", "too_many_pixels"),
            (f"{host}/page.html", "failed_to_download", "content_type"),
            (f"{host}/huge.jpg", "failed_to_download", "too_many_bytes"),
            ("file:///etc/passwd", "failed_to_download", "bad_scheme"),
        ]
        pairs = tmp_path / "balanced"
        pairs.mkdir()
        table = write_balanced(str(pairs / "part-00000-of-00001.parquet"), [c[0] for c in cases])
        out = str(tmp_path / "images")
        opts = DownloadOptions(processes=1, threads=8, timeout=2, max_bytes=200_000, image_size=64,
                               user_agent="wit-test/1 (loopback)",
                               allowed_endpoints=[f"127.0.0.1:{public.port}"],
                               resolve={"img.test": "127.0.0.1", "internal.test": "127.0.0.1"})
        summary = download.run(DownloadConfig(str(pairs), out, opts), progress=False)
        requests = public.requests

    # --- the refused URLs never reached a server; the allowed hops did, with our user agent
    assert internal.requests == []
    paths = [r.path for r in requests]
    for path in ("/r1", "/r2", "/r3", "/to-loopback", "/bomb.png"):
        assert paths.count(path) == 1, path
    assert paths.count("/c.webp") == 2  # directly and at the end of the redirect chain
    assert {r.headers.get("User-Agent") for r in requests} == {"wit-test/1 (loopback)"}

    # --- the shard parquet: every input row, right status and error kind, contract columns
    rows = pq.read_table(f"{out}/00000.parquet")
    assert set(CONTRACT_COLUMNS) <= set(rows.column_names)
    by_url = {r["url"]: r for r in rows.to_pylist()}
    assert len(by_url) == len(cases) == rows.num_rows
    for url, status, kind in cases:
        r = by_url[url]
        assert (r["status"], r["error_kind"]) == (status, kind), (url, r["error_message"])
        assert (r["error_message"] is None) == (status == "success")
    assert "Content-Length 300002 > max 200000" in by_url[f"{host}/huge.jpg"]["error_message"]
    assert "X-Robots-Tag" in by_url[f"{host}/optout.jpg"]["error_message"]
    keys = sorted(r["key"] for r in rows.to_pylist())
    assert keys == [f"{i:09d}" for i in range(len(cases))]
    src = {s["url"]: s for s in table.to_pylist()}
    for r in rows.to_pylist():  # uid, query_ids, page_url and the text carried through (one pair per URL)
        s = src[r["url"]]
        assert (r["caption"], r["uid"], r["query_ids"], r["page_url"], r["pairs"], r["other_texts"]) == \
            (s["text"], s["uid"], s["query_ids"], s["page_url"], 1, [])

    # --- the tar: successes only, KEY.jpg/.txt/.json, json = the parquet row
    with tarfile.open(f"{out}/00000.tar") as tar:
        names = sorted(m.name for m in tar.getmembers())
        ok = sorted(r["key"] for r in rows.to_pylist() if r["status"] == "success")
        assert names == sorted(f"{k}.{e}" for k in ok for e in ("jpg", "txt", "json"))
        for k in ok:
            meta = json.loads(tar.extractfile(f"{k}.json").read())
            assert meta == {c: by_url[meta["url"]][c] for c in meta}
            assert tar.extractfile(f"{k}.txt").read().decode() == meta["caption"]
            img = Image.open(io.BytesIO(tar.extractfile(f"{k}.jpg").read()))
            assert img.format == "JPEG" and img.size == (64, 64)  # border mode: padded square
            assert (meta["original_width"], meta["original_height"]) in {(40, 20), (20, 40), (30, 30), (24, 16)}
            assert len(meta["sha256"]) == 64

    # --- stats marker, summary, nothing left half-written
    stats = json.loads(open(f"{out}/00000_stats.json").read())
    assert stats["count"] == len(cases) and stats["successes"] == 5
    assert summary["success"] == 5 and summary["samples"] == len(cases) and summary["incomplete_shards"] == []
    assert summary["by_error_kind"]["ssrf_blocked"] == 3 and summary["by_error_kind"]["opted_out"] == 2
    assert json.loads(open(f"{out}/_wit/summary.json").read())["by_status"] == summary["by_status"]
    assert os.listdir(f"{out}/_wit/partial") == []
    assert sorted(n for n in os.listdir(out) if not n.startswith("_")) == ["00000.parquet", "00000.tar",
                                                                          "00000_stats.json"]

    # --- a re-run finds the shard done and changes nothing
    before = os.stat(f"{out}/00000.tar").st_mtime_ns
    again = download.run(DownloadConfig(str(pairs), out, opts), progress=False)
    assert again["shards_already_done"] == 1 and os.stat(f"{out}/00000.tar").st_mtime_ns == before
    # ... and other settings for the same output are refused
    with pytest.raises(WitError, match="other image_size"):
        download.run(DownloadConfig(str(pairs), out, DownloadOptions(image_size=32)), progress=False)


@pytest.mark.parametrize("status, message, kind", [
    ("success", None, None),
    ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
    ("failed_to_download", "HTTP Error 403: blocked by SSRF guard", "http_403"),  # the server's words
    ("failed_to_download", "HTTP Error 302: Found - Redirection to url 'file:///x' is not allowed", "bad_scheme"),
    ("failed_to_download", "HTTP Error 301: The HTTP server returned a redirect error that would lead to "
                           "an infinite loop.", "redirect_loop"),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection_refused"),
    ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", "dns"),
    ("failed_to_download", "The read operation timed out", "timeout"),
    ("failed_to_download", "body took longer than 60.0s", "too_slow"),
    ("failed_to_resize", "image area too large", "too_many_pixels"),
    ("failed_to_download", "something new", "other"),
])
def test_error_kind(status, message, kind):
    assert error_kind(status, message) == kind


def test_plan_inputs_checks_the_pairs(tmp_path):
    write_balanced(str(tmp_path / "part-00000.parquet"), ["http://img.test/a.jpg"] * 3)
    write_balanced(str(tmp_path / "part-00001.parquet"), [])
    write_balanced(str(tmp_path / "part-00002.parquet"), ["http://img.test/b.jpg"] * 2)
    shards, extra, per_shard, empty = plan_inputs(str(tmp_path))
    assert [(s.shard_id, os.path.basename(s.path), s.rows) for s in shards] == \
        [(0, "part-00000.parquet", 3), (1, "part-00002.parquet", 2)]
    assert extra == ["uid", "query_ids", "page_url"] and per_shard == 10_000 and empty == 1
    import pyarrow as pa
    pq.write_table(pa.table({"url": ["x"]}), tmp_path / "part-00003.parquet")
    with pytest.raises(WitError, match=r"lacks column\(s\) \['text'\]"):
        plan_inputs(str(tmp_path))
    with pytest.raises(WitError, match="matches no files"):
        plan_inputs(str(tmp_path / "nothing-*.parquet"))
    with pytest.raises(WitError, match="must be positive"):
        DownloadOptions(threads=0).validate()
    with pytest.raises(WitError, match="bad network policy"):
        DownloadOptions(allowed_endpoints=["localhost"]).validate()
