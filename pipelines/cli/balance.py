"""`wit balance`: re-balance the matched pairs of a `wit collect` run with another per-query cap."""
from __future__ import annotations

import argparse

BEAM_OPTIONS = True
DESCRIPTION = (
    "Re-balance OUT/matched/ of a finished `wit collect` run with another per-query cap (and/or seed), "
    "without re-reading or re-matching any input. Writes OUT2/balanced/, OUT2/counts.parquet, "
    "OUT2/stats.json and OUT2/balance.png.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.cli.beam_args import add_beam_arguments
    parser.add_argument("--matched", required=True, help="output directory of `wit collect` (holds matched/)")
    parser.add_argument("--per-query-cap", type=int, required=True,
                        help="cap t: each query keeps its pairs with probability min(1, t/count)")
    parser.add_argument("--out", required=True, help="output directory (not the --matched one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the balancing draw")
    parser.add_argument("--queries", default=None,
                        help="queries file for query names (default: the collect run's counts.parquet)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run with other options in --out")
    add_beam_arguments(parser)


def run(args) -> int:
    from pipelines import balance
    from pipelines.beam_options import quiet_beam_import_warning
    from pipelines.cli.collect import print_summary
    from wit_builder.balance import BalanceConfig
    quiet_beam_import_warning()
    cfg = balance.RebalanceConfig(matched=args.matched, out=args.out, queries=args.queries,
                                  balance=BalanceConfig(args.per_query_cap, args.seed))
    stats = balance.run(cfg, args.beam, overwrite=args.overwrite)
    print_summary(stats, args.out)
    return 0
