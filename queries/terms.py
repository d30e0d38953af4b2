"""Term rules of the query list that the pipeline applies: stable shards and merge buckets
(crc32, the same in every process), PMI, the log2 histogram bins, and what may be a query."""
from __future__ import annotations

import math
import zlib
from collections import Counter

__all__ = ["term_shard", "sharded", "log2_bin", "pmi", "clean_query", "merge_bucket", "MERGE_BUCKETS"]


def term_shard(term: str, shards: int) -> int:
    return zlib.crc32(term.encode("utf-8")) % shards


def sharded(counts: Counter, shards: int):
    """``{term: n}`` -> ``(shard, {term: n})`` pairs, a stable crc32 shard per term."""
    tables: dict[int, dict] = {}
    for term, n in counts.items():
        tables.setdefault(term_shard(term, shards), {})[term] = n
    return tables.items()


def log2_bin(count: int) -> int:
    return int(math.log2(count)) if count > 0 else 0


def pmi(n12: int, n1: int, n2: int, total: int) -> float:
    """log2(n(w1 w2) * N / (n(w1) * n(w2)))."""
    return math.log2(n12) + math.log2(total) - math.log2(n1) - math.log2(n2)


_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
MERGE_BUCKETS = 64


def clean_query(query: str) -> str | None:
    """The query as written to the list (outer spaces stripped), or None when it cannot be one:
    empty, holding a tab or line break, or a single punctuation character (MetaCLIP drops those)."""
    q = query.strip()
    if not q or "\t" in q or "\n" in q or "\r" in q or q in _PUNCT:
        return None
    return q


def merge_bucket(query: str) -> int:
    """A stable bucket (crc32, unlike Python's per-process ``hash``) for the merge."""
    return zlib.crc32(query.encode("utf-8")) % MERGE_BUCKETS


