"""`wit queries` under hostile input (issue 13): view counts past int64, sums that would overflow,
empty pageview files, bzip2 files cut short. Counted or reported in one line, never a crash."""
import bz2
import gzip
import json
import logging
import random
from collections import Counter

import pyarrow.parquet as pq
import pytest

from pipelines import cli
from queries import pageviews, wikidump
from wit_builder.core import WitError
from wit_builder.sim import dumpgen
from wit_builder.sim.dumpgen import Page

INT64_MAX = 2 ** 63 - 1


def test_view_count_past_int64_is_an_unparseable_line(tmp_path):
    path = dumpgen.write_pageviews({"20240101-00": [
        ("en", "Fine", 60),
        "en Huge 99999999999999999999 0",              # past int64
        "en Huger " + "9" * 5000 + " 0",               # past Python's int() digit limit too
        f"en Edge {INT64_MAX} 0",                      # the largest that fits
        "en Padded 000000000000000000000000042 0",     # leading zeros: a small number
    ]}, str(tmp_path))[0]
    counters = Counter()
    assert pageviews.hour_views(path, counters=counters) == {"Fine": 60, "Edge": INT64_MAX, "Padded": 42}
    assert counters["pageviews.line_unparseable"] == 2


def test_hourly_sum_saturates_at_int64(tmp_path):
    big = INT64_MAX // 2 + 10
    path = dumpgen.write_pageviews({"20240101-00": [("en", "Big", big), ("en.m", "Big", big)]}, str(tmp_path))[0]
    assert pageviews.hour_views(path) == {"Big": INT64_MAX}


def test_empty_pageview_files_are_counted(tmp_path):
    (tmp_path / "pageviews-20240101-000000.gz").write_bytes(b"")
    (tmp_path / "pageviews-20240101-010000.gz").write_bytes(gzip.compress(b""))   # compressed nothing
    (tmp_path / "pageviews-20240101-020000.bz2").write_bytes(b"")
    (tmp_path / "pageviews-20240101-030000").write_bytes(b"")
    for name in ("pageviews-20240101-000000.gz", "pageviews-20240101-010000.gz",
                 "pageviews-20240101-020000.bz2", "pageviews-20240101-030000"):
        counters = Counter()
        assert pageviews.hour_views(str(tmp_path / name), counters=counters) == {}
        assert counters == Counter({"pageviews.empty_file": 1}), name


def test_bz2_pageview_files_are_read_and_a_cut_one_is_named(tmp_path, caplog):
    rng = random.Random(0)
    lines = b"".join(f"en T{i}_{rng.getrandbits(64):x} {100 + i} 0\n".encode() for i in range(60000))
    whole = tmp_path / "pageviews-20240101-000000.bz2"
    whole.write_bytes(bz2.compress(lines))
    assert len(pageviews.hour_views(str(whole))) == 60000
    cut = tmp_path / "pageviews-20240101-010000.bz2"
    blob = bz2.compress(lines)
    cut.write_bytes(blob[: len(blob) * 2 // 3])           # a single stream of several 900 kB blocks
    counters = Counter()
    with caplog.at_level(logging.WARNING, logger="queries.pageviews"):
        views = pageviews.hour_views(str(cut), counters=counters)
    assert counters["pageviews.truncated_bz2"] == 1 and not counters["pageviews.line_unparseable"]
    assert 0 < len(views) < 60000
    assert any(str(cut) in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)


def _single_stream_dump(tmp_path, n_pages=300):
    rng = random.Random(0)
    pages = [Page(f"P{i}", " ".join(f"{rng.getrandbits(32):x}" for _ in range(1000))) for i in range(n_pages)]
    path, _ = dumpgen.write_dump(pages, str(tmp_path / "single.xml.bz2"))
    return path


def test_a_dump_cut_before_its_first_block_says_truncated(tmp_path):
    path = _single_stream_dump(tmp_path)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[:200_000])                # inside the first 900 kB block: nothing decodes
    with pytest.raises(WitError) as info:
        wikidump.check_dump(path)
    msg = str(info.value)
    assert "truncated" in msg and path in msg and "\n" not in msg


def test_a_cut_dump_is_read_up_to_the_cut_and_named_in_a_warning(tmp_path, caplog):
    path = _single_stream_dump(tmp_path)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) * 2 // 3])
    wikidump.check_dump(path)                             # whole blocks before the cut hold pages
    counters = Counter()
    with caplog.at_level(logging.WARNING, logger="queries.wikidump"):
        pages = [p for u in wikidump.plan_units(path) for p in wikidump.read_unit(u, counters)]
    assert counters["stream.truncated_bz2"] == 1 and 0 < len(pages) < 300
    assert [r.getMessage() for r in caplog.records if path in r.getMessage() and "truncated" in r.getMessage()]


def test_queries_run_with_overflowing_and_empty_pageviews(tmp_path, capsys):
    """End to end: a count past int64, two hours whose sum passes int64, and a 0-byte hour. Before,
    the pipeline ran to the end and writing queries.parquet raised OverflowError."""
    pages = [Page("Alpha", "alpha words here"), Page("Beta", "beta words here"), Page("Gamma", "gamma words")]
    dumpgen.write_dump(pages, str(tmp_path / "enwiki-x-pages-articles.xml.bz2"))
    big = INT64_MAX // 2 + 10
    pv = tmp_path / "pv"
    dumpgen.write_pageviews({"20240101-00": [("en", "Alpha", big), ("en", "Gamma", 500),
                                             "en Beta 99999999999999999999 0"],
                             "20240101-01": [("en", "Alpha", big), ("en", "Beta", 300)]}, str(pv))
    (pv / "pageviews-20240101-020000.gz").write_bytes(b"")
    out = tmp_path / "out"
    assert cli.main(["queries", "--dumps", str(tmp_path / "enwiki-x-pages-articles.xml.bz2"), "--pageviews", str(pv),
                     "--out", str(out), "--parts", "title", "--title-min-views", "100",
                     "--title-min-hourly-views", "1", "--runner", "DirectRunner"]) == 0
    rows = {r["query"]: r["title_views"] for r in pq.read_table(out / "queries.parquet").to_pylist()}
    assert rows == {"Alpha": INT64_MAX, "Gamma": 500, "Beta": 300}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"]["pageview_lines"] == {"unparseable": 1}
    assert stats["skipped"]["pageview_files"] == {"empty_file": 1}
    assert stats["pageviews"]["files"] == 3
    err = capsys.readouterr().err   # more than --warn-skip-share (5%) of the lines and of the files
    assert "wit queries: warning: 1 of 5 pageview lines skipped (20.0%" in err
    assert "wit queries: warning: 1 of 3 pageview files skipped (33.3%" in err
