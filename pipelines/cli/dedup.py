"""`wit dedup train|calibrate|run|overlap` — thin CLI over wit_builder.detector and wit_builder.dedup."""
from __future__ import annotations

import argparse
import json
import os

from pipelines.cli.beam_args import add_beam_arguments
from wit_builder.core import WitError

# `wit dedup run` and `wit dedup overlap` embed with a Beam pipeline: unknown --options are
# passed to Beam as pipeline options (pipelines/beam_options.py); train and calibrate reject them.
BEAM_OPTIONS = True

DESCRIPTION = (
    "Learned near-duplicate detector (CLIP paper, appendix C). Typical flow: "
    "`wit dedup train --shards 'IMAGES/{00000..00009}.tar' --out detector.pt --arch tiny`, then "
    "`wit dedup calibrate --detector detector.pt --shards ...`, then "
    "`wit dedup run --shards ... --detector detector.pt --out DEDUP` (writes DEDUP/decisions.parquet "
    "for `wit shards`), and `wit dedup overlap --eval EVAL --shards ... --detector "
    "detector.pt --out OVERLAP` for the eval-set contamination report. See docs/dedup.md.")

SHARDS_HELP = ("webdataset shards written by `wit download`: brace patterns like 'IMAGES/{00000..00009}.tar', "
               "globs, single .tar files or a directory of .tar files (repeatable)")


def _layers(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected four comma-separated ints like 3,4,6,3, got {text!r}")
    if len(out) != 4:
        raise argparse.ArgumentTypeError(f"expected four block counts, got {text!r}")
    return out


def _common_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images per model call when embedding")
    p.add_argument("--threads", type=int, default=None, help="torch/faiss threads per worker (None: torch's choice)")
    p.add_argument("--exact-below", type=int, default=100_000,
                   help="below this many images the search is exact over all pairs; at or above it, "
                   "approximate (run: cells; overlap: a faiss IndexIVFFlat)")
    p.add_argument("--nprobe", type=int, default=32, help="IVF lists searched per query (overlap's IVF index only)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity at/above which two images are near-duplicates "
                        "(None: the calibrated threshold stored in the detector file)")
    add_beam_arguments(p)  # --runner, --workers (one shard per worker at a time); other --options go to Beam


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.cli.helpfmt import HelpFormatter as fmt
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = sub.add_parser("train", formatter_class=fmt, help="train the detector on images sampled from the shards",
                       description="Train the near-duplicate detector with InfoNCE (temperature 0.07) on "
                       "(image, augmented copy) pairs sampled from the shards; other images of the batch are "
                       "the negatives. A held-out split (by key hash) is left for `calibrate`. Re-running the "
                       "same command resumes from --out.")
    t.add_argument("--shards", nargs="+", action="extend", required=True, help=SHARDS_HELP)
    t.add_argument("--out", required=True, help="detector file to write (rewritten atomically at each checkpoint)")
    t.add_argument("--steps", type=int, default=2000, help="total optimisation steps")
    t.add_argument("--batch-size", type=int, default=64, help="images per step (each gives one positive pair)")
    t.add_argument("--arch", default="resnet50", choices=["resnet50", "small", "tiny"],
                   help="preset: resnet50 = the paper's (slow on CPU); small; tiny (CPU in minutes)")
    t.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate, linear warmup then cosine "
                   "decay (None: per arch, resnet50 3e-4, small 1e-3, tiny 2e-3)")
    t.add_argument("--image-size", type=int, default=None, help="model input side in pixels (None: per arch, 224/96/64)")
    t.add_argument("--embed-dim", type=int, default=256, help="embedding dimension")
    t.add_argument("--width", type=int, default=None, help="base channel width (overrides the arch preset)")
    t.add_argument("--layers", type=_layers, default=None, help="blocks per stage, e.g. 3,4,6,3 (overrides the preset)")
    t.add_argument("--pool-grid", type=int, default=None,
                   help="head: 1 = global average pooling (ResNet's), G = average-pool to a GxG grid and "
                        "concatenate (keeps the coarse layout; None: per arch, resnet50 1, small/tiny 2)")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    t.add_argument("--holdout", type=float, default=0.1, help="fraction of images (by key hash) kept out for calibration")
    t.add_argument("--seed", type=int, default=0, help="seed for initialisation, sampling and augmentations")
    t.add_argument("--checkpoint-every", type=int, default=100, help="rewrite --out every this many steps")
    t.add_argument("--overwrite", "--restart", dest="restart", action="store_true",
                   help="ignore an existing --out instead of resuming from it")
    t.add_argument("--threads", type=int, default=None, help="torch threads (None: torch's choice; on a busy "
                   "shared machine 1 is often much faster, as waiting OpenMP threads spin)")
    t.add_argument("--device", default="auto", help="torch device: auto (a CUDA GPU if torch sees one, else the "
                   "CPU), cpu, cuda, cuda:1, ...")

    c = sub.add_parser("calibrate", formatter_class=fmt, help="pick the similarity threshold for a target precision",
                       description="Make one augmented copy of each held-out image, score every copy against every "
                       "original, and store in the detector file the lowest similarity threshold whose precision "
                       "is still >= --target-precision.")
    c.add_argument("--detector", required=True, help="detector file from `wit dedup train` (rewritten atomically)")
    c.add_argument("--shards", nargs="+", action="extend", required=True, help=SHARDS_HELP)
    c.add_argument("--target-precision", type=float, default=0.99, help="precision the threshold must reach")
    c.add_argument("--max-images", type=int, default=1000, help="held-out images used (pairs grow with its square)")
    c.add_argument("--all-images", action="store_true",
                   help="use every image of --shards, not only the training run's held-out split "
                        "(for shards the detector was not trained on)")
    c.add_argument("--seed", type=int, default=0, help="seed for image choice and augmentations")
    c.add_argument("--batch-size", type=int, default=64, help="images per model call")
    c.add_argument("--threads", type=int, default=None, help="torch threads (None: torch's choice)")
    c.add_argument("--device", default="auto", help="torch device (see `wit dedup train --help`)")

    r = sub.add_parser("run", formatter_class=fmt, help="deduplicate shards: embed, neighbours, clusters, keep rule",
                       description="Embed every image, then search near-duplicates spread over the workers (Beam): "
                       "a coarse quantizer trained on a bounded sample puts each image in its nearest cell and "
                       "probes it in the nearby ones, each cell is searched exactly (big cells split into blocks); "
                       "below --exact-below images one cell holds all (exact search). Pairs with similarity >= "
                       "threshold are linked; in each linked group the image with the most pixels (then the "
                       "smallest key) is kept and the members similar to it are dropped (a member only chained to "
                       "it is kept). Writes OUT/decisions.parquet, OUT/stats.json and OUT/embeddings/ (reused on "
                       "re-runs). The search shares the local cores among the workers, each matrix product on one "
                       "thread (the same similarities for any number of workers).")
    r.add_argument("--shards", nargs="+", action="extend", required=True, help=SHARDS_HELP)
    r.add_argument("--detector", required=True, help="calibrated detector file")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--k", type=int, default=16, help="links kept per image (bigger groups are still joined through "
                   "chains of links and their members checked against the kept image)")
    _common_embed(r)
    r.add_argument("--cell-size", type=int, default=2048, help="target images per search cell (at or above "
                   "--exact-below images)")
    r.add_argument("--probes", type=int, default=3, help="cells each image is searched in: its own and up to "
                   "PROBES-1 nearby ones")
    r.add_argument("--margin", type=float, default=0.1, help="a nearby cell is probed when its centroid's cosine "
                   "similarity is within MARGIN of the image's own cell's")
    r.add_argument("--max-block", type=int, default=8192, help="a cell estimated above this many images is split "
                   "into blocks searched pairwise (bounds each worker's memory)")
    from pipelines.cli.checks import add_skip_share
    add_skip_share(r, 0.05, "the images (undecodable, empty or too small)")

    o = sub.add_parser("overlap", formatter_class=fmt, help="eval-set contamination report (CLIP section 5)",
                       description="For each evaluation set, find the examples with a near-duplicate in the training "
                       "shards; writes OUT/summary.json (overlap fraction per set), OUT/overlap.parquet, and "
                       "OUT/<set>.overlap.txt / OUT/<set>.clean.txt id lists so accuracy can be reported on each.")
    o.add_argument("--eval", nargs="+", action="extend", required=True, dest="evals",
                   help="evaluation set: [NAME=]PATH where PATH is shards (pattern, .tar or a dir of .tar) or a "
                        "directory of image files (ids are then paths relative to it); repeatable")
    o.add_argument("--shards", nargs="+", action="extend", required=True, help="training " + SHARDS_HELP)
    o.add_argument("--detector", required=True, help="calibrated detector file")
    o.add_argument("--out", required=True, help="output directory")
    o.add_argument("--drop-overlapping", action="store_true",
                   help="also write OUT/decisions.parquet marking training images that near-duplicate any eval "
                        "example kept=False (for `wit shards`, like a `run` output)")
    o.add_argument("--decisions", default=None,
                   help="with --drop-overlapping: a `wit dedup run` output (dir or decisions.parquet) to combine with")
    o.add_argument("--train-embeddings", default=None,
                   help="directory with the training shards' embeddings to reuse, e.g. DEDUP/embeddings")
    _common_embed(o)
    a = o.add_argument_group("accuracy on All / Overlap / Clean (CLIP section 5)")
    a.add_argument("--checkpoint", default=None,
                   help="trainer checkpoint: also report its zero-shot top-1/top-5 on each eval set's "
                        "All / Overlap / Clean subsets (eval sets must be labelled: class folders, or "
                        "shards with --label-field)")
    a.add_argument("--classes", default=None, help="class names file or 'imagenet' (see `wit eval`)")
    a.add_argument("--templates", default=None, help="prompt templates file or 'imagenet' (see `wit eval`)")
    a.add_argument("--wnid-map", default=None, help="wnids in class order for wnid folders (see `wit eval`)")
    a.add_argument("--label-field", default="label", help="json field with the class index or name (shards)")
    a.add_argument("--device", default="auto", help="torch device for --checkpoint (auto, cpu, cuda, cuda:N)")


def _overlap_accuracy(args: argparse.Namespace, summary: dict) -> None:
    """Zero-shot hits of --checkpoint per eval set, split by the overlap lists just written."""
    from trainer.evaluate import labelled_set_hits
    from wit_builder.detector import resolve_device
    from wit_builder.overlap import add_accuracy, parse_eval_arg
    device = str(resolve_device(args.device))
    for name, path in (parse_eval_arg(e) for e in args.evals):
        hits, skipped = labelled_set_hits(args.checkpoint, path, args.classes, args.templates,
                                          args.label_field, args.wnid_map, args.batch_size, device)
        summary["sets"][name]["accuracy"] = add_accuracy(args.out, name, hits, skipped)


def _check_outcome(stats: dict, out: str, warn_share: float) -> None:
    """Warn when many images were not embedded; an error when none was."""
    from pipelines.cli.checks import nothing_usable, top, warn_skipped
    images, embedded = int(stats.get("images", 0)), int(stats.get("embedded", 0))
    skipped = stats.get("skipped") or {}
    warn_skipped("dedup", images - embedded, images, warn_share, "images", top(skipped))
    if not embedded:
        raise nothing_usable(f"none of {images:,} images could be decoded and embedded (skipped: {top(skipped)})",
                             f"{out.rstrip('/')}/stats.json")


def run(args: argparse.Namespace) -> int:
    extra = list(args.beam.args)
    if extra and args.action in ("train", "calibrate"):
        raise WitError(f"unrecognized arguments for `wit dedup {args.action}`: {' '.join(extra)} "
                       f"(see `wit dedup {args.action} --help`)")
    if args.action == "train":
        from wit_builder.core import expand_shards
        from wit_builder.detector import detector_summary
        from wit_builder.detector_train import DetectorTrainConfig, train_detector
        cfg = DetectorTrainConfig(steps=args.steps, batch_size=args.batch_size, arch=args.arch, lr=args.lr,
                                  image_size=args.image_size, embed_dim=args.embed_dim, width=args.width,
                                  layers=tuple(args.layers) if args.layers else None, pool_grid=args.pool_grid,
                                  seed=args.seed, holdout=args.holdout, checkpoint_every=args.checkpoint_every,
                                  weight_decay=args.weight_decay)
        res = train_detector(expand_shards(args.shards), args.out, cfg, restart=args.restart, threads=args.threads,
                             device=args.device)
        hist = res["loss_history"]
        tail = hist[-20:]
        print(json.dumps({"out": args.out, "step": res["step"], "resumed_from": res["resumed_from"],
                          "training_images": res["images"], "skipped_images": res.get("skipped_images", 0),
                          "final_loss": (sum(tail) / len(tail)) if tail else None,
                          "config": detector_summary(args.out)["config"]}, indent=2))
        return 0
    if args.action == "calibrate":
        from wit_builder.core import expand_shards
        from wit_builder.detector_train import CalibrationConfig, calibrate_detector
        cfg = CalibrationConfig(target_precision=args.target_precision, max_images=args.max_images,
                                use_all=args.all_images, seed=args.seed, batch_size=args.batch_size)
        res = calibrate_detector(args.detector, expand_shards(args.shards), cfg, threads=args.threads,
                                 device=args.device)
        print(json.dumps(res, indent=2))
        return 0
    if args.action == "run":
        from pipelines import dedup
        cfg = dedup.DedupConfig(shards=tuple(args.shards), detector=args.detector, out=args.out,
                                threshold=args.threshold, k=args.k, exact_below=args.exact_below, nprobe=args.nprobe,
                                batch_size=args.batch_size, threads=args.threads, cell_size=args.cell_size,
                                probes=args.probes, margin=args.margin, max_block=args.max_block)
        stats = dedup.run(cfg, args.beam)
        print(json.dumps(stats, indent=2))
        _check_outcome(stats, args.out, args.warn_skip_share)
        return 0
    if args.action == "overlap":
        from pipelines import dedup
        if args.decisions and not args.drop_overlapping:
            raise WitError("--decisions only makes sense with --drop-overlapping")
        if (args.classes or args.templates or args.wnid_map) and not args.checkpoint:
            raise WitError("--classes/--templates/--wnid-map are for the accuracy report: give --checkpoint")
        if args.checkpoint and not os.path.isfile(args.checkpoint):
            raise WitError(f"--checkpoint {args.checkpoint}: not found")
        cfg = dedup.OverlapConfig(evals=tuple(args.evals), shards=tuple(args.shards), detector=args.detector,
                                  out=args.out, threshold=args.threshold, drop_overlapping=args.drop_overlapping,
                                  decisions=args.decisions, exact_below=args.exact_below, nprobe=args.nprobe,
                                  batch_size=args.batch_size, threads=args.threads,
                                  train_embeddings=args.train_embeddings)
        summary = dedup.run_overlap(cfg, args.beam)
        if args.checkpoint:
            _overlap_accuracy(args, summary)
        print(json.dumps(summary, indent=2))
        return 0
    raise WitError(f"unknown action {args.action!r}")
