"""``wit dedup run`` / ``overlap``: the embedding as a Beam pipeline (``EmbedShards``); for ``run``
the neighbour search, clustering and keep rule are Beam pipelines too (``pipelines/dedup_cells.py``).

One element per shard: ``EmbedShardDoFn`` loads the detector once per DoFn instance in
``setup`` (not per element or bundle), streams the shard's tar, decodes and resizes each image,
runs the model on batches of ``batch_size`` images, and writes the shard's embeddings atomically
to ``OUT_DIR/<shard>-<hash>.parquet`` (see :mod:`wit_builder.embeddings`). A shard whose file already
exists with the same detector fingerprint and the same shard content (size, mtime, the hash of
its first and last 64 KiB: `wit_builder.core.content_key`) is not recomputed, so a re-run resumes. Parallelism is
per shard (img2dataset shards hold ~10k images each); a ``Reshuffle`` spreads shards over workers.
Skipped records are counted in Beam metrics (namespace ``wit.dedup``) and in the files' ``status``.
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder.dedup import DedupConfig, run_dedup
from wit_builder.overlap import OverlapConfig
from wit_builder.overlap import run_overlap as overlap


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
        from wit_builder.embeddings import embed_shard_to_file
        result = embed_shard_to_file(self.embedder, shard, self.out_dir, self.batch_size)
        for status, n in result["counts"].items():
            Metrics.counter("wit.dedup", "images_" + status).inc(n)
        Metrics.counter("wit.dedup", "shards_reused" if result["reused"] else "shards_embedded").inc()
        yield result


class EmbedShards(beam.PTransform):
    """Shard paths -> one result dict per shard, once its embeddings file is written."""

    def __init__(self, detector: str, out_dir: str, batch_size: int = 64, threads: int | None = None):
        super().__init__()
        self.detector, self.out_dir, self.batch_size, self.threads = detector, out_dir, batch_size, threads

    def expand(self, shards):
        return (shards
                | "Spread" >> beam.Reshuffle()
                | "Embed" >> beam.ParDo(EmbedShardDoFn(self.detector, self.out_dir, self.batch_size, self.threads)))


def embed_set(shards: Sequence[str], detector: str, emb_dir: str, *, batch_size: int = 64,
              threads: int | None = None, beam_options: BeamOptions = BeamOptions()) -> list[str]:
    """Embed shards with the Beam pipeline; returns the embedding files (one per shard)."""
    from wit_builder.core import WitError, exists
    from wit_builder.embeddings import embedding_path
    from wit_builder.detector import read_detector
    read_detector(detector)  # fail early with a clear error, before any worker starts
    run_pipeline(lambda p: (p | "Shards" >> beam.Create(list(shards))
                            | "EmbedShards" >> EmbedShards(detector, emb_dir, batch_size, threads)), beam_options)
    files = [embedding_path(emb_dir, s) for s in shards]
    missing = [f for f in files if not exists(f)]
    if missing:
        raise WitError(f"embedding pipeline did not produce {missing[:3]}")
    return files


def _embedder(cfg, beam_options: BeamOptions):
    return lambda shards, emb_dir: embed_set(shards, cfg.detector, emb_dir, batch_size=cfg.batch_size,
                                             threads=cfg.threads, beam_options=beam_options)


def run(cfg: DedupConfig, beam_options: BeamOptions = BeamOptions()) -> dict:
    """``wit dedup run``: embedding, neighbours, clusters and the keep rule, all on Beam
    (:func:`wit_builder.dedup.run_dedup`); returns the stats written to OUT/stats.json."""
    from pipelines.dedup_cells import cluster_files
    return run_dedup(cfg, _embedder(cfg, beam_options),
                     lambda files, out, params: cluster_files(list(files), out, params, beam_options))


def run_overlap(cfg: OverlapConfig, beam_options: BeamOptions = BeamOptions()) -> dict:
    """``wit dedup overlap`` with the embedding on Beam."""
    return overlap(cfg, _embedder(cfg, beam_options))
