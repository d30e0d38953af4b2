"""`wit demo`: parse the command line into a DemoConfig and run the demo driver (pipelines/demo.py)."""
from __future__ import annotations

import argparse
import os
import sys

from pipelines.demo import DemoConfig, run_demo
from wit_builder.core import WitError

DESCRIPTION = (
    "End-to-end demo on a bundled simulated web: generate a small Wikipedia dump, pageviews and "
    "Common Crawl-style WARC/WAT files, then run queries -> collect/balance -> download (from a "
    "loopback server on 127.0.0.1) -> dedup -> shards -> tokenizer -> train a small CLIP on the "
    "CPU -> zero-shot evaluation -> DIR/report.md and DIR/report.html. Re-running the same "
    "command resumes (finished stages are skipped); --force redoes everything. See docs/demo.md.")

def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig(out="")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run folder: raw data, every stage's output, report.md/report.html")
    parser.add_argument("--overwrite", "--force", dest="force", action="store_true",
                        help="redo every stage (by default finished stages are skipped)")
    parser.add_argument("--scenes", type=int, default=d.scenes,
                        help="size of the simulated web: English query-matching images (plus "
                             "problem cases: foreign, unmatched, duplicates, broken, ...); "
                             "default 8000, or 16000 where the CPU has AMX and CLIP trains in "
                             "bf16 with 4x the steps (a larger web pays only with more steps)")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="seed of the generated data, balancing, detector and training")
    parser.add_argument("--train-steps", type=int, default=d.train_steps,
                        help="CLIP optimisation steps (the learning-rate schedule spans them); "
                             "default 600, or 2400 where the CPU has AMX and CLIP trains in bf16 "
                             "(a step ~4x cheaper: the demo stays within its ~15 minutes; with "
                             "twice the web, shapes 96.8%% in distribution and 72.8%% shifted, "
                             "against 72%% / 41%% at 600 steps)")
    parser.add_argument("--train-minutes", type=float, default=None, metavar="M",
                        help="instead of --train-steps: as many steps as fit in M minutes, from "
                             "a step time measured on this machine before training")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="CLIP training batch")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW, cosine)")
    parser.add_argument("--model", default=d.model,
                        help="trainer model config (tiny-rn learns shapes fastest on a CPU)")
    parser.add_argument("--image-size", type=int, default=d.image_size,
                        help="side of the downloaded images (the calibration images match it)")
    parser.add_argument("--train-image-size", type=int, default=None,
                        help="CLIP input side (default: the model config's; tiny-rn 32)")
    parser.add_argument("--detector-steps", type=int, default=d.detector_steps,
                        help="training steps of the near-duplicate detector")
    parser.add_argument("--per-query-cap", type=int, default=None,
                        help="balancing cap (default: the simulated web's recommendation, "
                             "max(3, scenes // 60))")
    parser.add_argument("--wordnet", choices=("auto", "on", "off"), default=d.wordnet,
                        help="WordNet part of the query list: auto = when installed (e.g. Debian's "
                             "wordnet-base; never downloaded)")
    parser.add_argument("--heldout-per-class", type=int, default=d.heldout_per_class,
                        help="held-out zero-shot images per class and set (8 shapes, 8 colours; "
                             "3 shifted shape sets)")
    parser.add_argument("--baseline-steps", type=int, default=d.baseline_steps,
                        help="training steps (of 128 images) of the supervised baseline (the robustness "
                             "comparison; default half the CLIP steps, 300 with --train-minutes); 0 "
                             "skips it")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=d.precision,
                        help="CLIP training precision: auto = bf16 autocast where the CPU has native "
                             "bf16 (amx_bf16 or avx512_bf16), else fp32")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch threads for training and the detector (CLIP's data loader "
                             "runs in the training process when the threads take every core, "
                             "else in one more process)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        default=argparse.SUPPRESS,
                        help="no progress bars (the summary lines remain)")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    for name in ("scenes", "train_steps", "batch_size", "image_size", "detector_steps",
                 "heldout_per_class", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise WitError(f"--{name.replace('_', '-')} must be at least 1")
    if args.train_minutes is not None and args.train_minutes <= 0:
        raise WitError("--train-minutes must be positive")
    if args.baseline_steps is not None and args.baseline_steps < 0:
        raise WitError("--baseline-steps must be at least 0")
    if args.per_query_cap is not None and args.per_query_cap < 1:
        raise WitError("--per-query-cap must be at least 1")
    return DemoConfig(out=args.out, seed=args.seed, scenes=args.scenes, train_steps=args.train_steps,
                      train_minutes=args.train_minutes, batch_size=args.batch_size, lr=args.lr,
                      model=args.model, image_size=args.image_size,
                      train_image_size=args.train_image_size, detector_steps=args.detector_steps,
                      per_query_cap=args.per_query_cap, wordnet=args.wordnet,
                      heldout_per_class=args.heldout_per_class, baseline_steps=args.baseline_steps,
                      threads=args.threads, precision=args.precision,
                      force=args.force, progress=getattr(args, "progress", True))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(f"wit demo: {os.path.abspath(cfg.out)} ({cfg.web_scenes():,} scenes, {cfg.model}, "
          f"{'%g minutes' % cfg.train_minutes if cfg.train_minutes else f'{cfg.clip_steps()} steps'})",
          flush=True)
    state = run_demo(cfg)
    z = state["zeroshot"]
    results = ", ".join(f"{name} {100 * r['top1']:.1f}% (chance {100 * r['chance']:.1f}%)"
                        for name, r in z.items() if r.get("top1") is not None)
    t = state["total"]
    print(f"wit demo: zero-shot top-1: {results}")
    rob = state.get("robustness") or {}
    for name, m in rob.get("models", {}).items():
        if m.get("shifted_mean") is not None:
            print(f"wit demo: {name}: shapes in distribution {100 * m['in_distribution']:.1f}%, "
                  f"shifted {100 * m['shifted_mean']:.1f}% (gap {100 * m['gap']:.1f} points)")
    print(f"wit demo: report {os.path.join(os.path.abspath(cfg.out), 'report.html')} "
          f"(and report.md); {t['seconds']:.0f} s, cpu {t['cpu_seconds']:.0f} s")
    sys.stdout.flush()
    return 0
