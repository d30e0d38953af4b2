"""The collect stage's per-batch steps, independent of Beam (the pipeline and the benchmark call them).

A :class:`Batch` holds the candidates of one input file, up to ``batch_size`` at a time, as
parallel lists. Each step drops what fails and counts it in a ``Counter`` under
``dropped.<reason>``:

``extract_batches`` (sources) -> ``clean_batch`` (textclean) -> ``match_batch`` (matcher: ``no_match``)
-> ``identify_batch`` (langid: ``language``) -> ``batch_to_table`` (uid) -> ``split_by_shard`` ->
``dedup_table`` per part (a sorted run; ``duplicate``) -> ``write_shard`` (merges a shard's runs in
uid ranges of at most ``max_rows_in_memory`` rows; ``duplicate``).

So ``pairs_extracted == sum(dropped.*) + matched`` for a whole run. Time spent per step is added
under ``seconds.<step>`` (process CPU time; nothing else in the stats depends on timing).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from wit_builder.balance import DEFAULT_CAP, BalanceConfig, query_ids_csr
from wit_builder.core import WitError
from wit_builder.schemas import BALANCED_SCHEMA, MATCHED_SCHEMA  # noqa: F401 (BALANCED_SCHEMA: re-exported)
from wit_builder.sources import SourceOptions, iter_candidates
from wit_builder.textclean import TextCleaner

__all__ = ["CollectConfig", "make_config", "shard_name", "Batch", "MATCHED_SCHEMA", "BALANCED_SCHEMA", "extract_batches", "clean_batch", "match_batch",
           "identify_batch", "batch_to_table", "shard_ids", "split_by_shard", "dedup_table", "compute_uid",
           "csr_take", "load_queries", "query_ids_csr", "default_num_shards", "SpillRef", "sort_runs", "write_spill",
           "ShardRuns", "write_shard", "ShardWritten", "INPUT_BYTES_PER_SHARD"]

# default shard count: one shard per input file, and at least one per this many input bytes (by
# format: a WAT/WARC byte holds far fewer pairs than a table's), so a shard stays ~one WAT's pairs
INPUT_BYTES_PER_SHARD = {"wat": 512 << 20, "warc": 4 << 30, "table": 64 << 20}


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
    row_group_rows: int = 100_000         # rows per row group of matched/ (fixed, so files are deterministic)
    max_rows_in_memory: int = 1_000_000   # most rows a worker buffers, sorts or deduplicates at once
    source: SourceOptions = field(default_factory=SourceOptions)
    balance: BalanceConfig = field(default_factory=BalanceConfig)   # the cap and the seed (also langdetect's)

    def __post_init__(self):
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise WitError("need 1 <= --min-text-chars <= --max-text-chars")
        if self.batch_size < 1:
            raise WitError("--batch-size must be at least 1")
        if self.num_shards < 1:
            raise WitError("--num-shards must be at least 1")
        if self.row_group_rows < 1 or self.max_rows_in_memory < 1:
            raise WitError("row_group_rows and --max-rows-in-memory must be at least 1")


def make_config(queries: str, inputs: Sequence[str], out: str, *, source: SourceOptions | None = None,
                num_shards: int | None = None, per_query_cap: int = DEFAULT_CAP, seed: int = 0,
                **options) -> CollectConfig:
    """A CollectConfig from paths: ``inputs`` are files, globs or directories (expanded and sorted),
    each file's format is taken from its name (or ``source.fmt``), tables are checked for their
    columns, and ``num_shards`` defaults to :func:`default_num_shards` (no cap). ``options``
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
    if num_shards is None:
        from wit_builder.core import file_info
        num_shards = default_num_shards([(fmt, file_info(path)[0]) for path, fmt in resolved])
    return CollectConfig(queries=queries, inputs=tuple(resolved), out=out.rstrip("/"), source=source,
                         balance=BalanceConfig(per_query_cap, seed), num_shards=num_shards, **options)


def default_num_shards(files: Sequence[tuple[str, int]]) -> int:
    """Shards for input files given as (format, bytes): one per file, and at least one per
    ``INPUT_BYTES_PER_SHARD[format]`` bytes of input; no upper cap, so the count grows with the input."""
    by_size = sum(size / INPUT_BYTES_PER_SHARD.get(fmt, INPUT_BYTES_PER_SHARD["table"]) for fmt, size in files)
    return max(1, len(files), math.ceil(by_size))


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


class SpillRef(NamedTuple):
    """One sorted run in a spill file: rows [start, start + rows) of the Arrow IPC file ``path``
    (one record batch)."""
    path: str
    start: int
    rows: int


def sort_runs(tables: Sequence[pa.Table], num_shards: int) -> tuple[pa.Table, list[tuple[int, int, int]], int]:
    """A buffer's rows sorted by (shard, uid, page_url, source) with one row per uid (the first):
    every shard's rows are then one sorted run. Returns the table, (shard, start, stop) of each
    shard present, and the duplicates dropped. One sort per buffer, whatever the shard count."""
    import pyarrow.compute as pc
    table = pa.concat_tables(tables) if tables else MATCHED_SCHEMA.empty_table()
    if table.num_rows == 0:
        return table, [], 0
    shard = shard_ids(table.column("uid").combine_chunks(), num_shards)
    keyed = table.append_column("_shard", pa.array(shard, pa.int64()))
    order = pc.sort_indices(keyed, sort_keys=[("_shard", "ascending"), ("uid", "ascending"),
                                              ("page_url", "ascending"), ("source", "ascending")])
    table, shard = table.take(order), shard[order.to_numpy()]
    uids = np.asarray(table.column("uid").to_pylist(), dtype=object)
    first = np.ones(len(uids), bool)
    first[1:] = uids[1:] != uids[:-1]
    dupes = int(len(uids) - first.sum())
    if dupes:
        table, shard = table.filter(pa.array(first)), shard[first]
    cuts = np.flatnonzero(np.diff(shard)) + 1
    starts, stops = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(shard)]])
    return table, [(int(shard[a]), int(a), int(b)) for a, b in zip(starts, stops)], dupes


def write_spill(path: str, table: pa.Table) -> None:
    """``table`` (MATCHED_SCHEMA) as one record batch of an Arrow IPC file, written atomically;
    its rows are then readable by range, memory-mapped, without reading the rest."""
    from wit_builder.core import atomic_open
    table = table.cast(MATCHED_SCHEMA).combine_chunks()
    with atomic_open(path, "wb") as fh, pa.ipc.new_file(fh, MATCHED_SCHEMA) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch)


class _Run:
    """A sorted run: an in-memory table, or a batch of a spill file opened only while it is read."""

    def __init__(self, item):
        self.item = item
        self.rows = item.rows if isinstance(item, SpillRef) else item.num_rows

    def read(self, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) as a compact table (no view of a whole batch or mapping)."""
        if not isinstance(self.item, SpillRef):
            return self.item.slice(start, stop - start)
        with _open_batch(self.item) as batch:
            return pa.Table.from_batches([batch.slice(start, stop - start)]).take(pa.array(np.arange(stop - start)))

    def positions(self, bounds: Sequence[str]) -> list[int]:
        """Index of the first uid >= each of the sorted prefixes ``bounds`` (binary search)."""
        if not self.rows:
            return [0] * len(bounds)
        if not isinstance(self.item, SpillRef):
            return _bisect_all(self.item.column("uid").combine_chunks(), bounds)
        with _open_batch(self.item) as batch:
            return _bisect_all(batch.column("uid"), bounds)


class _open_batch:
    def __init__(self, ref: SpillRef):
        self.ref = ref

    def __enter__(self) -> pa.RecordBatch:
        from wit_builder.core import is_local, open_read
        path = self.ref.path.removeprefix("file://")
        self.fh = pa.memory_map(path) if is_local(path) else open_read(path)
        reader = pa.ipc.open_file(self.fh)
        return reader.get_batch(0).slice(self.ref.start, self.ref.rows)

    def __exit__(self, *exc):
        self.fh.close()


def _bisect_all(uids: pa.Array, bounds: Sequence[str]) -> list[int]:
    """bisect_left of each bound in the sorted ``uids``: on the string data as 32-byte keys when
    every uid is 32 chars (as compute_uid makes them; no copy), else element by element."""
    offsets = np.frombuffer(uids.buffers()[1], np.int32)[uids.offset:uids.offset + len(uids) + 1]
    if uids.null_count == 0 and np.all(np.diff(offsets) == 32):
        keys = np.frombuffer(uids.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].view("S32")
        return np.searchsorted(keys, np.array([b.encode() for b in bounds], "S32")).tolist()

    class _View:
        def __len__(self):
            return len(uids)

        def __getitem__(self, i):
            return uids[i].as_py()
    return [bisect_left(_View(), b) for b in bounds]


class ShardRuns:
    """The sorted runs of one shard as they arrive from the shuffle: spill refs as they are,
    tables kept in memory up to ``max_rows`` rows in all and written to a local temporary
    file after that (so a worker never holds a large shard's shuffled tables)."""

    def __init__(self, max_rows: int):
        self.max_rows, self.runs, self.held, self._tmp = max_rows, [], 0, None

    def add(self, item) -> None:
        if item is None:
            return
        if isinstance(item, tuple):                    # a SpillRef (a coder may give a plain tuple)
            self.runs.append(_Run(SpillRef(*item)))
            return
        if self.held + item.num_rows > self.max_rows and item.num_rows:
            import tempfile
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="wit-runs-")
            path = os.path.join(self._tmp.name, f"{len(self.runs):08d}.arrow")
            write_spill(path, item)
            self.runs.append(_Run(SpillRef(path, 0, item.num_rows)))
            return
        self.held += item.num_rows
        self.runs.append(_Run(item))

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class ShardWritten(NamedTuple):
    rows: int            # rows written
    duplicates: int      # rows dropped as duplicates here
    counts: np.ndarray   # pairs per query id (dense)
    peak_rows: int       # most rows read into memory at once (the bound: max_rows)
    ranges: int          # uid ranges the shard was merged in


def _uid_ranges(runs: Sequence[_Run], max_rows: int) -> list[list[tuple[int, int]]]:
    """Split the uid space into consecutive ranges holding at most ``max_rows`` rows of the runs
    (a range that a single cell of a fine grid overfills is the only exception); returns, per
    range, each run's [start, stop)."""
    total = sum(r.rows for r in runs)
    if total <= max_rows:
        return [[(0, r.rows) for r in runs]]
    cells = 1 << min(16, max(3, math.ceil(math.log2(8 * math.ceil(total / max_rows)))))
    bounds = [f"{(j << 32) // cells:08x}" for j in range(1, cells)]
    cuts = np.array([[0, *r.positions(bounds), r.rows] for r in runs], np.int64)   # runs x (cells + 1)
    per_cell = (cuts[:, 1:] - cuts[:, :-1]).sum(axis=0)
    ranges, lo, acc = [], 0, 0
    for j, n in enumerate(per_cell):
        if acc and acc + n > max_rows:
            ranges.append((lo, j))
            lo, acc = j, 0
        acc += int(n)
    ranges.append((lo, cells))
    return [[(int(cuts[i, a]), int(cuts[i, b])) for i in range(len(runs))] for a, b in ranges]


def write_shard(runs: Iterable, path: str, *, max_rows: int, row_group_rows: int) -> ShardWritten:
    """Merge one shard's sorted runs (tables, :class:`SpillRef`s or a :class:`ShardRuns`) into
    ``path`` (atomically): rows sorted by uid, one per uid (:func:`dedup_table`), row groups of
    exactly ``row_group_rows`` rows but the last. The runs are read one uid range at a time, each
    holding at most ``max_rows`` rows, so memory does not grow with the shard."""
    import pyarrow.parquet as pq
    from wit_builder.balance import count_queries
    from wit_builder.core import atomic_open
    if isinstance(runs, ShardRuns):
        run_list = runs.runs
    else:
        store = ShardRuns(max_rows)
        for item in runs:
            store.add(item)
        run_list = store.runs
    counts = np.zeros(0, np.int64)
    written = dupes = peak = 0
    pending: list[pa.Table] = []
    plan = _uid_ranges(run_list, max_rows)
    with atomic_open(path, "wb") as fh, pq.ParquetWriter(fh, MATCHED_SCHEMA) as writer:
        for spans in plan:
            parts = [r.read(a, b) for r, (a, b) in zip(run_list, spans) if b > a]
            if not parts:
                continue
            table = pa.concat_tables(parts)
            peak = max(peak, table.num_rows)
            table, d = dedup_table(table)
            del parts
            dupes += d
            c = count_queries(table.column("query_ids"))
            if len(c) > len(counts):
                counts = np.concatenate([counts, np.zeros(len(c) - len(counts), np.int64)])
            counts[:len(c)] += c
            pending.append(table)
            buffered = sum(t.num_rows for t in pending)
            if buffered >= row_group_rows:
                merged = pa.concat_tables(pending).combine_chunks()
                full = buffered - buffered % row_group_rows
                for start in range(0, full, row_group_rows):
                    writer.write_table(merged.slice(start, row_group_rows), row_group_size=row_group_rows)
                pending = [merged.slice(full)] if full < buffered else []
            written += table.num_rows
        if pending:
            writer.write_table(pa.concat_tables(pending).combine_chunks(), row_group_size=row_group_rows)
    if isinstance(runs, ShardRuns):
        runs.close()
    else:
        store.close()
    return ShardWritten(written, dupes, counts, peak, len(plan))


def load_queries(path: str) -> list[str]:
    """Query strings by id from ``queries.parquet`` (``id``, ``query``), a ``.json`` file holding a
    JSON list of strings (MetaCLIP's released ``metadata.json``; id = list position) or a text file
    (``queries.txt``, one query per line). A list without queries is an error."""
    from wit_builder.core import WitError, open_read
    try:
        if path.lower().endswith(".json"):
            import json
            with open_read(path) as fh:
                try:
                    queries = json.loads(fh.read().decode("utf-8-sig"))
                except ValueError as exc:
                    raise WitError(f"cannot read queries from {path}: not valid JSON ({exc})") from None
            def kind(v) -> str:
                return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
                        float: "number", type(None): "null"}[type(v)]
            if not isinstance(queries, list):
                raise WitError(f"{path}: a JSON query list must be a list of strings (like MetaCLIP's "
                               f"metadata.json), got a JSON {kind(queries)}")
            kinds = [i for i, q in enumerate(queries) if not isinstance(q, str)]
            if kinds:
                raise WitError(f"{path}: a JSON query list must be a list of strings; item {kinds[0]} is "
                               f"a JSON {kind(queries[kinds[0]])}")
        elif path.endswith(".parquet"):
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
    if not queries:
        raise WitError(f"{path}: no queries in the list (nothing could match)")
    return queries
