"""Synthetic stand-ins for the 500k query list, alt texts and Common Crawl pages (benchmarks only).

There is no Wikipedia or Common Crawl on this machine, so the benchmarks build data with the
statistics that matter for speed:

* ``vocabulary``: WordNet's single-word lemmas (``/usr/share/wordnet``, Debian ``wordnet-base``, which
  CI installs), most used first (WordNet's tagged sense counts); without WordNet, pseudo-English
  words from onset/vowel/coda syllables with short words first. Word frequencies in texts follow
  Zipf's law (s = 1.1) over that order, as English words do.
* ``queries``: CLIP's list is Wikipedia unigrams, bigrams, article titles and WordNet synsets.
  Here: the first 30% of the list are vocabulary words (plus capitalised variants of frequent
  words), then WordNet multi-word lemmas (up to 10%), bigrams of Zipf-sampled words up to 60%, and
  "titles" of 2-5 capitalised Zipf-sampled words, up to ``n`` unique queries.
* ``texts``: 3-20 Zipf-sampled words, 20% capitalised, a punctuation mark in 30% of them: like
  alt texts, several queries match each (about 12 per text).
* ``pages``: pages for :mod:`wit_builder.sim.webgen` with 0-20 images (mean ~6), 40% relative image
  URLs, 25% images without alt text, about 30 anchor links each, 3% data: URLs.
"""
from __future__ import annotations

import os
import random

import numpy as np

ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y", "z",
          "bl", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "sc", "sh", "sk", "sl", "sm",
          "sn", "sp", "st", "str", "sw", "th", "tr", "wh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oa", "oo", "ou", "y"]
CODAS = ["", "", "", "b", "ck", "d", "ft", "g", "ld", "ll", "m", "n", "nd", "ng", "nk", "nt", "p", "r", "rd",
         "rk", "rn", "rt", "s", "sh", "ss", "st", "t", "th", "x"]


WORDNET = "/usr/share/wordnet"
FUNCTION_WORDS = ["the", "of", "and", "a", "in", "to", "with", "on", "for", "at", "by", "from", "my", "our",
                  "this", "an", "is", "new", "your", "black", "white", "red", "blue", "small", "large"]


def _wordnet_lemmas() -> list[tuple[str, int]]:
    """(lemma, tagged sense count) from WordNet's index files (Debian package wordnet-base)."""
    out = {}
    for pos in ("noun", "verb", "adj", "adv"):
        path = os.path.join(WORDNET, f"index.{pos}")
        if not os.path.exists(path):
            return []
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(" "):
                    continue                       # licence header
                f = line.split()
                p_cnt = int(f[3])
                tagged = int(f[5 + p_cnt])
                out[f[0]] = max(out.get(f[0], 0), tagged)
    return list(out.items())


def wordnet_phrases() -> list[str]:
    """WordNet's multi-word lemmas ("ice cream"), most used first; empty without WordNet."""
    lemmas = [(w.replace("_", " "), c) for w, c in _wordnet_lemmas() if "_" in w]
    return [w for w, _ in sorted(lemmas, key=lambda wc: (-wc[1], len(wc[0]), wc[0]))]


def vocabulary(n: int = 300_000, seed: int = 0) -> list[str]:
    """English words from WordNet when installed (most used first), else pseudo-English words."""
    lemmas = [(w, c) for w, c in _wordnet_lemmas() if "_" not in w and w.isalpha()]
    if lemmas:
        words = [w for w, _ in sorted(lemmas, key=lambda wc: (-wc[1], len(wc[0]), wc[0]))]
        words = FUNCTION_WORDS + [w for w in words if w not in set(FUNCTION_WORDS)]   # WordNet has none
        return words[:n]
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        m = 2 * (n - len(out)) + 100
        k = np.minimum(1 + rng.exponential(1 / 1.3, m).astype(int), 4)
        o, v, c = rng.integers(len(ONSETS), size=(m, 4)), rng.integers(len(VOWELS), size=(m, 4)), \
            rng.integers(len(CODAS), size=(m, 4))
        for i in range(m):
            w = "".join(ONSETS[o[i, j]] + VOWELS[v[i, j]] + CODAS[c[i, j]] for j in range(k[i]))
            if w not in seen:
                seen.add(w)
                out.append(w)
                if len(out) == n:
                    break
    noise = rng.normal(0, 2.5, len(out))
    order = np.argsort([len(w) + e for w, e in zip(out, noise)], kind="stable")   # frequent words are short
    return [out[i] for i in order]


class _Zipf:
    """Sample indices 0..n-1 with probability proportional to 1 / (i + 1) ** 1.1."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.cum = np.cumsum(1.0 / np.arange(1, n + 1) ** 1.1)
        self.rng = rng

    def __call__(self, size: int) -> np.ndarray:
        return np.searchsorted(self.cum, self.rng.random(size) * self.cum[-1], side="right")


def queries(n: int, vocab: list[str], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    zipf = _Zipf(len(vocab), rng)
    out, seen = [], set()

    def add(q: str) -> None:
        if q not in seen:
            seen.add(q)
            out.append(q)

    for w in vocab[:int(n * 0.3)]:
        add(w)
    for w, r in zip(vocab[:20000], rng.random(20000)):
        if r < 0.3:
            add(w.capitalize())
    for phrase in wordnet_phrases()[:int(n * 0.1)]:
        add(phrase)
    while len(out) < int(n * 0.6):
        pairs = zipf(2 * (int(n * 0.6) - len(out)) + 10).reshape(-1, 2)
        for a, b in pairs:
            add(f"{vocab[a]} {vocab[b]}")
            if len(out) >= int(n * 0.6):
                break
    while len(out) < n:
        lens = rng.integers(2, 6, size=n - len(out) + 10)
        words = zipf(int(lens.sum()))
        pos = 0
        for k in lens:
            add(" ".join(vocab[i].capitalize() for i in words[pos:pos + k]))
            pos += k
            if len(out) >= n:
                break
    return out[:n]


class TextSampler:
    """Alt-text-like strings: 3-20 Zipf words, 20% capitalised, punctuation in 30% of texts."""

    def __init__(self, vocab: list[str], seed: int = 1, block: int = 4096):
        self.rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.zipf = _Zipf(len(vocab), self.rng)
        self.block = block
        self.buf: list[str] = []

    def _fill(self) -> None:
        rng, vocab = self.rng, self.vocab
        lens = rng.integers(3, 21, size=self.block)
        words = self.zipf(int(lens.sum()))
        caps = rng.random(len(words)) < 0.2
        punct = rng.random(self.block)
        marks = rng.integers(0, 4, size=self.block)
        pos = 0
        for i, k in enumerate(lens):
            ws = [vocab[w].capitalize() if c else vocab[w] for w, c in zip(words[pos:pos + k], caps[pos:pos + k])]
            if punct[i] < 0.3:
                ws[int(punct[i] * 1000) % k] += ",.:!"[marks[i]]
            self.buf.append(" ".join(ws))
            pos += k
        self.buf.reverse()

    def __call__(self) -> str:
        if not self.buf:
            self._fill()
        return self.buf.pop()


def texts(n: int, vocab: list[str], seed: int = 1) -> list[str]:
    sample = TextSampler(vocab, seed)
    return [sample() for _ in range(n)]


def pages(n: int, vocab: list[str], seed: int = 2, start: int = 0):
    from wit_builder.sim.webgen import Image, Page
    rng = random.Random(seed)
    sample = TextSampler(vocab, seed + 1)
    out = []
    for i in range(start, start + n):
        host = f"www.site{rng.randrange(5000)}.example.com"
        imgs = []
        for j in range(min(int(rng.expovariate(1 / 6)), 20)):
            r = rng.random()
            if r < 0.4:
                src = f"/images/{i}/{j}.jpg"
            elif r < 0.43:
                src = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
            else:
                src = f"https://cdn{rng.randrange(50)}.example.net/{i}/{j}.jpg"
            alt = None if rng.random() < 0.25 else sample()
            imgs.append(Image(src, alt=alt))
        links = [(f"/p/{rng.randrange(10**6)}.html", sample()[:30]) for _ in range(30)]
        out.append(Page(f"https://{host}/p/{i}.html", images=imgs, links=links, title=sample()[:60]))
    return out
