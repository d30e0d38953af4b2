"""The collect stage's per-batch steps, independent of Beam (the pipeline and the benchmark call them).

A :class:`Batch` holds the candidates of one input file, up to ``batch_size`` at a time, as
parallel lists. Each step drops what fails and counts it in a ``Counter`` under
``dropped.<reason>``:

``extract_batches`` (sources) -> ``clean_batch`` (textclean) -> ``match_batch`` (matcher: ``no_match``)
-> ``identify_batch`` (langid: ``language``) -> ``batch_to_table`` (uid) -> shards -> ``dedup_table``
(``duplicate``).

So ``pairs_extracted == sum(dropped.*) + matched`` for a whole run. Time spent per step is added
under ``seconds.<step>`` (process CPU time; nothing else in the stats depends on timing).
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from wit_builder.balance import DEFAULT_CAP, BalanceConfig, query_ids_csr
from wit_builder.core import WitError
from wit_builder.schemas import BALANCED_SCHEMA, MATCHED_SCHEMA  # noqa: F401 (BALANCED_SCHEMA: re-exported)
from wit_builder.sources import SourceOptions, iter_candidates
from wit_builder.textclean import TextCleaner

__all__ = ["CollectConfig", "make_config", "shard_name", "Batch", "MATCHED_SCHEMA", "BALANCED_SCHEMA", "extract_batches", "clean_batch", "match_batch",
           "identify_batch", "batch_to_table", "shard_ids", "split_by_shard", "dedup_table", "compute_uid",
           "csr_take", "load_queries", "query_ids_csr"]



def shard_name(k: int, m: int) -> str:
    """File name of shard k of m in OUT/matched/ and OUT/balanced/."""
    return f"part-{k:05d}-of-{m:05d}.parquet"


@dataclass(frozen=True)
class CollectConfig:
    """Everything that determines the output of a collect run (stored in stats.json)."""
    queries: str
    inputs: tuple                         # ((path, format), ...)
    out: str
    langs: tuple | None = ("en",)         # None: keep every language
    min_lang_prob: float = 0.0
    lang_detector: str = "fasttext"
    case_insensitive: bool = False
    min_chars: int = 2
    max_chars: int = 1000
    num_shards: int = 1
    batch_size: int = 20000
    source: SourceOptions = field(default_factory=SourceOptions)
    balance: BalanceConfig = field(default_factory=BalanceConfig)   # the cap and the seed (also langdetect's)

    def __post_init__(self):
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise WitError("need 1 <= --min-text-chars <= --max-text-chars")
        if self.batch_size < 1:
            raise WitError("--batch-size must be at least 1")
        if self.num_shards < 1:
            raise WitError("--num-shards must be at least 1")


def make_config(queries: str, inputs: Sequence[str], out: str, *, source: SourceOptions | None = None,
                num_shards: int | None = None, per_query_cap: int = DEFAULT_CAP, seed: int = 0,
                **options) -> CollectConfig:
    """A CollectConfig from paths: ``inputs`` are files, globs or directories (expanded and sorted),
    each file's format is taken from its name (or ``source.fmt``), tables are checked for their
    columns, and ``num_shards`` defaults to the number of input files (at most 1024). ``options``
    are the other CollectConfig fields (langs, lang_detector, ...); ``per_query_cap`` and ``seed`` make
    its BalanceConfig."""
    from wit_builder.core import match_paths
    from wit_builder.sources import check_table_columns, detect_format
    source = source or SourceOptions()
    files = list(dict.fromkeys(match_paths(list(inputs), "input")))
    resolved = []
    for path in files:
        fmt = detect_format(path, source.fmt)
        if fmt not in ("wat", "warc"):
            check_table_columns(path, fmt, source)
        resolved.append((path, fmt))
    if "langs" in options and options["langs"] is not None:
        options["langs"] = tuple(options["langs"])
    return CollectConfig(queries=queries, inputs=tuple(resolved), out=out.rstrip("/"), source=source,
                         balance=BalanceConfig(per_query_cap, seed),
                         num_shards=num_shards if num_shards is not None else max(1, min(len(resolved), 1024)),
                         **options)


@dataclass
class Batch:
    source: str
    url: list = field(default_factory=list)
    text: list = field(default_factory=list)
    page_url: list = field(default_factory=list)
    offsets: np.ndarray | None = None       # CSR query ids, set by match_batch
    query_ids: np.ndarray | None = None
    lang: list | None = None
    lang_prob: list | None = None

    def __len__(self) -> int:
        return len(self.url)


def compute_uid(url: str, text: str) -> str:
    """32 hex chars: the first 16 bytes of sha256(url + "\\n" + text) (docs/schemas.md)."""
    return hashlib.sha256(f"{url}\n{text}".encode("utf-8")).hexdigest()[:32]


class _Timer:
    def __init__(self, stats: Counter, name: str):
        self.stats, self.name = stats, "seconds." + name

    def __enter__(self):
        self.t = time.process_time()

    def __exit__(self, *exc):
        self.stats[self.name] += time.process_time() - self.t


def extract_batches(path: str, fmt: str, opts: SourceOptions, stats: Counter,
                    batch_size: int = 20000) -> Iterator[Batch]:
    """Candidates of one file in batches (URLs resolved and checked; texts raw)."""
    it = iter_candidates(path, fmt, opts, stats)
    batch = Batch(path)
    while True:
        t = time.process_time()
        done = True
        for url, text, page in it:
            batch.url.append(url)
            batch.text.append(text)
            batch.page_url.append(page)
            if len(batch.url) >= batch_size:
                done = False
                break
        stats["seconds.extract"] += time.process_time() - t
        if batch.url:
            yield batch
        if done:
            return
        batch = Batch(path)


def _keep(batch: Batch, mask: Sequence[bool]) -> Batch:
    keep = [i for i, k in enumerate(mask) if k]
    out = Batch(batch.source, [batch.url[i] for i in keep], [batch.text[i] for i in keep],
                [batch.page_url[i] for i in keep])
    if batch.offsets is not None:
        out.offsets, out.query_ids = csr_take(batch.offsets, batch.query_ids, np.asarray(mask, bool))
    if batch.lang is not None:
        out.lang = [batch.lang[i] for i in keep]
        out.lang_prob = [batch.lang_prob[i] for i in keep]
    return out


def csr_take(offsets: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a CSR list array where ``mask`` is true."""
    lengths = np.diff(offsets)
    new = np.zeros(int(mask.sum()) + 1, np.int64)
    np.cumsum(lengths[mask], out=new[1:])
    return new, ids[np.repeat(mask, lengths)]


def clean_batch(batch: Batch, cleaner: TextCleaner, stats: Counter) -> Batch:
    with _Timer(stats, "clean"):
        texts, mask = [], []
        for raw in batch.text:
            text, reason = cleaner(raw)
            if text is None:
                stats["dropped." + reason] += 1
                mask.append(False)
            else:
                mask.append(True)
            texts.append(text)
        batch.text = texts
        return batch if all(mask) else _keep(batch, mask)


def match_batch(batch: Batch, matcher, stats: Counter) -> Batch:
    with _Timer(stats, "match"):
        offsets, ids = matcher.match_batch(batch.text)
        batch.offsets, batch.query_ids = offsets, ids
        mask = np.diff(offsets) > 0
        stats["dropped.no_match"] += int(len(mask) - mask.sum())
        return batch if mask.all() else _keep(batch, mask)


def identify_batch(batch: Batch, detector, langs: frozenset | None, min_prob: float, stats: Counter) -> Batch:
    """Language of each (matched) text; keep those in ``langs`` (None: all) with prob >= min_prob."""
    with _Timer(stats, "language"):
        codes, probs = detector.detect(batch.text)
        batch.lang, batch.lang_prob = codes, probs
        for c in codes:
            stats["languages." + c] += 1
        if langs is None and min_prob <= 0:
            return batch
        mask = [(langs is None or c in langs) and p >= min_prob for c, p in zip(codes, probs)]
        stats["dropped.language"] += mask.count(False)
        return batch if all(mask) else _keep(batch, mask)


def batch_to_table(batch: Batch, stats: Counter | None = None) -> pa.Table:
    """Arrow table in MATCHED_SCHEMA (uid computed here)."""
    t = time.process_time()
    uids = [compute_uid(u, x) for u, x in zip(batch.url, batch.text)]
    n = len(uids)
    qids = pa.ListArray.from_arrays(pa.array(batch.offsets.astype(np.int32), pa.int32()),
                                    pa.array(batch.query_ids, pa.int32()))
    table = pa.Table.from_arrays([
        pa.array(uids, pa.string()), pa.array(batch.url, pa.string()), pa.array(batch.text, pa.string()),
        pa.array(batch.page_url, pa.string()), pa.array([batch.source] * n, pa.string()),
        pa.array(batch.lang, pa.string()), pa.array(batch.lang_prob, pa.float32()), qids,
    ], schema=MATCHED_SCHEMA)
    if stats is not None:
        stats["seconds.to_table"] += time.process_time() - t
    return table


def shard_ids(uids: pa.Array, num_shards: int) -> np.ndarray:
    """Shard of each uid: its first 8 hex digits as an integer, modulo ``num_shards``."""
    first = np.array([int(u[:8], 16) for u in uids.to_pylist()], dtype=np.int64)
    return first % num_shards


def split_by_shard(table: pa.Table, num_shards: int) -> Iterator[tuple[int, pa.Table]]:
    """(shard, its rows) for every shard with rows. Each part is a compact copy, not a slice:
    a pickled Arrow slice carries its parent's whole buffers (a shuffle of M slices of one batch
    would hold the batch M times)."""
    if table.num_rows == 0:
        return
    shard = shard_ids(table.column("uid").combine_chunks(), num_shards)
    order = np.argsort(shard, kind="stable")
    sorted_shards = shard[order]
    bounds = np.flatnonzero(np.diff(sorted_shards)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(order)]])
    for s, e in zip(starts, ends):
        yield int(sorted_shards[s]), table.take(pa.array(order[s:e]))


def dedup_table(table: pa.Table) -> tuple[pa.Table, int]:
    """Sort by uid and keep one row per uid: the one with the smallest (page_url, source), nulls
    last. Equal uids mean equal (url, text), hence equal query ids and language. Returns the table
    and the number of rows dropped."""
    if table.num_rows == 0:
        return table, 0
    import pyarrow.compute as pc
    order = pc.sort_indices(table, sort_keys=[("uid", "ascending"), ("page_url", "ascending"),
                                              ("source", "ascending")])   # nulls sort last by default
    table = table.take(order)
    uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
    first = np.ones(len(uids), bool)
    first[1:] = uids[1:] != uids[:-1]
    dupes = int(len(uids) - first.sum())
    if dupes:
        table = table.filter(pa.array(first))
    return table, dupes


def load_queries(path: str) -> list[str]:
    """Query strings by id from ``queries.parquet`` (``id``, ``query``) or ``queries.txt``."""
    from wit_builder.core import WitError, open_read
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq
            with open_read(path) as fh:
                table = pq.read_table(fh, columns=["id", "query"])
            ids = np.asarray(table.column("id").to_numpy(), dtype=np.int64)
            queries = table.column("query").to_pylist()
            if len(ids) and not np.array_equal(ids, np.arange(len(ids))):
                order = np.argsort(ids)
                if not np.array_equal(ids[order], np.arange(len(ids))):
                    raise WitError(f"{path}: ids must be 0..n-1 (docs/schemas.md)")
                queries = [queries[i] for i in order]
        else:
            with open_read(path) as fh:
                queries = fh.read().decode("utf-8").split("\n")
            if queries and queries[-1] == "":
                queries.pop()
    except (OSError, KeyError, pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise WitError(f"cannot read queries from {path}: {exc}") from None
    bad = [i for i, q in enumerate(queries) if not isinstance(q, str) or not q]
    if bad:
        raise WitError(f"{path}: query {bad[0]} is empty or null")
    return queries
