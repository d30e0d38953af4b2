"""Query matching with MetaCLIP's substring semantics, on an Aho-Corasick automaton.

Reference semantics (MetaCLIP, Xu et al. 2023, "Demystifying CLIP Data", its substring matching):
the text is padded with one space on each side, each of ``, . ; : ? ! ``\\```` gets a space on
each side, tabs/newlines/carriage returns become spaces, and query ``q`` matches when ``" " + q +
" "`` occurs in that string. Matching is case-sensitive; queries themselves are not re-spaced, so a
query like ``St. Louis`` can never match (the text side always has ``St . Louis``); see
docs/collect.md. :func:`naive_match` is that loop, written plainly, and is the reference the tests
and ``bench/match.py`` compare against.

:class:`Matcher` finds the same sets with one pyahocorasick automaton whose keys are ``" q "``
for every query, and matches texts in batches: a batch is joined into one string with a NUL
between texts, spaced with a few ``str.replace`` calls over the whole batch, scanned once, and each
match's end offset is mapped back to its text with ``numpy.searchsorted``. A key without NUL cannot span two texts, so the result is exactly the
per-text result. (Queries that contain NUL, and batches where a text contains NUL, take the
per-text path.) Results are CSR arrays (``offsets``, ``query_ids``) with each text's ids sorted
and unique.

Why not a word-level automaton (one character per query token, fewer characters to scan): it was
measured (bench/match.py notes) and is no faster, because pyahocorasick's per-node child search is
linear and the token encoding costs what the shorter scan saves. Keys are added in the query
file's order, which keeps frequent first letters early in each node's child list.

``case_insensitive=True`` lower-cases queries and texts (``str.lower``) before the same procedure;
queries equal after lower-casing all match.
"""
from __future__ import annotations

import itertools
import pickle
from typing import Sequence

import numpy as np

__all__ = ["PUNCTUATION", "spacing", "naive_match", "Matcher"]

PUNCTUATION = (",", ".", ";", ":", "?", "!", "`")
_TO_SPACE = ("\t", "\n", "\r")
_SEP = "\x00"


def spacing(text: str) -> str:
    """MetaCLIP's text spacing: pad, space out punctuation, tabs/newlines to spaces."""
    spaced = f" {text} "
    for p in PUNCTUATION:
        spaced = spaced.replace(p, f" {p} ")
    for c in _TO_SPACE:
        spaced = spaced.replace(c, " ")
    return spaced


def naive_match(text: str, queries: Sequence[str], case_insensitive: bool = False) -> list[int]:
    """The reference loop: ids of every query ``q`` with ``" q "`` in ``spacing(text)``."""
    spaced = spacing(text.lower() if case_insensitive else text)
    if case_insensitive:
        return [i for i, q in enumerate(queries) if f" {q.lower()} " in spaced]
    return [i for i, q in enumerate(queries) if f" {q} " in spaced]


def _space_batch(joined: str) -> str:
    for p in PUNCTUATION:
        if p in joined:
            joined = joined.replace(p, f" {p} ")
    for c in _TO_SPACE:
        if c in joined:
            joined = joined.replace(c, " ")
    return joined


class Matcher:
    """Aho-Corasick matcher over ``queries`` (query id = position in the sequence)."""

    RELAYOUT_MIN_KEYS = 20_000

    def __init__(self, queries: Sequence[str], case_insensitive: bool = False, relayout: bool | None = None):
        import ahocorasick
        self.case_insensitive = bool(case_insensitive)
        self.num_queries = len(queries)
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        first_id: dict[str, int] = {}
        aliases: dict[int, list[int]] = {}     # first id -> every id with the same key
        self._sep_queries: list[tuple[int, str]] = []
        for qid, q in enumerate(queries):
            if self.case_insensitive:
                q = q.lower()
            if _SEP in q:
                self._sep_queries.append((qid, q))   # matched by a plain substring test
                continue
            key = f" {q} "
            if key in first_id:
                aliases.setdefault(first_id[key], [first_id[key]]).append(qid)
                continue
            first_id[key] = qid
            self._automaton.add_word(key, qid)
        self._aliases = aliases
        # the same as flat arrays for the batch path: first id -> each further id with its key
        src = sorted((first, other) for first, ids in aliases.items() for other in ids if other != first)
        self._alias_src = np.array([a for a, _ in src], dtype=np.int64)
        self._alias_dst = np.array([b for _, b in src], dtype=np.int64)
        self._empty = len(self._automaton) == 0
        if not self._empty:
            self._automaton.make_automaton()
            if relayout or (relayout is None and len(self._automaton) >= self.RELAYOUT_MIN_KEYS):
                # A pickle round trip re-allocates the nodes in traversal order instead of insertion
                # order; with 500k queries that scans ~25% faster (fewer cache misses) for ~2 s more
                # setup (bench/match.py prints both).
                self._automaton = pickle.loads(pickle.dumps(self._automaton, protocol=pickle.HIGHEST_PROTOCOL))

    def memory_bytes(self) -> int:
        """Size of the automaton's nodes as pyahocorasick reports it."""
        return int(self._automaton.get_stats()["total_size"]) if not self._empty else 0

    # -- per text -------------------------------------------------------------------------
    def match(self, text: str) -> list[int]:
        """Sorted unique ids of the queries matching ``text``."""
        if self.case_insensitive:
            text = text.lower()
        spaced = spacing(text)
        ids = set()
        if not self._empty:
            ids.update(v for _, v in self._automaton.iter(spaced))
        if self._aliases:
            for first in list(ids):
                if first in self._aliases:
                    ids.update(self._aliases[first])
        for qid, q in self._sep_queries:
            if f" {q} " in spaced:
                ids.add(qid)
        return sorted(ids)

    # -- batches --------------------------------------------------------------------------
    def match_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """CSR result: text ``i`` matched ``query_ids[offsets[i]:offsets[i + 1]]`` (sorted, unique)."""
        n = len(texts)
        if n == 0:
            return np.zeros(1, np.int64), np.zeros(0, np.int32)
        joined = " " + f" {_SEP} ".join(texts) + " "
        if joined.count(_SEP) != n - 1 or self._sep_queries:
            return self._match_each(texts)
        if self._empty:
            return np.zeros(n + 1, np.int64), np.zeros(0, np.int32)
        if self.case_insensitive:
            joined = joined.lower()
        joined = _space_batch(joined)
        flat = np.fromiter(itertools.chain.from_iterable(self._automaton.iter(joined)), dtype=np.int64)
        if not len(flat):
            return np.zeros(n + 1, np.int64), np.zeros(0, np.int32)
        ends, qids = flat[0::2], flat[1::2]
        seps = np.flatnonzero(np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32) == 0)
        text_idx = np.searchsorted(seps, ends)
        if len(self._alias_src):
            text_idx, qids = self._add_aliases(text_idx, qids)
        key = np.sort(text_idx * np.int64(self.num_queries) + qids)
        if len(key) > 1:        # unique; np.unique is many times slower than this in numpy 2.4
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        owner = key // self.num_queries
        ids = (key - owner * self.num_queries).astype(np.int32)
        offsets = np.searchsorted(owner, np.arange(n + 1), side="left").astype(np.int64)
        return offsets, ids

    def _add_aliases(self, text_idx: np.ndarray, qids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add (text, other id) for every hit on a key that several queries share."""
        lo = np.searchsorted(self._alias_src, qids, side="left")
        hi = np.searchsorted(self._alias_src, qids, side="right")
        count = hi - lo
        if not count.any():
            return text_idx, qids
        owners = np.repeat(text_idx, count)
        starts = np.repeat(lo, count)
        within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        return (np.concatenate([text_idx, owners]),
                np.concatenate([qids, self._alias_dst[starts + within]]))

    def _match_each(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        lists = [self.match(t) for t in texts]
        offsets = np.zeros(len(texts) + 1, np.int64)
        np.cumsum([len(x) for x in lists], out=offsets[1:])
        ids = np.fromiter((i for x in lists for i in x), dtype=np.int32, count=int(offsets[-1]))
        return offsets, ids

    def match_lists(self, texts: Sequence[str]) -> list[list[int]]:
        offsets, ids = self.match_batch(texts)
        return [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))]
