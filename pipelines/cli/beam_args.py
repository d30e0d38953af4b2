"""The Beam runner options every Beam stage's command line shares, turned into one BeamOptions."""
from __future__ import annotations

import argparse
from typing import Sequence

from pipelines.beam_options import BeamOptions
from wit_builder.core import WitError


def add_beam_arguments(parser: argparse.ArgumentParser, default_runner: str = "DirectRunner",
                       runner_help: str | None = None) -> None:
    g = parser.add_argument_group(
        "Beam runner",
        "Any other --option is passed to Beam as a pipeline option (e.g. --project, --region, "
        "--temp_location, --setup_file, --max_num_workers for Dataflow).")
    g.add_argument("--runner", default=default_runner, help=runner_help or
                   "Beam runner: DirectRunner (local), DataflowRunner, FlinkRunner, SparkRunner, ...")
    g.add_argument("--workers", type=int, default=1,
                   help="DirectRunner only: worker processes (multi-processing when > 1)")


def beam_from_args(args: argparse.Namespace, extra: Sequence[str], prog: str) -> BeamOptions:
    """BeamOptions from ``--runner``, ``--workers`` and the words the stage does not know, which
    must look like Beam options (``--name`` or ``--name=value``)."""
    extra = list(extra)
    if extra and not extra[0].startswith("--"):
        raise WitError(f"unexpected argument {extra[0]!r} (see `{prog} --help`)")
    return BeamOptions(runner=getattr(args, "runner", "DirectRunner"), workers=getattr(args, "workers", 1),
                       args=tuple(extra))
