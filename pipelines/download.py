"""``wit download``: the driver ``run`` and the Beam pipelines that plan the download shards and
download images with img2dataset, one element per shard.

``PlanDownload`` (a Beam runner's planner; the local runner plans in memory by the same rules,
``wit_builder.download_plan``) reads the input parquets by row group, merges the pairs that share
an image URL into one sample (``CombinePerKey``: a shuffle, never a dict on the launcher), sends
each URL to a range of its hash (``GroupByKey``), ranks each range's samples from the range's
offset (a side input of the ranges' sizes) and groups them by shard (``GroupByKey``), so that
every shard holds at most ``samples_per_shard`` samples, in the same order as in memory. Each
shard's samples are written atomically to ``IMAGES/_wit/input/NNNNN.parquet``, then the
manifest ``_wit/parts.json``.

The downloads (``wit_builder.download``): ``DownloadShardDoFn`` builds img2dataset's own
``Downloader`` (resizer, thread pool, hashing) with our atomic ``WitShardWriter`` once per DoFn
instance in ``setup``, and installs the SSRF guard there for the worker process. ``process``
turns its shard's parquet into img2dataset's arrow task with img2dataset's ``Reader`` and
downloads it: ``NNNNN.tar``/``.parquet`` are renamed into place when complete, then
``NNNNN_stats.json`` marks the shard done. An already-complete shard is skipped, so a retried
element (Dataflow retries failed bundles) or a re-run resumes. A shard whose download fails
raises, so the runner retries it. ``Reshuffle`` spreads shards over workers; counts go to Beam
metrics (namespace ``wit.download``).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.beam_options import BeamOptions, run_pipeline
from wit_builder import records
from wit_builder.core import atomic_write_json
from wit_builder.core import filesystem, remove_temporaries
from wit_builder.download import DownloadConfig, absolute_path, prepare, summarize
from wit_builder.download_plan import PlanJob
from wit_builder.download_local import run_local, run_lock
from wit_builder.download_layout import WORK

LOCAL = BeamOptions(runner="local")   # img2dataset's own multiprocessing, no Beam


# --------------------------------------------------------------------------------------------
# planning: pairs -> one sample per URL -> shards of at most samples_per_shard samples
# --------------------------------------------------------------------------------------------
class MergePairs(beam.CombineFn):
    """The pairs of one URL -> its ``Sample`` (caption of the smallest uid, union of query ids)."""

    def create_accumulator(self):
        from wit_builder.download_plan import Sample
        return Sample()

    def add_input(self, sample, pair):
        return sample.add(*pair)

    def merge_accumulators(self, samples):
        samples = iter(samples)
        first = next(samples)
        for other in samples:
            first.merge(other)
        return first

    def extract_output(self, sample):
        return sample


def _read_unit(unit, columns, url_col="url", caption_col="text"):
    from wit_builder.download_plan import read_pairs
    yield from read_pairs(unit[0], unit[1], columns, url_col, caption_col)


def _rank_partition(item, offsets, samples_per_shard):
    """(partition, [(url, Sample)]) -> (shard, (row, sample row)) in sample order."""
    from wit_builder.download_plan import cut, sample_order
    part, samples = item
    rank = offsets[part]
    for url, sample in sorted(samples, key=lambda kv: sample_order(kv[0])):
        shard, row = cut(rank, samples_per_shard)
        yield shard, (row, sample.row(url))
        rank += 1


def _write_shard(item, out):
    from wit_builder.download_plan import write_part
    shard, rows = item
    rows = sorted(rows, key=lambda r: r[0])
    if [r[0] for r in rows] != list(range(len(rows))):
        raise RuntimeError(f"shard {shard}: rows {[r[0] for r in rows][:10]}... are not 0..{len(rows) - 1}")
    return write_part(out, shard, [r[1] for r in rows])


class PlanDownload(beam.PTransform):
    """Begin -> ``job.out``/_wit/input/NNNNN.parquet (one per shard) and ``_wit/parts.json``; the
    same files as ``wit_builder.download_plan.plan_in_memory``."""

    def __init__(self, job: PlanJob):
        super().__init__()
        self.job = job

    def expand(self, pbegin):
        from wit_builder.download_plan import partition_offsets, range_partition, write_manifest
        job = self.job
        samples = (pbegin
                   | "Units" >> beam.Create(list(job.units))
                   | "Spread" >> beam.Reshuffle()
                   | "ReadPairs" >> beam.FlatMap(_read_unit, list(job.columns), job.url_col, job.caption_col)
                   | "OnePerUrl" >> beam.CombinePerKey(MergePairs()))
        ranges = samples | "ToRange" >> beam.Map(lambda kv, n: (range_partition(kv[0], n), kv), job.partitions)
        offsets = (ranges
                   | "One" >> beam.Map(lambda kv: (kv[0], 1))
                   | "RangeSizes" >> beam.CombinePerKey(sum)
                   | "AllSizes" >> beam.combiners.ToList()
                   | "Offsets" >> beam.Map(partition_offsets))
        return (ranges
                | "GroupRanges" >> beam.GroupByKey()
                | "Rank" >> beam.FlatMap(_rank_partition, beam.pvalue.AsSingleton(offsets), job.samples_per_shard)
                | "GroupShards" >> beam.GroupByKey()
                | "WriteShards" >> beam.Map(_write_shard, job.out)
                | "AllShards" >> beam.combiners.ToList()
                | "Manifest" >> beam.Map(lambda parts: write_manifest(job.out, job.digest, parts)))


def beam_planner(beam_options: BeamOptions):
    """A planner for ``wit_builder.download.prepare`` that runs :class:`PlanDownload` on Beam."""
    def plan(job: PlanJob) -> None:
        run_pipeline(lambda p: p | "PlanDownload" >> PlanDownload(job), beam_options)
    return plan


# --------------------------------------------------------------------------------------------
# downloading: one element per shard
# --------------------------------------------------------------------------------------------
class DownloadShardDoFn(beam.DoFn):
    def __init__(self, plan_json: str):
        super().__init__()
        self.plan_json = plan_json  # a Plan as JSON: small, picklable, no live objects
        self.plan = None
        self.downloader = None
        self.guard = None
        self.tmp = None

    def setup(self):
        from wit_builder.download import plan_from_json, make_downloader
        from wit_builder.netsafety import guarded
        self.plan = plan_from_json(self.plan_json)
        self.guard = guarded(self.plan.options.policy())
        self.guard.__enter__()
        self.downloader = make_downloader(self.plan)
        self.tmp = tempfile.mkdtemp(prefix="wit-download-")

    def process(self, element: Sequence):
        from wit_builder.download import InputShard, download_one_shard, shard_name, summarize_shard
        shard = InputShard(*element)
        if not download_one_shard(self.plan, shard, self.downloader, self.tmp):
            raise RuntimeError(f"shard {shard_name(shard.shard_id)} ({shard.path}) failed; "
                               "see the worker log for img2dataset's error")
        stats = summarize_shard(self.plan.out, shard)
        Metrics.counter("wit.download", "shards").inc()
        for status, n in stats.items():
            Metrics.counter("wit.download", "images_" + status).inc(n)
        yield shard.shard_id, stats

    def teardown(self):
        if self.guard is not None:
            self.guard.__exit__(None, None, None)
            self.guard = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


class DownloadShards(beam.PTransform):
    """(shard_id, path, rows) elements -> (shard_id, {status: count}) once each shard is on disk."""

    def __init__(self, plan_json: str):
        super().__init__()
        self.plan_json = plan_json

    def expand(self, shards):
        return (shards
                | "Spread" >> beam.Reshuffle()
                | "Download" >> beam.ParDo(DownloadShardDoFn(self.plan_json)))


def build(p, plan) -> beam.PCollection:
    from wit_builder.download import plan_to_json
    elements = [(s.shard_id, s.path, s.rows) for s in plan.todo()]
    return (p
            | "InputShards" >> beam.Create(elements)
            | "DownloadShards" >> DownloadShards(plan_to_json(plan)))


def run_downloads(plan, beam_options: BeamOptions) -> None:
    """Run the download pipeline for ``plan`` (from ``wit_builder.download.prepare``) to completion."""
    run_pipeline(lambda p: build(p, plan), beam_options)


def run(cfg: DownloadConfig, beam_options: BeamOptions = LOCAL, *, quiet: bool = True, progress: bool = True) -> dict:
    """``wit download``: download ``cfg.pairs`` (dir/glob/list of balanced parquets) into ``cfg.out``;
    return the summary.

    ``beam_options.runner == "local"`` plans in memory and runs img2dataset's ``download()`` (with
    wit's shard pool, which retries a shard whose worker died); any other runner is a Beam runner
    for ``PlanDownload`` and ``DownloadShards`` (one element per shard). With ``quiet``,
    img2dataset's own output goes to ``out/_wit/img2dataset.log`` (local runner). Safe to
    re-run after any interruption: complete shards are kept, the rest redone.
    """
    pairs, opts = cfg.pairs, cfg.options
    started = time.time()
    out = absolute_path(cfg.out)
    fs, root = filesystem(out)
    fs.makedirs(f"{root}/{WORK}", exist_ok=True)
    with run_lock(out):
        planner = None if beam_options.runner == "local" else beam_planner(beam_options)
        plan = prepare(pairs, out, opts, planner)
        records.begin(out, "download")
        # what a killed run left: img2dataset's _tmp/, our writers' partial shards
        remove_temporaries(out, folders="_tmp")
        remove_temporaries(f"{out}/{WORK}", folders="partial")
        if plan.todo():
            if beam_options.runner == "local":
                run_local(plan, quiet, progress)
            else:
                run_downloads(plan, beam_options)
        summary = summarize(out, plan.shards, opts.output_format)
        summary["pairs"] = plan.pairs
        summary["empty_inputs_skipped"] = plan.empty_inputs
        summary["shards_already_done"] = len(plan.done)
        summary["seconds"] = round(time.time() - started, 3)
        this_run = sum(s.rows for s in plan.todo())  # rows of the shards this run downloaded
        summary["images_this_run"] = this_run
        summary["images_per_s"] = round(this_run / summary["seconds"], 2) if summary["seconds"] else None
        atomic_write_json(f"{out}/{WORK}/summary.json", summary)
        if not summary.get("incomplete_shards"):  # a finished run only; a re-run finishes the rest
            records.complete_folder(out, "download", inputs=[s.path for s in plan.inputs],
                                    skip=(f"{WORK}/", "_tmp"),
                                    counts={"images": summary.get("success", 0), "rows": summary.get("samples", 0)})
    return summary


__all__ = ["MergePairs", "PlanDownload", "beam_planner", "DownloadShardDoFn", "DownloadShards", "build",
           "run_downloads", "run", "LOCAL"]
