"""Beam pipeline behind ``wit shards``: the final deduplicated WebDataset + Parquet shards.

Two passes, each spread over the workers; the launcher holds one small record per download and
per output shard, and nothing per image::

    DEDUP/decisions.parquet, one element per row group -> ReadDecisions (batch by batch, each row
      sent to the download shard its key begins with) -> joined by name with the download shards
    download shard + its own decisions -> CountKept (how many samples it gives after the success,
      tar and dedup filters, its first/last key, its counts, or why it is bad)
    launcher: one-line errors (a bad shard, overlapping shards, nothing left), then the samples in
      key order cut every samples_per_shard: (index, [(download shard, start, stop)])
    (download shard, piece of an output shard) joined again with the decisions (read again, not
      kept anywhere) -> grouped by output shard -> WriteShard (one tar + parquet, written atomically)
    launcher: stale shards removed, sizes.json, then manifest.json last

A step holds the decisions of one download shard (CountKept) or of the few an output shard
draws from (WriteShard), never the whole table. Which samples go into which output shard
depends only on the inputs, so any runner or worker count writes the same bytes.
"""
from __future__ import annotations

import json
import uuid

import apache_beam as beam

from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder.core import WitError, glob_files, open_read
from wit_builder.shards import (DecisionsFile, ShardRouter, ShardsConfig, assign_output_shards, count_kept,
                                finish_shards, read_decision_group, remove_folder, shard_decisions, start_shards,
                                write_output_shard)

__all__ = ["DecisionsByShard", "PlanShards", "WriteShards", "run"]

ERRORS = "errors"


class ReadDecisions(beam.DoFn):
    """``(decisions file, row group)`` -> ``(download shard, [decision rows])`` fragments; a table
    that cannot be read -> an error record on the ``errors`` output (a failing step can hang
    Beam's multi-process runner, so errors travel as records)."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.route = None

    def setup(self):
        self.route = ShardRouter(self.names)

    def process(self, item):
        decisions, group = item
        try:
            yield from read_decision_group(decisions, group, self.route)
        except WitError as exc:
            yield beam.pvalue.TaggedOutput(ERRORS, {"name": "", "error": str(exc)})


class DecisionsByShard(beam.PTransform):
    """The pipeline -> (``(download shard, fragment)``, error records): the decisions of the
    download shards ``names``, read one row group per element."""

    def __init__(self, decisions: DecisionsFile, names: list[str]):
        super().__init__()
        self.decisions = decisions
        self.names = names

    def expand(self, p):
        read = (p | "RowGroups" >> beam.Create([(self.decisions, g) for g in range(self.decisions.row_groups)])
                | "SpreadRowGroups" >> beam.Reshuffle()
                | "ReadDecisions" >> beam.ParDo(ReadDecisions(self.names)).with_outputs(ERRORS, main="fragments"))
        return read.fragments, read[ERRORS]


def _with_decisions(item, tag: str) -> list:
    name, groups = item
    found = list(groups[tag])
    return [(name, found, list(groups["decisions"]))] if found else []


def _join(fragments, others, tag: str):
    """``(name, x)`` elements joined by name with the fragments: ``(name, [x...], [fragment...])``,
    names without an ``x`` left out."""
    return ({tag: others, "decisions": fragments} | f"Join{tag.title()}" >> beam.CoGroupByKey()
            | f"With{tag.title()}" >> beam.FlatMap(_with_decisions, tag))


class CountKept(beam.DoFn):
    """``(download shard, its decision fragments or None)`` -> its plan record."""

    def __init__(self, cfg: ShardsConfig, decisions: DecisionsFile | None):
        self.cfg = cfg
        self.decisions = decisions

    def process(self, item):
        name, fragments = item
        try:
            decisions = shard_decisions(self.decisions, fragments) if self.decisions is not None else None
        except WitError as exc:
            yield {"name": name, "error": str(exc)}
            return
        yield count_kept(self.cfg.images, name, decisions)


class WriteShard(beam.DoFn):
    """``(index, [(part, download shard, start, stop, its fragments or None)])`` -> a written shard."""

    def __init__(self, cfg: ShardsConfig, decisions: DecisionsFile | None):
        self.cfg = cfg
        self.decisions = decisions

    def process(self, item):
        index, parts = item
        parts = sorted(parts, key=lambda part: part[0])
        try:
            decisions = None if self.decisions is None else {
                name: shard_decisions(self.decisions, fragments) for _, name, _, _, fragments in parts}
            yield write_output_shard(self.cfg, index, [(name, start, stop) for _, name, start, stop, _ in parts],
                                     decisions)
        except WitError as exc:
            yield {"name": f"{index:0{self.cfg.shard_digits}d}", "error": str(exc)}


class PlanShards(beam.PTransform):
    """The pipeline -> one plan dict per download shard of ``names`` (and error records)."""

    def __init__(self, cfg: ShardsConfig, names: list[str], decisions: DecisionsFile | None = None):
        super().__init__()
        self.cfg, self.names, self.decisions = cfg, list(names), decisions

    def expand(self, p):
        count = CountKept(self.cfg, self.decisions)
        names = p | "DownloadShards" >> beam.Create(self.names)
        if self.decisions is None:
            return (names | "SpreadInputs" >> beam.Reshuffle() | "NoDecisions" >> beam.Map(lambda n: (n, None))
                    | "CountKept" >> beam.ParDo(count))
        fragments, errors = p | "Decisions" >> DecisionsByShard(self.decisions, self.names)
        plans = (_join(fragments, names | "ByName" >> beam.Map(lambda n: (n, None)), "shard")
                 | "Fragments" >> beam.MapTuple(lambda name, _, fragments: (name, fragments))
                 | "CountKept" >> beam.ParDo(count))
        return (plans, errors) | "WithErrors" >> beam.Flatten()


class WriteShards(beam.PTransform):
    """The pipeline -> one record per output shard of ``assigned`` (``(index, ranges)``, as
    :func:`assign_output_shards` gives them) written (and error records)."""

    def __init__(self, cfg: ShardsConfig, assigned: list, decisions: DecisionsFile | None = None):
        super().__init__()
        self.cfg, self.assigned, self.decisions = cfg, list(assigned), decisions

    def expand(self, p):
        write = WriteShard(self.cfg, self.decisions)
        if self.decisions is None:
            parts = [(index, [(k, name, start, stop, None) for k, (name, start, stop) in enumerate(ranges)])
                     for index, ranges in self.assigned]
            return (p | "OutputShards" >> beam.Create(parts) | "SpreadOutputs" >> beam.Reshuffle()
                    | "WriteShard" >> beam.ParDo(write))
        pieces = [(name, (index, k, start, stop)) for index, ranges in self.assigned
                  for k, (name, start, stop) in enumerate(ranges)]
        names = sorted({name for name, _ in pieces})
        fragments, errors = p | "Decisions" >> DecisionsByShard(self.decisions, names)
        written = (_join(fragments, p | "Pieces" >> beam.Create(pieces), "piece")
                   | "ByOutputShard" >> beam.FlatMap(lambda item: [
                       (index, (k, item[0], start, stop, item[2])) for index, k, start, stop in item[1]])
                   | "Gather" >> beam.GroupByKey()
                   | "WriteShard" >> beam.ParDo(write))
        return (written, errors) | "WithErrors" >> beam.Flatten()


def _records(apply, work: str, beam_options: BeamOptions) -> list[dict]:
    """Run a pipeline whose last PCollection holds dicts; return them (through ``work`` files)."""
    run_pipeline(lambda p: (apply(p) | "Json" >> beam.Map(json.dumps)
                            | "Write" >> beam.io.WriteToText(work, file_name_suffix=".jsonl")), beam_options)
    out = []
    for path in glob_files(f"{work}-*.jsonl"):
        with open_read(path) as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out


def _raise_first_error(found: list[dict]) -> None:
    errors = sorted((r["name"], r["error"]) for r in found if "error" in r)
    if errors:
        raise WitError(errors[0][1])


def run(cfg: ShardsConfig, beam_options: BeamOptions = BeamOptions()) -> dict:
    """``wit shards``: returns the manifest written to ``OUT/manifest.json`` (last)."""
    names, decisions = start_shards(cfg)
    work = f"{cfg.out.rstrip('/')}/.wit-work-{uuid.uuid4().hex[:10]}"
    try:
        plans = _records(lambda p: p | "PlanShards" >> PlanShards(cfg, names, decisions),
                         f"{work}/plans", beam_options)
        assigned = assign_output_shards(plans, cfg.samples_per_shard, cfg.images)
        shards = _records(lambda p: p | "WriteShards" >> WriteShards(cfg, assigned, decisions),
                          f"{work}/shards", beam_options)
        _raise_first_error(shards)
    finally:
        remove_folder(work)
    return finish_shards(cfg, shards, plans, decisions.rows if decisions is not None else None)
