"""`wit eval`: zero-shot classification, image-text retrieval and linear-probe evaluation."""
from __future__ import annotations

import argparse
import os

from wit_builder.core import WitError, atomic_write_json

DESCRIPTION = ("Evaluate a trainer checkpoint: zero-shot top-1/top-5 with prompt ensembling "
               "(image folder, ImageNet's wnid folders or labelled shards; OpenAI's 1000 ImageNet "
               "class names and 80 templates ship as '--classes imagenet --templates imagenet'), "
               "image<->text retrieval recall@1/5/10 with one or several captions per image, "
               "and the paper's linear probe (L-BFGS logistic regression, L2 strength swept "
               "over 1e-6..1e6 on a validation split). Metrics go to one JSON file.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="metrics JSON to write")
    z = parser.add_argument_group("zero-shot classification")
    z.add_argument("--zeroshot-dir", help="image folder: one subfolder per class")
    z.add_argument("--zeroshot-shards", help="labelled WebDataset shards (label in the .json)")
    z.add_argument("--classes", help="class names, one per line, or 'imagenet' (OpenAI's 1000 "
                                     "ImageNet names, in wnid order; default: the folder names)")
    z.add_argument("--templates", help="prompt templates with '{}', one per line, or 'imagenet' "
                                       "(OpenAI's 80; default: 8 of them)")
    z.add_argument("--wnid-map", help="wnids in class order, one per line (first field; ImageNet's "
                                      "LOC_synset_mapping.txt works): maps wnid folders when not "
                                      "all classes are present (default: sorted folder order)")
    z.add_argument("--label-field", default="label",
                   help="json field holding the class index or name in labelled shards")
    z.add_argument("--cache-dir", default=None,
                   help="directory to cache built zero-shot classifiers in")
    r = parser.add_argument_group("retrieval")
    r.add_argument("--retrieval-data", help="held-out shards ('SHARDS/{00000..00001}.tar'; a "
                                            "sample's .json 'captions' list, else its .txt) or a "
                                            ".jsonl/.json file of {\"image\": PATH, \"captions\": [...]}")
    p = parser.add_argument_group("linear probe")
    p.add_argument("--linear-probe-train", help="labelled image folder or shards to fit on")
    p.add_argument("--linear-probe-test", help="labelled image folder or shards to test on")
    p.add_argument("--linear-probe-val", help="labelled image folder or shards to choose the L2 "
                                              "strength on (default: 20%% of the training set)")
    p.add_argument("--probe-sweep", default="grid", choices=["grid", "binary"],
                   help="L2 strengths tried: grid = the paper's 96 log-spaced values in 1e-6..1e6, "
                        "binary = the paper's parametric binary search over that range (~15 fits)")
    p.add_argument("--probe-features", default="paper", choices=["paper", "embedding"],
                   help="paper = image tower output before the projection (a ViT's ln_post class "
                        "token; a ResNet's attention-pool output), embedding = the normalised "
                        "joint-space embedding")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda, cuda:N")


def run(args) -> int:
    import json

    from wit_builder.detector import resolve_device
    args.device = str(resolve_device(args.device))

    from trainer.evaluate import EvalRequest, evaluate_checkpoint
    for path in (args.zeroshot_dir, args.linear_probe_train, args.linear_probe_test,
                 args.linear_probe_val, args.wnid_map):
        if path and not os.path.exists(path) and "{" not in path and "::" not in path:
            raise WitError(f"not found: {path}")
    metrics = evaluate_checkpoint(args.checkpoint, EvalRequest(
        zeroshot_dir=args.zeroshot_dir, zeroshot_shards=args.zeroshot_shards,
        classes=args.classes, templates=args.templates, wnid_map=args.wnid_map,
        label_field=args.label_field,
        cache_dir=args.cache_dir, retrieval_data=args.retrieval_data,
        linear_probe_train=args.linear_probe_train, linear_probe_test=args.linear_probe_test,
        linear_probe_val=args.linear_probe_val, probe_sweep=args.probe_sweep,
        probe_features=args.probe_features,
        batch_size=args.batch_size, device=args.device))
    atomic_write_json(args.out, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "checkpoint"}, indent=1))
    return 0
