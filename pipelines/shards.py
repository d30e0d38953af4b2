"""Beam pipeline behind ``wit shards``: the final deduplicated WebDataset + Parquet shards.

Two passes, each spread over the workers; the launcher holds one small record per shard::

    download shard names -> PlanShards (CountKept: how many samples each gives after the success,
      tar and dedup filters, its first/last key, its counts, or why it is bad)
    launcher: one-line errors (a bad shard, overlapping shards, nothing left), then the samples in
      key order cut every samples_per_shard: (index, [(download shard, start, stop)])
    output shards -> WriteShards (WriteShard: one tar + parquet each, written atomically)
    launcher: stale shards removed, sizes.json, then manifest.json last

Each worker loads the dedup decisions once (``setup``). Which samples go into which output shard
depends only on the inputs, so any runner or worker count writes the same bytes.
"""
from __future__ import annotations

import json
import uuid

import apache_beam as beam

from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder.core import glob_files, open_read
from wit_builder.shards import (ShardsConfig, assign_output_shards, count_kept, finish_shards, read_decisions,
                                remove_folder, start_shards, write_output_shard)

__all__ = ["PlanShards", "WriteShards", "run"]


class _WithDecisions(beam.DoFn):
    def __init__(self, cfg: ShardsConfig):
        self.cfg = cfg
        self.decisions = None

    def setup(self):
        self.decisions = read_decisions(self.cfg.dedup) if self.cfg.dedup else None


class CountKept(_WithDecisions):
    def process(self, name: str):
        yield count_kept(self.cfg.images, name, self.decisions)


class WriteShard(_WithDecisions):
    def process(self, item):
        index, ranges = item
        yield write_output_shard(self.cfg, index, ranges, self.decisions)


class PlanShards(beam.PTransform):
    """Download shard names -> one plan dict per download shard."""

    def __init__(self, cfg: ShardsConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, names):
        return names | "SpreadInputs" >> beam.Reshuffle() | "CountKept" >> beam.ParDo(CountKept(self.cfg))


class WriteShards(beam.PTransform):
    """``(index, ranges)`` of each output shard -> one record per written shard."""

    def __init__(self, cfg: ShardsConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, assigned):
        return assigned | "SpreadOutputs" >> beam.Reshuffle() | "WriteShard" >> beam.ParDo(WriteShard(self.cfg))


def _records(apply, work: str, beam_options: BeamOptions) -> list[dict]:
    """Run a pipeline whose last PCollection holds dicts; return them (through ``work`` files)."""
    run_pipeline(lambda p: (apply(p) | "Json" >> beam.Map(json.dumps)
                            | "Write" >> beam.io.WriteToText(work, file_name_suffix=".jsonl")), beam_options)
    out = []
    for path in glob_files(f"{work}-*.jsonl"):
        with open_read(path) as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out


def run(cfg: ShardsConfig, beam_options: BeamOptions = BeamOptions()) -> dict:
    """``wit shards``: returns the manifest written to ``OUT/manifest.json`` (last)."""
    names, decisions = start_shards(cfg)
    work = f"{cfg.out.rstrip('/')}/.wit-work-{uuid.uuid4().hex[:10]}"
    try:
        plans = _records(lambda p: p | "DownloadShards" >> beam.Create(names) | "PlanShards" >> PlanShards(cfg),
                         f"{work}/plans", beam_options)
        assigned = assign_output_shards(plans, cfg.samples_per_shard, cfg.images)
        shards = _records(lambda p: p | "OutputShards" >> beam.Create(assigned) | "WriteShards" >> WriteShards(cfg),
                          f"{work}/shards", beam_options)
    finally:
        remove_folder(work)
    return finish_shards(cfg, shards, plans, decisions)
