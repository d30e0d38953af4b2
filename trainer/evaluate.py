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
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from wit_builder.core import WitError

__all__ = ["iter_folder", "iter_shards", "batched", "encode_images", "retrieval_metrics",
           "retrieval_from_similarity", "iter_retrieval", "iter_caption_file",
           "evaluate_retrieval", "linear_probe", "sweep_l2", "probe_image_features",
           "PAPER_L2_GRID", "labelled_source", "IMAGE_SUFFIXES", "EvalRequest",
           "evaluate_checkpoint", "zeroshot_hits", "labelled_set_hits"]

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


def _load_image(path: str, transform):
    """The model input of one image file (any error of opening or decoding it propagates)."""
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        return transform(im)


def iter_folder(root: str, transform, classnames: list[str] | None,
                skipped: Counter, wnid_map: list[str] | None = None) -> Iterator[tuple]:
    """(image tensor, label index) for every readable image under ``root/<class>/``.

    Folders named by ImageNet wnids (``n01440764``) are mapped to ``classnames`` by
    :func:`trainer.zeroshot.wnid_class_index` (``wnid_map``, or the sorted order of all of
    them); other folders by name."""
    for x, label, _ in _folder_items(root, transform, classnames, skipped, wnid_map):
        yield x, label


def _folder_items(root: str, transform, classnames, skipped: Counter, wnid_map=None):
    """:func:`iter_folder`'s items plus each image's path relative to ``root`` (its id)."""
    from trainer.zeroshot import is_wnid, wnid_class_index
    subdirs = folder_classes(root)
    if classnames is None:
        index = {d: i for i, d in enumerate(subdirs)}
    elif all(is_wnid(d) for d in subdirs):
        index = wnid_class_index(root, subdirs, len(classnames), wnid_map)
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
                x = _load_image(path, transform)
            except Exception:
                skipped["bad_image"] += 1
                continue
            yield x, index[d], os.path.relpath(path, root)


def iter_shards(urls: str, transform, skipped: Counter, label_field: str | None = None,
                classnames: list[str] | None = None, all_captions: bool = False,
                with_key: bool = False) -> Iterator[tuple]:
    """(image tensor, caption, label or None) from WebDataset shards, in order, eval transform.
    With ``all_captions`` the caption is a list: the ``captions`` list of the sample's ``.json``
    if it has one, else ``[the .txt]``; ``with_key`` adds the sample's key."""
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
        if all_captions:
            caption = _sample_captions(sample, caption, skipped)
            if caption is None:
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
        yield (image, caption, label, sample.get("__key__")) if with_key else (image, caption, label)


def _sample_captions(sample: dict, caption: str, skipped: Counter) -> list[str] | None:
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError:
        meta = {}
    value = meta.get("captions") if isinstance(meta, dict) else None
    if value is None:
        if not caption.strip():
            skipped["no_caption"] += 1
            return None
        return [caption]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        skipped["bad_captions"] += 1
        return None
    captions = [c for c in value if c.strip()]
    if not captions:
        skipped["no_caption"] += 1
        return None
    return captions


def labelled_source(source: str, transform, skipped: Counter, classnames=None,
                    label_field: str = "label", wnid_map: list[str] | None = None) -> Iterator[tuple]:
    """(image, label) from an image folder or from shards (``.tar`` / brace patterns)."""
    if os.path.isdir(source):
        yield from iter_folder(source, transform, classnames, skipped, wnid_map)
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


def retrieval_from_similarity(sims, text_image, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K both ways from an image x text similarity matrix ``sims [N, T]``, where text t
    is a caption of image ``text_image[t]`` (every image has at least one caption).

    image -> text: an image is a hit at K if any of its captions is among the K best texts;
    text -> image: each caption is a query with its one image. The rank of a correct item is
    the number of candidates scoring strictly higher (ties count in the model's favour)."""
    import torch
    n, t = sims.shape
    text_image = torch.as_tensor(text_image, dtype=torch.long)
    if text_image.shape != (t,):
        raise WitError(f"retrieval: {t} texts but {tuple(text_image.shape)} caption owners")
    if t and (int(text_image.min()) < 0 or int(text_image.max()) >= n):
        raise WitError(f"retrieval: a caption belongs to an image outside 0..{n - 1}")
    counts = torch.bincount(text_image, minlength=n)
    if n and int(counts.min()) == 0:
        raise WitError(f"retrieval: image {int((counts == 0).nonzero()[0])} has no caption")
    correct = sims[text_image, torch.arange(t)]                       # [T]
    best = torch.full((n,), float("-inf"), dtype=sims.dtype)
    best = best.scatter_reduce(0, text_image, correct, reduce="amax")  # best caption per image
    i2t_rank = (sims > best[:, None]).sum(dim=1)
    t2i_rank = (sims.T > correct[:, None]).sum(dim=1)
    out: dict = {}
    for direction, rank in (("image_to_text", i2t_rank), ("text_to_image", t2i_rank)):
        for k in ks:
            out[f"{direction}_R@{k}"] = float((rank < k).double().mean()) if rank.numel() else 0.0
    out.update(num_images=int(n), num_texts=int(t), num_pairs=int(t))
    return out


def retrieval_metrics(image_features, text_features, ks=(1, 5, 10), text_image=None,
                      block: int = 4096) -> dict:
    """Recall@K both ways (features L2-normalised). Text t is a caption of image
    ``text_image[t]`` (default: text i belongs to image i); the same counts as
    :func:`retrieval_from_similarity`, computed ``block`` rows of the similarity matrix at a
    time so that e.g. COCO's 5,000 x 25,000 matrix is never held whole."""
    import torch
    n, t = image_features.shape[0], text_features.shape[0]
    if text_image is None:
        text_image = torch.arange(t)
    text_image = torch.as_tensor(text_image, dtype=torch.long)
    if n * t <= block * block:
        return retrieval_from_similarity(image_features @ text_features.T, text_image, ks)
    if text_image.shape != (t,) or int(text_image.min()) < 0 or int(text_image.max()) >= n:
        raise WitError(f"retrieval: caption owners must be {t} image indices in 0..{n - 1}")
    counts = torch.bincount(text_image, minlength=n)
    if int(counts.min()) == 0:
        raise WitError(f"retrieval: image {int((counts == 0).nonzero()[0])} has no caption")
    i2t_rank = torch.empty(n, dtype=torch.long)
    for start in range(0, n, block):
        sims = image_features[start:start + block] @ text_features.T          # [b, T]
        rows = torch.arange(start, min(n, start + block))
        own = (text_image >= start) & (text_image < start + len(rows))
        cols = own.nonzero()[:, 0]
        correct = sims[text_image[cols] - start, cols]
        best = torch.full((len(rows),), float("-inf"), dtype=sims.dtype)
        best = best.scatter_reduce(0, text_image[cols] - start, correct, reduce="amax")
        i2t_rank[rows] = (sims > best[:, None]).sum(dim=1)
    t2i_rank = torch.empty(t, dtype=torch.long)
    for start in range(0, t, block):
        sims = text_features[start:start + block] @ image_features.T           # [b, N]
        idx = torch.arange(start, min(t, start + block))
        correct = sims[idx - start, text_image[idx]]
        t2i_rank[idx] = (sims > correct[:, None]).sum(dim=1)
    out: dict = {}
    for direction, rank in (("image_to_text", i2t_rank), ("text_to_image", t2i_rank)):
        for k in ks:
            out[f"{direction}_R@{k}"] = float((rank < k).double().mean())
    out.update(num_images=int(n), num_texts=int(t), num_pairs=int(t))
    return out


def _caption_list(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise WitError(f"{where}: captions must be a string or a list of strings")
    return [c for c in value if c.strip()]


def iter_caption_file(path: str, transform, skipped: Counter) -> Iterator[tuple]:
    """(image tensor, [captions]) from a JSON Lines file (or a JSON list) of records
    ``{"image": PATH, "captions": [...]}`` (or ``"caption": "..."``); relative image paths are
    relative to the file's directory."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise WitError(f"retrieval file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WitError(f"retrieval file {path}: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), 1))
        except ValueError as exc:
            raise WitError(f"retrieval file {path}: invalid JSON ({exc})") from None
        where = "record"
    else:
        records, where = [], "line"
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((i, json.loads(line)))
                except ValueError as exc:
                    raise WitError(f"retrieval file {path}, line {i}: invalid JSON ({exc})") from None
    base = os.path.dirname(os.path.abspath(path))
    for i, rec in records:
        at = f"retrieval file {path}, {where} {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
            raise WitError(f"{at}: expected an object with \"image\" and \"captions\"")
        if "captions" not in rec and "caption" not in rec:
            raise WitError(f"{at}: no \"captions\" (or \"caption\")")
        captions = _caption_list(rec.get("captions", rec.get("caption")), at)
        if not captions:
            skipped["no_caption"] += 1
            continue
        image_path = os.path.join(base, rec["image"])
        try:
            x = _load_image(image_path, transform)
        except FileNotFoundError:
            skipped["missing_image"] += 1
            continue
        except Exception:
            skipped["bad_image"] += 1
            continue
        yield x, captions


def iter_retrieval(source: str, transform, skipped: Counter) -> Iterator[tuple]:
    """(image tensor, [captions]) from a caption file (``.jsonl``/``.json``) or from shards,
    where a sample's captions are the ``captions`` list of its ``.json`` when it has one, else
    its ``.txt``."""
    if source.endswith((".jsonl", ".json")):
        yield from iter_caption_file(source, transform, skipped)
        return
    for image, caption, _ in iter_shards(source, transform, skipped, all_captions=True):
        yield image, caption


def evaluate_retrieval(model, tokenizer, transform, urls: str, device="cpu",
                       batch_size: int = 64) -> dict:
    """Image <-> text recall@1/5/10 on ``urls`` (shards or a caption file, see
    :func:`iter_retrieval`), every caption of an image counting as correct."""
    import torch
    from tqdm import tqdm
    skipped: Counter = Counter()
    img_feats, txt_feats, owners = [], [], []
    pending: list[str] = []

    def flush():
        txt_feats.append(encode_texts(model, tokenizer(pending), device))
        pending.clear()

    n = 0
    for images, caption_lists in tqdm(batched(iter_retrieval(urls, transform, skipped), batch_size),
                                      desc="retrieval", unit=" batches"):
        img_feats.append(encode_images(model, images, device))
        for captions in caption_lists:
            owners.extend([n] * len(captions))
            pending.extend(captions)
            n += 1
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    if not img_feats:
        raise WitError(f"retrieval: no readable samples in {urls}")
    metrics = retrieval_metrics(torch.cat(img_feats), torch.cat(txt_feats),
                                text_image=torch.tensor(owners))
    metrics["skipped"] = dict(skipped)
    return metrics


PROBE_FEATURES = ("paper", "embedding")


def probe_image_features(model, images, device="cpu", features: str = "paper"):
    """Image features for the linear probe, unnormalised, float32 on the CPU.

    ``paper`` (CLIP appendix A.3): the image tower's output before the projection into the
    joint embedding space, i.e. for a ViT the class token after ``ln_post`` (I_f in the paper's
    figure 3); a ResNet's tower has no separate projection (its attention pool ends in it), so
    its output is used. ``embedding``: the L2-normalised joint-space image embedding."""
    import torch
    if features not in PROBE_FEATURES:
        raise WitError(f"linear probe features {features!r}: expected one of {', '.join(PROBE_FEATURES)}")
    if features == "embedding":
        return encode_images(model, images, device)
    visual = getattr(model, "visual", None)
    ln_post = getattr(visual, "ln_post", None)
    if ln_post is None or getattr(visual, "proj", None) is None:
        with torch.no_grad():
            return model.encode_image(images.to(device)).float().cpu()
    captured = []
    handle = ln_post.register_forward_hook(lambda mod, inp, out: captured.append(out))
    try:
        with torch.no_grad():
            model.encode_image(images.to(device))
    finally:
        handle.remove()
    return captured[-1].float().cpu()


def extract_features(model, batches, device="cpu", features: str = "embedding"):
    """(features [N, D], labels [N]) of labelled image batches; ``features`` as in
    :func:`probe_image_features`."""
    import torch
    feats, labels = [], []
    for images, labs in batches:
        feats.append(probe_image_features(model, images, device, features))
        labels.extend(labs)
    if not feats:
        raise WitError("linear probe: no images")
    return torch.cat(feats), torch.tensor(labels, dtype=torch.long)


def _fit_logreg(x, y, num_classes: int, l2: float, max_iter: int = 1000, init=None):
    """Multinomial logistic regression, mean cross-entropy + l2/2 * ||W||^2 (bias not
    penalised), by L-BFGS, from zero or from ``init`` = (W, b) (a warm start)."""
    import torch
    if init is None:
        w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, device=x.device)
        b = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    else:
        w, b = (t.detach().clone() for t in init)
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-8,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


# The paper's sweep (appendix A.3): lambda from 1e-6 to 1e6, 96 log-spaced steps.
PAPER_L2_GRID = tuple(10.0 ** (-6 + 12 * i / 95) for i in range(96))
# ... and the parametric binary search it used to save compute: start at these exponents, then
# halve the interval around the best one until the resolution is 8 steps per decade.
BINARY_START = (-6, -4, -2, 0, 2, 4, 6)
L2_SWEEPS = ("grid", "binary")


def sweep_l2(fit_x, fit_y, val_x, val_y, num_classes: int, sweep="grid",
             max_iter: int = 1000) -> tuple[float, float, dict]:
    """Pick the L2 strength lambda by validation top-1: ``sweep`` is ``"grid"`` (the paper's 96
    values), ``"binary"`` (the paper's parametric binary search over the same range) or a
    sequence of values. lambda is scikit-learn's 1/C (the objective is the *sum* of the
    cross-entropies + lambda/2 ||W||^2), as in the paper's code. Ties go to the larger lambda.
    Returns (best lambda, its validation top-1, {lambda: validation top-1} of all fits)."""
    n = fit_x.shape[0]
    tried: dict[float, float] = {}
    fits: dict[float, tuple] = {}

    def score(lam: float) -> float:
        if lam not in tried:
            # warm start from the solution of the nearest strength fitted so far
            near = min(fits, key=lambda v: abs(math.log(v / lam)), default=None)
            w, b = _fit_logreg(fit_x, fit_y, num_classes, lam / n, max_iter,
                               fits[near] if near is not None else None)
            fits[lam] = (w, b)
            tried[lam] = float(((val_x @ w + b).argmax(1) == val_y).double().mean())
        return tried[lam]

    def best() -> float:
        return max(tried, key=lambda lam: (tried[lam], lam))

    if sweep == "binary":
        exps = {e: score(10.0 ** e) for e in BINARY_START}
        step = 2.0
        while step > 1 / 8:
            step /= 2
            peak = max(exps, key=lambda e: (exps[e], e))
            for e in (peak - step, peak + step):
                if BINARY_START[0] <= e <= BINARY_START[-1] and e not in exps:
                    exps[e] = score(10.0 ** e)
    else:
        values = PAPER_L2_GRID if sweep == "grid" else tuple(sweep)
        if isinstance(sweep, str) and sweep != "grid":
            raise WitError(f"L2 sweep {sweep!r}: expected one of {', '.join(L2_SWEEPS)}")
        if not values or any(not v > 0 for v in values):
            raise WitError("L2 sweep: give at least one strength, all > 0")
        for lam in sorted(values, reverse=True):   # strong to weak: each fit warm-starts the next
            score(float(lam))
    lam = best()
    return lam, tried[lam], tried


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int | None = None,
                 l2_grid="grid", val_fraction: float = 0.2, seed: int = 0, val_x=None,
                 val_y=None, device: str = "cpu", max_iter: int = 1000) -> dict:
    """The paper's linear probe (appendix A.3): L-BFGS logistic regression on frozen features;
    the L2 strength lambda is chosen by :func:`sweep_l2` (``l2_grid``: "grid", "binary" or
    values) on the validation set (``val_x``/``val_y``, or a ``val_fraction`` split of the
    training set), then the model is refit on training + validation data and tested."""
    import torch
    from trainer.zeroshot import topk_accuracy
    x, tx = train_x.double().to(device), test_x.double().to(device)
    train_y, test_y = train_y.to(device), test_y.to(device)
    labels = [train_y, test_y] + ([val_y.to(device)] if val_y is not None else [])
    num_classes = num_classes or int(max(int(t.max()) for t in labels if t.numel())) + 1
    if val_x is not None:
        vx, vy = val_x.double().to(device), val_y.to(device)
        fx, fy = x, train_y
        x, train_y = torch.cat([x, vx]), torch.cat([train_y, vy])
    else:
        n = x.shape[0]
        perm = list(range(n))
        random.Random(seed).shuffle(perm)
        n_val = max(1, int(n * val_fraction)) if n >= 5 else 0
        val_idx = torch.tensor(perm[:n_val], dtype=torch.long, device=x.device)
        fit_idx = torch.tensor(perm[n_val:], dtype=torch.long, device=x.device)
        vx, vy, fx, fy = x[val_idx], train_y[val_idx], x[fit_idx], train_y[fit_idx]
    if vx.shape[0]:
        best_l2, best_acc, tried = sweep_l2(fx, fy, vx, vy, num_classes, l2_grid, max_iter)
    else:   # too few examples to hold any out: the middle of the paper's range
        best_l2, best_acc, tried = 1.0, None, {}
    w, b = _fit_logreg(x, train_y, num_classes, best_l2 / x.shape[0], max_iter)
    logits = (tx @ w + b).cpu()
    return {**topk_accuracy(logits, test_y.cpu()), "l2": best_l2, "val_top1": best_acc,
            "l2_tried": len(tried), "num_train": int(x.shape[0]), "num_test": int(tx.shape[0])}


@dataclass(frozen=True)
class EvalRequest:
    """Which evaluations :func:`evaluate_checkpoint` runs, on what data (``wit eval``'s flags)."""
    zeroshot_dir: str | None = None        # image folder, one subfolder per class
    zeroshot_shards: str | None = None     # labelled shards (label in each sample's .json)
    classes: str | None = None             # class names file or "imagenet" (default: folder names)
    templates: str | None = None           # prompt templates file or "imagenet" (default: 8 of CLIP's)
    wnid_map: str | None = None            # wnids in class order, for a subset of wnid folders
    label_field: str = "label"             # .json field holding the class index or name
    cache_dir: str | None = None           # where built zero-shot classifiers are cached
    retrieval_data: str | None = None      # held-out shards or caption file: recall@K
    linear_probe_train: str | None = None  # labelled folder or shards to fit the probe on
    linear_probe_test: str | None = None   # ... and to test it on
    linear_probe_val: str | None = None    # ... and to choose lambda on (default: 20% of train)
    probe_sweep: str = "grid"              # "grid" (96 values) or "binary" (the paper's search)
    probe_features: str = "paper"          # "paper" (before the projection) or "embedding"
    batch_size: int = 64
    device: str = "cpu"


def evaluate_checkpoint(checkpoint: str, request: EvalRequest, model_bundle=None) -> dict:
    """Run the evaluations ``request`` asks for; ``model_bundle`` = (model, preprocess,
    tokenizer) replaces loading ``checkpoint``."""
    from trainer.api import load
    from trainer.zeroshot import is_wnid, load_list
    r = request
    if not (r.zeroshot_dir or r.zeroshot_shards or r.retrieval_data or r.linear_probe_train):
        raise WitError("nothing to evaluate: give --zeroshot-dir/--zeroshot-shards, "
                       "--retrieval-data or --linear-probe-train/--linear-probe-test")
    if bool(r.linear_probe_train) != bool(r.linear_probe_test):
        raise WitError("the linear probe needs both --linear-probe-train and --linear-probe-test")
    if r.linear_probe_val and not r.linear_probe_train:
        raise WitError("--linear-probe-val needs --linear-probe-train and --linear-probe-test")
    if r.probe_sweep not in L2_SWEEPS:
        raise WitError(f"--probe-sweep {r.probe_sweep!r}: expected one of {', '.join(L2_SWEEPS)}")
    if r.probe_features not in PROBE_FEATURES:
        raise WitError(f"--probe-features {r.probe_features!r}: expected one of "
                       f"{', '.join(PROBE_FEATURES)}")
    if r.wnid_map and not r.classes:
        raise WitError("--wnid-map maps wnid folders to class names: give --classes too")
    model, preprocess, tokenizer = model_bundle or load(checkpoint, device=r.device)
    metrics: dict = {"checkpoint": checkpoint}
    classnames = load_list(r.classes, "classes") if r.classes else None
    if r.zeroshot_dir or r.zeroshot_shards:
        if classnames is None:
            if not r.zeroshot_dir:
                raise WitError("--zeroshot-shards needs --classes")
            folders = folder_classes(r.zeroshot_dir)
            if all(is_wnid(f) for f in folders):
                raise WitError(f"{r.zeroshot_dir}: the class folders are ImageNet wnids "
                               f"({folders[0]}, ...): give --classes imagenet (or a class-name "
                               "file in wnid order)")
            classnames = [n.replace("_", " ") for n in folders]
        metrics.update(_zeroshot(r, model, preprocess, tokenizer, classnames))
    if r.retrieval_data:
        metrics["retrieval"] = evaluate_retrieval(model, tokenizer, preprocess, r.retrieval_data,
                                                  device=r.device, batch_size=r.batch_size)
    if r.linear_probe_train:
        metrics["linear_probe"] = _linear_probe(r, model, preprocess, classnames)
    return metrics


def _zeroshot(r: EvalRequest, model, preprocess, tokenizer, classnames: list[str]) -> dict:
    """``{"zeroshot": ..., "zeroshot_shards": ...}`` for the sources ``r`` names."""
    from trainer.zeroshot import DEFAULT_TEMPLATES, ZeroShotClassifier, load_list
    temps = load_list(r.templates, "templates") if r.templates else DEFAULT_TEMPLATES
    clf = ZeroShotClassifier(model, tokenizer, classnames, temps, device=r.device,
                             cache_path=r.cache_dir)
    metrics = {}
    for name, source in (("zeroshot", r.zeroshot_dir), ("zeroshot_shards", r.zeroshot_shards)):
        if source:
            skipped: Counter = Counter()
            items = labelled_source(source, preprocess, skipped,
                                    classnames if (r.classes or name != "zeroshot") else None,
                                    r.label_field, _wnids(r))
            metrics[name] = clf.evaluate(batched(items, r.batch_size))
            metrics[name]["skipped"] = dict(skipped)
    return metrics


def zeroshot_hits(model, preprocess, tokenizer, source: str, classnames: list[str],
                  templates: list[str], label_field: str = "label", wnid_map=None,
                  batch_size: int = 64, device: str = "cpu", cache_path: str | None = None,
                  skipped: Counter | None = None) -> dict[str, tuple[bool, bool]]:
    """Zero-shot result per example of a labelled folder or shards: ``{id: (top-1 correct,
    top-5 correct)}``; the id is the image's path relative to the folder, or the sample's key
    (the ids `wit dedup overlap` uses)."""
    import torch
    from trainer.zeroshot import ZeroShotClassifier
    clf = ZeroShotClassifier(model, tokenizer, classnames, templates, device=device,
                             cache_path=cache_path)
    skipped = Counter() if skipped is None else skipped
    if os.path.isdir(source):
        items = _folder_items(source, preprocess, classnames, skipped, wnid_map)
    else:
        items = ((x, label, key) for x, _, label, key in
                 iter_shards(source, preprocess, skipped, label_field, classnames, with_key=True))
    hits: dict[str, tuple[bool, bool]] = {}
    for images, labels, ids in batched(items, batch_size):
        logits = clf.logits(images).cpu()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        ok = top == torch.tensor(labels)[:, None]
        for i, key in enumerate(ids):
            hits[key] = (bool(ok[i, 0]), bool(ok[i].any()))
    return hits


def labelled_set_hits(checkpoint: str, source: str, classes: str | None = None,
                      templates: str | None = None, label_field: str = "label",
                      wnid_map: str | None = None, batch_size: int = 64, device: str = "cpu",
                      model_bundle=None) -> tuple[dict, dict]:
    """:func:`zeroshot_hits` for a checkpoint and ``wit eval``-style options (``classes`` and
    ``templates``: files or "imagenet"; default class names: the folder names; default
    templates: 8 of CLIP's). Returns (hits, skipped counts)."""
    from trainer.api import load
    from trainer.zeroshot import DEFAULT_TEMPLATES, is_wnid, load_list, read_wnid_map
    if classes:
        classnames = load_list(classes, "classes")
    elif os.path.isdir(source):
        folders = folder_classes(source)
        if all(is_wnid(f) for f in folders):
            raise WitError(f"{source}: the class folders are ImageNet wnids: give --classes imagenet")
        classnames = [n.replace("_", " ") for n in folders]
    else:
        raise WitError(f"{source}: labelled shards need --classes")
    temps = load_list(templates, "templates") if templates else DEFAULT_TEMPLATES
    model, preprocess, tokenizer = model_bundle or load(checkpoint, device=device)
    skipped: Counter = Counter()
    hits = zeroshot_hits(model, preprocess, tokenizer, source, classnames, temps, label_field,
                         read_wnid_map(wnid_map) if wnid_map else None, batch_size, device,
                         skipped=skipped)
    return hits, dict(skipped)


def _wnids(r: EvalRequest) -> list[str] | None:
    from trainer.zeroshot import read_wnid_map
    return read_wnid_map(r.wnid_map) if r.wnid_map else None


def _linear_probe(r: EvalRequest, model, preprocess, classnames: list[str] | None) -> dict:
    feats = []
    sources = [r.linear_probe_train, r.linear_probe_test]
    if r.linear_probe_val:
        sources.append(r.linear_probe_val)
    wnids = _wnids(r)
    for source in sources:
        skipped: Counter = Counter()
        items = labelled_source(source, preprocess, skipped, classnames, r.label_field, wnids)
        feats.append(extract_features(model, batched(items, r.batch_size), r.device,
                                      r.probe_features))
    (trx, try_), (tex, tey) = feats[:2]
    val = feats[2] if len(feats) > 2 else (None, None)
    m = linear_probe(trx, try_, tex, tey, num_classes=len(classnames) if classnames else None,
                     l2_grid=r.probe_sweep, val_x=val[0], val_y=val[1], device=r.device)
    m["features"] = r.probe_features
    return m
