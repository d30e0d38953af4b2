"""A simulated English Wikipedia for the demo: articles in real wikitext, redirects, pageviews.

The demo's query list must contain its visual concepts (8 shapes, 8 colours, their bigrams such as
"red triangle") and the rare "tail" nouns that the simulated web's problem cases use in their alt
texts. So this corpus mentions them often, in ordinary wikitext with the markup the query builder
has to strip: ``'''bold'''``, ``[[links|with labels]]``, ``{{templates|...}}``, ``<ref>``s with
``{{cite book}}``, ``{| tables |}``, ``[[File:...]]``, ``[[Category:...]]``, headings, lists and
comments, next to general English filler so that not every word is a concept.

Everything is deterministic from the seed. :func:`build_wiki` returns a :class:`Wiki` with

* ``articles``: dicts ``{"title", "ns", "id", "text", "redirect", "timestamp"}`` in page-id order
  (``redirect`` is the target title or ``None``; redirect pages' text is ``#REDIRECT [[Target]]``;
  a few pages in other namespaces -- Talk, Template, Category, File, Wikipedia -- so a dump reader
  has something to skip);
* ``pageviews``: hourly rows ``{"hour": "20240115-000000", "domain": "en", "title": "Red_triangle",
  "views": 123, "bytes": 0}`` in the column order of Wikimedia's ``pageviews-YYYYMMDD-HH0000``
  files (``domain_code page_title count_views total_response_size``), with mobile (``en.m``) and
  other-project rows (``de``, ``fr``, ``en.d``) and titles that are not articles, as in real files;
* ``expected``: what a query builder should find -- the concept words, tail words, bigrams and
  titles, their counts in the text as stripped by mwparserfromhell (see :func:`word_counts`), and
  thresholds scaled down for the demo that keep all of them.

The articles' wikitext comes from ``wikitext.py``. Writing these to a MediaWiki XML dump and
pageview files is ``wit_builder/sim/dumpgen.py``'s job; the dicts carry exactly what it needs.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from wit_builder.sim.render import COLOURS, SHAPES
from wit_builder.sim.wikitext import PLURAL, wiki_pages

__all__ = ["Wiki", "build_wiki", "word_counts", "bigram_counts", "TAIL_WORDS", "PLURAL",
           "DEMO_THRESHOLDS"]

# Everyday nouns used (a few times each) in the alt texts of the web's problem cases, so that those
# pairs match a rare query and survive balancing. Each gets its own short article (wikitext.py).
TAIL_WORDS: tuple[str, ...] = (
    "mug", "kite", "bicycle", "umbrella", "lantern", "notebook", "backpack", "skateboard", "guitar",
    "teapot", "surfboard", "helmet", "envelope", "pillow", "scarf", "balloon", "tent", "canoe",
    "suitcase", "sailboat", "bucket", "drum", "vase", "lamp", "clock", "mailbox", "tractor", "wagon",
    "quilt", "apron", "jersey", "doormat", "keychain", "lunchbox", "mitten", "necklace", "ornament",
    "postcard", "puzzle", "rug", "saucer", "teacup", "thermos", "tray", "trophy", "wallet",
    "windmill", "yoyo", "bookmark", "coaster", "cushion", "flowerpot", "hammock", "kayak", "ladder",
    "magnet", "napkin", "padlock", "parasol", "pennant", "piano", "pinwheel", "placemat", "saddle",
    "sandal", "scooter", "shovel", "sled", "slipper", "spoon", "stool", "tambourine", "teddy",
    "thimble", "tile", "towel", "tricycle", "trumpet", "tureen", "ukulele", "vest", "whistle",
    "xylophone", "barrel", "beanie", "blanket", "bracelet", "broom", "button", "candle", "carpet",
    "chessboard", "compass", "crayon", "cupboard", "curtain", "dartboard", "domino", "easel",
    "fan", "glove",
)

# Thresholds for `wit queries` on this corpus (the CLIP paper's 100 occurrences / 70 views are for
# the full English Wikipedia, ~3 billion words; this corpus has ~10^5).
DEMO_THRESHOLDS = {"unigram_min_count": 8, "bigram_min_count": 5, "bigram_min_pmi": 3.0,
                   "title_min_views": 70, "title_min_hourly_views": 10}


@dataclass
class Wiki:
    articles: list[dict]
    pageviews: list[dict]
    concept_titles: list[str] = field(default_factory=list)
    tail_words: tuple[str, ...] = TAIL_WORDS

    @property
    def expected(self) -> dict:
        """What the query builder should find (computed on first use: it strips every page)."""
        if "_expected" not in self.__dict__:
            self.__dict__["_expected"] = _expected(self, self.concept_titles, self.tail_words)
        return self.__dict__["_expected"]

    def titles(self, ns: int = 0, redirects: bool = False) -> list[str]:
        return [a["title"] for a in self.articles
                if a["ns"] == ns and (redirects or a["redirect"] is None)]


_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def _plain(text: str) -> str:
    import mwparserfromhell
    return mwparserfromhell.parse(text).strip_code(normalize=True, collapse=True)


def _counts(articles) -> tuple[Counter, Counter]:
    words: Counter = Counter()
    pairs: Counter = Counter()
    for a in articles:
        if a["ns"] == 0 and a["redirect"] is None:
            plain = _plain(a["text"])
            words.update(_WORD.findall(plain))
            for sentence in re.split(r"[.!?\n]+", plain):
                ws = _WORD.findall(sentence)
                pairs.update(zip(ws, ws[1:]))
    return words, pairs


def word_counts(articles) -> Counter:
    """Case-sensitive word counts of namespace-0, non-redirect article text after
    ``mwparserfromhell``'s ``strip_code`` (templates, refs, tables' markup, files and categories
    removed; link labels kept). An approximation of what ``wit queries`` counts, used to check
    that the demo's concepts clear the demo thresholds with a margin."""
    counts: Counter = Counter()
    for a in articles:
        if a["ns"] == 0 and a["redirect"] is None:
            counts.update(_WORD.findall(_plain(a["text"])))
    return counts


def bigram_counts(articles) -> Counter:
    """Adjacent-word counts within sentences (split at . ! ? and newlines), as in word_counts."""
    counts: Counter = Counter()
    for a in articles:
        if a["ns"] == 0 and a["redirect"] is None:
            for sentence in re.split(r"[.!?\n]+", _plain(a["text"])):
                words = _WORD.findall(sentence)
                counts.update(zip(words, words[1:]))
    return counts


def build_wiki(seed: int = 0, *, filler_articles: int = 60, hours: int = 6,
               tail_words: tuple[str, ...] = TAIL_WORDS) -> Wiki:
    """The simulated Wikipedia (see the module docstring). ~200 articles, a few hundred KB."""
    rng = np.random.default_rng([int(seed), 0x3141])
    pages, concept_titles = wiki_pages(rng, filler_articles, tail_words)
    articles = []
    for i, (ns, title, text, redirect) in enumerate(pages):
        articles.append({"title": title, "ns": ns, "id": i + 1, "text": text, "redirect": redirect,
                         "timestamp": f"2024-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z"})
    pageviews = _pageviews(rng, articles, set(concept_titles), hours)
    return Wiki(articles, pageviews, concept_titles=list(concept_titles), tail_words=tuple(tail_words))


def _pageviews(rng, articles, popular: set[str], hours: int) -> list[dict]:
    rows = []
    titles = [a["title"] for a in articles if a["ns"] == 0]
    junk = ["Main_Page", "Special:Search", "-", "Special:Random", "Wikipedia:Featured_pictures"]
    for h in range(hours):
        hour = f"20240115-{h:02d}0000"
        for t in titles:
            if t in popular:
                views = int(rng.integers(60, 400))
            elif t[:1].islower() or t.lower() in TAIL_WORDS:
                views = int(rng.integers(0, 25))
            else:
                views = int(rng.integers(0, 8))
            key = t.replace(" ", "_")
            if views:
                rows.append({"hour": hour, "domain": "en", "title": key, "views": views, "bytes": 0})
            if t in popular:
                rows.append({"hour": hour, "domain": "en.m", "title": key,
                             "views": int(rng.integers(20, 200)), "bytes": 0})
        for t in junk:
            rows.append({"hour": hour, "domain": "en", "title": t, "views": int(rng.integers(50, 5000)),
                         "bytes": 0})
        for dom, t in (("de", "Dreieck"), ("fr", "Triangle"), ("en.d", "triangle"), ("es", "Círculo")):
            rows.append({"hour": hour, "domain": dom, "title": t, "views": int(rng.integers(50, 900)),
                         "bytes": 0})
    return rows


def _expected(wiki: Wiki, concept_titles, tail_words) -> dict:
    words, bigrams = _counts(wiki.articles)
    n = sum(words.values())
    pair_stats = {}
    for c in COLOURS:
        for s in SHAPES:
            k = bigrams[(c, s)]
            pmi = math.log2(k * n / (words[c] * words[s])) if k else float("-inf")
            pair_stats[f"{c} {s}"] = {"count": k, "pmi_log2": round(pmi, 3)}
    views = Counter()
    for row in wiki.pageviews:
        if row["domain"] in ("en", "en.m"):
            views[row["title"].replace("_", " ")] += row["views"]
    return {
        "tokens": n,
        "thresholds": dict(DEMO_THRESHOLDS),
        "unigrams": {w: words[w] for w in (*SHAPES, *COLOURS, *(c[:1].upper() + c[1:] for c in COLOURS))},
        "tail_unigrams": {w: words[w] for w in tail_words},
        "bigrams": pair_stats,
        "titles": sorted(concept_titles),
        "title_views": {t: views[t] for t in sorted(concept_titles)},
    }
