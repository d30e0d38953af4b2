"""A supervised baseline: CLIP's image tower trained with cross-entropy on class labels.

Why: the CLIP paper's effective-robustness comparison (Radford et al. 2021, section 3.3,
Fig. 13) sets zero-shot CLIP against a model trained *supervised* on the same images
(ImageNet's ResNets) and compares how each one's accuracy drops on distribution-shifted test
sets. This module trains that baseline on the same WebDataset shards a CLIP run reads, with the
same image tower, optimiser family and augmentation, so the two differ in their objective only.

* Labels come from the captions, the way ImageNet's labels come from text: :func:`caption_label`
  gives the class whose name occurs earliest in the caption as a whole word (case-insensitive,
  plural ``-s``/``-es`` accepted, multi-word names allowed). Samples whose caption names no
  class are skipped and counted (``no_label``), as are bad samples (:mod:`trainer.data`'s
  reasons: ``bad_image``, ``bad_tar``, ``missing_text``, ...).
* Model (:class:`SupervisedClassifier`): ``create_model(model).visual`` (its output is the
  ``embed_dim`` image embedding) followed by a linear head ``nn.Linear(embed_dim, classes)``.
* Optimisation as in CLIP training (:mod:`trainer.build`, :mod:`trainer.step`): fused AdamW
  with betas (0.9, 0.98), eps 1e-6, weight decay on >= 2-d parameters only, linear warmup then
  cosine decay.
* Data: every labelled image is decoded once into memory (as a PIL image); each step draws a
  batch from a seeded shuffle (epoch after epoch) and applies CLIP's train transform (random
  resized crop, seeded per sample and step). Evaluation uses CLIP's eval transform.
* Deterministic: a fixed ``seed`` (and thread count) gives the same weights.

``train_supervised(SupervisedConfig(...)) -> summary`` writes ``OUT/supervised.pt`` (visual and
head state dicts, model config, classes, image size, summary) and ``OUT/supervised.json``, both
atomically; :func:`load_supervised` and :func:`evaluate_supervised` read the checkpoint back.
"""
from __future__ import annotations

import functools
import os
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wit_builder.core import WitError, atomic_open, atomic_write_json

from trainer.data import checked_shards, decode_sample, iter_samples
from trainer.model import create_model, resolve_config
from trainer.step import lr_at, param_groups
from trainer.transforms import image_transform
from trainer.vision import use_channels_last

__all__ = ["SupervisedConfig", "SupervisedClassifier", "caption_label", "train_supervised",
           "load_supervised", "evaluate_supervised", "CHECKPOINT_NAME", "SUMMARY_NAME"]

CHECKPOINT_NAME = "supervised.pt"
SUMMARY_NAME = "supervised.json"
BETAS = (0.9, 0.98)       # trainer.config.TrainConfig's defaults (CLIP's)
EPS = 1e-6
ACCURACY_WINDOW = 50      # steps over which the summary's train accuracy is measured
_KIND = "wit-supervised"


@dataclass
class SupervisedConfig:
    """The settings of a supervised run (see the module docstring)."""
    train_data: str                  # shards: 'DIR/{00000..00006}.tar', sources joined by ::
    out: str                         # writes OUT/supervised.pt and OUT/supervised.json
    classes: tuple[str, ...]         # class names, found in the captions
    model: str = "tiny-rn"           # CLIP config whose image tower is trained
    image_size: int | None = None    # override the config's image size
    batch_size: int = 128
    steps: int = 300
    lr: float = 1e-3
    wd: float = 0.1
    warmup: int = 30
    threads: int = 2
    seed: int = 0
    progress: bool = True


class SupervisedClassifier(nn.Module):
    """CLIP's image tower and a linear classification head: image -> class logits."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """The image tower's embedding ``[B, embed_dim]`` (unnormalised)."""
        return self.visual(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode_image(image))


# --- labels from captions ---------------------------------------------------------------------
def _normalise_class(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


@functools.lru_cache(maxsize=64)
def _class_patterns(classes: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    """One whole-word regex per class: words separated by any whitespace, the last word with an
    optional plural ending (``s``/``es``; ``y`` -> ``ies``)."""
    patterns = []
    for name in classes:
        words = _normalise_class(name).split()
        if not words:
            raise WitError(f"empty class name {name!r}")
        last = re.escape(words[-1])
        if words[-1].endswith("y") and len(words[-1]) > 1:
            last = f"(?:{last}|{re.escape(words[-1][:-1])}ies)"
        body = r"\s+".join([re.escape(w) for w in words[:-1]] + [last + "(?:e?s)?"])
        patterns.append(re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE))
    return tuple(patterns)


def caption_label(caption: str, classes: Sequence[str]) -> int | None:
    """Index of the class whose name occurs earliest in ``caption`` as a whole word
    (case-insensitive; plurals count: ``circles`` for ``circle``; multi-word names match across
    any whitespace; ``_`` in a name reads as a space). At the same position the longer match
    wins (``red circle`` over ``red``). None when no class occurs."""
    best: tuple[int, int, int] | None = None   # (start, -length, index)
    for index, pattern in enumerate(_class_patterns(tuple(classes))):
        m = pattern.search(caption)
        if m is not None:
            key = (m.start(), -(m.end() - m.start()), index)
            if best is None or key < best:
                best = key
    return None if best is None else best[2]


# --- data -------------------------------------------------------------------------------------
def _check_shards(urls: str) -> list[str]:
    shards = checked_shards(urls, "train_data")
    if not shards:
        raise WitError(f"train_data {urls!r} names no shards")
    return shards


def _keep_image(im):
    """decode_sample's "transform" for loading: a copy of the decoded PIL image (left in its
    mode; the train transform converts it to RGB as CLIP training does)."""
    return im.copy()


def load_labelled_images(shards: list[str], classes: Sequence[str], skipped: Counter):
    """Every labelled sample's (PIL image, label), in shard order, and the number of samples
    read; bad and unlabelled samples are counted in ``skipped``."""
    images, labels, read = [], [], 0
    for sample in iter_samples(shards, skipped):
        read += 1
        try:
            image, caption = decode_sample(sample, _keep_image)
        except ValueError as exc:
            skipped[str(exc)] += 1
            continue
        label = caption_label(caption, classes)
        if label is None:
            skipped["no_label"] += 1
            continue
        images.append(image)
        labels.append(label)
    return images, labels, read


def batch_indices(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of indices into ``n`` samples: a seeded shuffle of all of them, then the
    next shuffle (a batch may span two passes)."""
    rng = random.Random(f"supervised-order:{seed}")
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            perm = list(range(n))
            rng.shuffle(perm)
            order.extend(perm)
        yield order[:batch_size]
        del order[:batch_size]


def _train_batch(images, labels, indices: list[int], transform, seed: int, step: int):
    """(images [B, 3, S, S], labels [B]) with each image's random crop seeded by
    ``(seed, step, position in the batch)``."""
    x = torch.stack([transform(images[i], random.Random(f"supervised-crop:{seed}:{step}:{j}"))
                     for j, i in enumerate(indices)])
    return x, torch.tensor([labels[i] for i in indices], dtype=torch.long)


# --- model ------------------------------------------------------------------------------------
def build_classifier(model_cfg: str | dict, num_classes: int, image_size: int | None = None,
                     seed: int | None = None) -> tuple[SupervisedClassifier, dict]:
    """``(classifier, resolved CLIP config)``; with ``seed`` the initialisation is seeded
    without touching the caller's torch RNG."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        clip, cfg = create_model(model_cfg, image_size=image_size)
        model = SupervisedClassifier(clip.visual, cfg["embed_dim"], num_classes)
    use_channels_last(model.visual)  # ResNet towers: NHWC convolutions, as trainer.build
    return model, cfg


def build_optimizer(model: nn.Module, lr: float, wd: float) -> torch.optim.AdamW:
    """Fused AdamW as CLIP training builds it (no weight decay on biases and norm gains)."""
    return torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=BETAS, eps=EPS, fused=True)


# --- training ---------------------------------------------------------------------------------
def _check_config(cfg: SupervisedConfig) -> tuple[str, ...]:
    classes = tuple(cfg.classes)
    if not classes:
        raise WitError("classes: at least one class name is needed")
    names = [_normalise_class(c) for c in classes]
    if "" in names:
        raise WitError(f"classes: empty class name in {list(classes)}")
    if len(set(names)) != len(names):
        raise WitError(f"classes: duplicate class names in {list(classes)}")
    if cfg.batch_size < 1 or cfg.steps < 1 or cfg.warmup < 0 or cfg.threads < 1:
        raise WitError(f"bad settings: batch_size={cfg.batch_size} steps={cfg.steps} "
                       f"warmup={cfg.warmup} threads={cfg.threads} (need >= 1, warmup >= 0)")
    return classes


def _no_labels_error(cfg: SupervisedConfig, classes, read: int, skipped: Counter) -> WitError:
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    return WitError(f"{cfg.train_data}: no usable labelled sample among the {read} read (no "
                    f"caption names a class of [{shown}] in a decodable sample); "
                    f"skipped: {dict(skipped)}")


def _run_steps(model, optimizer, images, labels, cfg: SupervisedConfig, transform):
    """The training loop; returns (per-step losses, per-step correct counts, seconds)."""
    from tqdm import tqdm
    losses, correct = [], []
    draws = batch_indices(len(images), cfg.batch_size, cfg.seed)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), disable=not cfg.progress, unit="step", desc="supervised")
    for step in bar:
        x, y = _train_batch(images, labels, next(draws), transform, cfg.seed, step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        correct.append(int((logits.detach().argmax(dim=-1) == y).sum()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    bar.close()
    return losses, correct, time.perf_counter() - start


def _summary(cfg: SupervisedConfig, classes, model_cfg: dict, read: int, labels: list[int],
             skipped: Counter, losses, correct, train_seconds: float, seconds: float) -> dict:
    window = min(ACCURACY_WINDOW, len(correct))
    counts = Counter(labels)
    return {
        "model": model_cfg.get("name", cfg.model),
        "image_size": model_cfg["vision_cfg"]["image_size"],
        "classes": list(classes),
        "samples_read": read,
        "labelled": len(labels),
        "skipped": dict(sorted(skipped.items())),
        "per_class": {name: counts.get(i, 0) for i, name in enumerate(classes)},
        "steps": len(losses),
        "batch_size": cfg.batch_size,
        "final_loss": losses[-1],
        "train_accuracy": sum(correct[-window:]) / (window * cfg.batch_size),
        "train_accuracy_steps": window,
        "samples_per_s": (len(losses) * cfg.batch_size / train_seconds if train_seconds > 0
                          else None),
        "train_seconds": train_seconds,
        "seconds": seconds,
        "config": asdict(cfg) | {"classes": list(classes)},
    }


def save_supervised(path: str, model: SupervisedClassifier, model_cfg: dict, classes,
                    summary: dict) -> None:
    """Write the checkpoint atomically (a temporary name, then ``os.replace``)."""
    state = {"kind": _KIND, "visual": model.visual.state_dict(), "head": model.head.state_dict(),
             "model_cfg": model_cfg, "classes": list(classes),
             "image_size": model_cfg["vision_cfg"]["image_size"], "summary": summary}
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)


def train_supervised(cfg: SupervisedConfig) -> dict:
    """Train the supervised baseline; returns the summary (also ``OUT/supervised.json``); the
    model goes to ``OUT/supervised.pt``."""
    t0 = time.perf_counter()
    classes = _check_config(cfg)
    model_cfg = resolve_config(cfg.model, image_size=cfg.image_size)   # bad --model fails early
    shards = _check_shards(cfg.train_data)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        skipped: Counter = Counter()
        images, labels, read = load_labelled_images(shards, classes, skipped)
        if not images:
            raise _no_labels_error(cfg, classes, read, skipped)
        model, model_cfg = build_classifier(model_cfg, len(classes), seed=cfg.seed)
        optimizer = build_optimizer(model, cfg.lr, cfg.wd)
        transform = image_transform(model_cfg["vision_cfg"]["image_size"], train=True)
        losses, correct, train_seconds = _run_steps(model, optimizer, images, labels, cfg,
                                                    transform)
    finally:
        torch.set_num_threads(threads_before)
    summary = _summary(cfg, classes, model_cfg, read, labels, skipped, losses, correct,
                       train_seconds, time.perf_counter() - t0)
    os.makedirs(cfg.out, exist_ok=True)
    save_supervised(os.path.join(cfg.out, CHECKPOINT_NAME), model.eval(), model_cfg, classes,
                    summary)
    atomic_write_json(os.path.join(cfg.out, SUMMARY_NAME), summary)
    return summary


# --- loading and evaluation -------------------------------------------------------------------
def load_supervised(path: str, device: str = "cpu"):
    """``(model in eval mode on device, eval preprocess: PIL image -> tensor, classes)`` from a
    checkpoint :func:`train_supervised` wrote (or its ``OUT`` folder)."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise WitError(f"supervised checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise WitError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != _KIND:
        raise WitError(f"{path}: not a supervised checkpoint (written by train_supervised)")
    classes = list(ckpt["classes"])
    model, cfg = build_classifier(ckpt["model_cfg"], len(classes))
    try:
        model.visual.load_state_dict(ckpt["visual"])
        model.head.load_state_dict(ckpt["head"])
    except RuntimeError as exc:
        raise WitError(f"{path}: weights do not match model_cfg ({exc})") from None
    preprocess = image_transform(cfg["vision_cfg"]["image_size"], train=False)
    return model.to(device).eval(), preprocess, classes


def evaluate_supervised(checkpoint, folder: str, batch_size: int = 100,
                        device: str = "cpu") -> dict:
    """Top-1 accuracy on an image folder ``folder/<class>/<image>`` (folder names matched to the
    checkpoint's classes, ``_`` read as a space). ``checkpoint``: a path or the
    ``(model, preprocess, classes)`` of :func:`load_supervised`. Returns ``top1``,
    ``num_images``, ``labels``, ``predictions``, ``confusion`` (rows true, columns predicted),
    ``classes`` and ``skipped``."""
    from trainer.evaluate import batched, labelled_source
    model, preprocess, classes = load_supervised(checkpoint, device) \
        if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if not os.path.isdir(folder):
        raise WitError(f"image folder not found: {folder}")
    skipped: Counter = Counter()
    labels: list[int] = []
    predictions: list[int] = []
    model.eval()
    with torch.no_grad():
        for images, batch_labels in batched(labelled_source(folder, preprocess, skipped,
                                                            list(classes)), batch_size):
            predictions += model(images.to(device)).argmax(dim=-1).cpu().tolist()
            labels += batch_labels
    if not labels:
        raise WitError(f"{folder}: no readable images (skipped: {dict(skipped)})")
    confusion = [[0] * len(classes) for _ in classes]
    for t, p in zip(labels, predictions):
        confusion[t][p] += 1
    hits = sum(t == p for t, p in zip(labels, predictions))
    return {"top1": hits / len(labels), "num_images": len(labels), "labels": labels,
            "predictions": predictions, "confusion": confusion, "classes": list(classes),
            "skipped": dict(skipped)}
