"""Evaluation data sources, retrieval recall@K and the L-BFGS linear probe.

Sources of labelled images (for zero-shot and linear probes):

* an image folder: one subfolder per class (``DIR/<class>/*.jpg``); class names come from the
  classes file (folder names must match a class, ``_`` read as a space) or, without one, from
  the sorted folder names;
* WebDataset shards: the label is a field of each sample's ``.json`` (``label_field``), either
  a class index or a class name.

Retrieval (image <-> text recall@1/5/10) uses held-out shards: each sample's own caption is the
one correct text for its image and vice versa.
"""
from __future__ import annotations

import glob
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from wit_builder.core import WitError

__all__ = ["iter_folder", "iter_shards", "batched", "encode_images", "retrieval_metrics",
           "evaluate_retrieval", "linear_probe", "labelled_source", "IMAGE_SUFFIXES",
           "EvalRequest", "evaluate_checkpoint"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def _norm_name(name: str) -> str:
    return name.replace("_", " ").strip().lower()


def folder_classes(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise WitError(f"image folder not found: {root}")
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not subdirs:
        raise WitError(f"{root}: no class subfolders (expected {root}/<class>/<image>)")
    return subdirs


def iter_folder(root: str, transform, classnames: list[str] | None,
                skipped: Counter) -> Iterator[tuple]:
    """(image tensor, label index) for every readable image under ``root/<class>/``."""
    from PIL import Image
    subdirs = folder_classes(root)
    if classnames is None:
        index = {d: i for i, d in enumerate(subdirs)}
    else:
        lookup = {_norm_name(c): i for i, c in enumerate(classnames)}
        index = {}
        for d in subdirs:
            if _norm_name(d) not in lookup:
                raise WitError(f"{root}/{d}: folder does not match any class in the classes file")
            index[d] = lookup[_norm_name(d)]
    for d in subdirs:
        for path in sorted(glob.glob(os.path.join(root, d, "*"))):
            if not path.lower().endswith(IMAGE_SUFFIXES):
                continue
            try:
                with Image.open(path) as im:
                    im.load()
                    x = transform(im)
            except Exception:
                skipped["bad_image"] += 1
                continue
            yield x, index[d]


def iter_shards(urls: str, transform, skipped: Counter, label_field: str | None = None,
                classnames: list[str] | None = None) -> Iterator[tuple]:
    """(image tensor, caption, label or None) from WebDataset shards, in order, eval transform."""
    from trainer.data import decode_sample, expand_urls, iter_samples
    lookup = {_norm_name(c): i for i, c in enumerate(classnames or [])}
    shards = expand_urls(urls)
    missing = [s for s in shards if "://" not in s and not os.path.exists(s)]
    if missing:
        raise WitError(f"{len(missing)} shard(s) not found, e.g. {missing[0]}")
    for sample in iter_samples(shards, skipped):
        try:
            image, caption = decode_sample(sample, transform)
        except ValueError as exc:
            skipped[str(exc)] += 1
            continue
        label = None
        if label_field:
            try:
                value = json.loads(sample["json"])[label_field]
            except (KeyError, ValueError, TypeError):
                skipped["missing_label"] += 1
                continue
            if isinstance(value, str) and not value.lstrip("-").isdigit():
                if _norm_name(value) not in lookup:
                    skipped["unknown_label"] += 1
                    continue
                label = lookup[_norm_name(value)]
            else:
                label = int(value)
                if classnames is not None and not 0 <= label < len(classnames):
                    skipped["unknown_label"] += 1
                    continue
        yield image, caption, label


def labelled_source(source: str, transform, skipped: Counter, classnames=None,
                    label_field: str = "label") -> Iterator[tuple]:
    """(image, label) from an image folder or from shards (``.tar`` / brace patterns)."""
    if os.path.isdir(source):
        yield from iter_folder(source, transform, classnames, skipped)
    else:
        for image, _, label in iter_shards(source, transform, skipped, label_field, classnames):
            yield image, label


def batched(items, batch_size: int):
    """Group (tensor, x, ...) tuples into (stacked tensor, list, ...) batches."""
    import torch
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) == batch_size:
            cols = list(zip(*buf))
            yield (torch.stack(cols[0]), *[list(c) for c in cols[1:]])
            buf = []
    if buf:
        cols = list(zip(*buf))
        yield (torch.stack(cols[0]), *[list(c) for c in cols[1:]])


def encode_images(model, images, device="cpu"):
    import torch
    import torch.nn.functional as F
    with torch.no_grad():
        return F.normalize(model.encode_image(images.to(device)).float(), dim=-1).cpu()


def encode_texts(model, tokens, device="cpu"):
    import torch
    import torch.nn.functional as F
    with torch.no_grad():
        return F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1).cpu()


def retrieval_metrics(image_features, text_features, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K both ways when image i's correct text is text i (features L2-normalised)."""
    import torch
    sims = image_features @ text_features.T
    n = sims.shape[0]
    target = torch.arange(n)
    out = {}
    for direction, s in (("image_to_text", sims), ("text_to_image", sims.T)):
        # rank of the correct item = number of items scoring strictly higher
        correct = s[target, target]
        rank = (s > correct[:, None]).sum(dim=1)
        for k in ks:
            out[f"{direction}_R@{k}"] = float((rank < k).float().mean())
    out["num_pairs"] = n
    return out


def evaluate_retrieval(model, tokenizer, transform, urls: str, device="cpu",
                       batch_size: int = 64) -> dict:
    import torch
    from tqdm import tqdm
    skipped: Counter = Counter()
    img_feats, txt_feats = [], []
    for images, captions, _ in tqdm(batched(iter_shards(urls, transform, skipped), batch_size),
                                    desc="retrieval", unit=" batches"):
        img_feats.append(encode_images(model, images, device))
        txt_feats.append(encode_texts(model, tokenizer(captions), device))
    if not img_feats:
        raise WitError(f"retrieval: no readable samples in {urls}")
    metrics = retrieval_metrics(torch.cat(img_feats), torch.cat(txt_feats))
    metrics["skipped"] = dict(skipped)
    return metrics


def extract_features(model, batches, device="cpu"):
    import torch
    feats, labels = [], []
    for images, labs in batches:
        feats.append(encode_images(model, images, device))
        labels.extend(labs)
    if not feats:
        raise WitError("linear probe: no images")
    return torch.cat(feats), torch.tensor(labels, dtype=torch.long)


def _fit_logreg(x, y, num_classes: int, l2: float, max_iter: int = 500):
    """Multinomial logistic regression, mean cross-entropy + l2/2 * ||W||^2, by L-BFGS."""
    import torch
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-8,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int | None = None,
                 l2_grid=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0), val_fraction: float = 0.2,
                 seed: int = 0) -> dict:
    """The paper's linear probe: L-BFGS logistic regression on frozen features; the L2 strength
    is chosen on a held-out split of the training set, then refit on all of it."""
    import torch
    x, tx = train_x.double(), test_x.double()
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    n = x.shape[0]
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    n_val = max(1, int(n * val_fraction)) if n >= 5 else 0
    val_idx, fit_idx = torch.tensor(perm[:n_val]), torch.tensor(perm[n_val:])
    best_l2, best_acc = l2_grid[len(l2_grid) // 2], -1.0
    if n_val:
        for l2 in l2_grid:
            w, b = _fit_logreg(x[fit_idx], train_y[fit_idx], num_classes, l2)
            acc = float(((x[val_idx] @ w + b).argmax(1) == train_y[val_idx]).double().mean())
            if acc > best_acc:
                best_l2, best_acc = l2, acc
    w, b = _fit_logreg(x, train_y, num_classes, best_l2)
    logits = tx @ w + b
    from trainer.zeroshot import topk_accuracy
    return {**topk_accuracy(logits, test_y), "l2": best_l2, "val_top1": best_acc,
            "num_train": n, "num_test": int(tx.shape[0])}


@dataclass(frozen=True)
class EvalRequest:
    """Which evaluations :func:`evaluate_checkpoint` runs, on what data (``wit eval``'s flags)."""
    zeroshot_dir: str | None = None        # image folder, one subfolder per class
    zeroshot_shards: str | None = None     # labelled shards (label in each sample's .json)
    classes: str | None = None             # class names file (default: the folder names)
    templates: str | None = None           # prompt templates file (default: CLIP's)
    label_field: str = "label"             # .json field holding the class index or name
    cache_dir: str | None = None           # where built zero-shot classifiers are cached
    retrieval_data: str | None = None      # held-out shards for image<->text recall@K
    linear_probe_train: str | None = None  # labelled folder or shards to fit the probe on
    linear_probe_test: str | None = None   # ... and to test it on
    batch_size: int = 64
    device: str = "cpu"


def evaluate_checkpoint(checkpoint: str, request: EvalRequest, model_bundle=None) -> dict:
    """Run the evaluations ``request`` asks for; ``model_bundle`` = (model, preprocess,
    tokenizer) replaces loading ``checkpoint``."""
    from trainer.api import load
    from trainer.zeroshot import read_lines
    r = request
    if not (r.zeroshot_dir or r.zeroshot_shards or r.retrieval_data or r.linear_probe_train):
        raise WitError("nothing to evaluate: give --zeroshot-dir/--zeroshot-shards, "
                       "--retrieval-data or --linear-probe-train/--linear-probe-test")
    if bool(r.linear_probe_train) != bool(r.linear_probe_test):
        raise WitError("the linear probe needs both --linear-probe-train and --linear-probe-test")
    model, preprocess, tokenizer = model_bundle or load(checkpoint, device=r.device)
    metrics: dict = {"checkpoint": checkpoint}
    classnames = read_lines(r.classes, "classes") if r.classes else None
    if r.zeroshot_dir or r.zeroshot_shards:
        if classnames is None:
            if not r.zeroshot_dir:
                raise WitError("--zeroshot-shards needs --classes")
            classnames = [n.replace("_", " ") for n in folder_classes(r.zeroshot_dir)]
        metrics.update(_zeroshot(r, model, preprocess, tokenizer, classnames))
    if r.retrieval_data:
        metrics["retrieval"] = evaluate_retrieval(model, tokenizer, preprocess, r.retrieval_data,
                                                  device=r.device, batch_size=r.batch_size)
    if r.linear_probe_train:
        metrics["linear_probe"] = _linear_probe(r, model, preprocess, classnames)
    return metrics


def _zeroshot(r: EvalRequest, model, preprocess, tokenizer, classnames: list[str]) -> dict:
    """``{"zeroshot": ..., "zeroshot_shards": ...}`` for the sources ``r`` names."""
    from trainer.zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier, read_lines
    temps = read_lines(r.templates, "templates") if r.templates else DEFAULT_TEMPLATES
    clf = ZeroShotClassifier(model, tokenizer, classnames, temps, device=r.device,
                             cache_path=r.cache_dir)
    metrics = {}
    for name, source in (("zeroshot", r.zeroshot_dir), ("zeroshot_shards", r.zeroshot_shards)):
        if source:
            skipped: Counter = Counter()
            items = labelled_source(source, preprocess, skipped,
                                    classnames if (r.classes or name != "zeroshot") else None,
                                    r.label_field)
            metrics[name] = clf.evaluate(batched(items, r.batch_size))
            metrics[name]["skipped"] = dict(skipped)
    return metrics


def _linear_probe(r: EvalRequest, model, preprocess, classnames: list[str] | None) -> dict:
    feats = []
    for source in (r.linear_probe_train, r.linear_probe_test):
        skipped: Counter = Counter()
        items = labelled_source(source, preprocess, skipped, classnames, r.label_field)
        feats.append(extract_features(model, batched(items, r.batch_size), r.device))
    (trx, try_), (tex, tey) = feats
    return linear_probe(trx, try_, tex, tey, num_classes=len(classnames) if classnames else None)
