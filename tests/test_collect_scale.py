"""`wit collect` at scale without a shard in one worker's memory: the shard count grows with the
input (no cap), a shard is merged from sorted runs in uid ranges of at most --max-rows-in-memory
rows and written in fixed-size row groups, (url, text) duplicates across files are dropped exactly
once, and the files do not depend on the bound, the input order or the worker count."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collect_data import make_pages, write_queries
from wit_builder.sim.webgen import write_warc, write_wat

BOUND, GROUP = 40, 32


def test_default_shard_count_grows_with_the_input_without_a_cap(tmp_path):
    from wit_builder.collect import default_num_shards, make_config
    write_queries(tmp_path / "q.parquet")
    (tmp_path / "in").mkdir()
    for i in range(1100):
        (tmp_path / "in" / f"CC-{i:05d}.warc.wat.gz").write_bytes(b"")
    cfg = make_config(str(tmp_path / "q.parquet"), [str(tmp_path / "in")], str(tmp_path / "o"))
    assert cfg.num_shards == 1100                                   # was capped at 1024
    # and by size: a big input is more than one shard (tables hold more pairs per byte than WATs)
    assert default_num_shards([("parquet", 640 << 20)]) == 10
    assert default_num_shards([("wat", 1 << 30), ("wat", 1 << 30)]) == 4
    assert default_num_shards([("wat", 10)] * 3) == 3 and default_num_shards([]) == 1


def _rows(n, seed, dup_every=3):
    """MATCHED_SCHEMA rows; every ``dup_every``-th pair also in other seeds' rows (same url, text)."""
    from wit_builder.collect import MATCHED_SCHEMA, compute_uid
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        j = i if i % dup_every == 0 else 10_000 * (seed + 1) + i
        url, text = f"https://a.org/{j}.jpg", f"a photo of thing {j}"
        rows.append({"uid": compute_uid(url, text), "url": url, "text": text,
                     "page_url": rng.choice([None, f"https://p.org/{rng.randint(0, 9)}"]), "source": f"s{seed}",
                     "lang": "en", "lang_prob": 0.5, "query_ids": [j % 5, 7]})
    return pa.Table.from_pylist(rows, schema=MATCHED_SCHEMA)


def test_write_shard_merges_runs_in_bounded_ranges_with_fixed_row_groups(tmp_path):
    from wit_builder.collect import SpillRef, dedup_table, write_shard, write_spill
    runs = [dedup_table(_rows(300, s))[0] for s in range(6)]
    write_spill(str(tmp_path / "spill.arrow"), pa.concat_tables(runs[:4]))      # 4 runs in one file
    starts = np.cumsum([0] + [r.num_rows for r in runs[:4]])
    refs = [SpillRef(str(tmp_path / "spill.arrow"), int(a), r.num_rows) for a, r in zip(starts, runs[:4])]
    small = write_shard([*refs, *runs[4:]], str(tmp_path / "small.parquet"), max_rows=BOUND, row_group_rows=GROUP)
    big = write_shard(runs, str(tmp_path / "big.parquet"), max_rows=10_000, row_group_rows=GROUP)
    assert small.ranges > 1800 // BOUND and small.peak_rows <= BOUND      # never more than the bound at once
    assert big.ranges == 1 and big.peak_rows == 1800
    assert (tmp_path / "small.parquet").read_bytes() == (tmp_path / "big.parquet").read_bytes()
    expected, _ = dedup_table(pa.concat_tables(runs))
    got = pq.read_table(str(tmp_path / "small.parquet"))
    assert got.equals(expected) and got.num_rows == small.rows == 100 + 6 * 200
    assert small.duplicates == 1800 - got.num_rows
    meta = pq.ParquetFile(str(tmp_path / "small.parquet")).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert all(s == GROUP for s in sizes[:-1]) and 0 < sizes[-1] <= GROUP
    counts = np.bincount(np.concatenate(got.column("query_ids").to_pylist()))
    assert np.array_equal(small.counts, counts)


def test_a_buffer_is_sorted_into_one_run_per_shard_in_one_go():
    from wit_builder.collect import dedup_table, shard_ids, sort_runs
    tables = [_rows(300, s) for s in range(3)]
    table, ranges, dupes = sort_runs(tables, 7)
    assert dupes == 900 - table.num_rows and [k for k, _, _ in ranges] == sorted({k for k, _, _ in ranges})
    for k, a, b in ranges:
        run = table.slice(a, b - a)
        assert set(shard_ids(run.column("uid").combine_chunks(), 7)) == {k}
        assert run.equals(dedup_table(run)[0])                       # sorted by uid, one row per uid
    assert sum(b - a for _, a, b in ranges) == table.num_rows


def test_shuffled_tables_above_the_bound_go_to_a_local_file(tmp_path):
    from wit_builder.collect import ShardRuns, SpillRef, dedup_table
    store = ShardRuns(max_rows=250)
    for s in range(3):
        store.add(dedup_table(_rows(200, s))[0])
    assert store.held <= 250 and sum(isinstance(r.item, SpillRef) for r in store.runs) == 2
    store.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """Inputs whose (url, text) pairs repeat across files: a WAT twice under two names, a WARC
    overlapping it, and a table repeating some pairs with another page."""
    d = tmp_path_factory.mktemp("scale")
    write_queries(d / "q.parquet")
    pages = make_pages(80, seed=3)
    write_wat(pages[:50], str(d / "in" / "CC-a.warc.wat.gz"))
    write_wat(pages[:50], str(d / "in" / "CC-a-copy.warc.wat.gz"))
    write_warc(pages[30:], str(d / "in" / "CC-b.warc.gz"))
    pairs = [(img.src, img.alt) for p in pages[:20] for img in p.images if img.src.startswith("http")]
    pq.write_table(pa.table({"url": [u for u, _ in pairs], "caption": [t for _, t in pairs]}),
                   str(d / "in" / "pairs.parquet"))
    return d


def _config(web, out, **kw):
    from wit_builder.collect import make_config
    kw = {"num_shards": 3, "langs": None, "lang_detector": "none", **kw}
    return make_config(str(web / "q.parquet"), [str(web / "in")], str(out), **kw)


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def _expected(cfg):
    """Every matched (url, text) once, with the smallest (page_url, source), from the library steps."""
    from collections import Counter
    from wit_builder.collect import (batch_to_table, clean_batch, dedup_table, extract_batches, identify_batch,
                                     load_queries, match_batch)
    from wit_builder.langid import make_detector
    from wit_builder.matcher import Matcher
    from wit_builder.textclean import TextCleaner
    matcher, det, stats, tables = Matcher(load_queries(cfg.queries)), make_detector("none"), Counter(), []
    for path, fmt in cfg.inputs:
        for b in extract_batches(path, fmt, cfg.source, stats):
            b = identify_batch(match_batch(clean_batch(b, TextCleaner(), stats), matcher, stats), det, None, 0, stats)
            tables.append(batch_to_table(b))
    every = pa.concat_tables(tables)
    return dedup_table(every)[0], every.num_rows


def test_bounded_merge_keeps_every_pair_exactly_once(web, monkeypatch):
    from pipelines import collect
    import wit_builder.collect as wc
    seen = []
    real = wc.write_shard

    def spy(runs, path, **kw):
        res = real(runs, path, **kw)
        seen.append(res)
        return res
    monkeypatch.setattr(wc, "write_shard", spy)
    cfg = _config(web, web / "bounded", max_rows_in_memory=BOUND, row_group_rows=GROUP)
    st = collect.run(cfg)
    assert len(seen) == 3 and max(r.peak_rows for r in seen) <= BOUND and max(r.ranges for r in seen) > 1
    got = pq.read_table(str(web / "bounded" / "matched"))
    expected, before = _expected(cfg)
    assert sorted(got.to_pylist(), key=lambda r: r["uid"]) == expected.to_pylist()
    assert got.num_rows == st["matched"] < before
    assert st["dropped"]["duplicate"] == before - got.num_rows        # each copy counted once
    assert st["pairs_extracted"] == sum(st["dropped"].values()) + st["matched"]
    for f in (web / "bounded" / "matched").iterdir():
        meta = pq.ParquetFile(str(f)).metadata
        assert all(meta.row_group(i).num_rows <= GROUP for i in range(meta.num_row_groups))
        uids = pq.read_table(str(f)).column("uid").to_pylist()
        assert uids == sorted(set(uids))


def test_same_files_for_any_bound_input_order_and_worker_count(web):
    from dataclasses import replace

    from pipelines import collect
    from pipelines.beam_options import BeamOptions
    bounded = _config(web, web / "b1", max_rows_in_memory=BOUND, row_group_rows=GROUP)
    collect.run(bounded)
    reference = _files(web / "b1")
    assert len(reference) == 7
    collect.run(_config(web, web / "big", row_group_rows=GROUP))                      # one range per shard
    assert _files(web / "big") == reference
    reordered = replace(bounded, inputs=tuple(reversed(bounded.inputs)), out=str(web / "rev"))
    collect.run(reordered)
    assert _files(web / "rev") == reference
    collect.run(_config(web, web / "w2", max_rows_in_memory=BOUND, row_group_rows=GROUP),
                BeamOptions("DirectRunner", workers=2))
    assert _files(web / "w2") == reference
    assert not any(p.name.startswith(".wit-work") for out in ("b1", "rev", "w2") for p in (web / out).iterdir())
