"""Beam pipeline behind ``wit collect``: ``Collect`` = ``MatchPairs`` then ``BalanceMatched``
(pipelines/balance.py)::

    MatchPairs: (path, format) -> Reshuffle -> ExtractCandidates (one file per element, batches of
      candidates) -> CleanTexts -> MatchQueries (automaton built once per worker in setup)
      -> IdentifyLanguage (only matched texts; model loaded in setup) -> ToShards (rows keyed by
      hash(uid) mod M, buffered per bundle up to a bound, then sorted and deduplicated per shard:
      sorted runs) -> GroupByKey -> MergeAndWrite (exact (url, text) dedup per shard, merged in uid
      ranges of at most max_rows_in_memory rows; OUT/matched/part-k-of-M, fixed-size row groups)
      -> MatchCounts: CombineGlobally(SumCounts),
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
from wit_builder.core import (WitError, file_info, finished_run, read_json_or_none,
                              remove_temporaries)

__all__ = ["Collect", "MatchPairs", "MergeStats", "run"]

STATS = "stats"
SPILL = ".wit-work-spill"   # OUT/.wit-work-spill: shuffled runs on local runners, removed after the run


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
    """Batches -> (shard, sorted run): per bundle, rows are buffered by shard up to ``flush_rows``,
    then sorted by (shard, uid) and deduplicated in one go (each shard's rows: a sorted run the
    writer can merge in ranges).

    With ``spill_dir`` (local runners) a flush is written to one Arrow IPC file there (sorted by
    shard, then uid) and only (shard, SpillRef: file, first row, rows) is shuffled: the DirectRunner holds everything that
    goes through a GroupByKey in memory, so without it a run's memory grows with its whole matched
    output."""

    def __init__(self, num_shards: int, flush_rows: int = 100_000, spill_dir: str | None = None):
        self.num_shards, self.flush_rows, self.spill_dir = num_shards, flush_rows, spill_dir

    def start_bundle(self):
        self.buffer: list = []
        self.rows = 0

    def process(self, batch):
        from wit_builder.collect import batch_to_table
        stats = Counter()
        table = batch_to_table(batch, stats)
        self.buffer.append(table)
        self.rows += table.num_rows
        if self.rows >= self.flush_rows:
            yield from self._flush(stats)
        yield _emit_stats(stats)

    def _flush(self, stats: Counter) -> list:
        import uuid

        import numpy as np
        import pyarrow as pa
        from wit_builder.collect import SpillRef, sort_runs, write_spill
        table, ranges, dupes = sort_runs(self.buffer, self.num_shards)
        stats["dropped.duplicate"] += dupes
        self.buffer, self.rows = [], 0
        if not ranges:
            return []
        if self.spill_dir is None:     # compact copies: a pickled slice would carry the whole buffer
            return [(k, table.take(pa.array(np.arange(a, b)))) for k, a, b in ranges]
        path = f"{self.spill_dir}/{uuid.uuid4().hex}.arrow"
        write_spill(path, table)
        return [(k, SpillRef(path, a, b - a)) for k, a, b in ranges]

    def finish_bundle(self):
        stats = Counter()
        for kv in self._flush(stats):
            yield GlobalWindows.windowed_value(kv)
        if stats:
            tagged = _emit_stats(stats)
            yield beam.pvalue.TaggedOutput(tagged.tag, GlobalWindows.windowed_value(tagged.value))


class MergeAndWrite(beam.DoFn):
    """One shard's sorted runs -> exact dedup -> OUT/matched/part-k-of-M.parquet, merged in uid
    ranges of at most ``max_rows`` rows (``wit_builder.collect.write_shard``)."""

    def __init__(self, out: str, num_shards: int, max_rows: int, row_group_rows: int):
        self.out, self.num_shards, self.max_rows, self.row_group_rows = out, num_shards, max_rows, row_group_rows

    def process(self, item):
        from wit_builder.collect import ShardRuns, write_shard
        k, values = item
        runs = ShardRuns(self.max_rows)
        try:
            for v in values:
                runs.add(v)
            path = f"{self.out}/matched/{shard_name(k, self.num_shards)}"
            res = write_shard(runs, path, max_rows=self.max_rows, row_group_rows=self.row_group_rows)
        finally:
            runs.close()
        Metrics.distribution("wit.collect", "shard_rows_held").update(res.peak_rows)
        ids = np.flatnonzero(res.counts)
        yield beam.pvalue.TaggedOutput(COUNTS, (ids, res.counts[ids]))
        yield _emit_stats(Counter({"dropped.duplicate": res.duplicates}))
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
        shd = lng.out | "ToShards" >> beam.ParDo(ToShards(m, min(100_000, cfg.max_rows_in_memory), self.spill_dir)
                                                 ).with_outputs(STATS, main="out")
        every = files.pipeline | "AllShardIds" >> beam.Create([(k, None) for k in range(m)])
        grouped = (shd.out, every) | "WithEmptyShards" >> beam.Flatten() | "GroupByShard" >> beam.GroupByKey()
        written = grouped | "MergeAndWrite" >> beam.ParDo(
            MergeAndWrite(cfg.out, m, cfg.max_rows_in_memory, cfg.row_group_rows)).with_outputs(COUNTS, STATS, main="out")
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
    d.pop("max_rows_in_memory")        # memory, not output
    if d["row_group_rows"] == CollectConfig.row_group_rows:
        d.pop("row_group_rows")        # so runs finished before the option existed still resume
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
