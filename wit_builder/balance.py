"""Class balancing (CLIP: "up to 20,000 (image, text) pairs per query"; rule from MetaCLIP).

With ``count_q`` the number of matched pairs whose text contains query ``q`` and ``t`` the
per-query cap, query ``q`` keeps each of its pairs with probability ``p_q = min(1, t / count_q)``.
A pair that matched the queries ``Q`` is kept with probability ``1 - prod_{q in Q} (1 - p_q)``
(it survives if any of its queries would keep it). Tail queries (``count_q <= t``) have
``p_q = 1``, so every pair matching a tail query is kept.

The draw is deterministic: a pair is kept when ``u(seed, uid) < keep_prob``, with ``u`` the first
53 bits of ``sha256(f"{seed}\\n{uid}")`` as a fraction in [0, 1). Reruns, runners and worker
counts keep the same pairs; another seed draws another sample.

The realised size is a sum of independent Bernoulli draws, so it has mean ``sum(keep_prob)``
(reported as ``expected_size``) and standard deviation ``sqrt(sum(p (1 - p)))``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from wit_builder.core import WitError

DEFAULT_CAP = 20_000   # CLIP sec. 2.2: "up to 20,000 (image, text) pairs per query"


@dataclass(frozen=True)
class BalanceConfig:
    """The one home of the per-query cap ``t`` and the seed of the draw (validated here, once)."""
    per_query_cap: int = DEFAULT_CAP
    seed: int = 0

    def __post_init__(self):
        if int(self.per_query_cap) < 1:
            raise WitError("--per-query-cap must be at least 1")

    def keep_prob(self, counts: np.ndarray) -> np.ndarray:
        """Each query's keep probability ``min(1, t / count)``."""
        return query_keep_prob(counts, self.per_query_cap)

__all__ = ["BalanceConfig", "DEFAULT_CAP", "query_ids_csr", "query_keep_prob", "pair_keep_prob", "uniform_draw", "balance_table", "count_queries",
           "head_tail", "plot_balance"]


def query_keep_prob(counts: np.ndarray, cap: int) -> np.ndarray:
    """``min(1, cap / count)`` per query (1 where count is 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = np.ones_like(counts)
    np.divide(float(cap), counts, out=p, where=counts > cap)
    return p


def pair_keep_prob(offsets: np.ndarray, ids: np.ndarray, p_query: np.ndarray) -> np.ndarray:
    """``1 - prod(1 - p_q)`` over each row's query ids (CSR ``offsets``/``ids``; rows non-empty)."""
    n = len(offsets) - 1
    if n == 0:
        return np.zeros(0)
    miss = 1.0 - p_query[ids]
    lengths = np.diff(offsets)
    if (lengths == 0).any():
        raise ValueError("every matched pair has at least one query id")
    prod = np.multiply.reduceat(miss, offsets[:-1])
    return np.clip(1.0 - prod, 0.0, 1.0)


def uniform_draw(uids: Sequence[str], seed: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per uid: first 53 bits of sha256(f"{seed}\\n{uid}")."""
    prefix = f"{int(seed)}\n".encode()
    out = np.fromiter((int.from_bytes(hashlib.sha256(prefix + u.encode()).digest()[:8], "big") >> 11
                       for u in uids), dtype=np.float64, count=len(uids))
    return out * (1.0 / (1 << 53))


def balance_table(table: pa.Table, p_query: np.ndarray, seed: int) -> tuple[pa.Table, dict]:
    """Kept rows of a matched table plus their ``keep_prob``; and this table's statistics."""
    offsets, ids = query_ids_csr(table.column("query_ids"))
    if len(ids) and int(ids.max()) >= len(p_query):
        raise ValueError(f"query id {int(ids.max())} is beyond the counts ({len(p_query)} queries)")
    keep_prob = pair_keep_prob(offsets, ids, p_query)
    u = uniform_draw(table.column("uid").to_pylist(), seed)
    mask = u < keep_prob
    kept = table.append_column("keep_prob", pa.array(keep_prob, pa.float64())).filter(pa.array(mask))
    stats = {"matched": int(table.num_rows), "kept": int(mask.sum()),
             "expected_size": float(keep_prob.sum()), "size_variance": float((keep_prob * (1 - keep_prob)).sum())}
    return kept, stats


def count_queries(column, num_queries: int | None = None) -> np.ndarray:
    """Pairs per query id for a ``query_ids`` column (ids within a row are unique)."""
    _, ids = query_ids_csr(column)
    size = int(ids.max()) + 1 if len(ids) else 0
    if num_queries is not None:
        size = max(size, int(num_queries))
    return np.bincount(ids, minlength=size).astype(np.int64)


def head_tail(counts: np.ndarray, cap: int) -> dict:
    counts = np.asarray(counts)
    present = counts > 0
    return {"queries_matched": int(present.sum()), "head_queries": int((counts > cap).sum()),
            "tail_queries": int((present & (counts <= cap)).sum())}


def plot_balance(counts: np.ndarray, kept: np.ndarray, cap: int, path: str, title: str = "") -> None:
    """Per-query counts before and after balancing, sorted by count, on log-log axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from wit_builder.core import atomic_open
    counts = np.asarray(counts)
    kept = np.asarray(kept)
    order = np.argsort(-counts, kind="stable")
    before = counts[order]
    after = kept[order] if len(kept) else kept
    n = int((before > 0).sum())
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if n:
        # at most ~2,000 log-spaced ranks: the curve looks the same and 500k points plot slowly
        idx = np.unique(np.geomspace(1, n, num=min(n, 2000)).astype(np.int64)) - 1
        ax.loglog(idx + 1, before[idx], label="matched (before)", lw=1.6)
        ax.loglog(idx + 1, np.maximum(after[idx], 0.8), label="kept (after)", lw=1.2)  # 0 can't be on log axes
    ax.axhline(cap, color="grey", ls="--", lw=1, label=f"cap t = {cap:,}")
    ax.set_xlabel("query rank (by matched pairs)")
    ax.set_ylabel("pairs per query")
    ax.set_title(title or "per-query counts before/after balancing")
    ax.legend()
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def query_ids_csr(column) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list<int32> column (chunked or not)."""
    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks else pa.array([], pa.list_(pa.int32()))
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = np.asarray(arr.values, dtype=np.int32)
    base = offsets[0]
    return offsets - base, values[base:offsets[-1]]
