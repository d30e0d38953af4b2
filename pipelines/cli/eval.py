"""`wit eval`: zero-shot classification, image-text retrieval and linear-probe evaluation."""
from __future__ import annotations

import argparse
import os

from wit_builder.core import WitError, atomic_write_json

DESCRIPTION = ("Evaluate a trainer checkpoint: zero-shot top-1/top-5 with prompt ensembling "
               "(image folder or labelled shards), image<->text retrieval recall@1/5/10 on "
               "held-out shards, and an L-BFGS logistic-regression linear probe on frozen "
               "image features. Metrics go to one JSON file.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    z = parser.add_argument_group("zero-shot classification")
    z.add_argument("--zeroshot-dir", help="image folder: one subfolder per class")
    z.add_argument("--zeroshot-shards", help="labelled WebDataset shards (label in the .json)")
    z.add_argument("--classes", help="class names, one per line (default: the folder names)")
    z.add_argument("--templates", help="prompt templates with '{}', one per line "
                                       "(default: 8 of CLIP's ImageNet templates)")
    z.add_argument("--label-field", default="label",
                   help="json field holding the class index or name in labelled shards")
    z.add_argument("--cache-dir", default=None,
                   help="directory to cache built zero-shot classifiers in")
    r = parser.add_argument_group("retrieval")
    r.add_argument("--retrieval-data", help="held-out shards ('SHARDS/{00000..00001}.tar')")
    p = parser.add_argument_group("linear probe")
    p.add_argument("--linear-probe-train", help="labelled image folder or shards to fit on")
    p.add_argument("--linear-probe-test", help="labelled image folder or shards to test on")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda, cuda:N")


def run(args) -> int:
    import json

    from wit_builder.detector import resolve_device
    args.device = str(resolve_device(args.device))

    from trainer.evaluate import EvalRequest, evaluate_checkpoint
    for path in (args.zeroshot_dir, args.linear_probe_train, args.linear_probe_test):
        if path and not os.path.exists(path) and "{" not in path and "::" not in path:
            raise WitError(f"not found: {path}")
    metrics = evaluate_checkpoint(args.checkpoint, EvalRequest(
        zeroshot_dir=args.zeroshot_dir, zeroshot_shards=args.zeroshot_shards,
        classes=args.classes, templates=args.templates, label_field=args.label_field,
        cache_dir=args.cache_dir, retrieval_data=args.retrieval_data,
        linear_probe_train=args.linear_probe_train, linear_probe_test=args.linear_probe_test,
        batch_size=args.batch_size, device=args.device))
    atomic_write_json(args.out, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "checkpoint"}, indent=1))
    return 0
