"""Training and calibrating the learned near-duplicate detector (``wit dedup train``,
``wit dedup calibrate``); the model, its file and the embedder are in :mod:`wit_builder.detector`."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from wit_builder.augment import as_rng, augment, resize
from wit_builder.core import WitError, exists
from wit_builder.detector import (DEFAULT_LR, FORMAT, VERSION, Embedder, build_model, info_nce_loss, make_config,
                                  read_detector, resolve_device, save_detector, to_array, to_batch)
from wit_builder.imageshards import ImageSource

__all__ = ["DetectorTrainConfig", "train_detector", "CalibrationConfig", "calibrate_detector",
           "precision_recall_curve", "threshold_for_precision"]


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _training_pair(img: Image.Image, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(original, transformed variant) as model inputs. For speed, an image larger than twice the
    model's input is first shrunk so its longer side is 2 x image_size (random interpolation: one
    more resize augmentation); the model only ever sees image_size pixels anyway."""
    if max(img.size) > 2 * size:
        scale = 2 * size / max(img.size)
        img = resize(img, (max(1, img.size[0] * scale), max(1, img.size[1] * scale)), rng)
    return to_array(img, size), to_array(augment(img, rng), size)


def _load_with_retry(source, i: int, rng: np.random.Generator, min_size: int) -> Image.Image:
    """Image ``i`` of ``source``; an undecodable one (recorded in ``source.bad``) is replaced by a
    random other."""
    img = source.load(i, min_size=min_size)
    tries = 0
    while img is None:
        tries += 1
        if tries > 100 or len(source.bad) >= len(source):
            raise WitError(f"too many undecodable images in the training shards ({len(source.bad)} found)")
        j = int(rng.integers(len(source)))
        if j not in source.bad:
            img = source.load(j, min_size=min_size)
    return img


def _training_batch(source, seed: int, step: int, batch_size: int, size: int) -> tuple[list, list]:
    """The batch of step ``step``: ``batch_size`` distinct images and one augmented copy of each.
    Its randomness comes only from (seed, step), so a resumed or prefetched run draws exactly the
    batches of an uninterrupted one."""
    rng = np.random.default_rng([seed, step])
    originals, variants = [], []
    for i in rng.choice(len(source), size=batch_size, replace=False):
        img = _load_with_retry(source, int(i), rng, 2 * size)
        a, b = _training_pair(img, rng, size)
        originals.append(a)
        variants.append(b)
    return originals, variants


def _prefetch(make, items: Iterable, depth: int = 2):
    """Yield ``make(item)`` for each item, computed up to ``depth`` ahead in a background thread
    (image decoding, PIL resampling and JPEG coding release the GIL, so this overlaps with the
    model's step). An exception of the producer is re-raised in the consumer."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, make(item)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put((False, exc))
            return
        q.put((True, done))

    worker = threading.Thread(target=produce, name="dedup-batches", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = q.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it end
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


@dataclass(frozen=True)
class DetectorTrainConfig:
    """What the detector is (arch and sizes) and how it learns (``wit dedup train``'s options)."""
    steps: int = 1000
    batch_size: int = 64
    arch: str = "resnet50"
    lr: float | None = None              # None: DEFAULT_LR[arch]
    image_size: int | None = None
    embed_dim: int = 256
    width: int | None = None
    layers: tuple | None = None
    pool_grid: int | None = None
    seed: int = 0
    holdout: float = 0.1                 # share of images kept out of training, for calibration
    checkpoint_every: int = 100
    weight_decay: float = 1e-4
    log_every: int = 10


def _resume(out: str, config: dict, cfg: DetectorTrainConfig, model, opt, source) -> tuple[int, list]:
    """Load the detector in ``out`` to continue training it: (steps done, loss history). Another
    config, seed or batch size is an error."""
    state = read_detector(out)
    train = state.get("train") or {}
    if state["config"] != config:
        raise WitError(f"{out!r} holds a detector with config {state['config']}, not {config}; "
                       "use --overwrite to replace it or another --out")
    for k, mine in (("seed", cfg.seed), ("batch_size", cfg.batch_size)):
        if k in train and train[k] != mine:
            raise WitError(f"{out!r} was trained with {k.replace('_', '-')} {train[k]}, not {mine}; "
                           "pass the same value to resume, or --overwrite")
    model.load_state_dict(state["model"])
    source.bad.update(int(i) for i in train.get("undecodable", []))
    if state.get("optimizer"):
        opt.load_state_dict(state["optimizer"])
    return int(train.get("step", 0)), list(train.get("loss_history", []))


def train_detector(shards: Sequence[str] | None, out: str, cfg: DetectorTrainConfig = DetectorTrainConfig(), *,
                   images: Sequence | None = None, restart: bool = False, threads: int | None = None,
                   device: str | None = "auto", progress: bool = True) -> dict:
    """Train (or resume training) a detector and write it to ``out``.

    Each step draws ``batch_size`` distinct images uniformly from the shards (leaving out the
    held-out split of :func:`wit_builder.imageshards.is_holdout`, used by calibration) and makes one pair
    (image, augment(image)) of each; all randomness of a batch derives from (seed, step). Batches
    are prepared ahead in a background thread. ``out`` is rewritten atomically every
    ``checkpoint_every`` steps and at the end; if ``out`` already holds a detector with the same
    config and fewer steps done, training resumes from it (model, optimiser, step), unless
    ``restart``; the result is the same as an uninterrupted run. ``images`` (a list of PIL images
    or encoded bytes) can replace ``shards`` (tests, benchmark). ``device``: see
    :func:`resolve_device` (the CPU unless torch sees a GPU).
    """
    from tqdm import tqdm

    steps, batch_size, seed, holdout = cfg.steps, cfg.batch_size, cfg.seed, cfg.holdout
    if threads:
        torch.set_num_threads(int(threads))
    if steps < 1 or batch_size < 2:
        raise WitError("--steps must be >= 1 and --batch-size >= 2 (InfoNCE needs in-batch negatives)")
    config = make_config(cfg.arch, layers=cfg.layers, width=cfg.width, embed_dim=cfg.embed_dim,
                         image_size=cfg.image_size, pool_grid=cfg.pool_grid)
    lr = float(cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.arch])
    source = ImageSource(shards=shards, images=images, split="train", holdout=holdout)
    if len(source) < batch_size:
        raise WitError(f"only {len(source)} training images (after holding out {holdout:.0%} for "
                       f"calibration); need at least --batch-size={batch_size}")
    torch.manual_seed(seed)
    device = resolve_device(device)
    model = build_model(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, fused=True)  # see trainer/build.py
    start, history = (_resume(out, config, cfg, model, opt, source) if exists(out) and not restart else (0, []))
    if start >= steps:
        source.close()
        return {"step": start, "resumed_from": start, "loss_history": history, "images": len(source),
                "skipped_images": len(source.bad)}
    resumed_from = start
    warmup = max(1, min(200, steps // 20))
    size = config["image_size"]

    def save(step: int) -> None:
        save_detector(out, {
            "format": FORMAT, "version": VERSION, "config": config,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "threshold": None, "calibration": None,
            "train": {"step": step, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                      "holdout": holdout, "weight_decay": cfg.weight_decay, "images": len(source),
                      "skipped_images": len(source.bad), "undecodable": sorted(source.bad),
                      "loss_history": history[-1000:], "time": time.time()},
            "optimizer": opt.state_dict(),
        })

    model.train()
    bar = tqdm(total=steps, initial=start, desc="dedup train", unit="step", disable=not progress)
    batches = _prefetch(lambda step: _training_batch(source, seed, step, batch_size, size), range(start, steps))
    ema = None
    try:
        for step, (originals, variants) in zip(range(start, steps), batches):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, steps, lr, warmup)
            loss = info_nce_loss(model(to_batch(originals).to(device)), model(to_batch(variants).to(device)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            history.append(value)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            bar.update(1)
            if step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{ema:.3f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                save(step + 1)
    finally:
        batches.close()
        bar.close()
        source.close()
    save(steps)
    return {"step": steps, "resumed_from": resumed_from, "loss_history": history,
            "images": len(source), "skipped_images": len(source.bad)}


# --- calibration --------------------------------------------------------------------------------

def precision_recall_curve(scores: np.ndarray, labels: np.ndarray, n_positives: int | None = None):
    """Sorted scores (desc), precision and recall after each cut (ties resolved by stable order)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    n_pos = int(y.sum()) if n_positives is None else int(n_positives)
    precision = tp / np.maximum(1, tp + fp)
    recall = tp / max(1, n_pos)
    return s, precision, recall


def threshold_for_precision(scores: np.ndarray, labels: np.ndarray, target: float) -> dict:
    """The lowest similarity threshold whose precision (pairs with score >= threshold) is still >=
    ``target`` — i.e. the highest recall at that precision. The threshold is the midpoint between
    the last accepted and the first rejected score. Cuts inside a run of tied scores are not allowed."""
    s, precision, recall = precision_recall_curve(scores, labels)
    n = len(s)
    if n == 0 or not labels.any():
        raise WitError("calibration needs at least one positive pair")
    valid = np.ones(n, bool)
    valid[:-1] = s[:-1] > s[1:]  # a cut must fall between two different scores
    ok = np.nonzero((precision >= target) & valid)[0]
    if len(ok) == 0:
        raise WitError(f"no similarity threshold reaches precision {target}; best precision "
                       f"{float(precision.max()):.4f}: train the detector longer or lower --target-precision")
    k = int(ok[-1])
    thr = float(s[k]) if k == n - 1 else float(0.5 * (s[k] + s[k + 1]))
    return {"threshold": thr, "precision": float(precision[k]), "recall": float(recall[k]),
            "accepted_pairs": k + 1}


@dataclass(frozen=True)
class CalibrationConfig:
    """How ``wit dedup calibrate`` picks the threshold."""
    target_precision: float = 0.99
    max_images: int = 1000
    use_all: bool = False            # all images, not only the held-out split (shards not trained on)
    seed: int = 0
    batch_size: int = 64


def calibrate_detector(detector: str, shards: Sequence[str] | None = None,
                       cfg: CalibrationConfig = CalibrationConfig(), *, images: Sequence | None = None,
                       threads: int | None = None, write: bool = True, progress: bool = True,
                       device: str | None = "auto") -> dict:
    """Pick the duplicate threshold on held-out images and store it in the detector file.

    For each held-out image (at most ``max_images``) one transformed copy is made with the training
    augmentation pipeline (fixed ``seed``). Every (copy, original) similarity is scored: the copy's
    own original is a positive pair, the other originals are negative pairs, except those that are
    duplicates of the copy's original themselves (closer to it than its copy; counted as
    ``ambiguous_pairs``). The threshold is the lowest one with precision >= ``target_precision``
    (see :func:`threshold_for_precision`). The detector file is rewritten atomically with
    ``threshold`` and ``calibration`` set.
    """
    from tqdm import tqdm

    target_precision, max_images, use_all, seed, batch_size = (cfg.target_precision, cfg.max_images, cfg.use_all,
                                                               cfg.seed, cfg.batch_size)
    if not 0.0 < target_precision <= 1.0:
        raise WitError("--target-precision must be in (0, 1]")
    emb = Embedder(detector, threads=threads, device=device)
    holdout = float((emb.state.get("train") or {}).get("holdout", 0.1))
    source = ImageSource(shards=shards, images=images, split="all" if use_all else "holdout", holdout=holdout)
    if len(source) < 10:
        raise WitError(f"only {len(source)} calibration images (the held-out {holdout:.0%} split"
                       f"{'' if use_all else '; pass --all-images if these shards were not used for training'}); "
                       "need at least 10")
    rng = as_rng(seed)
    picks = np.sort(rng.choice(len(source), size=min(max_images, len(source)), replace=False))
    size = emb.image_size
    refs, queries, skipped = [], [], 0
    for i in tqdm(picks, desc="dedup calibrate", unit="img", disable=not progress):
        img = source.load(int(i), min_size=2 * size)
        if img is None:
            skipped += 1
            continue
        a, b = _training_pair(img, rng, size)
        refs.append(a)
        queries.append(b)
    r = np.concatenate([emb.embed_arrays(refs[i:i + batch_size]) for i in range(0, len(refs), batch_size)])
    q = np.concatenate([emb.embed_arrays(queries[i:i + batch_size]) for i in range(0, len(queries), batch_size)])
    sims = q @ r.T
    labels = np.eye(len(r), dtype=bool)
    # Images drawn from web shards can hold duplicates among themselves: if original j is at least
    # as close to original i as i's own augmented copy is, (copy i, original j) is no negative (any
    # threshold accepting the positive links i and j anyway). Such pairs are left out and counted.
    ambiguous = ((r @ r.T) >= np.diag(sims)[:, None]) & ~labels
    used = ~ambiguous
    result = threshold_for_precision(sims[used], labels[used], target_precision)
    pos, neg = sims[labels], sims[~labels & used]
    false_pairs = int((neg >= result["threshold"]).sum())
    calibration = {
        "target_precision": target_precision, **result, "images": int(len(r)), "skipped_images": skipped,
        "positive_pairs": int(labels.sum()), "negative_pairs": int(neg.size),
        "ambiguous_pairs": int(ambiguous.sum()), "false_pairs": false_pairs,
        # per-pair false-positive rate: a run over N images expects about fpr * N^2 / 2 false links
        "false_positive_rate": false_pairs / max(1, neg.size),
        "positive_mean": float(pos.mean()), "negative_mean": float(neg.mean()) if neg.size else None,
        "negative_max": float(neg.max()) if neg.size else None, "split": "all" if use_all else "holdout",
        "seed": seed, "time": time.time(),
    }
    if write:
        state = read_detector(detector)
        state["threshold"] = float(result["threshold"])
        state["calibration"] = calibration
        save_detector(detector, state)
    return calibration


