"""Wikitext cleaning, tokenization, and the ordering/trim rule of the merged list."""
from collections import Counter

import pyarrow as pa
import pytest

from queries.build import order_and_trim, rank_key, to_table
from queries.wikitext import clean_wikitext, count_terms, word_runs


def runs(wikitext):
    return list(word_runs(clean_wikitext(wikitext)))


@pytest.mark.parametrize("wikitext, expected", [
    ("'''Paris''' is the [[capital city|capital]] of [[France]].", [["Paris", "is", "the", "capital", "of", "France"]]),
    ("It has [[bus]]es and ''trams''.", [["It", "has", "buses", "and", "trams"]]),
    ("A {{convert|5|km}} road.", [["A"], ["road"]]),
    ("Born 1900.<ref>{{cite web|title=Secret}}</ref> Died<ref name=a/> later.", [["Born", "1900"], ["Died"], ["later"]]),  # a ref renders as a footnote mark between words
    ("{| class=wikitable\n|-\n! Head\n|-\n| cell || cell\n|}\nAfter table.", [["After", "table"]]),
    ("[[File:X.jpg|thumb|A caption with [[link]]]]Text here.", [["Text", "here"]]),
    ("[[Image:Y.png|left]] [[Media:Z.ogg]] ok", [["ok"]]),
    ("Body.\n[[Category:Cities]]\n[[fr:Paris]]\n[[:Category:Cats|cat list]]", [["Body"], ["cat", "list"]]),
    ("See [[wikt:word|the word]] and [https://example.org the site] or https://bare.example.org now",
     [["See", "the", "word", "and", "the", "site", "or"], ["now"]]),
    ("a<!-- hidden words -->b c <!-- x --> d", [["ab", "c", "d"]]),
    ("New&nbsp;York &amp; Paris &#8211; Rome", [["New", "York"], ["Paris"], ["Rome"]]),
    ("== Early life ==\nHe was born.\n* first item\n* second [[item]]\n; term : definition",
     [["Early", "life"], ["He", "was", "born"], ["first", "item"], ["second", "item"], ["term"], ["definition"]]),
    ("x <math>E = mc^2</math> y <gallery>\nA.jpg|cap\n</gallery> z", [["x"], ["y"], ["z"]]),
    ("__NOTOC__ Text {{{1}}} more <div>inside div</div> CO<sub>2</sub>", [["Text"], ["more"], ["inside", "div"], ["CO2"]]),
])
def test_markup_is_stripped_and_anchor_text_kept(wikitext, expected):
    assert runs(wikitext) == expected


def test_tokenization_rules():
    text = "Don't stop, O'Brien's T-shirt (1990s) cost 3.5 dollars; naïve café in Zürich—well-known x_y"
    assert runs(text) == [["Don't", "stop"], ["O'Brien"], ["T-shirt"], ["1990s"], ["cost", "3"], ["5", "dollars"],
                          ["naïve", "café", "in", "Zürich"], ["well-known", "x"], ["y"]]
    # case is kept; a trailing apostrophe or hyphen is not part of the word
    assert runs("Apple apple APPLE dogs' -end") == [["Apple", "apple", "APPLE", "dogs"], ["end"]]


def test_possessives_count_as_their_word_and_hyphenated_words_stay_whole():
    """The documented rule (docs/queries.md, "Possessives and hyphens"): 's / ’s is cut off and ends
    the run; a hyphenated word is one word; other internal apostrophes stay."""
    clean = clean_wikitext("Obama's dog. The dog's T-shirt and Obama’s T-shirt. Hong Kong's economy grew; "
                           "[[Barack Obama|Obama]]'s speech. O'Brien's X-ray. DOG'S bone. don't let's go")
    uni, bi = Counter(), Counter()
    n = count_terms(clean, uni, bi)
    # Obama's / Obama’s / [[..|Obama]]'s all credit "Obama"; no possessive form is a word of its own
    assert uni["Obama"] == 3 and uni["dog"] == 2 and uni["DOG"] == 1 and uni["O'Brien"] == 1
    assert not [w for w in uni if w.endswith(("'s", "’s", "'S"))]
    # hyphenated words are single words, their parts are not counted
    assert uni["T-shirt"] == 2 and uni["X-ray"] == 1 and "shirt" not in uni and "T" not in uni
    # other apostrophes stay inside the word
    assert uni["don't"] == 1 and uni["let"] == 1 and "don" not in uni
    assert n == sum(uni.values())
    # a possessive ends its run: "Hong Kong" is a bigram, "Kong economy" (not in the text) is not
    assert bi["Hong Kong"] == 1 and "Kong economy" not in bi
    assert "Obama dog" not in bi and "dog T-shirt" not in bi and "Obama T-shirt" not in bi
    assert bi["The dog"] == 1 and bi["T-shirt and"] == 1 and bi["and Obama"] == 1
    # every bigram is a substring of the text it was counted from (what `wit collect` matches)
    assert all(b in clean for b in bi)


def test_bigrams_never_cross_sentence_or_paragraph_or_punctuation():
    clean = clean_wikitext("one two. three four\n\nfive six\nseven, eight (nine) ten")
    uni, bi = Counter(), Counter()
    n = count_terms(clean, uni, bi)
    assert n == 10
    assert set(bi) == {"one two", "three four", "five six"}
    assert uni["one"] == 1 and len(uni) == 10


def test_rank_key_and_trim_rule():
    rows = [
        {"query": "zeta", "parts": {"title": 500}},
        {"query": "Alpha beta", "parts": {"bigram": [10, 12.5], "title": 90}},
        {"query": "gamma delta", "parts": {"bigram": [40, 12.5]}},
        {"query": "dog", "parts": {"wordnet": 7, "unigram": 3}},
        {"query": "0", "parts": {"wordnet": 0}},
        {"query": "the", "parts": {"unigram": 900}},
        {"query": "cat", "parts": {"wordnet": 8}},
        {"query": "Cat", "parts": {"unigram": 900}},
    ]
    ordered, trimmed = order_and_trim(rows, 100)
    assert trimmed == 0
    assert [r["query"] for r in ordered] == ["cat", "dog", "0", "Cat", "the", "gamma delta", "Alpha beta", "zeta"]
    kept, trimmed = order_and_trim(rows, 5)
    assert trimmed == 3 and [r["query"] for r in kept] == ["cat", "dog", "0", "Cat", "the"]
    assert rank_key("dog", {"wordnet": 7, "unigram": 3}) < rank_key("x", {"unigram": 10 ** 9})


def test_table_follows_the_schema():
    rows = [{"query": "dog", "parts": {"wordnet": 7, "unigram": 3, "title": 80}},
            {"query": "Hong Kong", "parts": {"bigram": [12, 14.25]}}]
    table = to_table(rows)
    assert table.schema == pa.schema([
        ("id", pa.int32()), ("query", pa.string()), ("sources", pa.list_(pa.string())),
        ("unigram_count", pa.int64()), ("bigram_count", pa.int64()), ("bigram_pmi", pa.float64()),
        ("title_views", pa.int64()), ("wordnet_synsets", pa.int32())])
    assert table.to_pylist() == [
        {"id": 0, "query": "dog", "sources": ["wordnet", "unigram", "title"], "unigram_count": 3,
         "bigram_count": None, "bigram_pmi": None, "title_views": 80, "wordnet_synsets": 7},
        {"id": 1, "query": "Hong Kong", "sources": ["bigram"], "unigram_count": None, "bigram_count": 12,
         "bigram_pmi": 14.25, "title_views": None, "wordnet_synsets": None}]
