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

__all__ = ["BeamOptions", "make_options", "run_pipeline", "quiet_beam_import_warning"]

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
    """PipelineOptions for ``beam``. On the DirectRunner, ``workers`` > 1 selects Beam's
    multi-processing mode with that many processes (FnApiRunner underneath)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    args = [f"--runner={beam.runner}", *beam.args]
    if beam.is_local:
        workers = max(1, int(beam.workers))
        args.append(f"--direct_num_workers={workers}")
        if workers > 1:
            args.append("--direct_running_mode=multi_processing")
    return PipelineOptions(args, **overrides)


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
