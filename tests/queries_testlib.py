"""Test corpus for `wit queries` and an independent reference for what it must produce.

Articles are rendered from a known *word model* (runs of adjacent words) into wikitext decorated
with markup that must be transparent (links with anchors, bold, comments, entities) and noise that
must vanish (templates, refs, tables, files, categories, interlanguage links, math). Every noise
word starts with ``zq``, so no query may contain it. The expected unigram counts, bigram counts,
PMI and titles are computed here from the word model with plain Python, without the package's
code.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from wit_builder.sim.dumpgen import Page  # the fixture writer; the reader under test is queries.wikidump

NOISE = "zq"
COMMON = ["the", "of", "and", "in", "a", "is", "was", "to", "for", "on"]
CONTENT = ("river city mountain dog cat music film war king island church school road bridge "
           "painter novel bird tree station lake River City Mountain Dog Music Film King Island "
           "Church painter's well-known T-shirt 1990s O'Brien café naïve Zürich 42 2024").split()
COLLOCATIONS = [("Buenos", "Aires"), ("Hong", "Kong"), ("New", "Zealand"), ("Tel", "Aviv")]
TITLES = ["Alpha river", "Beta (film)", "C++", "Star Wars: Episode IV", "Zürich", "Dog",
          "New Zealand", "Hong Kong"] + [f"Page {i}" for i in range(40)]


@dataclass
class Corpus:
    pages: list
    runs: list = field(default_factory=list)  # visible runs of adjacent words, all articles
    article_titles: set = field(default_factory=set)
    pageviews: dict = field(default_factory=dict)  # hour -> rows (domain, title, views)


TAIL = [f"{stem}{suffix}" for stem in ("alder", "birch", "cedar", "maple", "rowan", "yew", "Oak", "Elm")
        for suffix in ("", "s", "wood", "ton", "ville", "dale", "ford", "Hill", "-on-Sea", "bury",
                       "field", "mere", "combe", "stead", "worth", "ley", "wick", "ham", "by", "thorpe")]


def _zipf_words(rng: random.Random, n: int) -> list[str]:
    vocab = COMMON + CONTENT + TAIL
    weights = [1.0 / (i + 1) ** 1.1 for i in range(len(vocab))]
    return rng.choices(vocab, weights, k=n)


def _render_word(rng: random.Random, w: str) -> str:
    r = rng.random()
    if r < 0.06:
        return f"[[{rng.choice(TITLES)}|{w}]]"
    if r < 0.09:
        return f"[[{w}]]"
    if r < 0.12:
        return f"'''{w}'''"
    if r < 0.15:
        return f"''{w}''"
    if r < 0.17:
        return f"<b>{w}</b>"
    return w


def _render_run(rng: random.Random, run: list[str]) -> str:
    out = _render_word(rng, run[0])
    for w in run[1:]:
        r = rng.random()
        sep = " "
        if r < 0.05:
            sep = " <!-- zqcomment --> "  # comments vanish: still adjacent
        elif r < 0.09:
            sep = "&nbsp;"  # a non-breaking space is a space
        out += sep + _render_word(rng, w)
    return out


def _clause(rng: random.Random) -> list[str]:
    words = _zipf_words(rng, rng.randint(2, 7))
    if rng.random() < 0.35:
        pair = rng.choice(COLLOCATIONS)
        at = rng.randint(0, len(words))
        words[at:at] = list(pair)
    return words


NOISE_BLOCKS = [
    "{{Infobox zqbox\n| name = zqname\n| image = Zqimage.jpg}}",
    '{| class="wikitable"\n|-\n! zqhead !! zqhead\n|-\n| zqcell || zqcell 12\n|}',
    "[[File:Zqfile.jpg|thumb|zqcaption with [[zqlink]]]]",
    "[[Image:Zqimg.png|left|zqcaption]]",
    "<math>zqmath + 1</math>",
    "{{Reflist}}",
    "<gallery>\nZq.jpg|zqgallery\n</gallery>",
]


def make_article(rng: random.Random, runs: list) -> str:
    """Wikitext of one article; the visible runs it contains are appended to ``runs``."""
    paragraphs = []
    for p in range(rng.randint(2, 4)):
        if p:
            heading = _clause(rng)
            runs.append(heading)
            paragraphs.append(f"== {' '.join(heading)} ==")
            if rng.random() < 0.6:
                paragraphs.append(rng.choice(NOISE_BLOCKS))
        sentences = []
        for _ in range(rng.randint(2, 6)):
            clauses = [_clause(rng) for _ in range(rng.randint(1, 3))]
            runs.extend(clauses)
            seps = [rng.choice([", ", "; ", " &amp; ", " (", ") "]) for _ in clauses[1:]]
            text = _render_run(rng, clauses[0])
            for sep, clause in zip(seps, clauses[1:]):
                text += sep + _render_run(rng, clause)
            text += "."
            r = rng.random()
            if r < 0.25:
                text += "<ref>{{cite web |url=https://example.org/zq |title=zqcite zqtitle}}</ref>"
            elif r < 0.35:
                text += '<ref name="zqname" />'
            elif r < 0.4:
                text += "{{citation needed|date=zqdate}}"
            sentences.append(text)
        paragraphs.append(" ".join(sentences))
        if rng.random() < 0.3:
            items = [_clause(rng) for _ in range(2)]
            runs.extend(items)
            paragraphs.append("\n".join("* " + _render_run(rng, it) for it in items))
    paragraphs.append("[[Category:Zqcategory]]\n[[fr:Zqfrench]]")
    return "__NOTOC__\n" + "\n\n".join(paragraphs) + "\n"


def make_corpus(seed: int = 0, n_hours: int = 4) -> Corpus:
    rng = random.Random(seed)
    corpus = Corpus(pages=[])
    for title in TITLES:
        corpus.pages.append(Page(title, make_article(rng, corpus.runs)))
        corpus.article_titles.add(title)
    # pages that are not articles: their words must not count, their titles are not titles
    corpus.pages.insert(3, Page("Old river", redirect="Alpha river",
                                text="#REDIRECT [[Alpha river]]\n{{R from move}} zqredirect words"))
    corpus.pages.insert(10, Page("Talk:Alpha river", "zqtalk zqdiscussion about [[Alpha river]]", ns=1))
    corpus.pages.insert(20, Page("User:Zq", "zquser page", ns=2))
    corpus.pages.insert(30, Page("Category:Zqcat", "zqcategory text", ns=14))
    corpus.pages.append(Page("Template:Zqtpl", "zqtemplate {{{1}}}", ns=10))
    # hourly pageviews: articles, and titles that must not become queries
    views_for = TITLES[:20] + ["Old river", "Talk:Alpha river", "Not in the dump"]
    for h in range(n_hours):
        rows = []
        for title in views_for:
            for domain in ("en", "en.m", "de", "en.b"):
                if rng.random() < 0.7:
                    rows.append((domain, title, rng.choice([1, 5, 20, 30, 45, 60, 120])))
        corpus.pageviews[f"2024010{1 + h // 24}-{h % 24:02d}"] = rows
    return corpus


# ---------------------------------------------------------------- the independent reference

def counted_runs(runs: list) -> list:
    """The word model's runs as the documented possessive rule counts them: a word ending in 's
    (or ’s) is the word before it, and a run ends after it (``painter's style`` -> ``painter`` |
    ``style``)."""
    out = []
    for run in runs:
        current = []
        for w in run:
            if len(w) > 2 and w[-2:] in ("'s", "’s", "'S", "’S"):
                current.append(w[:-2])
                out.append(current)
                current = []
            else:
                current.append(w)
        if current:
            out.append(current)
    return out


def expected_counts(runs: list) -> tuple[Counter, Counter, int]:
    runs = counted_runs(runs)
    unigrams = Counter(w for run in runs for w in run)
    bigrams = Counter((a, b) for run in runs for a, b in zip(run, run[1:]))
    return unigrams, bigrams, sum(unigrams.values())


def expected_bigrams(runs: list, min_count: int, min_pmi: float | None,
                     count: int | None = None) -> dict[str, tuple[int, float]]:
    """Bigrams with n >= min_count and PMI >= min_pmi (None: any); with ``count``, the ``count``
    best of those by PMI (compared to 9 decimals), then n, then the string (all if fewer)."""
    unigrams, bigrams, total = expected_counts(runs)
    out = {}
    for (a, b), n in bigrams.items():
        score = math.log2(n * total / (unigrams[a] * unigrams[b]))
        if n >= min_count and (min_pmi is None or score >= min_pmi):
            out[f"{a} {b}"] = (n, score)
    if count is not None:
        best = sorted(out, key=lambda q: (-round(out[q][1], 9), -out[q][0], q))[:count]
        out = {q: out[q] for q in best}
    return out


def expected_titles(pageviews: dict, articles: set, min_views: int, min_hourly: int,
                    domains=("en", "en.m"), count: int | None = None) -> dict[str, int]:
    totals: Counter = Counter()
    for rows in pageviews.values():
        hour: Counter = Counter()
        for row in rows:
            if isinstance(row, tuple) and row[0] in domains:
                hour[row[1]] += row[2]
        for title, n in hour.items():
            if n >= min_hourly:
                totals[title] += n
    out = {t: n for t, n in totals.items() if n >= min_views and t in articles}
    if count is not None:
        out = {t: out[t] for t in sorted(out, key=lambda t: (-out[t], t))[:count]}
    return out
