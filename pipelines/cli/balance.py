"""`wit balance`: re-balance the matched pairs of a `wit collect` run with another per-query cap, or
re-balance the final pool: what survived `wit download` and `wit dedup run`."""
from __future__ import annotations

import argparse

BEAM_OPTIONS = True
DESCRIPTION = (
    "Re-balance with MetaCLIP's rule (a query keeps its pairs with probability min(1, t/count)). "
    "--matched OUT: OUT/matched/ of a finished `wit collect` run with another cap (and/or seed), "
    "without re-reading or re-matching any input; writes OUT2/balanced/, counts.parquet, stats.json, "
    "balance.png. --pool IMAGES [--dedup DEDUP]: the final pool, counting only the samples that "
    "downloaded (and that dedup kept), so the final shards hold about t samples per head query of "
    "images that exist; writes OUT2/decisions.parquet (every download row, kept = survived and drawn), "
    "counts.parquet, stats.json, balance.png; then run `wit shards --images IMAGES --dedup OUT2`. "
    "See docs/collect.md.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.cli.beam_args import add_beam_arguments
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--matched", help="output directory of `wit collect` (holds matched/)")
    source.add_argument("--pool", metavar="IMAGES",
                        help="output directory of `wit download`: re-balance the samples that downloaded")
    parser.add_argument("--per-query-cap", type=int, required=True,
                        help="cap t: each query keeps its pairs with probability min(1, t/count)")
    parser.add_argument("--out", required=True, help="output directory (not the --matched, --pool or --dedup one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the balancing draw")
    parser.add_argument("--queries", default=None,
                        help="queries file (or a collect run's counts.parquet) for query names (default with "
                             "--matched: the collect run's counts.parquet; with --pool: no names)")
    pool = parser.add_argument_group("--pool only")
    pool.add_argument("--dedup", default=None,
                      help="`wit dedup run` output folder (or its decisions.parquet, or `dedup overlap "
                           "--drop-overlapping`'s): samples with kept=False are lost before counting")
    pool.add_argument("--not-in-dedup", choices=("drop", "keep"), default=None,
                      help="a downloaded sample that --dedup's decisions do not list: drop it (dedup never "
                           "vouched for it; the default), or keep it as `wit shards` does")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run with other options in --out")
    add_beam_arguments(parser)


def print_pool_summary(stats: dict, out: str) -> None:
    if stats.get("resumed"):
        print(f"{out}: already complete (same inputs and options); nothing to do")
    lost = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in stats["losses"].items() if v) or "none"
    print(f"{out}: {stats['rows']:,} samples in the pool, {stats['survivors']:,} survived (lost: {lost}); "
          f"{stats['queries_matched']:,} queries ({stats['head_queries']:,} above the cap; "
          f"{stats['pool_head_queries']:,} were before the losses); {stats['kept']:,} kept "
          f"(expected {stats['expected_size']:,.1f} ± {stats['expected_size_sd']:,.1f})")
    print(f"  next: wit shards --images {stats['config']['pool']} --dedup {out} --out SHARDS")


def run(args) -> int:
    from pipelines import balance
    from pipelines.beam_options import quiet_beam_import_warning
    from wit_builder.balance import BalanceConfig
    from wit_builder.core import WitError
    quiet_beam_import_warning()
    cap = BalanceConfig(args.per_query_cap, args.seed)
    if args.matched is not None:
        if args.dedup is not None or args.not_in_dedup is not None:
            raise WitError("--dedup and --not-in-dedup go with --pool (matched pairs have not been downloaded)")
        from pipelines.cli.collect import print_summary
        cfg = balance.RebalanceConfig(matched=args.matched, out=args.out, queries=args.queries, balance=cap)
        stats = balance.run(cfg, args.beam, overwrite=args.overwrite)
        print_summary(stats, args.out)
        return 0
    from pipelines.cli.checks import nothing_usable
    if args.not_in_dedup is not None and args.dedup is None:
        raise WitError("--not-in-dedup goes with --dedup")
    cfg = balance.PoolConfig(images=args.pool, out=args.out, balance=cap, dedup=args.dedup,
                             not_in_dedup=args.not_in_dedup or "drop", queries=args.queries)
    stats = balance.run_pool(cfg, args.beam, overwrite=args.overwrite)
    print_pool_summary(stats, args.out)
    if not stats["kept"]:
        lost = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in stats["losses"].items() if v) or "no samples"
        hint = ("; samples without query ids were not matched by `wit collect`"
                if stats["losses"].get("no_query_ids") else "")
        why = (f"none of the {stats['survivors']:,} surviving samples passed the draw" if stats["survivors"]
               else f"no sample of the pool survived ({lost}{hint})")
        raise nothing_usable(why, f"{args.out}/stats.json")
    return 0
