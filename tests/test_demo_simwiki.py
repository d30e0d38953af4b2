"""The demo's simulated Wikipedia: real wikitext whose counts put the demo's concepts in the
query list at the demo thresholds."""
import math

import mwparserfromhell
import pytest

from wit_builder.sim import simwiki as W
from wit_builder.sim.render import COLOURS, SHAPES


@pytest.fixture(scope="module")
def wiki():
    return W.build_wiki(0)


def test_deterministic():
    a, b = W.build_wiki(3, filler_articles=5, hours=2), W.build_wiki(3, filler_articles=5, hours=2)
    assert a.articles == b.articles and a.pageviews == b.pageviews
    assert W.build_wiki(4, filler_articles=5, hours=2).articles != a.articles


def test_pages_are_well_formed(wiki):
    ids = [a["id"] for a in wiki.articles]
    titles = [(a["ns"], a["title"]) for a in wiki.articles]
    assert ids == sorted(set(ids)) and len(set(titles)) == len(titles)
    main = set(wiki.titles())
    redirects = [a for a in wiki.articles if a["redirect"]]
    assert len(redirects) >= 10
    for r in redirects:
        assert r["text"].startswith(f"#REDIRECT [[{r['redirect']}]]")
        assert r["redirect"] in main
    assert {a["ns"] for a in wiki.articles} >= {0, 1, 4, 6, 10, 14}
    assert {"Triangle", "Red", "Heart (symbol)", "Mug"} <= main


def test_wikitext_uses_real_markup(wiki):
    kinds = {"template": 0, "ref": 0, "table": 0, "category": 0, "file": 0, "piped_link": 0}
    for a in wiki.articles[:40]:  # shape, colour and topic articles
        if a["ns"] != 0 or a["redirect"]:
            continue
        code = mwparserfromhell.parse(a["text"])
        kinds["template"] += len(code.filter_templates())
        kinds["ref"] += sum(1 for t in code.filter_tags() if t.tag == "ref")
        kinds["table"] += sum(1 for t in code.filter_tags() if t.tag == "table")
        for link in code.filter_wikilinks():
            title = str(link.title)
            kinds["category"] += title.startswith("Category:")
            kinds["file"] += title.startswith("File:")
            kinds["piped_link"] += link.text is not None and not title.startswith(("File:", "Category:"))
    assert all(v >= 10 for v in kinds.values()), kinds
    # markup is stripped before counting: no template or ref text leaks into the words
    words = W.word_counts(wiki.articles[:40])
    assert words["cite"] == 0 and words["Reflist"] == 0 and words["wikitable"] == 0


def test_concepts_clear_the_demo_thresholds(wiki):
    e = wiki.expected
    t = e["thresholds"]
    for word in (*SHAPES, *COLOURS):
        assert e["unigrams"][word] >= 5 * t["unigram_min_count"], word
    for colour in COLOURS:  # capitalised at sentence starts: "Blue circle clip art" matches
        assert e["unigrams"][colour.capitalize()] >= t["unigram_min_count"]
    for word, n in e["tail_unigrams"].items():
        assert n >= t["unigram_min_count"], word
    assert len(e["bigrams"]) == 64
    for pair, stats in e["bigrams"].items():
        assert stats["count"] >= t["bigram_min_count"], pair
        assert stats["pmi_log2"] > 2.0, pair  # co-occur far more often than chance


def test_expected_statistics_match_a_recount(wiki):
    e = wiki.expected
    pairs = W.bigram_counts(wiki.articles[:16])  # the shape and colour articles alone
    assert 0 < pairs[("red", "triangle")] <= e["bigrams"]["red triangle"]["count"]
    k, n = e["bigrams"]["red triangle"]["count"], e["tokens"]
    assert e["bigrams"]["red triangle"]["pmi_log2"] == pytest.approx(
        math.log2(k * n / (e["unigrams"]["red"] * e["unigrams"]["triangle"])), abs=1e-3)
    assert W.word_counts(wiki.articles[:1])["circle"] > 10  # the "Circle" article


def test_pageviews_put_concept_titles_over_the_threshold(wiki):
    t = wiki.expected["thresholds"]
    hours = sorted({r["hour"] for r in wiki.pageviews})
    assert len(hours) == 6 and all(len(h) == 15 and h[8] == "-" for h in hours)
    assert {r["domain"] for r in wiki.pageviews} >= {"en", "en.m", "de"}
    titles = {r["title"] for r in wiki.pageviews}
    assert "Main_Page" in titles and "Heart_(symbol)" in titles and " " not in "".join(titles)
    for title in wiki.expected["titles"]:
        key = title.replace(" ", "_")
        counted = sum(r["views"] for r in wiki.pageviews
                      if r["title"] == key and r["domain"] in ("en", "en.m")
                      and r["views"] >= t["title_min_hourly_views"])
        assert counted >= t["title_min_views"], title
