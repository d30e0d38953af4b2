"""Beam pipeline that embeds webdataset shards with the near-duplicate detector.

One element per shard: ``EmbedShardDoFn`` loads the detector once per DoFn instance in
``setup`` (not per element or bundle), streams the shard's tar, decodes and resizes each image,
runs the model on batches of ``batch_size`` images, and writes the shard's embeddings atomically
to ``OUT_DIR/<shard>-<hash>.parquet`` (see :mod:`wit_builder.dedup`). A shard whose file already
exists with the same detector fingerprint is not recomputed, so a re-run resumes. Parallelism is
per shard (img2dataset shards hold ~10k images each); a ``Reshuffle`` spreads shards over workers.
Skipped records are counted in Beam metrics (namespace ``wit.dedup``) and in the files' ``status``.
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.options import make_options


class EmbedShardDoFn(beam.DoFn):
    def __init__(self, detector: str, out_dir: str, batch_size: int = 64, threads: int | None = None):
        super().__init__()
        self.detector = detector
        self.out_dir = out_dir
        self.batch_size = batch_size
        self.threads = threads
        self.embedder = None

    def setup(self):
        from wit_builder.detector import Embedder
        self.embedder = Embedder(self.detector, threads=self.threads)

    def process(self, shard: str):
        from wit_builder.dedup import embed_shard_to_file
        result = embed_shard_to_file(self.embedder, shard, self.out_dir, self.batch_size)
        for status, n in result["counts"].items():
            Metrics.counter("wit.dedup", "images_" + status).inc(n)
        Metrics.counter("wit.dedup", "shards_reused" if result["reused"] else "shards_embedded").inc()
        yield result


def build(p, shards: Sequence[str], detector: str, out_dir: str, batch_size: int = 64,
          threads: int | None = None):
    return (p
            | "Shards" >> beam.Create(list(shards))
            | "Spread" >> beam.Reshuffle()
            | "Embed" >> beam.ParDo(EmbedShardDoFn(detector, out_dir, batch_size, threads)))


def run_embedding(shards: Sequence[str], detector: str, out_dir: str, *, batch_size: int = 64,
                  runner: str = "DirectRunner", workers: int = 1, threads: int | None = None,
                  pipeline_args: Sequence[str] = ()) -> None:
    """Run the embedding pipeline to completion (raises on failure). ``pipeline_args`` are extra
    Beam options (``--project``, ``--temp_location``... for Dataflow), see pipelines/options.py."""
    from wit_builder.detector import read_detector
    read_detector(detector)  # fail early with a clear error, before any worker starts
    with beam.Pipeline(options=make_options(runner, workers, pipeline_args)) as p:
        build(p, shards, detector, out_dir, batch_size, threads)
