"""`wit queries` end to end on generated dumps and pageviews, against an independent reference
(tests/queries_testlib.py), on the DirectRunner (single and multi-process)."""
import json
import math
import os

import pyarrow.parquet as pq
import pytest
from queries_testlib import NOISE, expected_bigrams, expected_counts, expected_titles, make_corpus

from wit_builder.sim import dumpgen
from wit_builder.sim.dumpgen import Page, RawPage
from pipelines import cli

U, BC, PMI, V, H = 6, 3, 3.0, 100, 40  # thresholds small enough for a small corpus
THRESHOLDS = ["--unigram-min-count", str(U), "--bigram-min-count", str(BC), "--bigram-min-pmi", str(PMI),
              "--title-min-views", str(V), "--title-min-hourly-views", str(H)]
PART_ORDER = ["wordnet", "unigram", "bigram", "title"]


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(seed=1)


@pytest.fixture(scope="module")
def expected(corpus):
    uni, bi, total = expected_counts(corpus.runs)
    return {
        "unigram": {w: n for w, n in uni.items() if n >= U},
        "bigram": expected_bigrams(corpus.runs, BC, PMI),
        "title": expected_titles(corpus.pageviews, corpus.article_titles, V, H),
        "tokens": total, "all_unigrams": uni, "all_bigrams": bi,
    }


def wit_queries(*argv):
    return cli.main(["queries", *argv, "--runner", "DirectRunner"])


def parts_of(rows):
    out = {"unigram": {}, "bigram": {}, "title": {}, "wordnet": {}}
    for r in rows:
        for s in r["sources"]:
            if s == "unigram":
                out[s][r["query"]] = r["unigram_count"]
            elif s == "bigram":
                out[s][r["query"]] = (r["bigram_count"], r["bigram_pmi"])
            elif s == "title":
                out[s][r["query"]] = r["title_views"]
            else:
                out[s][r["query"]] = r["wordnet_synsets"]
    return out


def reference_order(rows):
    """The documented output order, re-implemented: first part, its statistic descending, query."""
    def key(r):
        first = next(s for s in PART_ORDER if s in r["sources"])
        stat = {"wordnet": (r["wordnet_synsets"], 0), "unigram": (r["unigram_count"], 0),
                "bigram": (r["bigram_pmi"], r["bigram_count"]), "title": (r["title_views"], 0)}[first]
        return PART_ORDER.index(first), -stat[0], -stat[1], r["query"]
    return sorted(rows, key=key)


def assert_wiki_parts(got, expected):
    assert got["unigram"] == expected["unigram"]
    assert set(got["bigram"]) == set(expected["bigram"])
    for q, (n, score) in expected["bigram"].items():
        assert got["bigram"][q][0] == n and math.isclose(got["bigram"][q][1], score, rel_tol=1e-9)
    assert got["title"] == expected["title"]


def test_multistream_dump_matches_the_reference(tmp_path, corpus, expected):
    # the reference itself must be non-trivial: every threshold keeps some and drops some
    assert 0 < len(expected["unigram"]) < len(expected["all_unigrams"])
    frequent_pairs = sum(1 for n in expected["all_bigrams"].values() if n >= BC)
    assert 0 < len(expected["bigram"]) < frequent_pairs
    assert 0 < len(expected["title"]) < 20
    dumpgen.write_dump(corpus.pages, str(tmp_path / "enwiki-20240101-pages-articles-multistream.xml.bz2"),
                       multistream=True, pages_per_stream=8)
    dumpgen.write_pageviews(corpus.pageviews, str(tmp_path / "pageviews"))
    out = tmp_path / "out"
    # the folder holds the dump and its index: the index is recognised, not read as a dump
    assert wit_queries("--dumps", str(tmp_path / "enwiki-*"), "--pageviews", str(tmp_path / "pageviews"),
                       "--out", str(out), "--parts", "unigram,bigram,title", "--unit-mb", "0.003",
                       *THRESHOLDS) == 0
    assert sorted(os.listdir(out)) == ["_wit", "queries.parquet", "queries.png", "queries.txt", "stats.json"]
    rows = pq.read_table(out / "queries.parquet").to_pylist()
    assert_wiki_parts(parts_of(rows), expected)
    assert not any(NOISE in r["query"].lower() for r in rows)
    # one row per query, ids = row numbers, documented order
    assert [r["id"] for r in rows] == list(range(len(rows)))
    assert len({r["query"] for r in rows}) == len(rows)
    assert rows == reference_order(rows)
    both = {r["query"]: r["sources"] for r in rows if len(r["sources"]) > 1}
    assert both and all(s == [p for p in PART_ORDER if p in s] for s in both.values())
    assert (out / "queries.txt").read_text(encoding="utf-8") == "".join(r["query"] + "\n" for r in rows)
    assert (out / "queries.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stats = json.loads((out / "stats.json").read_text())
    from wit_builder.schemas import OUTPUTS
    assert set(OUTPUTS["queries"].stats_keys) <= set(stats)
    assert stats["corpus"]["tokens"] == expected["tokens"]
    assert stats["corpus"]["articles"] == len(corpus.article_titles)
    assert stats["corpus"]["distinct_unigrams"] == len(expected["all_unigrams"])
    assert stats["corpus"]["distinct_bigrams"] == len(expected["all_bigrams"])
    assert stats["corpus"]["work_units"] >= 4
    assert stats["skipped"]["pages"] == {"namespace": 4, "redirect": 1}
    assert stats["passed"]["unigram_min_count"] == len(expected["unigram"])
    assert stats["passed"]["bigram_min_count"] == frequent_pairs
    assert stats["passed"]["bigram_min_count_and_min_pmi"] == len(expected["bigram"])
    assert stats["passed"]["title_min_views_and_article"] == len(expected["title"])
    assert stats["parts"]["unigram"]["size"] == len(expected["unigram"])
    assert stats["parts"]["wordnet"] == {"size": 0, "in_output": 0, "enabled": False}
    assert stats["output"]["queries"] == len(rows) and stats["output"]["short_of_target"] == 500_000 - len(rows)
    assert stats["thresholds"]["bigram_min_pmi"] == PMI
    # the default part sizes exceed this corpus's candidates: all taken, and said so
    assert stats["selection"]["bigram"]["all_taken"] and stats["selection"]["title"]["all_taken"]
    assert stats["selection"]["bigram"]["selected"] == len(expected["bigram"])
    # possessives count as their word (the word model writes "painter's")
    assert expected["all_unigrams"]["painter"] > 0 and not any(q.endswith("'s") for q in expected["all_unigrams"])
    assert not any(r["query"].endswith("'s") for r in rows)
    assert [os.path.basename(d["path"]) for d in stats["inputs"]["dumps"]] == [
        "enwiki-20240101-pages-articles-multistream.xml.bz2"]
    assert stats["inputs"]["dumps"][0]["index"].endswith("-index.txt.bz2") and stats["inputs"]["dumps"][0]["bytes"] > 0
    assert len(stats["inputs"]["pageviews"]) == len(corpus.pageviews)

    # same inputs and options again: kept as built, nothing rewritten
    before = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    assert wit_queries("--dumps", str(tmp_path / "enwiki-*"), "--pageviews", str(tmp_path / "pageviews"),
                       "--out", str(out), "--parts", "unigram,bigram,title", "--unit-mb", "0.003",
                       *THRESHOLDS) == 0
    assert {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)} == before


def test_part_files_multiprocess_with_wordnet_and_trim(tmp_path, tmp_path_factory, corpus, expected, monkeypatch):
    monkeypatch.setenv("WIT_CACHE", str(tmp_path_factory.mktemp("wit-cache")))
    pages = corpus.pages
    dumpgen.write_dump(pages[:20], str(tmp_path / "enwiki-20240101-pages-articles1.xml-p1p20.bz2"))
    dumpgen.write_dump(pages[20:40], str(tmp_path / "enwiki-20240101-pages-articles2.xml-p21p40.bz2"))
    dumpgen.write_dump(pages[40:], str(tmp_path / "enwiki-20240101-pages-articles3.xml"))
    dumpgen.write_pageviews(corpus.pageviews, str(tmp_path / "pv"))
    from queries.wordnet import wordnet_part, wordnet_root
    wordnet = wordnet_part(wordnet_root())
    union = set(wordnet) | set(expected["unigram"]) | set(expected["bigram"]) | set(expected["title"])
    target = len(wordnet) + 5
    out = tmp_path / "out"
    assert wit_queries("--dumps", str(tmp_path / "enwiki-*"), "--pageviews", str(tmp_path / "pv" / "*.gz"),
                       "--out", str(out), "--target-size", str(target), "--workers", "2", *THRESHOLDS) == 0
    rows = pq.read_table(out / "queries.parquet").to_pylist()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["output"]["union_size"] == len(union)
    assert stats["output"]["trimmed"] == len(union) - target and len(rows) == target
    assert stats["parts"]["wordnet"]["size"] == len(wordnet) == stats["parts"]["wordnet"]["in_output"]
    # the trim rule: all WordNet queries, then the five most frequent other unigrams
    assert [r["sources"][0] for r in rows[:len(wordnet)]] == ["wordnet"] * len(wordnet)
    others = sorted((w for w in expected["unigram"] if w not in wordnet), key=lambda w: (-expected["unigram"][w], w))
    assert [r["query"] for r in rows[len(wordnet):]] == others[:5]
    assert rows == reference_order(rows)
    got = parts_of(rows)
    assert got["wordnet"] == wordnet
    # a query from several parts keeps each part and its statistic
    dog = next(r for r in rows if r["query"] == "dog")
    assert dog["sources"] == ["wordnet", "unigram"] and dog["wordnet_synsets"] == wordnet["dog"]
    assert dog["unigram_count"] == expected["all_unigrams"]["dog"]
    # untrimmed, the Wikipedia parts equal the reference whatever the file format and process count
    assert stats["parts"]["unigram"]["size"] == len(expected["unigram"])
    assert stats["parts"]["bigram"]["size"] == len(expected["bigram"])
    assert stats["parts"]["title"]["size"] == len(expected["title"])
    assert stats["corpus"]["tokens"] == expected["tokens"] and stats["corpus"]["work_units"] == 3


def _marker_page(i, extra=""):
    return Page(f"Marker page {i}", f"Words of marker{i} here.{extra}")


def test_bad_input_is_counted_and_the_rest_processed(tmp_path):
    ms = [_marker_page(i) for i in range(20)]
    dump, index = dumpgen.write_dump(ms, str(tmp_path / "a-multistream.xml.bz2"), multistream=True,
                                     pages_per_stream=5)
    from queries.wikidump import read_index_offsets
    offsets = read_index_offsets(index)
    data = bytearray(open(dump, "rb").read())
    mid = (offsets[1] + offsets[2]) // 2
    data[mid:mid + 40] = b"\xff" * 40  # corrupt the second page stream (markers 5-9)
    cut = (offsets[3] + len(data)) // 2  # truncated inside the last page stream (markers 15-19)
    open(dump, "wb").write(bytes(data[:cut]))
    good = dumpgen.page_xml(Page("Latin one", "caf\u00e9 latinword marker100 here"), 100)
    dumpgen.write_dump([
        _marker_page(101),
        RawPage("  <page>\n    <title>Broken</title><ns>0</ns><revision><text>marker102</text></revisio>\n  </page>\n"),
        RawPage(good.encode("utf-8").replace("caf\u00e9".encode("utf-8"), b"caf\xe9")),  # a Latin-1 byte
        RawPage("  <page>\n    <ns>0</ns><revision><text>marker103</text></revision>\n  </page>\n"),
        _marker_page(104),
    ], str(tmp_path / "b.xml"))
    dumpgen.write_pageviews({"20240101-00": [("en", "Marker page 1", 120), "en Marker_page_2 lots 0", "garbage",
                                             b"en Bad\xff 500 0"],
                             "20240101-01": [("en", f"T{i}", 100 + i) for i in range(3000)]}, str(tmp_path / "pv"))
    cut_pv = tmp_path / "pv" / "pageviews-20240101-010000.gz"
    blob = cut_pv.read_bytes()
    cut_pv.write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "out"
    assert wit_queries("--dumps", str(tmp_path / "a-multistream.xml.bz2"), str(tmp_path / "b.xml"),
                       "--pageviews", str(tmp_path / "pv"), "--out", str(out), "--parts", "unigram,title",
                       "--unigram-min-count", "1", "--title-min-views", "100", "--title-min-hourly-views", "1") == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"]["bz2_streams"] == {"corrupt_bz2": 1, "truncated_bz2": 1}
    assert stats["skipped"]["pages"]["malformed_xml"] == 1 and stats["skipped"]["pages"]["missing_fields"] == 1
    assert stats["repaired"]["pages_invalid_utf8"] == 1
    assert stats["skipped"]["pageview_lines"] == {"unparseable": 2, "invalid_utf8": 1}
    assert stats["skipped"]["pageview_files"] == {"truncated_gzip": 1}
    words = set(pq.read_table(out / "queries.parquet").column("query").to_pylist())
    markers = {w for w in words if w.startswith("marker")}
    assert {f"marker{i}" for i in (*range(5), *range(10, 15), 100, 101, 104)} <= markers
    assert not markers & {"marker102", "marker103"}
    assert not markers & {f"marker{i}" for i in range(15, 20)}  # the truncated stream ends before any page closes
    assert "latinword" in words and "caf" in words  # the page with a bad byte is read, the byte replaced
    assert "Marker page 1" in words and "T0" not in words  # only articles of the dumps become titles
    assert not any(os.path.basename(p).startswith(".") for p in os.listdir(out))  # no temp files left
