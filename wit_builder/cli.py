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

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home otherwise

# name -> (module, one-line help). Data flows top to bottom.
COMMANDS: dict[str, tuple[str, str]] = {
    "queries": ("queries.cli", "build the 500k query list from Wikipedia dumps, pageviews and WordNet"),
    "collect": ("wit_builder.collect_cli", "extract (image url, alt text) pairs from WAT/WARC/tables, match queries, balance"),
    "balance": ("wit_builder.balance_cli", "re-balance matched pairs with another per-query cap"),
    "download": ("wit_builder.download_cli", "download balanced pairs with img2dataset (SSRF-safe, resumable)"),
    "dedup": ("wit_builder.dedup_cli", "learned near-duplicate detector: train, calibrate, run, overlap"),
    "shards": ("wit_builder.shards_cli", "write the final deduplicated WebDataset + Parquet shards"),
    "tokenizer": ("trainer.tokenizer_cli", "train a CLIP-format BPE merges file from captions"),
    "train": ("trainer.train_cli", "train a CLIP model on WebDataset shards"),
    "eval": ("trainer.eval_cli", "zero-shot classification, retrieval and linear-probe evaluation"),
    "predict": ("trainer.predict_cli", "label probabilities for one image, like CLIP's README example"),
    "demo": ("wit_builder.demo", "end-to-end demo on a bundled simulated web: raw data to a trained model"),
}


class WitError(Exception):
    """A user-facing error: printed as one clear line, never a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wit",
        description="wit: CLIP's WebImageText recipe (queries -> pairs -> balance -> images -> "
        "dedup -> shards) and a CLIP trainer. Run `wit COMMAND --help` for each stage.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
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
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.add_arguments(sub)
    if getattr(module, "BEAM_OPTIONS", False):
        # unknown --options go to Beam as pipeline options (pipelines/options.py)
        args, extra = sub.parse_known_args(argv[1:])
        args.pipeline_args = extra
    else:
        args = sub.parse_args(argv[1:])
    try:
        if getattr(module, "BEAM_OPTIONS", False):
            from pipelines.options import check_pipeline_args
            args.pipeline_args = check_pipeline_args(args.pipeline_args, f"wit {name}")
        return int(module.run(args) or 0)
    except WitError as exc:
        print(f"wit {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wit {name}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m wit_builder.cli`: run the imported module's main, so that WitError raised by the
    # stages (imported from wit_builder.cli) is the class caught there, not __main__.WitError
    from wit_builder.cli import main as _main
    sys.exit(_main())
