"""The Beam runner options every Beam stage's command line shares, turned into one BeamOptions."""
from __future__ import annotations

import argparse
from typing import Sequence

from pipelines.beam_options import BeamOptions, check_beam_args, check_runner
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


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of ``parser`` and of its sub-commands' parsers."""
    out = []
    for action in parser._actions:
        out.extend(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.extend(_option_strings(sub))
    return out


def beam_from_args(args: argparse.Namespace, extra: Sequence[str], prog: str,
                   parser: argparse.ArgumentParser | None = None) -> BeamOptions:
    """BeamOptions from ``--runner``, ``--workers`` and the words the stage does not know, which
    must be options some Beam PipelineOptions class knows (anything else: one line naming the
    closest option among Beam's and the stage's own, from ``parser``). A misspelt runner is one
    line too; ``local`` is left to the stage that offers it (`wit download`)."""
    from pipelines.beam_options import quiet_beam_import_warning
    quiet_beam_import_warning()
    extra = list(extra)
    if extra and not extra[0].startswith("--"):
        raise WitError(f"unexpected argument {extra[0]!r} (see `{prog} --help`)")
    runner = getattr(args, "runner", "DirectRunner")
    if not (runner == "local" and parser is not None and parser.get_default("runner") == "local"):
        check_runner(runner)
    check_beam_args(extra, _option_strings(parser) if parser is not None else ())
    return BeamOptions(runner=runner, workers=getattr(args, "workers", 1), args=tuple(extra))
