"""`wit download`'s shards: one sample (one download) per image URL, at most --samples-per-shard
samples per shard however the inputs are split, the same shards and keys whatever the input
order, partitioning or planner (in memory, or Beam), and a resume that keeps finished shards.

The planning tests call ``prepare`` (no network); the end-to-end test downloads from a loopback
server on 127.0.0.1."""
from __future__ import annotations

import json
import os
import random
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from download_testlib import BALANCED_SCHEMA, image_bytes, uid_of, write_balanced
from pipelines import download
from pipelines import shards as shards_stage
from pipelines.beam_options import BeamOptions
from wit_builder.core import WitError
from wit_builder.download import DownloadConfig, DownloadOptions, download_one_shard, make_downloader, prepare
from wit_builder.download_plan import MAX_OTHER_TEXTS, sample_order
from wit_builder.netsafety import guarded
from wit_builder.shards import ShardsConfig
from wit_builder.sim.loopback import LoopbackServer


def _pairs(rows: list[tuple]) -> list[dict]:
    """(url, text, query_ids, page_url) -> balanced rows with their uid."""
    return [{"uid": uid_of(u, t), "url": u, "text": t, "page_url": p, "source": "t.warc.gz", "lang": "en",
             "lang_prob": 0.9, "query_ids": q, "keep_prob": 1.0} for u, t, q, p in rows]


def _write(folder, parts: list[list[dict]], row_group_size: int | None = None) -> str:
    os.makedirs(folder, exist_ok=True)
    for i, rows in enumerate(parts):
        pq.write_table(pa.Table.from_pylist(rows, schema=BALANCED_SCHEMA),
                       os.path.join(folder, f"part-{i:05d}-of-{len(parts):05d}.parquet"),
                       row_group_size=row_group_size)
    return str(folder)


def _parts(out: str) -> list[list[dict]]:
    """The planned shards' samples (IMAGES/_wit/input/NNNNN.parquet), in shard order."""
    folder = os.path.join(out, "_wit", "input")
    return [pq.read_table(os.path.join(folder, n)).to_pylist() for n in sorted(os.listdir(folder))]


def _prepare(pairs, out, **options):
    return prepare(pairs, out, DownloadOptions(**options))


def test_an_input_bigger_than_a_shard_is_cut_into_bounded_shards(tmp_path):
    urls = [f"http://img.test/{i}.jpg" for i in range(23)]
    write_balanced(str(tmp_path / "one.parquet"), urls)
    plan = _prepare(str(tmp_path / "one.parquet"), str(tmp_path / "img"), samples_per_shard=5)
    assert [(s.shard_id, s.rows) for s in plan.shards] == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 3)]
    parts = _parts(str(tmp_path / "img"))
    assert [len(p) for p in parts] == [5, 5, 5, 5, 3]
    # every URL once, in hash order: shard k holds samples k*5 .. k*5+4
    assert [r["url"] for p in parts for r in p] == sorted(urls, key=sample_order)
    assert plan.per_shard == 10_000 and plan.pairs == 23   # img2dataset's keys stay 5 + 4 digits
    # the default: 10,000 per shard, so 23 samples are one shard
    assert [s.rows for s in _prepare(str(tmp_path / "one.parquet"), str(tmp_path / "img2")).shards] == [23]


def test_many_tiny_inputs_are_packed_into_full_shards(tmp_path):
    sizes = [1, 2, 0, 3, 1, 1, 2, 0, 1]      # 11 pairs in 9 files, two of them empty
    (tmp_path / "bal").mkdir()
    n = 0
    for i, k in enumerate(sizes):
        write_balanced(str(tmp_path / "bal" / f"part-{i:05d}.parquet"), [f"http://img.test/{n + j}.jpg" for j in range(k)])
        n += k
    plan = _prepare(str(tmp_path / "bal"), str(tmp_path / "img"), samples_per_shard=4)
    assert [s.rows for s in plan.shards] == [4, 4, 3] and plan.empty_inputs == 2
    assert [len(p) for p in _parts(str(tmp_path / "img"))] == [4, 4, 3]
    assert len(plan.inputs) == 7
    stored = json.loads((tmp_path / "img" / "_wit" / "plan.json").read_text())
    assert len(stored["pairs"]) == 7 and [rows for _, rows in stored["inputs"]] == [4, 4, 3]   # one per shard


def test_pairs_sharing_a_url_become_one_sample(tmp_path):
    shared = "http://img.test/shared.jpg"
    many = "http://img.test/many.jpg"
    a = [(shared, "a red car", [3, 9], "http://p.test/1"), ("http://img.test/solo.jpg", "a dog", [1], None)]
    b = [(shared, "red car on a road", [2, 3], None), (shared, "a red car", [3, 9], "http://p.test/1"),
         (shared, "car", [7], "http://p.test/3")]
    c = [(many, f"caption number {i}", [i], None) for i in range(30)]
    pairs = _write(tmp_path / "bal", [_pairs(a), _pairs(b), _pairs(c)])
    plan = _prepare(pairs, str(tmp_path / "img"), samples_per_shard=2)
    rows = {r["url"]: r for p in _parts(str(tmp_path / "img")) for r in p}
    assert len(rows) == 3 and [s.rows for s in plan.shards] == [2, 1] and plan.pairs == 35

    by_uid = sorted((uid_of(shared, t), t, p) for t, p in [("a red car", "http://p.test/1"),
                                                           ("red car on a road", None), ("car", "http://p.test/3")])
    s = rows[shared]
    assert (s["uid"], s["text"], s["page_url"]) == by_uid[0]          # the pair with the smallest uid
    assert s["query_ids"] == [2, 3, 7, 9]                             # the sorted union
    assert s["pairs"] == 4 and s["other_texts"] == [t for _, t, _ in by_uid[1:]]
    assert rows["http://img.test/solo.jpg"] == {
        "url": "http://img.test/solo.jpg", "text": "a dog", "uid": uid_of("http://img.test/solo.jpg", "a dog"),
        "query_ids": [1], "page_url": None, "pairs": 1, "other_texts": []}
    m = rows[many]
    texts = [t for _, t in sorted((uid_of(many, f"caption number {i}"), f"caption number {i}") for i in range(30))]
    assert m["text"] == texts[0] and m["other_texts"] == texts[1:1 + MAX_OTHER_TEXTS]
    assert m["query_ids"] == list(range(30)) and m["pairs"] == 30


def _corpus(n_urls: int = 40, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n_urls):
        for j in range(rnd.choice([1, 1, 2, 3])):
            rows.append((f"http://img{i % 5}.test/{i}.jpg", f"picture {i} take {j}",
                         sorted(rnd.sample(range(50), rnd.randint(1, 3))), None if j else f"http://p.test/{i}"))
    return _pairs(rows)


def test_the_shards_do_not_depend_on_input_order_partitioning_or_planner(tmp_path):
    rows = _corpus()
    rnd = random.Random(1)
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    layouts = {
        "one": [rows],
        "five": [shuffled[i::5] for i in range(5)],
        "uneven": [shuffled[:3], [], shuffled[3:50], shuffled[50:]],
    }
    results = {}
    for name, parts in layouts.items():
        pairs = _write(tmp_path / name, parts, row_group_size=4)
        prepare(pairs, str(tmp_path / f"img-{name}"), DownloadOptions(samples_per_shard=6))
        results[name] = _parts(str(tmp_path / f"img-{name}"))
    # the Beam planner (PlanDownload: CombinePerKey, range partitions, GroupByKey) writes the same
    pairs = _write(tmp_path / "beam", layouts["five"], row_group_size=3)
    beam_plan = prepare(pairs, str(tmp_path / "img-beam"), DownloadOptions(samples_per_shard=6),
                        download.beam_planner(BeamOptions("DirectRunner")))
    results["beam"] = _parts(str(tmp_path / "img-beam"))
    first = results["one"]
    assert len({r["url"] for r in rows}) == 40 and [len(p) for p in first] == [6] * 6 + [4]
    for name, got in results.items():
        assert got == first, name
    assert [s.rows for s in beam_plan.shards] == [6] * 6 + [4] and beam_plan.pairs == len(rows)
    manifest = json.loads((tmp_path / "img-beam" / "_wit" / "parts.json").read_text())
    assert manifest["samples"] == 40 and manifest["pairs"] == len(rows)


def test_a_planning_is_kept_or_redone_the_same_and_other_options_are_refused(tmp_path):
    pairs = _write(tmp_path / "bal", [_corpus()[:30], _corpus()[30:]])
    out = str(tmp_path / "img")
    plan = _prepare(pairs, out, samples_per_shard=8)
    parts = _parts(out)
    stamp = {n: os.stat(os.path.join(out, "_wit", "input", n)).st_mtime_ns for n in os.listdir(f"{out}/_wit/input")}
    _prepare(pairs, out, samples_per_shard=8)                    # kept: parts.json names this plan
    assert {n: os.stat(os.path.join(out, "_wit", "input", n)).st_mtime_ns for n in stamp} == stamp
    os.remove(f"{out}/_wit/parts.json")                          # a planning killed before its manifest
    with open(f"{out}/_wit/input/00099.parquet", "wb") as fh:   # ... with a stray part
        fh.write(b"junk")
    again = _prepare(pairs, out, samples_per_shard=8)
    assert _parts(out) == parts and [s.rows for s in again.shards] == [s.rows for s in plan.shards]
    with pytest.raises(WitError, match="other samples_per_shard"):
        _prepare(pairs, out, samples_per_shard=9)
    with pytest.raises(WitError, match="--samples-per-shard must be positive"):
        _prepare(pairs, str(tmp_path / "img0"), samples_per_shard=0)


def test_download_once_per_url_in_bounded_shards_and_resume(tmp_path):
    """Local runner end to end: a URL shared by pairs in several inputs is fetched once; shards
    hold <= 3 samples; a run that finished only shard 0 is resumed without fetching it again."""
    jpeg = {"body": image_bytes("JPEG", (20, 12)), "headers": {"Content-Type": "image/jpeg"}}
    with LoopbackServer({f"/{i}.jpg": jpeg for i in range(7)} | {"/gone.jpg": {"status": 404}}) as srv:
        host = f"http://img.test:{srv.port}"
        url = [f"{host}/{i}.jpg" for i in range(7)] + [f"{host}/gone.jpg"]
        inputs = [
            [(url[0], "a red square", [1], "http://p.test/a"), (url[1], "a blue circle", [2], None),
             (url[7], "a lost image", [3], None)],
            [(url[0], "square in red", [4, 1], None), (url[2], "green", [5], None), (url[3], "tree", [6], None)],
            [(url[4], "sky", [7], None), (url[0], "red", [8], "http://p.test/c")],
            [(url[5], "sea", [9], None), (url[6], "sun", [10], None), (url[1], "circle", [11], None)],
        ]
        pairs = _write(tmp_path / "bal", [_pairs(rows) for rows in inputs])
        out = str(tmp_path / "img")
        opts = DownloadOptions(processes=1, threads=4, timeout=5, image_size=32, samples_per_shard=3,
                               allowed_endpoints=[f"127.0.0.1:{srv.port}"], resolve={"img.test": "127.0.0.1"})
        # a partial run: only shard 0 finished (in this process, as the Beam DoFn downloads)
        plan = prepare(pairs, out, opts)
        assert [s.rows for s in plan.shards] == [3, 3, 2]
        (tmp_path / "tmp").mkdir()
        with guarded(opts.policy()):
            assert download_one_shard(plan, plan.shards[0], make_downloader(plan), str(tmp_path / "tmp"))
        shard0 = {r["url"] for r in pq.read_table(f"{out}/00000.parquet").to_pylist()}
        before = {p: srv.hits(p) for p in [u.split(str(srv.port), 1)[1] for u in url]}
        assert sum(before.values()) == 3

        summary = download.run(DownloadConfig(pairs, out, opts), progress=False)
        hits = {u: srv.hits(u.split(str(srv.port), 1)[1]) for u in url}

    assert all(n == 1 for n in hits.values()), hits                 # one download per URL, shard 0 kept
    assert summary["shards_already_done"] == 1 and summary["incomplete_shards"] == []
    assert (summary["samples"], summary["success"], summary["pairs"]) == (8, 7, 11)
    rows = []
    for s in range(3):
        part = pq.read_table(f"{out}/{s:05d}.parquet").to_pylist()
        assert sorted(r["key"] for r in part) == [f"{s:05d}{i:04d}" for i in range(len(part))]
        rows += part
    assert [len(pq.read_table(f"{out}/{s:05d}.parquet")) for s in range(3)] == [3, 3, 2]
    assert shard0 <= {r["url"] for r in rows} and len({r["url"] for r in rows}) == 8
    assert [r["url"] for r in sorted(rows, key=lambda r: r["key"])] == sorted(url, key=sample_order)

    by_url = {r["url"]: r for r in rows}
    red = by_url[url[0]]
    choice = min((uid_of(url[0], t), t, p) for t, p in [("a red square", "http://p.test/a"),
                                                        ("square in red", None), ("red", "http://p.test/c")])
    assert (red["uid"], red["caption"], red["page_url"]) == choice
    assert red["query_ids"] == [1, 4, 8] and red["pairs"] == 3 and len(red["other_texts"]) == 2
    assert by_url[url[7]]["error_kind"] == "http_404"
    # the tar: KEY.txt is the chosen caption, KEY.json carries the merged fields
    shard = next(s for s in range(3) if url[0] in {r["url"] for r in pq.read_table(f"{out}/{s:05d}.parquet").to_pylist()})
    with tarfile.open(f"{out}/{shard:05d}.tar") as tar:
        assert tar.extractfile(f"{red['key']}.txt").read().decode() == red["caption"]
        meta = json.loads(tar.extractfile(f"{red['key']}.json").read())
    assert (meta["query_ids"], meta["other_texts"], meta["pairs"]) == ([1, 4, 8], red["other_texts"], 3)

    # the completion record lists the --pairs files (4) as inputs; a re-run is a no-op
    record = json.loads(open(f"{out}/_wit/complete.json").read())
    assert sorted(os.path.basename(e["path"]) for e in record["inputs"]) == sorted(os.listdir(tmp_path / "bal"))
    again = download.run(DownloadConfig(pairs, out, opts), progress=False)
    assert again["shards_already_done"] == 3 and again["samples"] == 8
    # `wit shards` takes the 3 shards of 4 inputs as a finished download
    manifest = shards_stage.run(ShardsConfig(out, str(tmp_path / "shards")))
    assert manifest["totals"]["samples"] == 7
