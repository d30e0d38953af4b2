"""`wit predict`: label probabilities for one image, like CLIP's README example."""
from __future__ import annotations

import argparse
import json

from wit_builder.core import WitError

DESCRIPTION = ("Zero-shot label probabilities for one image: softmax over the labels of the "
               "model's scaled cosine similarities (CLIP README's example).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pt)")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--labels", required=True,
                        help="comma-separated labels, e.g. 'a dog,a cat,a diagram'")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of lines")


def run(args) -> int:
    from PIL import Image

    from wit_builder.detector import resolve_device
    args.device = str(resolve_device(args.device))

    from trainer.api import label_probs, load
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise WitError("--labels: give at least one label")
    try:
        with Image.open(args.image) as im:
            im.load()
            image = im.copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise WitError(f"{args.image}: cannot read image ({exc})") from None
    model, preprocess, tokenizer = load(args.checkpoint, device=args.device)
    probs = label_probs(model, preprocess, tokenizer, image, labels, device=args.device)
    if args.json:
        print(json.dumps(dict(zip(labels, probs))))
    else:
        width = max(len(label) for label in labels)
        for label, p in sorted(zip(labels, probs), key=lambda t: -t[1]):
            print(f"{label:<{width}}  {p:.4f}")
    return 0
