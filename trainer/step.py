"""One optimisation step of the CLIP trainer: AdamW parameter groups (:func:`param_groups`), the
learning-rate schedule (:func:`lr_at`) and the forward and backward passes of a global batch
made of micro-batches (:func:`forward_backward`); :func:`trainer.train.train` runs them."""
from __future__ import annotations

import contextlib
import math

__all__ = ["param_groups", "lr_at", "forward_backward"]


# --- optimiser and schedule -------------------------------------------------------------------
def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decoupled weight decay on every parameter with >= 2 dimensions (linear and
    conv weights, token and positional embeddings, ``proj``/``text_projection``, the attention
    pool's positional embedding); none on 1-d and scalar parameters: biases, LayerNorm and
    BatchNorm gains, ``logit_scale`` (a temperature: decay would pull it to scale 1) and the
    ViT ``class_embedding`` (a learned input vector that acts as a bias of the class token)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def lr_at(step: int, base_lr: float, warmup: int, total_steps: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warmup to ``base_lr`` over
    ``warmup`` steps, then cosine decay to 0 at ``total_steps``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if total_steps <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / (total_steps - warmup))
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


# --- one step ---------------------------------------------------------------------------------
def _backward(loss, scaler):
    (scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss).backward()


def forward_backward(model, loss_fn, batches, autocast=contextlib.nullcontext, scaler=None):
    """Forward and backward passes of one optimisation step over ``batches``, a list of
    ``(images, tokens)`` micro-batches already on the device. Gradients are accumulated into
    ``.grad``; returns this rank's loss (detached).

    With one micro-batch this is the plain step. With K > 1 (gradient accumulation) it uses
    feature caching so that the loss and the gradient equal those of the single batch made
    of all K micro-batches:

    1. without building graphs, compute the features of every micro-batch;
    2. for each micro-batch j: recompute its features with a graph, put them in place of the
       cached ones, compute the loss of the whole batch (every pair is a negative for every
       other, exactly as in the big batch) and backpropagate. Only micro-batch j's features
       carry gradient, so the K backward passes add up to exactly the big batch's gradient.
       ``logit_scale`` gets its gradient only in the last pass (detached in the others) so it
       is counted once. Under DDP, gradients are synchronised only in the last pass.

    Equal, with the same global batch: the loss, the gradients of all parameters, hence the
    optimiser step (up to floating-point summation order). Not equal: BatchNorm statistics
    (ResNets normalise per micro-batch, and the caching pass also updates running statistics),
    and the cost: one extra forward pass per micro-batch.
    """
    if len(batches) == 1:
        images, tokens = batches[0]
        with autocast():
            img, txt, scale = model(images, tokens)
            loss = loss_fn(img, txt, scale)
        _backward(loss, scaler)
        return loss.detach()
    import torch
    with torch.no_grad(), autocast():
        cached = [model(images, tokens)[:2] for images, tokens in batches]
    cached_img = [c[0] for c in cached]
    cached_txt = [c[1] for c in cached]
    no_sync = getattr(model, "no_sync", None)
    for j, (images, tokens) in enumerate(batches):
        last = j == len(batches) - 1
        ctx = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with ctx:
            with autocast():
                img, txt, scale = model(images, tokens)
                all_img = torch.cat(cached_img[:j] + [img] + cached_img[j + 1:])
                all_txt = torch.cat(cached_txt[:j] + [txt] + cached_txt[j + 1:])
                loss = loss_fn(all_img, all_txt, scale if last else scale.detach())
            _backward(loss, scaler)
    return loss.detach()
