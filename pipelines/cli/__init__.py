"""The `wit` command line: one subcommand per pipeline stage.

Each stage lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so
``wit --help`` stays fast and one broken optional dependency cannot take down
every other stage.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipelines.cli.helpfmt import HelpFormatter
from wit_builder.core import WitError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home otherwise

# name -> (module, one-line help). Data flows top to bottom.
COMMANDS: dict[str, tuple[str, str]] = {
    "queries": ("pipelines.cli.queries", "build the 500k query list from Wikipedia dumps, pageviews and WordNet"),
    "collect": ("pipelines.cli.collect", "extract (image url, alt text) pairs from WAT/WARC/tables, match queries, balance"),
    "balance": ("pipelines.cli.balance", "re-balance matched pairs with another per-query cap"),
    "download": ("pipelines.cli.download", "download balanced pairs with img2dataset (SSRF-safe, resumable)"),
    "dedup": ("pipelines.cli.dedup", "learned near-duplicate detector: train, calibrate, run, overlap"),
    "shards": ("pipelines.cli.shards", "write the final deduplicated WebDataset + Parquet shards"),
    "tokenizer": ("pipelines.cli.tokenizer", "train a CLIP-format BPE merges file from captions"),
    "train": ("pipelines.cli.train", "train a CLIP model on WebDataset shards"),
    "eval": ("pipelines.cli.eval", "zero-shot classification, retrieval and linear-probe evaluation"),
    "predict": ("pipelines.cli.predict", "label probabilities for one image, like CLIP's README example"),
    "export": ("pipelines.cli.export", "export a trained model as a folder OpenCLIP loads (--openclip)"),
    "demo": ("pipelines.cli.demo", "end-to-end demo on a bundled simulated web: raw data to a trained model"),
}


DISTRIBUTION = "wit-clip-recipe"  # the PyPI name (`wit` itself is another project's); the command is `wit`


def version() -> str:
    """The installed distribution's version (pyproject.toml), or "unknown" when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wit",
        description="wit: CLIP's WebImageText recipe (queries -> pairs -> balance -> images -> "
        "dedup -> shards) and a CLIP trainer. Run `wit COMMAND --help` for each stage.",
    )
    parser.add_argument("--version", action="version", version=f"wit {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "--version":
        parser.parse_args(argv[:1])  # prints the version and exits 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"wit {name}: not available in this build ({module_name} missing)", file=sys.stderr)
            return 2
        raise
    sub = argparse.ArgumentParser(prog=f"wit {name}", description=getattr(module, "DESCRIPTION", help_),
                                  formatter_class=HelpFormatter)
    module.add_arguments(sub)
    beam_stage = getattr(module, "BEAM_OPTIONS", False)
    if beam_stage:
        # unknown --options go to Beam as pipeline options (pipelines/cli/beam_args.py)
        args, extra = sub.parse_known_args(argv[1:])
    else:
        args = sub.parse_args(argv[1:])
    try:
        if beam_stage:
            from pipelines.cli.beam_args import beam_from_args
            args.beam = beam_from_args(args, extra, f"wit {name}", sub)
        return int(module.run(args) or 0)
    except WitError as exc:
        print(f"wit {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wit {name}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130

