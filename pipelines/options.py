"""Beam pipeline options shared by every `wit` stage that runs a Beam pipeline.

Every such stage takes ``--runner`` and ``--workers`` itself; any other ``--flag[=value]`` on its
command line that the stage does not know is handed to Beam unchanged as a pipeline option, so
the standard Dataflow/Flink/Spark options work as documented by Beam::

    wit queries ... --runner DataflowRunner --project P --region europe-west1 \
        --temp_location gs://B/tmp --setup_file ./setup.py --max_num_workers 100

A stage module opts in by setting ``BEAM_OPTIONS = True``; the ``wit`` dispatcher then parses
with ``parse_known_args`` and stores the leftovers in ``args.pipeline_args``.
"""
from __future__ import annotations

import argparse
from typing import Sequence

__all__ = ["add_beam_arguments", "make_options", "check_pipeline_args"]


def add_beam_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "Beam runner",
        "Any other --option is passed to Beam as a pipeline option (e.g. --project, --region, "
        "--temp_location, --setup_file, --max_num_workers for Dataflow).")
    g.add_argument("--runner", default="DirectRunner",
                   help="Beam runner: DirectRunner (local), DataflowRunner, FlinkRunner, SparkRunner, ...")
    g.add_argument("--workers", type=int, default=1,
                   help="DirectRunner only: worker processes (multi-processing when > 1)")


def check_pipeline_args(extra: Sequence[str], prog: str) -> list[str]:
    """Leftover command-line words must look like Beam options (``--name`` or ``--name=value``)."""
    from wit_builder.common import WitError
    extra = list(extra)
    if extra and not extra[0].startswith("--"):
        raise WitError(f"unexpected argument {extra[0]!r} (see `{prog} --help`)")
    return extra


def make_options(runner: str = "DirectRunner", workers: int = 1, pipeline_args: Sequence[str] = (),
                 **overrides):
    """PipelineOptions for ``runner``. On the DirectRunner, ``workers`` > 1 selects Beam's
    multi-processing mode with that many processes (FnApiRunner underneath)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    args = [f"--runner={runner}", *pipeline_args]
    if runner in ("DirectRunner", "direct", "FnApiRunner"):
        workers = max(1, int(workers))
        args.append(f"--direct_num_workers={workers}")
        if workers > 1:
            args.append("--direct_running_mode=multi_processing")
    return PipelineOptions(args, **overrides)
