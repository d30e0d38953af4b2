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

**The final pool** (``wit balance --pool``): the same rule applied again to what survived
``wit download`` and ``wit dedup run``: ``count_q`` counts the surviving samples only (status
``success``, kept by dedup), and the draw is ``u(seed, "pool", uid)``, the first 53 bits of
``sha256(f"{seed}\\npool\\n{uid}")``. That draw is independent of the collect draw on purpose: the
pool's pairs all passed ``u(seed, uid) < keep_prob`` already, so reusing that draw would keep
nearly every survivor (a survivor's ``u`` is below its old probability, and the pool's smaller
counts only raise it) and a pool collected with a larger cap could never come down to ``t``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from wit_builder import records
from wit_builder.core import WitError, exists, open_read
from wit_builder.schemas import COUNTS_SCHEMA, DECISIONS_SCHEMA
from wit_builder.shards import DECISION_BATCH, DecisionsFile, ShardRouter

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
           "head_tail", "plot_balance", "POOL_STREAM", "NOT_IN_DEDUP", "POOL_DECISIONS_SCHEMA", "DedupDecisions",
           "open_pool_decisions", "read_pool_decision_group", "shard_dedup_decisions",
           "decide_pool_shard", "write_pool_part", "merge_pool_parts", "read_pool_shard", "pool_shard", "survivor_counts", "draw_pool",
           "combine_pool_decisions", "pool_counts_table", "pool_summary", "POOL_COUNTS_SCHEMA", "POOL_OUTCOMES"]


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


def uniform_draw(uids: Sequence[str], seed: int, stream: str = "") -> np.ndarray:
    """Deterministic uniform [0, 1) per uid: first 53 bits of sha256(f"{seed}\\n{uid}"), or of
    sha256(f"{seed}\\n{stream}\\n{uid}") with a ``stream`` (a draw independent of the plain one)."""
    prefix = (f"{int(seed)}\n{stream}\n" if stream else f"{int(seed)}\n").encode()
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


def plot_balance(counts: np.ndarray, kept: np.ndarray, cap: int, path: str, title: str = "",
                 before: str = "matched") -> None:
    """Per-query counts before and after balancing, sorted by count, on log-log axes; ``before``
    names what ``counts`` counts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from wit_builder.core import atomic_open
    counts = np.asarray(counts)
    kept = np.asarray(kept)
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order]
    after = kept[order] if len(kept) else kept
    n = int((sorted_counts > 0).sum())
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if n:
        # at most ~2,000 log-spaced ranks: the curve looks the same and 500k points plot slowly
        idx = np.unique(np.geomspace(1, n, num=min(n, 2000)).astype(np.int64)) - 1
        ax.loglog(idx + 1, sorted_counts[idx], label=f"{before} (before)", lw=1.6)
        ax.loglog(idx + 1, np.maximum(after[idx], 0.8), label="kept (after)", lw=1.2)  # 0 can't be on log axes
    ax.axhline(cap, color="grey", ls="--", lw=1, label=f"cap t = {cap:,}")
    ax.set_xlabel(f"query rank (by {before} pairs)")
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


# --- the final pool: `wit balance --pool IMAGES [--dedup DEDUP]` (see the module docstring) -------

POOL_STREAM = "pool"                 # the pool's draw: sha256(f"{seed}\npool\n{uid}")
NOT_IN_DEDUP = ("drop", "keep")      # what happens to a downloaded sample the decisions do not list
SURVIVOR = "survivor"                # a row's outcome between pool_shard and draw_pool
POOL_OUTCOMES = ("kept", "balanced_out", "failed_download", "dropped_by_dedup", "not_in_dedup", "no_query_ids")
POOL_DECISIONS_SCHEMA = (DECISIONS_SCHEMA.append(pa.field("query_ids", pa.list_(pa.int32())))
                         .append(pa.field("outcome", pa.string())).append(pa.field("keep_prob", pa.float64()))
                         .append(pa.field("dedup_kept", pa.bool_())))
POOL_COUNTS_SCHEMA = COUNTS_SCHEMA.append(pa.field("pooled", pa.int64()))
_POOL_COLUMNS = ("key", "uid", "query_ids", "status")


@dataclass(frozen=True)
class DedupDecisions:
    """A download shard's dedup decisions (DECISIONS_SCHEMA's columns; missing optional ones are
    null) and its key -> row index."""
    path: str
    table: pa.Table
    rows: dict

    def __len__(self) -> int:
        return self.table.num_rows


def open_pool_decisions(dedup: str) -> DecisionsFile:
    """Check ``DEDUP/decisions.parquet`` (``dedup`` is the folder or the file) from its footer
    alone: a finished run's output, ``key`` and ``kept`` columns, the others of DECISIONS_SCHEMA
    absent or of a castable type. Its rows are read on the workers (:func:`read_pool_decision_group`)."""
    import pyarrow.parquet as pq
    path = dedup if dedup.endswith(".parquet") else dedup.rstrip("/") + "/decisions.parquet"
    if not exists(path):
        raise WitError(f"--dedup {dedup}: {path} not found (run `wit dedup run` first)")
    records.verify_inputs([path], "--dedup")
    try:
        with open_read(path) as fh:
            meta = pq.ParquetFile(fh).metadata
            schema = meta.schema.to_arrow_schema()
        missing = [c for c in ("key", "kept") if c not in schema.names]
        if missing:
            raise WitError(f"--dedup {dedup}: {path} is not a decisions table (no {', '.join(missing)} column)")
        for f in DECISIONS_SCHEMA:
            if f.name in schema.names:
                pa.array([], schema.field(f.name).type).cast(f.type)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise WitError(f"--dedup {dedup}: {path} is not a decisions table: {exc}") from None
    return DecisionsFile(dedup, path, meta.num_rows, meta.num_row_groups)


def read_pool_decision_group(decisions: DecisionsFile, row_group: int,
                             route: ShardRouter) -> Iterator[tuple[str, pa.Table]]:
    """Row group ``row_group`` of the decisions, a batch at a time, as ``(download shard, its rows
    (DECISIONS_SCHEMA))`` fragments, routed by key as `wit shards` routes them; rows whose key is
    in no download shard are left out."""
    import pyarrow.parquet as pq
    try:
        with open_read(decisions.path) as fh:
            pf = pq.ParquetFile(fh)
            present = [f.name for f in DECISIONS_SCHEMA if f.name in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=DECISION_BATCH, row_groups=[row_group], columns=present):
                n = batch.num_rows
                table = pa.Table.from_arrays(
                    [batch.column(f.name).cast(f.type) if f.name in present else pa.nulls(n, f.type)
                     for f in DECISIONS_SCHEMA], schema=DECISIONS_SCHEMA)
                where: dict[str, list] = {}
                for i, key in enumerate(table.column("key").to_pylist()):
                    if key is not None:
                        for name in route(key):
                            where.setdefault(name, []).append(i)
                for name, idx in sorted(where.items()):
                    yield name, table.take(pa.array(idx, pa.int64()))
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise WitError(f"--dedup {decisions.dedup}: {decisions.path} is not a decisions table: {exc}") from None


def shard_dedup_decisions(decisions: DecisionsFile, fragments) -> DedupDecisions:
    """One download shard's decisions from its fragments (:func:`read_pool_decision_group`, in any
    order); a key twice is an error naming the smallest such key, whatever the order."""
    tables = [t for t in fragments if t.num_rows]
    table = pa.concat_tables(tables).sort_by("key") if tables else DECISIONS_SCHEMA.empty_table()
    rows: dict = {}
    twice = []
    for i, key in enumerate(table.column("key").to_pylist()):
        if key in rows:
            twice.append(key)
        rows[key] = i
    if twice:
        raise WitError(f"--dedup {decisions.dedup}: key {min(twice)} appears twice in {decisions.path}")
    return DedupDecisions(decisions.path, table, rows)


def decide_pool_shard(images: str, name: str, decisions: DecisionsFile | None, fragments,
                      not_in_dedup: str = "drop") -> pa.Table:
    """Download shard ``name`` joined with its own decisions (``fragments``, as
    :func:`read_pool_decision_group` routes them; ignored without ``decisions``): :func:`pool_shard`'s
    rows. With decisions every key must begin with the shard's name, which the join is by."""
    rows = read_pool_shard(images, name)
    dedup = None
    if decisions is not None:
        stray = [k for k in rows.column("key").to_pylist() if k is None or not k.startswith(name)]
        if stray:
            raise WitError(f"--pool {images}: key {stray[0]} of shard {name} does not begin with the shard's name, "
                           "which --dedup's decisions are joined by")
        dedup = shard_dedup_decisions(decisions, fragments)
    return pool_shard(rows, f"{images}/{name}.tar", dedup, not_in_dedup)


def read_pool_shard(images: str, name: str) -> pa.Table:
    """``key``, ``uid``, ``query_ids``, ``status``, ``width``, ``height`` of download shard ``name``."""
    import pyarrow.parquet as pq
    path = f"{images.rstrip('/')}/{name}.parquet"
    try:
        with open_read(path) as fh:
            found = pq.ParquetFile(fh).schema_arrow.names
            fh.seek(0)
            table = pq.read_table(fh, columns=[c for c in (*_POOL_COLUMNS, "width", "height") if c in found])
    except (pa.ArrowException, OSError) as exc:
        raise WitError(f"--pool: cannot read {path}: {exc}") from None
    missing = [c for c in _POOL_COLUMNS if c not in table.column_names]
    if missing:
        raise WitError(f"--pool: {path} has no {', '.join(missing)} column (re-balancing needs the `wit download` "
                       "of `wit collect`'s balanced/ pairs, which keeps uid and query_ids)")
    n = table.num_rows
    try:
        return pa.table({
            "key": table.column("key").cast(pa.string()), "uid": table.column("uid").cast(pa.string()),
            "query_ids": table.column("query_ids").cast(pa.list_(pa.int32())),
            "status": table.column("status").cast(pa.string()),
            **{c: table.column(c).cast(pa.int32()) if c in table.column_names else pa.nulls(n, pa.int32())
               for c in ("width", "height")}})
    except (pa.ArrowException, ValueError) as exc:
        raise WitError(f"--pool: {path} has a column of an unexpected type: {exc}") from None


def pool_shard(rows: pa.Table, shard: str, dedup: DedupDecisions | None, not_in_dedup: str = "drop") -> pa.Table:
    """One download shard's rows (:func:`read_pool_shard`) -> its rows of the pool's decisions
    (POOL_DECISIONS_SCHEMA), ``kept`` false. ``outcome`` names the loss (failed_download,
    dropped_by_dedup, not_in_dedup, no_query_ids), or is "survivor": for :func:`draw_pool`.

    Dedup columns come from the sample's decisions row; ``shard``, ``width`` and ``height`` from
    the download where it has none. Without ``dedup`` every successful sample survives; with it,
    a successful sample the decisions do not list is dropped (``not_in_dedup="drop"``) or
    survives (``"keep"``, as ``wit shards`` treats it)."""
    if not_in_dedup not in NOT_IN_DEDUP:
        raise WitError(f"--not-in-dedup must be one of {', '.join(NOT_IN_DEDUP)}, not {not_in_dedup!r}")
    cols = {c: rows.column(c).to_pylist() for c in ("key", "uid", "query_ids", "status", "width", "height")}
    n = rows.num_rows
    found = {}
    if dedup is not None and n:
        hits = [(j, dedup.rows[k]) for j, k in enumerate(cols["key"]) if k in dedup.rows]
        taken = dedup.table.take(pa.array([i for _, i in hits], pa.int64())).to_pylist()
        found = {j: d for (j, _), d in zip(hits, taken)}
    out: dict[str, list] = {f.name: [] for f in POOL_DECISIONS_SCHEMA}
    for j in range(n):
        key, uid, qids, status = cols["key"][j], cols["uid"][j], cols["query_ids"][j], cols["status"][j]
        d = found.get(j)
        if d is not None and d["uid"] is not None and uid is not None and d["uid"] != uid:
            raise WitError(f"--dedup: key {key} has uid {d['uid']} in the decisions but {uid} in "
                           f"the download ({shard}): decisions of another download?")
        if status != "success":
            outcome = "failed_download"
        elif dedup is not None and d is None and not_in_dedup == "drop":
            outcome = "not_in_dedup"
        elif d is not None and not d["kept"]:
            outcome = "dropped_by_dedup"
        elif not qids:
            outcome = "no_query_ids"
        else:
            outcome = SURVIVOR
        row = dict(d) if d is not None else {f.name: None for f in DECISIONS_SCHEMA}
        row.update(uid=uid if uid is not None else row["uid"], key=key, kept=False, query_ids=qids, outcome=outcome,
                   keep_prob=None, dedup_kept=None if d is None else bool(d["kept"]))
        if d is None:
            row.update(shard=shard, width=cols["width"][j], height=cols["height"][j])
        for name in out:
            out[name].append(row[name])
    return pa.table(out, schema=POOL_DECISIONS_SCHEMA)


def _is_survivor(table: pa.Table) -> np.ndarray:
    return np.array([o == SURVIVOR for o in table.column("outcome").to_pylist()], dtype=bool)


def survivor_counts(table: pa.Table) -> np.ndarray:
    """Surviving samples per query id in rows of :func:`pool_shard`."""
    return count_queries(table.filter(pa.array(_is_survivor(table))).column("query_ids"))


def draw_pool(table: pa.Table, p_query: np.ndarray, seed: int) -> tuple[pa.Table, dict]:
    """Decide the survivors of :func:`pool_shard`'s rows: kept when ``u(seed, "pool", uid) <
    1 - prod(1 - p_q)`` (the uid, or the key where a row has none); returns the rows with
    ``kept``, ``keep_prob`` and ``outcome`` (kept / balanced_out) set, and counts by outcome."""
    alive = _is_survivor(table)
    sub = table.filter(pa.array(alive))
    offsets, ids = query_ids_csr(sub.column("query_ids"))
    if len(ids) and int(ids.max()) >= len(p_query):
        raise ValueError(f"query id {int(ids.max())} is beyond the counts ({len(p_query)} queries)")
    prob = pair_keep_prob(offsets, ids, p_query)
    draw_ids = [u if u is not None else k for u, k in zip(sub.column("uid").to_pylist(), sub.column("key").to_pylist())]
    hit = uniform_draw(draw_ids, seed, POOL_STREAM) < prob
    where = np.flatnonzero(alive)
    kept = np.zeros(table.num_rows, bool)
    kept[where] = hit
    keep_prob: list = [None] * table.num_rows
    outcome = table.column("outcome").to_pylist()
    for i, p, h in zip(where.tolist(), prob.tolist(), hit.tolist()):
        keep_prob[i] = p
        outcome[i] = "kept" if h else "balanced_out"
    schema = table.schema
    table = (table.set_column(schema.get_field_index("kept"), "kept", pa.array(kept, pa.bool_()))
             .set_column(schema.get_field_index("keep_prob"), "keep_prob", pa.array(keep_prob, pa.float64()))
             .set_column(schema.get_field_index("outcome"), "outcome", pa.array(outcome, pa.string())))
    stats = {o: 0 for o in POOL_OUTCOMES}
    for o in outcome:
        stats[o] += 1
    stats.update(rows=table.num_rows, survivors=int(alive.sum()), expected_size=float(prob.sum()),
                 size_variance=float((prob * (1 - prob)).sum()))
    return table, stats


def combine_pool_decisions(tables: Sequence[pa.Table]) -> pa.Table:
    """The download shards' decided rows as one table sorted by key (each key once)."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return POOL_DECISIONS_SCHEMA.empty_table()
    table = pa.concat_tables(tables).sort_by("key")
    keys = table.column("key").to_pylist()
    for a, b in zip(keys, keys[1:]):
        if a == b:
            raise WitError(f"--pool: key {a} appears in two download shards; download shards overlap")
    return table


def write_pool_part(path: str, table: pa.Table) -> dict:
    """One download shard's decided rows, sorted by key (each key once), written to ``path``
    (atomically); returns ``{"path", "rows", "first_key", "last_key"}`` for :func:`merge_pool_parts`."""
    from wit_builder.core import atomic_write_parquet
    table = combine_pool_decisions([table])
    atomic_write_parquet(path, table)
    keys = table.column("key")
    return {"path": path, "rows": table.num_rows, "first_key": keys[0].as_py() if len(keys) else None,
            "last_key": keys[-1].as_py() if len(keys) else None}


def merge_pool_parts(path: str, parts: Sequence[dict]) -> int:
    """The parts of :func:`write_pool_part` -> one table at ``path`` sorted by key, streamed a
    part at a time (one row group per non-empty part, in key order; same bytes for the same
    parts whatever order they are listed in). Parts whose key ranges overlap are an error.
    Returns the row count."""
    import pyarrow.parquet as pq
    from wit_builder.core import atomic_open
    parts = sorted((p for p in parts if p["rows"]), key=lambda p: (p["first_key"], p["path"]))
    for a, b in zip(parts, parts[1:]):
        if b["first_key"] <= a["last_key"]:
            if b["first_key"] == a["last_key"]:
                raise WitError(f"--pool: key {a['last_key']} appears in two download shards; download shards overlap")
            raise WitError(f"--pool: the keys of two download shards interleave ({b['first_key']} to "
                           f"{a['last_key']}); download shards overlap")
    rows = 0
    with atomic_open(path, "wb") as fh:
        with pq.ParquetWriter(fh, POOL_DECISIONS_SCHEMA) as writer:
            for p in parts:
                with open_read(p["path"]) as part:
                    table = pq.read_table(part, schema=POOL_DECISIONS_SCHEMA)
                writer.write_table(table)
                rows += table.num_rows
    return rows


def _dense(counts, size: int) -> np.ndarray:
    out = np.zeros(size, np.int64)
    out[:len(counts)] = counts
    return out


def pool_counts_table(pooled: np.ndarray, survivors: np.ndarray, kept: np.ndarray, cap: int,
                      names: Sequence | None = None) -> pa.Table:
    """Per query with ``pooled`` > 0 (samples in the download output, any status): ``count``
    (survivors), ``keep_prob`` ``min(1, cap / count)``, ``kept``, ``pooled``; ``names`` for
    the ``query`` column (None: null), given for the listed ids in order."""
    size = max(len(pooled), len(survivors), len(kept))
    pooled, survivors, kept = (_dense(c, size) for c in (pooled, survivors, kept))
    ids = np.flatnonzero(pooled)
    return pa.table({
        "query_id": pa.array(ids.astype(np.int32), pa.int32()),
        "query": pa.array(list(names) if names is not None else [None] * len(ids), pa.string()),
        "count": pa.array(survivors[ids], pa.int64()),
        "keep_prob": pa.array(query_keep_prob(survivors[ids], cap), pa.float64()),
        "kept": pa.array(kept[ids], pa.int64()),
        "pooled": pa.array(pooled[ids], pa.int64()),
    }, schema=POOL_COUNTS_SCHEMA)


def pool_summary(header: dict, stats: dict, pooled: np.ndarray, survivors: np.ndarray, kept: np.ndarray,
                 balance: BalanceConfig) -> dict:
    """stats.json of a pool re-balance: the losses, head/tail before (over the pool and over the
    survivors) and after, the expected and realised sizes."""
    cap = balance.per_query_cap
    size = max(len(pooled), len(survivors), len(kept))
    pooled, survivors, kept = (_dense(c, size) for c in (pooled, survivors, kept))
    variance = float(stats.get("size_variance", 0.0))
    before = head_tail(pooled, cap)
    return {
        **header,
        "rows": int(stats.get("rows", 0)),
        "losses": {o: int(stats.get(o, 0)) for o in ("failed_download", "dropped_by_dedup", "not_in_dedup",
                                                      "no_query_ids")},
        "survivors": int(stats.get("survivors", 0)),
        "per_query_cap": int(cap),
        "seed": int(balance.seed),
        "draw": 'first 53 bits of sha256(f"{seed}\\npool\\n{uid}") < 1 - prod(1 - min(1, cap / count_q))',
        "pool_queries": before["queries_matched"],
        "pool_head_queries": before["head_queries"],
        **head_tail(survivors, cap),
        "expected_size": round(float(stats.get("expected_size", 0.0)), 3),
        "expected_size_sd": round(variance ** 0.5, 3),
        "kept": int(stats.get("kept", 0)),
        "balanced_out": int(stats.get("balanced_out", 0)),
        "queries_kept": int((kept > 0).sum()),
        "queries_over_cap_after": int((kept > cap).sum()),
        "max_kept_per_query": int(kept.max()) if len(kept) else 0,
    }
