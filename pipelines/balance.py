"""Beam pipelines behind ``wit balance``, and the balancing half that ``wit collect`` shares.

``Rebalance`` = ``CountMatched`` (matched files -> counts per query) then ``BalanceMatched``::

    BalanceMatched: BalanceShards (counts as a side input; OUT/balanced/part-k-of-M) -> KeptCounts
      -> MergeStats -> WriteSummary (OUT/counts.parquet, OUT/balance.png, then OUT/stats.json)

``RebalancePool`` (``wit balance --pool IMAGES [--dedup DEDUP]``) re-balances what survived
download and dedup, one element per download shard::

    DEDUP/decisions.parquet, one element per row group -> ReadDecisions (batch by batch, each row
      sent to the download shard its key begins with, as `wit shards` does) -> joined by name with
      the download shards (CoGroupByKey)
    ReadPool (IMAGES/NNNNN.parquet + that shard's own decisions: each row's loss or "survivor")
      -> SurvivorCounts, PoolCounts (SumCounts) -> DrawShards (survivor counts as a side input)
      -> WriteParts (OUT/.wit-work-*/NNNNN.parquet, sorted by key), KeptCounts, MergeStats
    WriteDecisions (the parts' small records: streams the parts a part at a time into
      OUT/decisions.parquet, sorted by key, one row group per non-empty part)
      -> WritePoolSummary (OUT/counts.parquet, OUT/balance.png, then OUT/stats.json)

No step holds the whole decisions table, and no step gathers the decided rows: a step holds one
download shard's rows and decisions, WriteDecisions one part at a time.

The per-query cap and the seed travel as one :class:`wit_builder.balance.BalanceConfig`; its
``keep_prob`` is the one place the rule ``min(1, t / count)`` is computed.
"""
from __future__ import annotations

import os
import uuid
from collections import Counter
from dataclasses import dataclass

import apache_beam as beam
import numpy as np

from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder import records
from wit_builder.balance import BalanceConfig
from wit_builder.collect import shard_name
from wit_builder.schemas import COUNTS_SCHEMA
from wit_builder.core import (WitError, atomic_write_json, atomic_write_parquet, content_key, exists, finished_run,
                              glob_files, open_read, read_json_or_none, remove, remove_temporaries)

__all__ = ["RebalanceConfig", "Rebalance", "CountMatched", "BalanceMatched", "BalanceTarget", "SumCounts",
           "MergeStats", "run", "remove_stale_parts", "PoolConfig", "PoolTarget", "RebalancePool", "run_pool"]

COUNTS = "counts"


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
    def __init__(self, out: str, num_shards: int, balance: BalanceConfig, num_queries: int):
        self.out, self.num_shards, self.balance, self.num_queries = out, num_shards, balance, num_queries

    def process(self, item, counts):
        import pyarrow.parquet as pq
        from wit_builder.balance import balance_table, count_queries
        k, path = item
        with open_read(path) as fh:
            table = pq.read_table(fh)
        size = max(self.num_queries, len(counts))
        dense = np.zeros(size, np.int64)
        dense[:len(counts)] = counts
        kept, st = balance_table(table, self.balance.keep_prob(dense), self.balance.seed)
        atomic_write_parquet(f"{self.out}/balanced/{shard_name(k, self.num_shards)}", kept)
        kc = count_queries(kept.column("query_ids"))
        ids = np.flatnonzero(kc)
        yield beam.pvalue.TaggedOutput(COUNTS, (ids, kc[ids]))
        yield Counter({"matched": st["matched"], "kept": st["kept"], "expected_size": st["expected_size"],
                       "size_variance": st["size_variance"]})


class WriteSummary(beam.DoFn):
    """counts.parquet, balance.png, then stats.json (its presence marks the run complete)."""

    def __init__(self, out: str, balance: BalanceConfig, names_from: str, header: dict):
        self.out, self.balance, self.names_from, self.header = out, balance, names_from, header

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
            "keep_prob": pa.array(self.balance.keep_prob(c[ids]), pa.float64()),
            "kept": pa.array(kp[ids], pa.int64()),
        }, schema=COUNTS_SCHEMA)
        atomic_write_parquet(f"{self.out}/counts.parquet", table)
        plot_balance(c, kp, self.balance.per_query_cap, f"{self.out}/balance.png")
        summary = _summarize(self.header, stats, c, self.balance)
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


def _summarize(header: dict, stats: Counter, counts: np.ndarray, balance: BalanceConfig) -> dict:
    cap = balance.per_query_cap
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
        "seed": int(balance.seed),
        **head_tail(counts, cap),
        "expected_size": round(float(stats.get("expected_size", 0.0)), 3),
        "expected_size_sd": round(variance ** 0.5, 3),
        "kept": int(stats.get("kept", 0)),
        "cpu_seconds": seconds,
    })
    return out


@dataclass(frozen=True)
class BalanceTarget:
    """Where and how ``BalanceMatched`` writes."""
    out: str
    num_shards: int
    balance: BalanceConfig
    num_queries: int
    names_from: str          # queries file, or an earlier run's counts.parquet, for query strings
    header: dict             # fixed part of stats.json


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

    def __init__(self, opts: BalanceTarget):
        super().__init__()
        self.o = opts

    def expand(self, parts):
        o = self.o
        shards, counts = parts["shards"], parts["counts"]
        balanced = (shards | "BalanceShards" >> beam.ParDo(
            BalanceShard(o.out, o.num_shards, o.balance, o.num_queries), beam.pvalue.AsSingleton(counts))
            .with_outputs(COUNTS, main="stats"))
        kept = balanced[COUNTS] | "KeptCounts" >> beam.CombineGlobally(SumCounts())
        stats = ((parts["stats"], balanced.stats) | "AllStats" >> beam.Flatten()
                 | "MergeStats" >> beam.CombineGlobally(MergeStats()))
        return (shards.pipeline | "Once" >> beam.Create([None])
                | "WriteSummary" >> beam.ParDo(WriteSummary(o.out, o.balance, o.names_from, o.header),
                                               beam.pvalue.AsSingleton(stats), beam.pvalue.AsSingleton(counts),
                                               beam.pvalue.AsSingleton(kept)))


class Rebalance(beam.PTransform):
    """(k, matched path) -> the balanced shards, counts, plot and stats.json of ``target``."""

    def __init__(self, target: BalanceTarget):
        super().__init__()
        self.target = target

    def expand(self, shards):
        return shards | "CountMatched" >> CountMatched() | "Balance" >> BalanceMatched(self.target)


@dataclass(frozen=True)
class RebalanceConfig:
    """Everything that determines the output of ``wit balance``."""
    matched: str                 # a `wit collect` output folder (holds matched/)
    out: str
    balance: BalanceConfig
    queries: str | None = None   # query names from here (default: the collect run's counts.parquet)


def remove_stale_parts(directory: str, keep_m: int) -> None:
    """Remove part-*-of-*.parquet files in ``directory`` that another shard count left behind."""
    suffix = f"-of-{keep_m:05d}.parquet"
    remove([p for p in glob_files(f"{directory}/part-*-of-*.parquet") if not p.endswith(suffix)])


def _matched_shards(matched: str) -> list[tuple[int, str, int]]:
    import re
    pattern = re.compile(r"part-(\d+)-of-(\d+)\.parquet$")
    try:
        found = glob_files(f"{matched}/matched/part-*-of-*.parquet")
    except OSError as exc:
        raise WitError(f"cannot list {matched}/matched: {exc}") from None
    shards = [(int(m.group(1)), path, int(m.group(2))) for path in found if (m := pattern.search(path))]
    if not shards:
        raise WitError(f"no matched shards in {matched}/matched (run `wit collect` first)")
    records.verify_inputs([path for _, path, _ in shards], "--matched")
    totals = {t for _, _, t in shards}
    if len(totals) != 1 or len(shards) != next(iter(totals)):
        raise WitError(f"{matched}/matched is incomplete or mixed ({len(shards)} files, totals {sorted(totals)})")
    return shards


def run(cfg: RebalanceConfig, beam_options: BeamOptions = BeamOptions(), *, overwrite: bool = False) -> dict:
    """``wit balance``: re-balance ``cfg.matched/matched/*.parquet`` into ``cfg.out``; returns the
    stats written to ``OUT/stats.json``."""
    matched, out = cfg.matched.rstrip("/"), cfg.out.rstrip("/")
    shards = _matched_shards(matched)
    num_shards = shards[0][2]
    source_stats = read_json_or_none(f"{matched}/stats.json") or {}
    names_from = cfg.queries or f"{matched}/counts.parquet"
    if not exists(names_from):
        raise WitError(f"query names: {names_from} not found; pass --queries Q/queries.parquet")
    num_queries = int(source_stats.get("queries", {}).get("count", 0))
    if os.path.abspath(matched) == os.path.abspath(out):
        raise WitError("--out must differ from --matched (balance writes its own counts.parquet and stats.json)")
    config = {"matched": matched, "per_query_cap": int(cfg.balance.per_query_cap), "seed": int(cfg.balance.seed),
              "queries": cfg.queries,
              # by content: a re-collected matched/ under the same names is another input
              "matched_files": sorted([p, content_key(p)] for _, p, _ in shards)}
    prev = finished_run(out, {"stage": "balance", "config": config}, overwrite=overwrite)
    if prev is not None:
        return prev
    records.begin(out, "balance", ("balanced",))
    remove_stale_parts(f"{out}/balanced", num_shards)
    remove([f"{out}/decisions.parquet"])   # a --pool run's, replaced with --overwrite
    header = {"stage": "balance", "config": config, "source_stats": f"{matched}/stats.json",
              "queries": {"count": num_queries}, "num_shards": num_shards}
    items = sorted((k, path) for k, path, _ in shards)
    target = BalanceTarget(out, num_shards, cfg.balance, num_queries, names_from, header)
    run_pipeline(lambda p: p | "MatchedShards" >> beam.Create(items) | "Rebalance" >> Rebalance(target),
                 beam_options)
    stats = read_json_or_none(f"{out}/stats.json")
    if stats is None:
        raise WitError(f"the pipeline finished but {out}/stats.json is missing")
    records.complete_folder(out, "balance", inputs=[p for _, p, _ in shards],
                            counts={k: v for k, v in stats.items() if type(v) in (int, float)})
    return stats


# --- `wit balance --pool IMAGES [--dedup DEDUP]`: re-balance the final pool -------------------------

POOL_STATS = "stats"


def _sparse(counts: np.ndarray) -> tuple:
    ids = np.flatnonzero(counts)
    return ids, counts[ids]


class ReadPoolDecisions(beam.DoFn):
    """``(decisions file, row group)`` -> ``(download shard, its rows of that group)`` fragments."""

    def process(self, item, names):
        from wit_builder.balance import read_pool_decision_group
        from wit_builder.shards import ShardRouter
        decisions, group = item
        yield from read_pool_decision_group(decisions, group, ShardRouter(names))


class ReadPoolShard(beam.DoFn):
    """(download shard name, its own decision fragments) -> (name, its rows of the decisions,
    outcome "survivor" or the loss)."""

    def __init__(self, target: "PoolTarget", decisions):
        self.t = target
        self.decisions = decisions      # a wit_builder.shards.DecisionsFile (the footer) or None

    def process(self, item):
        from wit_builder.balance import decide_pool_shard
        name, fragments = item
        yield name, decide_pool_shard(self.t.images, name, self.decisions, fragments, self.t.not_in_dedup)


class DrawShard(beam.DoFn):
    """(name, rows) + survivor counts -> (name, decided rows); kept counts and stats tagged."""

    def __init__(self, balance: BalanceConfig):
        self.balance = balance

    def process(self, item, counts):
        from wit_builder.balance import count_queries, draw_pool
        name, table = item
        table, stats = draw_pool(table, self.balance.keep_prob(counts), self.balance.seed)
        kept = table.filter(table.column("kept"))
        yield beam.pvalue.TaggedOutput(COUNTS, _sparse(count_queries(kept.column("query_ids"))))
        yield beam.pvalue.TaggedOutput(POOL_STATS, Counter(stats))
        yield name, table


class WritePart(beam.DoFn):
    """(name, decided rows) -> WORK/NAME.parquet (sorted by key); yields its small record."""

    def __init__(self, work: str):
        self.work = work

    def process(self, item):
        from wit_builder.balance import write_pool_part
        name, table = item
        yield write_pool_part(f"{self.work}/{name}.parquet", table)


class WriteDecisions(beam.DoFn):
    """The parts' records -> OUT/decisions.parquet (sorted by key), streamed a part at a time;
    removes the parts; yields the row count."""

    def __init__(self, out: str, work: str):
        self.out, self.work = out, work

    def process(self, parts):
        from wit_builder.balance import merge_pool_parts
        from wit_builder.shards import remove_folder
        rows = merge_pool_parts(f"{self.out}/decisions.parquet", parts)
        remove_folder(self.work)
        yield rows


class WritePoolSummary(beam.DoFn):
    """counts.parquet, balance.png, then stats.json (after decisions.parquet: ``written``)."""

    def __init__(self, target: "PoolTarget"):
        self.t = target

    def process(self, _, stats, pooled, survivors, kept, written):
        from wit_builder.balance import plot_balance, pool_counts_table, pool_summary
        t = self.t
        ids = np.flatnonzero(pooled)
        names = _query_names(t.names_from, ids) if t.names_from else None
        atomic_write_parquet(f"{t.out}/counts.parquet",
                             pool_counts_table(pooled, survivors, kept, t.balance.per_query_cap, names))
        size = max(len(survivors), len(kept))
        c, k = np.zeros(size, np.int64), np.zeros(size, np.int64)
        c[:len(survivors)] = survivors
        k[:len(kept)] = kept
        plot_balance(c, k, t.balance.per_query_cap, f"{t.out}/balance.png", before="surviving",
                     title="final pool: per-query samples before/after re-balancing")
        summary = pool_summary({**(t.header or {}), "decisions": int(written)}, stats, pooled, survivors, kept,
                               t.balance)
        atomic_write_json(f"{t.out}/stats.json", summary)
        yield summary


@dataclass(frozen=True)
class PoolTarget:
    """What ``RebalancePool`` reads and where it writes."""
    images: str              # `wit download` output folder
    out: str
    balance: BalanceConfig
    dedup: str | None = None           # `wit dedup run` folder or its decisions.parquet
    not_in_dedup: str = "drop"         # "drop" or "keep" (wit_builder.balance.NOT_IN_DEDUP)
    names_from: str | None = None      # queries file or counts.parquet for query strings
    header: dict | None = None         # fixed part of stats.json
    work: str | None = None            # where the per-shard parts go (default OUT/.wit-work-RANDOM; removed)


class RebalancePool(beam.PTransform):
    """Download shard names (``00000``...) -> OUT/decisions.parquet (every download row: ``kept``
    = survived download and dedup and passes the pool's balance draw), counts.parquet,
    balance.png and stats.json; returns the summary written to stats.json (one element)."""

    def __init__(self, target: PoolTarget):
        super().__init__()
        self.t = target

    def expand(self, names):
        from pipelines.shards import _join
        from wit_builder.balance import open_pool_decisions
        t = self.t
        work = t.work or f"{t.out}/.wit-work-{uuid.uuid4().hex[:10]}"
        decisions = open_pool_decisions(t.dedup) if t.dedup else None    # the footer only
        if decisions is None:
            joined = names | "SpreadShards" >> beam.Reshuffle() | "NoDecisions" >> beam.Map(lambda n: (n, None))
        else:
            # the decisions one row group per element, each row sent to the download shard its key
            # begins with, then joined by name: a step holds its own shard's decisions only
            groups = [(decisions, g) for g in range(decisions.row_groups)]
            fragments = (names.pipeline | "RowGroups" >> beam.Create(groups) | "SpreadRowGroups" >> beam.Reshuffle()
                         | "ReadDecisions" >> beam.ParDo(ReadPoolDecisions(), beam.pvalue.AsList(names)))
            joined = (_join(fragments, names | "ByName" >> beam.Map(lambda n: (n, None)), "shard")
                      | "Fragments" >> beam.MapTuple(lambda name, _, fragments: (name, fragments)))
        rows = joined | "ReadPool" >> beam.ParDo(ReadPoolShard(t, decisions))
        survivors = (rows | "SurvivorIds" >> beam.Map(lambda kv: _sparse(_survivor_counts(kv[1])))
                     | "SurvivorCounts" >> beam.CombineGlobally(SumCounts()))
        pooled = (rows | "PoolIds" >> beam.Map(lambda kv: _sparse(_pooled_counts(kv[1])))
                  | "PoolCounts" >> beam.CombineGlobally(SumCounts()))
        drawn = (rows | "DrawShards" >> beam.ParDo(DrawShard(t.balance), beam.pvalue.AsSingleton(survivors))
                 .with_outputs(COUNTS, POOL_STATS, main="decisions"))
        kept = drawn[COUNTS] | "KeptCounts" >> beam.CombineGlobally(SumCounts())
        stats = drawn[POOL_STATS] | "MergeStats" >> beam.CombineGlobally(MergeStats())
        written = (drawn.decisions | "WriteParts" >> beam.ParDo(WritePart(work))
                   | "AllParts" >> beam.combiners.ToList()
                   | "WriteDecisions" >> beam.ParDo(WriteDecisions(t.out, work)))
        side = beam.pvalue.AsSingleton
        return (names.pipeline | "Once" >> beam.Create([None])
                | "WritePoolSummary" >> beam.ParDo(WritePoolSummary(t), side(stats), side(pooled), side(survivors),
                                                   side(kept), side(written)))


def _survivor_counts(table):
    from wit_builder.balance import survivor_counts
    return survivor_counts(table)


def _pooled_counts(table):
    from wit_builder.balance import count_queries
    return count_queries(table.column("query_ids"))


@dataclass(frozen=True)
class PoolConfig:
    """Everything that determines the output of ``wit balance --pool``."""
    images: str                  # a `wit download` output folder
    out: str
    balance: BalanceConfig
    dedup: str | None = None     # a `wit dedup run` (or `dedup overlap --drop-overlapping`) folder or decisions file
    not_in_dedup: str = "drop"
    queries: str | None = None   # query names from here (a queries file or a collect run's counts.parquet)


def run_pool(cfg: PoolConfig, beam_options: BeamOptions = BeamOptions(), *, overwrite: bool = False) -> dict:
    """``wit balance --pool``: re-balance the samples of ``cfg.images`` that survived download
    (and dedup) into ``cfg.out``; returns the stats written to ``OUT/stats.json``."""
    from wit_builder.balance import NOT_IN_DEDUP, open_pool_decisions
    from wit_builder.shards import find_image_shards, remove_folder
    images, out = cfg.images.rstrip("/"), cfg.out.rstrip("/")
    if cfg.not_in_dedup not in NOT_IN_DEDUP:
        raise WitError(f"--not-in-dedup must be one of {', '.join(NOT_IN_DEDUP)}, not {cfg.not_in_dedup!r}")
    dedup_path = None
    if cfg.dedup:
        dedup_path = cfg.dedup if cfg.dedup.endswith(".parquet") else cfg.dedup.rstrip("/") + "/decisions.parquet"
    for what, folder in (("--pool", images), ("--dedup", dedup_path and os.path.dirname(dedup_path))):
        if folder and os.path.abspath(folder) == os.path.abspath(out):
            raise WitError(f"--out must differ from {what} (balance writes its own decisions.parquet and stats.json)")
    names = find_image_shards(images)           # finished download shards; refuses an unfinished run
    parquets = [f"{images}/{n}.parquet" for n in names]
    if dedup_path:
        open_pool_decisions(cfg.dedup)            # a missing or broken table fails here, in one line (footer only)
    if cfg.queries and not exists(cfg.queries):
        raise WitError(f"--queries {cfg.queries} not found")
    inputs = parquets + ([dedup_path] if dedup_path else [])
    config = {"mode": "pool", "pool": images, "dedup": dedup_path, "not_in_dedup": cfg.not_in_dedup,
              "per_query_cap": int(cfg.balance.per_query_cap), "seed": int(cfg.balance.seed), "queries": cfg.queries,
              # by content: a re-downloaded shard or a re-run dedup under the same names is another input
              "input_files": sorted([p, content_key(p)] for p in inputs)}
    prev = finished_run(out, {"stage": "balance", "config": config}, overwrite=overwrite,
                        needs=(records.RECORD, "decisions.parquet"))
    if prev is not None:
        return prev
    records.begin(out, "balance", ("balanced",))
    remove_stale_parts(f"{out}/balanced", 0)   # a --matched run's, replaced with --overwrite
    remove_temporaries(out, folders=r"\.wit-work-[0-9a-f]+")   # what a killed run left
    header = {"stage": "balance", "mode": "pool", "config": config, "download_shards": len(names)}
    work = f"{out}/.wit-work-{uuid.uuid4().hex[:10]}"
    target = PoolTarget(images, out, cfg.balance, dedup_path, cfg.not_in_dedup, cfg.queries, header, work)
    try:
        run_pipeline(lambda p: p | "DownloadShards" >> beam.Create(names) | "RebalancePool" >> RebalancePool(target),
                     beam_options)
    finally:
        remove_folder(work)
    stats = read_json_or_none(f"{out}/stats.json")
    if stats is None:
        raise WitError(f"the pipeline finished but {out}/stats.json is missing")
    records.complete_folder(out, "balance", inputs=inputs,
                            counts={k: v for k, v in stats.items() if type(v) in (int, float)})
    return stats
