"""Beam pipeline behind ``wit shards``: the final deduplicated WebDataset + Parquet shards.

``WriteShards``::

    download shard names -> SpreadInputs -> CountKept (one element per download shard: how many
      samples it gives after the success, tar and dedup filters) -> AllPlans -> AssignShards (the
      samples in key order, cut every samples_per_shard: (index, [(shard, start, stop)]))
      -> SpreadOutputs -> WriteShard (one output tar + parquet each, written atomically)
      -> AllShards -> Finish (stale shards removed, sizes.json, then manifest.json last)

Each worker loads the dedup decisions once (``setup``). The output is the same for any runner or
worker count: which samples go into which output shard depends only on the inputs.
"""
from __future__ import annotations

import apache_beam as beam

from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder.shards import (ShardsConfig, assign_output_shards, count_kept, finish_shards, read_decisions,
                                start_shards, write_output_shard)

__all__ = ["WriteShards", "run"]


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


class WriteShards(beam.PTransform):
    """Download shard names -> the manifest (one element), once every output shard is written."""

    def __init__(self, cfg: ShardsConfig, decisions: int | None):
        super().__init__()
        self.cfg, self.decisions = cfg, decisions

    def expand(self, names):
        cfg = self.cfg
        plans = (names | "SpreadInputs" >> beam.Reshuffle()
                 | "CountKept" >> beam.ParDo(CountKept(cfg))
                 | "AllPlans" >> beam.combiners.ToList())
        written = (plans | "AssignShards" >> beam.FlatMap(assign_output_shards, cfg.samples_per_shard, cfg.images)
                   | "SpreadOutputs" >> beam.Reshuffle()
                   | "WriteShard" >> beam.ParDo(WriteShard(cfg))
                   | "AllShards" >> beam.combiners.ToList())
        return (written | "Finish" >> beam.Map(lambda shards, plans: finish_shards(cfg, shards, plans, self.decisions),
                                               beam.pvalue.AsSingleton(plans)))


def run(cfg: ShardsConfig, beam_options: BeamOptions = BeamOptions()) -> dict:
    """``wit shards``: returns the manifest written to ``OUT/manifest.json`` (last)."""
    from wit_builder.core import WitError, read_json_or_none
    names = start_shards(cfg)
    decisions = len(read_decisions(cfg.dedup)) if cfg.dedup else None
    run_pipeline(lambda p: p | "DownloadShards" >> beam.Create(names) | "WriteShards" >> WriteShards(cfg, decisions),
                 beam_options)
    manifest = read_json_or_none(f"{cfg.out.rstrip('/')}/manifest.json")
    if manifest is None:
        raise WitError(f"the pipeline finished but {cfg.out}/manifest.json is missing")
    return manifest
