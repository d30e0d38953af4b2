"""`wit queries` selects the bigram and title parts by size (--bigram-count, --title-count) as well
as by threshold, so that its defaults reproduce MetaCLIP's part sizes; ties are broken by a total
order. Checked on generated dumps against the independent reference in tests/queries_testlib.py."""
import json
import math

import pyarrow.parquet as pq
import pytest
from queries_testlib import expected_bigrams, expected_counts, expected_titles, make_corpus

from pipelines import cli
from wit_builder.sim import dumpgen
from wit_builder.sim.dumpgen import Page

U, BC, V, H = 6, 3, 100, 40  # floors small enough for the generated corpus
FLOORS = ["--unigram-min-count", str(U), "--bigram-min-count", str(BC), "--title-min-views", str(V),
          "--title-min-hourly-views", str(H)]


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(seed=3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, corpus):
    d = tmp_path_factory.mktemp("wiki")
    dumpgen.write_dump(corpus.pages, str(d / "enwiki-20240101-pages-articles-multistream.xml.bz2"),
                       multistream=True, pages_per_stream=8)
    dumpgen.write_pageviews(corpus.pageviews, str(d / "pv"))
    return ["--dumps", str(d / "enwiki-20240101-pages-articles-multistream.xml.bz2"),
            "--pageviews", str(d / "pv"), "--unit-mb", "0.003"]


def wit_queries(*argv):
    return cli.main(["queries", *argv, "--runner", "DirectRunner"])


def part(rows, name):
    if name == "bigram":
        return {r["query"]: (r["bigram_count"], r["bigram_pmi"]) for r in rows if "bigram" in r["sources"]}
    return {r["query"]: r["title_views"] for r in rows if "title" in r["sources"]}


def assert_bigrams(got, want):
    assert set(got) == set(want)
    for q, (n, score) in want.items():
        assert got[q][0] == n and math.isclose(got[q][1], score, rel_tol=1e-9)


def test_defaults_are_metaclips_part_sizes_and_no_pmi_threshold():
    from queries.build import METACLIP_SIZES, QueryParams
    p = QueryParams()
    # MetaCLIP (Xu et al. 2023): bigrams 100,646, titles 61,235; unigrams by count >= 100
    assert (p.bigram_count, p.title_count) == (100_646, 61_235) == (METACLIP_SIZES["bigram"], METACLIP_SIZES["title"])
    assert (p.unigram_min_count, p.bigram_min_count, p.title_min_views, p.bigram_min_pmi) == (100, 100, 70, None)


def test_parts_cut_to_their_counts(tmp_path, corpus, inputs, capsys):
    """Fewer slots than candidates: the best bigrams by PMI and the most viewed titles are kept."""
    every_bigram = expected_bigrams(corpus.runs, BC, None)
    every_title = expected_titles(corpus.pageviews, corpus.article_titles, V, H)
    k, t = len(every_bigram) // 3, len(every_title) // 2
    assert k >= 5 and t >= 2  # the cut is real
    out = tmp_path / "q"
    assert wit_queries(*inputs, "--out", str(out), "--parts", "unigram,bigram,title", *FLOORS,
                       "--bigram-count", str(k), "--title-count", str(t)) == 0
    assert "all taken" not in capsys.readouterr().out
    rows = pq.read_table(out / "queries.parquet").to_pylist()
    want = expected_bigrams(corpus.runs, BC, None, count=k)
    assert len(want) == k
    assert_bigrams(part(rows, "bigram"), want)
    # the kept ones are the k of highest PMI: none left out scores higher than one kept
    left_out = set(every_bigram) - set(want)
    assert min(round(s, 9) for _, s in want.values()) >= max(round(every_bigram[q][1], 9) for q in left_out)
    assert part(rows, "title") == expected_titles(corpus.pageviews, corpus.article_titles, V, H, count=t)
    assert len(part(rows, "title")) == t
    # the unigram part is still chosen by its threshold alone
    uni, _, _ = expected_counts(corpus.runs)
    assert {r["query"]: r["unigram_count"] for r in rows if "unigram" in r["sources"]} == \
        {w: n for w, n in uni.items() if n >= U}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["selection"]["bigram"] == {
        "count": k, "candidates": len(every_bigram), "selected": k, "all_taken": False,
        "tie_break": stats["selection"]["bigram"]["tie_break"]}
    assert stats["selection"]["title"]["candidates"] == len(every_title)
    assert stats["selection"]["title"]["selected"] == t and not stats["selection"]["title"]["all_taken"]
    assert stats["parts"]["bigram"]["size"] == k and stats["parts"]["title"]["size"] == t
    assert stats["thresholds"]["bigram_count"] == k and stats["thresholds"]["title_count"] == t


def test_default_counts_take_all_when_fewer_and_say_so(tmp_path, corpus, inputs, capsys):
    """With the defaults (no PMI threshold, MetaCLIP's counts) a small corpus has fewer candidates
    than the counts: all are taken, and stats.json and the summary line say so. (Before, the
    default PMI >= 30 left the bigram part empty.)"""
    out = tmp_path / "q"
    assert wit_queries(*inputs, "--out", str(out), "--parts", "bigram,title", *FLOORS) == 0
    line = capsys.readouterr().out
    rows = pq.read_table(out / "queries.parquet").to_pylist()
    want = expected_bigrams(corpus.runs, BC, None)
    assert len(want) > 20
    assert_bigrams(part(rows, "bigram"), want)
    titles = expected_titles(corpus.pageviews, corpus.article_titles, V, H)
    assert part(rows, "title") == titles
    stats = json.loads((out / "stats.json").read_text())
    sel = stats["selection"]
    assert sel["bigram"]["all_taken"] and sel["bigram"]["selected"] == sel["bigram"]["candidates"] == len(want)
    assert sel["bigram"]["count"] == 100_646 and sel["title"]["count"] == 61_235
    assert sel["title"]["all_taken"] and sel["title"]["selected"] == len(titles)
    assert stats["thresholds"]["bigram_min_pmi"] is None
    assert f"only {len(want):,} bigram candidates passed the thresholds, fewer than --bigram-count 100,646: " \
           "all taken" in line
    assert f"only {len(titles):,} title candidates" in line


def test_a_pmi_threshold_still_applies_before_the_count(tmp_path, corpus, inputs):
    pmi = 3.0
    thresholded = expected_bigrams(corpus.runs, BC, pmi)
    assert 3 < len(thresholded) < len(expected_bigrams(corpus.runs, BC, None))
    out = tmp_path / "q"
    assert wit_queries(*inputs, "--out", str(out), "--parts", "bigram", *FLOORS, "--bigram-min-pmi", str(pmi),
                       "--bigram-count", str(len(thresholded) - 2)) == 0
    rows = pq.read_table(out / "queries.parquet").to_pylist()
    got = part(rows, "bigram")
    assert_bigrams(got, expected_bigrams(corpus.runs, BC, pmi, count=len(thresholded) - 2))
    assert all(score >= pmi for _, score in got.values())
    # "all": the thresholds alone
    out2 = tmp_path / "q2"
    assert wit_queries(*inputs, "--out", str(out2), "--parts", "bigram", *FLOORS, "--bigram-min-pmi", str(pmi),
                       "--bigram-count", "all") == 0
    assert_bigrams(part(pq.read_table(out2 / "queries.parquet").to_pylist(), "bigram"), thresholded)
    sel = json.loads((out2 / "stats.json").read_text())["selection"]["bigram"]
    assert sel["count"] is None and sel["selected"] == len(thresholded) and not sel["all_taken"]


# ---------------------------------------------------------------- ties

TIED = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta", "iota kappa"]  # n12 = n1 = n2 = 2


def _tie_pages():
    """Bigrams whose PMIs tie: the five TIED pairs (each seen twice, their words nowhere else: PMI
    log2(N/2)); "xa xb" (4 times, PMI log2(N/4)) and "ya yb" (twice, "yb" twice more alone: also
    PMI log2(2N/8) = log2(N/4)); single-word filler sentences add to N only."""
    sentences = [p for p in TIED for _ in range(2)] + ["xa xb"] * 4 + ["ya yb"] * 2 + ["yb"] * 2
    sentences += ["filler"] * 30
    pages = [Page(f"Tie {i}", ". ".join(sentences[i::6]) + ".") for i in range(6)]
    pages += [Page(name, "Capital.") for name in ("Lima", "Oslo", "Bern", "Rome", "?")]
    views = {"20240101-00": [("en", "Lima", 100), ("en", "Oslo", 100), ("en", "Bern", 100), ("en", "Rome", 300),
                             ("en", "?", 1000)]}  # the article "?" cannot be a query: it takes no slot
    return pages, views


@pytest.mark.parametrize("count, reverse", [(3, False), (3, True), (6, True)])
def test_ties_are_broken_by_pmi_then_count_then_string(tmp_path, count, reverse):
    pages, views = _tie_pages()
    if reverse:  # another page order, other bundles: the same selection
        pages = pages[::-1]
    dump, _ = dumpgen.write_dump(pages, str(tmp_path / "enwiki-x-pages-articles.xml"))
    dumpgen.write_pageviews(views, str(tmp_path / "pv"))
    out = tmp_path / "q"
    assert wit_queries("--dumps", dump, "--pageviews", str(tmp_path / "pv"), "--out", str(out),
                       "--parts", "bigram,title", "--bigram-min-count", "2", "--bigram-count", str(count),
                       "--title-min-views", "1", "--title-min-hourly-views", "1", "--title-count", "2") == 0
    rows = pq.read_table(out / "queries.parquet").to_pylist()
    ranked = sorted(TIED) + ["xa xb", "ya yb"]  # PMI log2(N/2) x 5 by string; then log2(N/4): count 4 before 2
    assert set(part(rows, "bigram")) == set(ranked[:count])
    assert part(rows, "title") == {"Rome": 300, "Bern": 100}  # three titles tie at 100: "Bern" comes first
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"]["queries"]["invalid"] == 1
    assert stats["selection"]["title"]["candidates"] == 4 and stats["selection"]["title"]["selected"] == 2


def test_selection_key_ties_equal_pmis_despite_rounding():
    """PMIs equal in exact arithmetic but computed from other counts compare equal; then the count,
    then the string decide (a total order, so Top.Of's result is independent of bundling)."""
    from queries.build import bigram_selection_key, title_selection_key
    from queries.terms import pmi
    total = 1_234_567_891
    a = ("b b", ("bigram", [2, pmi(2, 6, 4, total)]))
    b = ("a a", ("bigram", [1, pmi(1, 3, 4, total)]))
    c = ("c c", ("bigram", [2, pmi(2, 6, 4, total) + 1e-12]))  # rounding noise, not a higher PMI
    assert [x[0] for x in sorted([b, c, a], key=bigram_selection_key)] == ["b b", "c c", "a a"]
    assert sorted([("B", ("title", 5)), ("A", ("title", 5)), ("C", ("title", 9))], key=title_selection_key) == [
        ("C", ("title", 9)), ("A", ("title", 5)), ("B", ("title", 5))]
