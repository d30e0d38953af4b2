"""`wit shards`: the final deduplicated WebDataset + Parquet shards (OpenCLIP-ready)."""
from __future__ import annotations

import argparse

from pipelines.cli.beam_args import add_beam_arguments
from pipelines.cli.checks import add_skip_share

BEAM_OPTIONS = True
DESCRIPTION = (
    "Write the final training shards from `wit download`'s IMAGES: successful images only, minus "
    "those `wit dedup run` marked kept=False (--dedup), in key order, as SHARDS/NNNNN.tar "
    "(KEY.jpg, KEY.txt, KEY.json) + NNNNN.parquet + NNNNN_stats.json (img2dataset's per-shard stats, "
    "read by DataComp's resharder), with sizes.json and manifest.json (sha256 of every file). Train "
    "with OpenCLIP's --train-data 'SHARDS/{00000..N}.tar'. See docs/download.md.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="`wit download` output folder (IMAGES)")
    parser.add_argument("--dedup", default=None,
                        help="`wit dedup run` (or `wit balance --pool`) output folder, or its decisions.parquet: "
                             "images with kept=False are dropped. Read a row group at a time on the workers, "
                             "never whole. Without it every successful image is kept")
    parser.add_argument("--out", required=True, help="output folder SHARDS (local path or gs://...)")
    parser.add_argument("--samples-per-shard", type=int, default=10_000,
                        help="samples per output tar (every tar but the last holds exactly this many)")
    parser.add_argument("--shard-digits", type=int, default=5,
                        help="digits of the output shards' names: 5 = 00000.tar; 8 = 00000000.tar, the names "
                             "DataComp's resharder expects by default (--shard-format '{:08d}')")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="use the finished download shards even if `wit download` has not finished all")
    add_skip_share(parser, 0.05, "the downloaded images (missing from their tar, empty or unreadable)")
    add_beam_arguments(parser)


def run(args) -> int:
    from pipelines import shards
    from wit_builder.shards import ShardsConfig
    cfg = ShardsConfig(args.images, args.out, dedup=args.dedup, samples_per_shard=args.samples_per_shard,
                       allow_incomplete=args.allow_incomplete, shard_digits=args.shard_digits)
    m = shards.run(cfg, args.beam)
    t = m["totals"]
    print(f"wrote {t['samples']} samples in {t['shards']} shards ({t['tar_bytes'] / 1e6:.1f} MB) to {args.out}")
    print(f"  download rows {t['download_rows']}, failed downloads skipped {t['download_failed']}")
    if t["missing_in_tar"]:
        print(f"  successful rows whose image is missing from the tar: {t['missing_in_tar']}")
    if t["bad_image"] or t["truncated_tar"]:
        print(f"  images skipped as empty or unreadable: {t['bad_image']}; download tars cut short: "
              f"{t['truncated_tar']}")
    if args.dedup:
        print(f"  dropped by dedup {t['dropped_by_dedup']} (undecodable {t['dropped_undecodable']}), "
              f"not in the decisions (kept) {t['not_in_dedup']}")
    print(f"  OpenCLIP: --train-data '{m['train_data']}' --train-num-samples {t['samples']}")
    from pipelines.cli.checks import warn_skipped
    successes = t["download_rows"] - t["download_failed"]
    warn_skipped("shards", t["missing_in_tar"] + t["bad_image"], successes, args.warn_skip_share,
                 "downloaded images", f"missing in tar {t['missing_in_tar']}, unreadable {t['bad_image']}")
    return 0
