"""CLIP's contrastive objective: symmetric cross-entropy over the N x N cosine similarities.

With L2-normalised image features I and text features T of a global batch of N pairs and the
temperature scale s = exp(logit_scale) (<= 100, see :func:`clamp_logit_scale`):

    logits = s * I @ T.T                     (N x N; pair i is the positive of row/column i)
    loss   = (CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2

Distributed (the paper's sharded similarity): rank r holds its n = N / world_size pairs. The
features of all ranks are all-gathered *with gradients* (:class:`AllGather`), and rank r
computes only its own rows: ``s * I_r @ T_all.T`` and ``s * T_r @ I_all.T`` (n x N each), with
targets ``r * n + arange(n)``. The mean over ranks of these local losses is exactly the global
loss above, and because the gather's backward sums every rank's gradient for a rank's
features, DDP's gradient averaging gives exactly the gradient of the global loss (tested
against a single process on the same global batch).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["ClipLoss", "clip_loss", "AllGather", "gather_features", "clamp_logit_scale",
           "MAX_LOGIT_SCALE", "INIT_LOGIT_SCALE"]

INIT_LOGIT_SCALE = math.log(1 / 0.07)   # CLIP paper, section 2.5
MAX_LOGIT_SCALE = math.log(100.0)       # "clipped to prevent scaling the logits by more than 100"


class AllGather(torch.autograd.Function):
    """All-gather of equally-shaped tensors along dim 0 that keeps gradients: the backward pass
    sums the gradient of the gathered tensor over all ranks and returns this rank's slice
    (a reduce-scatter; done as all-reduce + slice on backends without reduce_scatter, gloo)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group=None):
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        n = grad.shape[0] // ctx.world
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            out = torch.empty_like(grad[:n])
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM, group=ctx.group)
            return out, None
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * n:(ctx.rank + 1) * n], None


def gather_features(x: torch.Tensor, group=None) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order, differentiable."""
    return AllGather.apply(x, group)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor, all_image_features: torch.Tensor | None = None,
              all_text_features: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Symmetric InfoNCE for local rows against (gathered) columns.

    Local pair i's positive is column ``offset + i`` of the gathered features. Without gathered
    features this is the plain N x N loss. Logits are computed in float32.
    """
    with torch.autocast(image_features.device.type, enabled=False):
        img, txt = image_features.float(), text_features.float()
        all_img = img if all_image_features is None else all_image_features.float()
        all_txt = txt if all_text_features is None else all_text_features.float()
        scale = logit_scale.float()
        labels = torch.arange(img.shape[0], device=img.device) + offset
        logits_per_image = scale * img @ all_txt.T
        logits_per_text = scale * txt @ all_img.T
        return (F.cross_entropy(logits_per_image, labels)
                + F.cross_entropy(logits_per_text, labels)) / 2


class ClipLoss(torch.nn.Module):
    """The CLIP loss on one rank; see the module docstring for the distributed scheme."""

    def __init__(self, rank: int = 0, world_size: int = 1, group=None):
        super().__init__()
        self.rank, self.world_size, self.group = rank, world_size, group

    def forward(self, image_features, text_features, logit_scale):
        if self.world_size == 1:
            return clip_loss(image_features, text_features, logit_scale)
        all_img = gather_features(image_features, self.group)
        all_txt = gather_features(text_features, self.group)
        return clip_loss(image_features, text_features, logit_scale, all_img, all_txt,
                         offset=self.rank * image_features.shape[0])


@torch.no_grad()
def clamp_logit_scale(model) -> None:
    """Clip the log temperature to [0, ln 100] in place (after each optimiser step)."""
    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
