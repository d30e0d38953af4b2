"""Beam pipeline behind ``wit collect``: ``Collect`` = ``MatchPairs`` then ``BalanceMatched``
(pipelines/balance.py)::

    MatchPairs: (path, format) -> Reshuffle -> ExtractCandidates (one file per element, batches of
      candidates) -> CleanTexts -> MatchQueries (automaton built once per worker in setup)
      -> IdentifyLanguage (only matched texts; model loaded in setup) -> ToShards (Arrow tables
      keyed by hash(uid) mod M, buffered per bundle) -> GroupByKey -> DedupAndWrite (exact
      (url, text) dedup per shard; OUT/matched/part-k-of-M) -> MatchCounts: CombineGlobally(SumCounts),
      a CombineFn, so partial sums are computed before the shuffle (combiner lifting)
    BalanceMatched: BalanceShards (counts as a side input; OUT/balanced/part-k-of-M) -> KeptCounts
      -> MergeStats -> WriteSummary (OUT/counts.parquet, OUT/balance.png, then OUT/stats.json)

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
from collections import Counter
from dataclasses import asdict

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipelines.balance import COUNTS, BalanceMatched, BalanceTarget, MergeStats, SumCounts, remove_stale_parts
from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder.collect import CollectConfig, shard_name
from wit_builder import records
from wit_builder.core import (WitError, atomic_write_parquet, file_info, finished_run, read_json_or_none,
                              remove_temporaries)

__all__ = ["Collect", "MatchPairs", "MergeStats", "run"]

STATS = "stats"
SPILL = ".wit-work-spill"   # OUT/.wit-work-spill: shuffled tables on local runners, removed after the run


def _emit_stats(counter: Counter):
    for k, v in counter.items():
        if isinstance(v, int) and not k.startswith("languages."):
            Metrics.counter("wit.collect", k).inc(v)
    return beam.pvalue.TaggedOutput(STATS, counter)


# -- steps --------------------------------------------------------------------------------
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
    """Batches -> (shard, Arrow table), buffered per bundle so small shards are not tiny elements.

    With ``spill_dir`` (local runners) each buffered table is written to a file there and only
    its path is shuffled: the DirectRunner holds everything that goes through a GroupByKey in
    memory, so without it a run's memory grows with its whole matched output."""

    def __init__(self, num_shards: int, flush_rows: int = 100_000, spill_dir: str | None = None):
        self.num_shards, self.flush_rows, self.spill_dir = num_shards, flush_rows, spill_dir

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
        import uuid

        import pyarrow as pa
        for k, parts in sorted(self.buffer.items()):
            table = pa.concat_tables(parts)
            if self.spill_dir is None:
                yield (k, table)
                continue
            path = f"{self.spill_dir}/{k:05d}-{uuid.uuid4().hex}.parquet"
            atomic_write_parquet(path, table)
            yield (k, path)
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
        import pyarrow.parquet as pq
        k, tables = item
        # spilled parts come back from Parquet with its list field name: cast to the schema's
        parts = [pq.read_table(t).cast(MATCHED_SCHEMA) if isinstance(t, str) else t for t in tables if t is not None]
        table = pa.concat_tables(parts) if parts else MATCHED_SCHEMA.empty_table()
        table, dupes = dedup_table(table)
        path = f"{self.out}/matched/{shard_name(k, self.num_shards)}"
        atomic_write_parquet(path, table)
        counts = count_queries(table.column("query_ids"))
        ids = np.flatnonzero(counts)
        yield beam.pvalue.TaggedOutput(COUNTS, (ids, counts[ids]))
        yield _emit_stats(Counter({"dropped.duplicate": dupes}))
        yield (k, path)


class MatchPairs(beam.PTransform):
    """(path, format) pairs -> OUT/matched/part-k-of-M.parquet for every k.

    Returns ``{"shards": (k, path), "counts": dense counts per query id (one element),
    "stats": Counters from every step}``."""

    def __init__(self, cfg: CollectConfig, spill_dir: str | None = None):
        super().__init__()
        self.cfg, self.spill_dir = cfg, spill_dir

    def expand(self, files):
        cfg, m = self.cfg, self.cfg.num_shards
        spread = files | "SpreadFiles" >> beam.Reshuffle()
        ext = spread | "ExtractCandidates" >> beam.ParDo(ExtractCandidates(cfg)).with_outputs(STATS, main="out")
        cln = ext.out | "CleanTexts" >> beam.ParDo(CleanTexts(cfg)).with_outputs(STATS, main="out")
        mat = cln.out | "MatchQueries" >> beam.ParDo(
            MatchQueries(cfg.queries, cfg.case_insensitive)).with_outputs(STATS, main="out")
        lng = mat.out | "IdentifyLanguage" >> beam.ParDo(
            IdentifyLanguage(cfg.lang_detector, cfg.balance.seed, cfg.langs, cfg.min_lang_prob)).with_outputs(STATS, main="out")
        shd = lng.out | "ToShards" >> beam.ParDo(ToShards(m, spill_dir=self.spill_dir)).with_outputs(STATS, main="out")
        every = files.pipeline | "AllShardIds" >> beam.Create([(k, None) for k in range(m)])
        grouped = (shd.out, every) | "WithEmptyShards" >> beam.Flatten() | "GroupByShard" >> beam.GroupByKey()
        written = grouped | "DedupAndWrite" >> beam.ParDo(DedupAndWrite(cfg.out, m)).with_outputs(
            COUNTS, STATS, main="out")
        counts = written[COUNTS] | "MatchCounts" >> beam.CombineGlobally(SumCounts())
        stats = ((ext[STATS], cln[STATS], mat[STATS], lng[STATS], shd[STATS], written[STATS])
                 | "StepStats" >> beam.Flatten())
        return {"shards": written.out, "counts": counts, "stats": stats}


class Collect(beam.PTransform):
    """(path, format) pairs -> OUT/matched/, OUT/balanced/, OUT/counts.parquet, OUT/balance.png
    and OUT/stats.json; returns the summary written to stats.json (one element)."""

    def __init__(self, cfg: CollectConfig, header: dict, spill_dir: str | None = None):
        super().__init__()
        self.cfg, self.header, self.spill_dir = cfg, header, spill_dir

    def expand(self, files):
        cfg = self.cfg
        target = BalanceTarget(cfg.out, cfg.num_shards, cfg.balance, self.header["queries"]["count"], cfg.queries,
                               self.header)
        return files | "MatchPairs" >> MatchPairs(cfg, self.spill_dir) | "Balance" >> BalanceMatched(target)


def _config_json(cfg: CollectConfig, sizes: dict) -> dict:
    d = asdict(cfg)
    d["inputs"] = [[p, f, *sizes.get(p, (None, None))] for p, f in cfg.inputs]
    d["langs"] = list(cfg.langs) if cfg.langs is not None else None
    d.update(d.pop("balance"))          # per_query_cap and seed at the top, as stats.json always had them
    d.pop("out")
    return json.loads(json.dumps(d))


def _size(path: str) -> tuple:
    """(bytes, modified) of an input: one rewritten under the same name is another input."""
    try:
        return tuple(file_info(path))
    except (OSError, ValueError):
        return None, None


def run(cfg: CollectConfig, beam_options: BeamOptions = BeamOptions(), *, overwrite: bool = False,
        spill: bool | None = None) -> dict:
    """``wit collect`` for ``cfg`` (see :func:`wit_builder.collect.make_config`); returns the stats
    written to ``OUT/stats.json``. A finished run of the same configuration is not redone; one of
    another configuration is an error unless ``overwrite``. ``spill``: shuffle file names instead
    of tables (see ``ToShards``); None = on local runners, whose shuffle is held in memory."""
    from wit_builder.collect import load_queries
    from wit_builder.langid import make_detector
    records.verify_inputs([cfg.queries], "--queries")
    queries = load_queries(cfg.queries)                 # fail early, before any worker starts
    make_detector(cfg.lang_detector, cfg.balance.seed)  # likewise for a bad detector spec
    sizes = {path: _size(path) for path, _ in cfg.inputs}
    config = _config_json(cfg, sizes)
    prev = finished_run(cfg.out, {"stage": "collect", "config": config}, overwrite=overwrite)
    if prev is not None:
        return prev
    records.begin(cfg.out, "collect", ("matched", "balanced"))
    remove_temporaries(cfg.out, folders=SPILL)  # a killed run's
    remove_stale_parts(f"{cfg.out}/matched", cfg.num_shards)
    remove_stale_parts(f"{cfg.out}/balanced", cfg.num_shards)
    by_format = Counter(f for _, f in cfg.inputs)
    header = {
        "stage": "collect",
        "config": config,
        "inputs": {"files": len(cfg.inputs), "bytes": int(sum(v[0] or 0 for v in sizes.values())),
                   "by_format": dict(sorted(by_format.items()))},
        "queries": {"path": cfg.queries, "count": len(queries)},
        "num_shards": cfg.num_shards,
    }
    spill_dir = f"{cfg.out.rstrip('/')}/{SPILL}" if (beam_options.is_local if spill is None else spill) else None
    try:
        run_pipeline(lambda p: p | "Inputs" >> beam.Create(list(cfg.inputs)) | "Collect" >> Collect(cfg, header, spill_dir),
                     beam_options)
    finally:
        remove_temporaries(cfg.out, folders=SPILL)
    stats = read_json_or_none(f"{cfg.out}/stats.json")
    if stats is None:
        raise WitError(f"the pipeline finished but {cfg.out}/stats.json is missing")
    records.complete_folder(cfg.out, "collect", inputs=[path for path, _ in cfg.inputs], counts=_counts(stats))
    return stats


def _counts(stats: dict) -> dict:
    """The top-level numbers of a stage's stats, for its completion record."""
    return {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
