"""Beam pipeline behind ``wit balance``, and the balancing half that ``wit collect`` shares.

``Rebalance`` = ``CountMatched`` (matched files -> counts per query) then ``BalanceMatched``::

    BalanceMatched: BalanceShards (counts as a side input; OUT/balanced/part-k-of-M) -> KeptCounts
      -> MergeStats -> WriteSummary (OUT/counts.parquet, OUT/balance.png, then OUT/stats.json)

The per-query cap and the seed travel as one :class:`wit_builder.balance.BalanceConfig`; its
``keep_prob`` is the one place the rule ``min(1, t / count)`` is computed.
"""
from __future__ import annotations

import os
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
                              glob_files, open_read, read_json_or_none, remove)

__all__ = ["RebalanceConfig", "Rebalance", "CountMatched", "BalanceMatched", "BalanceTarget", "SumCounts",
           "MergeStats", "run", "remove_stale_parts"]

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
