"""Beam pipelines behind ``wit collect`` and ``wit balance``.

collect = ``MatchPairs`` then ``BalanceMatched``::

    MatchPairs: (path, format) -> Reshuffle -> ExtractCandidates (one file per element, batches of
      candidates) -> CleanTexts -> MatchQueries (automaton built once per worker in setup)
      -> IdentifyLanguage (only matched texts; model loaded in setup) -> ToShards (Arrow tables
      keyed by hash(uid) mod M, buffered per bundle) -> GroupByKey -> DedupAndWrite (exact
      (url, text) dedup per shard; OUT/matched/part-k-of-M) -> MatchCounts: CombineGlobally(SumCounts),
      a CombineFn, so partial sums are computed before the shuffle (combiner lifting)
    BalanceMatched: BalanceShards (counts as a side input; OUT/balanced/part-k-of-M) -> KeptCounts
      -> MergeStats -> WriteSummary (OUT/counts.parquet, OUT/balance.png, then OUT/stats.json)

balance = ``CountMatched`` (matched files -> counts) then the same ``BalanceMatched``.

Elements are whole files and batches of up to ``batch_size`` pairs, never single pairs, so Beam's
per-element cost is paid a few times per file. Everything written is a function of the inputs,
the queries and the options: rows in a shard are sorted by uid, duplicates resolve to the smallest
(page_url, source), and the balancing draw is a hash of (seed, uid); so runs, runners and worker
counts give identical files (tested). Counts of every step (``dropped.*``, ``skipped.*``) travel as
a "stats" side output and are merged into ``stats.json``; they are also Beam metrics
(namespace ``wit.collect``).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import BeamIOError
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from wit_builder.common import WitError, atomic_write_json, atomic_write_parquet, exists, open_read
from wit_builder.sources import SourceOptions

__all__ = ["CollectConfig", "BalanceOptions", "MatchPairs", "CountMatched", "BalanceMatched", "make_config",
           "run_collect", "collect", "balance", "shard_name"]

STATS = "stats"
COUNTS = "counts"


def shard_name(k: int, m: int) -> str:
    return f"part-{k:05d}-of-{m:05d}.parquet"


@dataclass(frozen=True)
class CollectConfig:
    """Everything that determines the output of a collect run (stored in stats.json)."""
    queries: str
    inputs: tuple                         # ((path, format), ...)
    out: str
    per_query_cap: int = 20000
    seed: int = 0
    langs: tuple | None = ("en",)         # None: keep every language
    min_lang_prob: float = 0.0
    lang_detector: str = "fasttext"
    case_insensitive: bool = False
    min_chars: int = 2
    max_chars: int = 1000
    num_shards: int = 1
    batch_size: int = 20000
    source: SourceOptions = field(default_factory=SourceOptions)


def _emit_stats(counter: Counter):
    for k, v in counter.items():
        if isinstance(v, int) and not k.startswith("languages."):
            Metrics.counter("wit.collect", k).inc(v)
    return beam.pvalue.TaggedOutput(STATS, counter)


# -- collect steps --------------------------------------------------------------------------------
class ExtractCandidates(beam.DoFn):
    def __init__(self, cfg: CollectConfig):
        self.cfg = cfg

    def process(self, item):
        from wit_builder.collect import extract_batches
        path, fmt = item
        stats = Counter(files=1)
        for batch in extract_batches(path, fmt, self.cfg.source, stats, self.cfg.batch_size):
            yield batch
        yield _emit_stats(stats)


class CleanTexts(beam.DoFn):
    def __init__(self, cfg: CollectConfig):
        self.cfg = cfg

    def setup(self):
        from wit_builder.textclean import TextCleaner
        self.cleaner = TextCleaner(self.cfg.min_chars, self.cfg.max_chars)

    def process(self, batch):
        from wit_builder.collect import clean_batch
        stats = Counter()
        batch = clean_batch(batch, self.cleaner, stats)
        if len(batch):
            yield batch
        yield _emit_stats(stats)


class MatchQueries(beam.DoFn):
    """Builds the Aho-Corasick automaton over all queries once per DoFn instance (setup)."""

    def __init__(self, queries_path: str, case_insensitive: bool):
        self.queries_path = queries_path
        self.case_insensitive = case_insensitive

    def setup(self):
        from wit_builder.collect import load_queries
        from wit_builder.matcher import Matcher
        self.matcher = Matcher(load_queries(self.queries_path), self.case_insensitive)

    def process(self, batch):
        from wit_builder.collect import match_batch
        stats = Counter()
        batch = match_batch(batch, self.matcher, stats)
        if len(batch):
            yield batch
        yield _emit_stats(stats)


class IdentifyLanguage(beam.DoFn):
    def __init__(self, spec: str, seed: int, langs, min_prob: float):
        self.spec, self.seed, self.langs, self.min_prob = spec, seed, langs, min_prob

    def setup(self):
        from wit_builder.langid import make_detector
        self.detector = make_detector(self.spec, self.seed)

    def process(self, batch):
        from wit_builder.collect import identify_batch
        stats = Counter()
        langs = frozenset(self.langs) if self.langs is not None else None
        batch = identify_batch(batch, self.detector, langs, self.min_prob, stats)
        if len(batch):
            yield batch
        yield _emit_stats(stats)


class ToShards(beam.DoFn):
    """Batches -> (shard, Arrow table), buffered per bundle so small shards are not tiny elements."""

    def __init__(self, num_shards: int, flush_rows: int = 200_000):
        self.num_shards, self.flush_rows = num_shards, flush_rows

    def start_bundle(self):
        self.buffer: dict[int, list] = {}
        self.rows = 0

    def process(self, batch):
        from wit_builder.collect import batch_to_table, split_by_shard
        stats = Counter()
        table = batch_to_table(batch, stats)
        for k, part in split_by_shard(table, self.num_shards):
            self.buffer.setdefault(k, []).append(part)
        self.rows += table.num_rows
        yield _emit_stats(stats)
        if self.rows >= self.flush_rows:
            yield from self._flush()

    def _flush(self):
        import pyarrow as pa
        for k, parts in sorted(self.buffer.items()):
            yield (k, pa.concat_tables(parts))
        self.buffer, self.rows = {}, 0

    def finish_bundle(self):
        for kv in self._flush():
            yield GlobalWindows.windowed_value(kv)


class DedupAndWrite(beam.DoFn):
    """All rows of one shard -> exact dedup -> OUT/matched/part-k-of-M.parquet."""

    def __init__(self, out: str, num_shards: int):
        self.out, self.num_shards = out, num_shards

    def process(self, item):
        import pyarrow as pa
        from wit_builder.balance import count_queries
        from wit_builder.collect import MATCHED_SCHEMA, dedup_table
        k, tables = item
        parts = [t for t in tables if t is not None]
        table = pa.concat_tables(parts) if parts else MATCHED_SCHEMA.empty_table()
        table, dupes = dedup_table(table)
        path = f"{self.out}/matched/{shard_name(k, self.num_shards)}"
        atomic_write_parquet(path, table)
        counts = count_queries(table.column("query_ids"))
        ids = np.flatnonzero(counts)
        yield beam.pvalue.TaggedOutput(COUNTS, (ids, counts[ids]))
        yield _emit_stats(Counter({"dropped.duplicate": dupes}))
        yield (k, path)


# -- balance steps (shared by collect and balance) ------------------------------------------------
class SumCounts(beam.CombineFn):
    """Sparse (ids, counts) per shard -> dense int64 counts per query id."""

    def create_accumulator(self):
        return np.zeros(0, np.int64)

    def add_input(self, acc, item):
        ids, counts = item
        if len(ids):
            need = int(ids.max()) + 1
            if need > len(acc):
                acc = np.concatenate([acc, np.zeros(need - len(acc), np.int64)])
            acc[ids] += counts
        return acc

    def merge_accumulators(self, accs):
        accs = list(accs)
        size = max((len(a) for a in accs), default=0)
        out = np.zeros(size, np.int64)
        for a in accs:
            out[:len(a)] += a
        return out

    def extract_output(self, acc):
        return acc


class MergeStats(beam.CombineFn):
    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, item):
        acc.update(item)
        return acc

    def merge_accumulators(self, accs):
        out = Counter()
        for a in accs:
            out.update(a)
        return out

    def extract_output(self, acc):
        return acc


class CountShard(beam.DoFn):
    def process(self, item):
        import pyarrow.parquet as pq
        from wit_builder.balance import count_queries
        k, path = item
        with open_read(path) as fh:
            column = pq.read_table(fh, columns=["query_ids"]).column("query_ids")
        counts = count_queries(column)
        ids = np.flatnonzero(counts)
        yield (ids, counts[ids])


class BalanceShard(beam.DoFn):
    def __init__(self, out: str, num_shards: int, cap: int, seed: int, num_queries: int):
        self.out, self.num_shards, self.cap, self.seed, self.num_queries = out, num_shards, cap, seed, num_queries

    def process(self, item, counts):
        import pyarrow.parquet as pq
        from wit_builder.balance import balance_table, count_queries, query_keep_prob
        k, path = item
        with open_read(path) as fh:
            table = pq.read_table(fh)
        size = max(self.num_queries, len(counts))
        dense = np.zeros(size, np.int64)
        dense[:len(counts)] = counts
        kept, st = balance_table(table, query_keep_prob(dense, self.cap), self.seed)
        atomic_write_parquet(f"{self.out}/balanced/{shard_name(k, self.num_shards)}", kept)
        kc = count_queries(kept.column("query_ids"))
        ids = np.flatnonzero(kc)
        yield beam.pvalue.TaggedOutput(COUNTS, (ids, kc[ids]))
        yield Counter({"matched": st["matched"], "kept": st["kept"], "expected_size": st["expected_size"],
                       "size_variance": st["size_variance"]})


class WriteSummary(beam.DoFn):
    """counts.parquet, balance.png, then stats.json (its presence marks the run complete)."""

    def __init__(self, out: str, cap: int, seed: int, names_from: str, header: dict):
        self.out, self.cap, self.seed, self.names_from, self.header = out, cap, seed, names_from, header

    def process(self, _, stats, counts, kept):
        import pyarrow as pa
        from wit_builder.balance import plot_balance
        size = max(len(counts), len(kept))
        c = np.zeros(size, np.int64)
        c[:len(counts)] = counts
        kp = np.zeros(size, np.int64)
        kp[:len(kept)] = kept
        ids = np.flatnonzero(c)
        names = _query_names(self.names_from, ids)
        table = pa.table({
            "query_id": pa.array(ids.astype(np.int32), pa.int32()),
            "query": pa.array(names, pa.string()),
            "count": pa.array(c[ids], pa.int64()),
            "keep_prob": pa.array(np.minimum(1.0, self.cap / np.maximum(c[ids], 1)), pa.float64()),
            "kept": pa.array(kp[ids], pa.int64()),
        })
        atomic_write_parquet(f"{self.out}/counts.parquet", table)
        plot_balance(c, kp, self.cap, f"{self.out}/balance.png")
        summary = _summarize(self.header, stats, c, self.cap, self.seed)
        atomic_write_json(f"{self.out}/stats.json", summary)
        yield summary


def _query_names(source: str, ids: np.ndarray) -> list[str]:
    """Query strings for ``ids`` from a queries file or from an earlier run's counts.parquet."""
    import pyarrow.parquet as pq
    if source.endswith("counts.parquet"):
        with open_read(source) as fh:
            t = pq.read_table(fh, columns=["query_id", "query"])
        mapping = dict(zip(t.column("query_id").to_pylist(), t.column("query").to_pylist()))
        return [mapping.get(int(i)) for i in ids]
    from wit_builder.collect import load_queries
    queries = load_queries(source)
    return [queries[int(i)] if int(i) < len(queries) else None for i in ids]


def _summarize(header: dict, stats: Counter, counts: np.ndarray, cap: int, seed: int) -> dict:
    from wit_builder.balance import head_tail
    stats = Counter(stats)
    dropped = {k[len("dropped."):]: v for k, v in sorted(stats.items()) if k.startswith("dropped.") and v}
    skipped = {k[len("skipped."):]: v for k, v in sorted(stats.items()) if k.startswith("skipped.") and v}
    langs = sorted(((k[len("languages."):], v) for k, v in stats.items() if k.startswith("languages.")),
                   key=lambda kv: (-kv[1], kv[0]))
    seconds = {k[len("seconds."):]: round(v, 3) for k, v in sorted(stats.items()) if k.startswith("seconds.")}
    other = {k: v for k, v in sorted(stats.items())
             if "." not in k and k not in ("records_read", "pages", "pairs_extracted", "matched", "kept",
                                           "expected_size", "size_variance", "files")}
    out = dict(header)
    if header.get("stage") == "collect":
        out.update({
            "files_read": int(stats.get("files", 0)),
            "records_read": int(stats.get("records_read", 0)),
            "pages": int(stats.get("pages", 0)),
            "pairs_extracted": int(stats.get("pairs_extracted", 0)),
            "dropped": dropped,
            "skipped": skipped,
            "other": other,
            "languages_of_matched_texts": dict(langs[:30]),
        })
    variance = float(stats.get("size_variance", 0.0))
    out.update({
        "matched": int(stats.get("matched", 0)),
        "per_query_cap": int(cap),
        "seed": int(seed),
        **head_tail(counts, cap),
        "expected_size": round(float(stats.get("expected_size", 0.0)), 3),
        "expected_size_sd": round(variance ** 0.5, 3),
        "kept": int(stats.get("kept", 0)),
        "cpu_seconds": seconds,
    })
    return out


@dataclass(frozen=True)
class BalanceOptions:
    out: str
    num_shards: int
    cap: int
    seed: int
    num_queries: int
    names_from: str          # queries file, or an earlier run's counts.parquet, for query strings
    header: dict             # fixed part of stats.json


class MatchPairs(beam.PTransform):
    """(path, format) pairs -> OUT/matched/part-k-of-M.parquet for every k.

    Returns ``{"shards": (k, path), "counts": dense counts per query id (one element),
    "stats": Counters from every step}``."""

    def __init__(self, cfg: CollectConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, files):
        cfg, m = self.cfg, self.cfg.num_shards
        spread = files | "SpreadFiles" >> beam.Reshuffle()
        ext = spread | "ExtractCandidates" >> beam.ParDo(ExtractCandidates(cfg)).with_outputs(STATS, main="out")
        cln = ext.out | "CleanTexts" >> beam.ParDo(CleanTexts(cfg)).with_outputs(STATS, main="out")
        mat = cln.out | "MatchQueries" >> beam.ParDo(
            MatchQueries(cfg.queries, cfg.case_insensitive)).with_outputs(STATS, main="out")
        lng = mat.out | "IdentifyLanguage" >> beam.ParDo(
            IdentifyLanguage(cfg.lang_detector, cfg.seed, cfg.langs, cfg.min_lang_prob)).with_outputs(STATS, main="out")
        shd = lng.out | "ToShards" >> beam.ParDo(ToShards(m)).with_outputs(STATS, main="out")
        every = files.pipeline | "AllShardIds" >> beam.Create([(k, None) for k in range(m)])
        grouped = (shd.out, every) | "WithEmptyShards" >> beam.Flatten() | "GroupByShard" >> beam.GroupByKey()
        written = grouped | "DedupAndWrite" >> beam.ParDo(DedupAndWrite(cfg.out, m)).with_outputs(
            COUNTS, STATS, main="out")
        counts = written[COUNTS] | "MatchCounts" >> beam.CombineGlobally(SumCounts())
        stats = ((ext[STATS], cln[STATS], mat[STATS], lng[STATS], shd[STATS], written[STATS])
                 | "StepStats" >> beam.Flatten())
        return {"shards": written.out, "counts": counts, "stats": stats}


class CountMatched(beam.PTransform):
    """(k, matched path) -> ``{"shards", "counts", "stats"}`` like MatchPairs, from files alone."""

    def expand(self, shards):
        spread = shards | "SpreadShards" >> beam.Reshuffle()
        counts = spread | "CountShards" >> beam.ParDo(CountShard()) | "MatchCounts" >> beam.CombineGlobally(SumCounts())
        stats = shards.pipeline | "NoStats" >> beam.Create([Counter()])
        return {"shards": spread, "counts": counts, "stats": stats}


class BalanceMatched(beam.PTransform):
    """``{"shards", "counts", "stats"}`` -> OUT/balanced/, OUT/counts.parquet, OUT/balance.png and
    OUT/stats.json; returns the summary written to stats.json (one element)."""

    def __init__(self, opts: BalanceOptions):
        super().__init__()
        self.o = opts

    def expand(self, parts):
        o = self.o
        shards, counts = parts["shards"], parts["counts"]
        balanced = (shards | "BalanceShards" >> beam.ParDo(
            BalanceShard(o.out, o.num_shards, o.cap, o.seed, o.num_queries), beam.pvalue.AsSingleton(counts))
            .with_outputs(COUNTS, main="stats"))
        kept = balanced[COUNTS] | "KeptCounts" >> beam.CombineGlobally(SumCounts())
        stats = ((parts["stats"], balanced.stats) | "AllStats" >> beam.Flatten()
                 | "MergeStats" >> beam.CombineGlobally(MergeStats()))
        return (shards.pipeline | "Once" >> beam.Create([None])
                | "WriteSummary" >> beam.ParDo(WriteSummary(o.out, o.cap, o.seed, o.names_from, o.header),
                                               beam.pvalue.AsSingleton(stats), beam.pvalue.AsSingleton(counts),
                                               beam.pvalue.AsSingleton(kept)))


def build_collect(p, cfg: CollectConfig, header: dict):
    matched = p | "Inputs" >> beam.Create(list(cfg.inputs)) | "MatchPairs" >> MatchPairs(cfg)
    opts = BalanceOptions(cfg.out, cfg.num_shards, cfg.per_query_cap, cfg.seed, header["queries"]["count"],
                          cfg.queries, header)
    return matched | "Balance" >> BalanceMatched(opts)


# -- drivers --------------------------------------------------------------------------------------
def make_config(queries: str, inputs: Sequence[str], out: str, *, source: SourceOptions | None = None,
                num_shards: int | None = None, **options) -> CollectConfig:
    """A CollectConfig from paths: ``inputs`` are files, globs or directories (expanded and sorted),
    each file's format is taken from its name (or ``source.fmt``), tables are checked for their
    columns, and ``num_shards`` defaults to the number of input files (at most 1024). ``options``
    are the other CollectConfig fields (per_query_cap, seed, langs, lang_detector, ...)."""
    from wit_builder.common import match_paths
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
    cfg = CollectConfig(queries=queries, inputs=tuple(resolved), out=out.rstrip("/"), source=source,
                        num_shards=num_shards if num_shards is not None else max(1, min(len(resolved), 1024)),
                        **options)
    if cfg.min_chars < 1 or cfg.max_chars < cfg.min_chars:
        raise WitError("need 1 <= --min-text-chars <= --max-text-chars")
    if cfg.batch_size < 1:
        raise WitError("--batch-size must be at least 1")
    return cfg


def run_collect(queries: str, inputs: Sequence[str], out: str, *, runner: str = "DirectRunner", workers: int = 1,
                pipeline_args: Sequence[str] = (), overwrite: bool = False, **options) -> dict:
    """``wit collect`` as a function: ``make_config(queries, inputs, out, **options)`` then
    :func:`collect`. Returns the contents of ``OUT/stats.json``. Example::

        stats = run_collect("Q/queries.parquet", ["web/*.warc.wat.gz"], "OUT", per_query_cap=200, langs=None)
    """
    return collect(make_config(queries, inputs, out, **options), runner=runner, workers=workers,
                   pipeline_args=pipeline_args, overwrite=overwrite)



def _config_json(cfg: CollectConfig, sizes: dict) -> dict:
    d = asdict(cfg)
    d["inputs"] = [[p, f, sizes.get(p)] for p, f in cfg.inputs]
    d["langs"] = list(cfg.langs) if cfg.langs is not None else None
    d.pop("out")
    return json.loads(json.dumps(d))


def _previous(out: str) -> dict | None:
    path = f"{out}/stats.json"
    if not exists(path):
        return None
    try:
        with open_read(path) as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (ValueError, OSError):
        return None


def _remove(paths: Sequence[str]) -> None:
    from apache_beam.io.filesystems import FileSystems
    if paths:
        FileSystems.delete(list(paths))


def _stale_parts(directory: str, keep_m: int) -> list[str]:
    """part-*-of-*.parquet files in ``directory`` that another shard count left behind."""
    from apache_beam.io.filesystems import FileSystems
    try:
        found = FileSystems.match([f"{directory}/part-*-of-*.parquet"])[0].metadata_list
    except (BeamIOError, OSError):      # e.g. the directory is not there yet
        return []
    suffix = f"-of-{keep_m:05d}.parquet"
    return [m.path for m in found if not m.path.endswith(suffix)]


def _run(p_builder, runner: str, workers: int, pipeline_args: Sequence[str]):
    from pipelines.options import make_options
    options = make_options(runner, workers, pipeline_args)
    with beam.Pipeline(options=options) as p:
        p_builder(p)


def collect(cfg: CollectConfig, *, runner: str = "DirectRunner", workers: int = 1,
            pipeline_args: Sequence[str] = (), overwrite: bool = False) -> dict:
    """Run collect + balance for ``cfg``; return the stats written to ``OUT/stats.json``.

    A completed run (stats.json with the same configuration) is not redone; one with another
    configuration is an error unless ``overwrite``."""
    from apache_beam.io.filesystems import FileSystems
    from wit_builder.collect import load_queries
    if cfg.per_query_cap < 1:
        raise WitError("--per-query-cap must be at least 1")
    if cfg.num_shards < 1:
        raise WitError("--num-shards must be at least 1")
    queries = load_queries(cfg.queries)                 # fail early, before any worker starts
    from wit_builder.langid import make_detector
    make_detector(cfg.lang_detector, cfg.seed)          # likewise for a bad detector spec
    sizes = {}
    for path, _ in cfg.inputs:
        try:
            sizes[path] = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        except (IndexError, OSError):
            sizes[path] = None
    config = _config_json(cfg, sizes)
    prev = _previous(cfg.out)
    if prev is not None:
        if prev.get("stage") == "collect" and prev.get("config") == config and not overwrite:
            prev["resumed"] = True
            return prev
        if not overwrite:
            raise WitError(f"{cfg.out} holds a finished run with other inputs or options; "
                           f"pass --overwrite to replace it, or choose another --out")
        _remove([f"{cfg.out}/stats.json"])
    _remove(_stale_parts(f"{cfg.out}/matched", cfg.num_shards) + _stale_parts(f"{cfg.out}/balanced", cfg.num_shards))
    by_format = Counter(f for _, f in cfg.inputs)
    header = {
        "stage": "collect",
        "config": config,
        "inputs": {"files": len(cfg.inputs), "bytes": int(sum(v or 0 for v in sizes.values())),
                   "by_format": dict(sorted(by_format.items()))},
        "queries": {"path": cfg.queries, "count": len(queries)},
        "num_shards": cfg.num_shards,
    }
    _run(lambda p: build_collect(p, cfg, header), runner, workers, pipeline_args)
    stats = _previous(cfg.out)
    if stats is None:
        raise WitError(f"the pipeline finished but {cfg.out}/stats.json is missing")
    return stats


def build_balance(p, shards: list, opts: BalanceOptions):
    return (p | "MatchedShards" >> beam.Create(shards) | "CountMatched" >> CountMatched()
            | "Balance" >> BalanceMatched(opts))


def balance(matched: str, out: str, per_query_cap: int, *, seed: int = 0, queries: str | None = None,
            runner: str = "DirectRunner", workers: int = 1, pipeline_args: Sequence[str] = (),
            overwrite: bool = False) -> dict:
    """Re-balance ``matched/OUT/matched/*.parquet`` with another cap (and/or seed) into ``out``."""
    import re
    from apache_beam.io.filesystems import FileSystems
    if per_query_cap < 1:
        raise WitError("--per-query-cap must be at least 1")
    matched = matched.rstrip("/")
    out = out.rstrip("/")
    try:
        found = FileSystems.match([f"{matched}/matched/part-*-of-*.parquet"])[0].metadata_list
    except (BeamIOError, OSError) as exc:
        raise WitError(f"cannot list {matched}/matched: {exc}") from None
    shards = []
    pattern = re.compile(r"part-(\d+)-of-(\d+)\.parquet$")
    for meta in found:
        m = pattern.search(meta.path)
        if m:
            shards.append((int(m.group(1)), meta.path, int(m.group(2))))
    if not shards:
        raise WitError(f"no matched shards in {matched}/matched (run `wit collect` first)")
    totals = {t for _, _, t in shards}
    if len(totals) != 1 or len(shards) != next(iter(totals)):
        raise WitError(f"{matched}/matched is incomplete or mixed ({len(shards)} files, totals {sorted(totals)})")
    num_shards = next(iter(totals))
    source_stats = _previous(matched) or {}
    names_from = queries or f"{matched}/counts.parquet"
    if not exists(names_from):
        raise WitError(f"query names: {names_from} not found; pass --queries Q/queries.parquet")
    num_queries = int(source_stats.get("queries", {}).get("count", 0))
    if os.path.abspath(matched) == os.path.abspath(out):
        raise WitError("--out must differ from --matched (balance writes its own counts.parquet and stats.json)")
    config = {"matched": matched, "per_query_cap": int(per_query_cap), "seed": int(seed), "queries": queries,
              "matched_files": sorted(p for _, p, _ in shards)}
    prev = _previous(out)
    if prev is not None:
        if prev.get("stage") == "balance" and prev.get("config") == config and not overwrite:
            prev["resumed"] = True
            return prev
        if not overwrite:
            raise WitError(f"{out} holds a finished run with other options; pass --overwrite or choose another --out")
        _remove([f"{out}/stats.json"])
    _remove(_stale_parts(f"{out}/balanced", num_shards))
    header = {"stage": "balance", "config": config, "source_stats": f"{matched}/stats.json",
              "queries": {"count": num_queries}, "num_shards": num_shards}
    items = sorted((k, path) for k, path, _ in shards)
    opts = BalanceOptions(out, num_shards, per_query_cap, seed, num_queries, names_from, header)
    _run(lambda p: build_balance(p, items, opts), runner, workers, pipeline_args)
    stats = _previous(out)
    if stats is None:
        raise WitError(f"the pipeline finished but {out}/stats.json is missing")
    return stats
