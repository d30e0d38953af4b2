"""One value for how a stage runs on Beam: :class:`BeamOptions`.

Every Beam stage takes ``--runner`` and ``--workers`` itself; any other ``--flag[=value]`` on its
command line that the stage does not know is handed to Beam unchanged as a pipeline option, so
the standard Dataflow/Flink/Spark options work as documented by Beam::

    wit queries ... --runner DataflowRunner --project P --region europe-west1 \
        --temp_location gs://B/tmp --setup_file ./setup.py --max_num_workers 100

The command line (``pipelines/cli``) builds one ``BeamOptions`` from those words; every stage's
driver ``run(config, beam)`` takes it and nothing else about the runner.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

__all__ = ["BeamOptions", "make_options", "run_pipeline", "quiet_beam_import_warning", "check_beam_args",
           "check_runner"]

LOCAL_RUNNERS = ("DirectRunner", "direct", "FnApiRunner")


@dataclass(frozen=True)
class BeamOptions:
    """The Beam runner, the local worker processes (DirectRunner only) and any other Beam
    pipeline options as command-line words (``("--project=P", "--region=R")``)."""
    runner: str = "DirectRunner"
    workers: int = 1
    args: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        return self.runner in LOCAL_RUNNERS


def make_options(beam: BeamOptions, **overrides):
    """PipelineOptions for ``beam``. On the DirectRunner, more than one worker (``workers`` > 1,
    or the user's ``--direct_num_workers``) runs in Beam's multi-processing mode with that many
    processes (FnApiRunner underneath). The user's own Beam options come last, so they win over
    what ``workers`` implies (``--direct_num_workers=4``), except a running mode that shares one
    process among several workers: refused (a WitError), because Beam's DirectRunner in that
    mode loses elements between a stage and its GroupByKey (measured with Beam 2.78 on
    ``wit dedup run``'s search: 201 of 1,080,588 rows in one run of two, other runs other counts;
    the same pipeline in multi_processing mode never did)."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    from wit_builder.core import WitError
    args = [f"--runner={beam.runner}"]
    if not beam.is_local:
        return PipelineOptions([*args, *beam.args], **overrides)
    workers = max(1, int(beam.workers))
    args.append(f"--direct_num_workers={workers}")
    if workers > 1:
        args.append("--direct_running_mode=multi_processing")
    options = PipelineOptions([*args, *beam.args], **overrides)
    direct = options.view_as(DirectOptions)
    count = direct.direct_num_workers
    if count == 0:                      # Beam's "one per core"
        import multiprocessing
        count = multiprocessing.cpu_count()
    if count > 1 and direct.direct_running_mode != "multi_processing":
        given = any(a.split("=", 1)[0] == "--direct_running_mode" for a in beam.args)
        if given:
            raise WitError(f"--direct_running_mode={direct.direct_running_mode} with {count} workers: "
                           "Beam's DirectRunner can lose elements when several workers share one "
                           "process; use multi_processing (the default for --workers N) or 1 worker")
        options = PipelineOptions([*args, *beam.args, "--direct_running_mode=multi_processing"],
                                  **overrides)
    return options


def _beam_parser():
    """The argument parser Beam itself builds from every PipelineOptions class it knows."""
    import argparse

    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser
    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    classes: dict[str, type] = {}
    todo = list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        if classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls) is cls:
            todo.extend(cls.__subclasses__())
    for cls in classes.values():
        try:
            cls._add_argparse_args(parser)  # the hook Beam's own option parsing calls
        except argparse.ArgumentError:
            pass  # an option two classes define (Beam keeps the first one as well)
    return parser


def _closest(word: str, names) -> str:
    import difflib
    norm = {n.replace("-", "_"): n for n in names}
    hits = difflib.get_close_matches(word.replace("-", "_"), list(norm), n=1, cutoff=0.6)
    return f" (did you mean {norm[hits[0]]}?)" if hits else ""


def check_beam_args(words, own_options=()) -> None:
    """Refuse words that no Beam PipelineOptions class knows (Beam itself logs "Discarding
    unparseable args" and runs with the defaults): one WitError naming the word and the closest
    option among Beam's and ``own_options`` (the stage's own flags)."""
    from wit_builder.core import WitError
    words = list(words)
    if not words:
        return
    parser = _beam_parser()
    _, unknown = parser.parse_known_args(words)
    if not unknown:
        return
    bad = unknown[0]
    if not bad.startswith("-"):
        raise WitError(f"unexpected argument {bad!r}")
    name = bad.split("=", 1)[0]
    known = [s for a in parser._actions for s in a.option_strings] + list(own_options)
    raise WitError(f"unknown option {name}{_closest(name, known)}; Beam does not know it either "
                   "(see --help for this stage's options)")


def check_runner(runner: str) -> None:
    """Refuse a runner name Beam cannot create (one line, closest known name)."""
    from apache_beam.options.pipeline_options import StandardOptions

    from wit_builder.core import WitError
    if "." in runner:  # a dotted path to a runner class: Beam imports it
        return
    names = list(StandardOptions.KNOWN_RUNNER_NAMES)
    lower = {n.lower() for n in names}
    if runner.lower() in lower or runner.lower() + "runner" in lower or runner in LOCAL_RUNNERS:
        return
    raise WitError(f"unknown runner {runner!r}{_closest(runner, names)}; known: {', '.join(names)}")


class _NoWitErrorTracebacks(logging.Filter):
    """Beam logs a step's exception with its traceback before re-raising it; a WitError is a
    user-facing one-line error, reported by the command line, so its traceback is not logged."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and type(exc).__name__ == "WitError") and "WitError: " not in record.getMessage()


_WIT_ERROR = re.compile(r"WitError: (.+?)(?: \[while running |$)", re.M)


def run_pipeline(apply, beam_options: BeamOptions) -> None:
    """Build a pipeline with ``apply(p)`` and run it to completion. A WitError raised in a step
    reaches the caller as the same one-line WitError, without Beam's step annotation and also
    from worker processes (where Beam re-raises it as a RuntimeError holding its text)."""
    import apache_beam as beam

    from wit_builder.core import WitError
    quiet = _NoWitErrorTracebacks()
    loggers = [logging.getLogger(name) for name in ("apache_beam", "apache_beam.runners.common")]
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        with beam.Pipeline(options=make_options(beam_options)) as p:
            apply(p)
    except WitError as exc:
        raise WitError(str(exc).split(" [while running ", 1)[0].splitlines()[0]) from None
    except Exception as exc:
        found = _WIT_ERROR.search(str(exc))
        if found is None:
            raise
        raise WitError(found.group(1).strip()) from None
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


def quiet_beam_import_warning() -> None:
    """Beam logs "apitools not found ..." on importing its GCS support even when it is not used."""
    logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())
