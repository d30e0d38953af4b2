"""Transformer building blocks of the CLIP towers, with OpenAI CLIP's parameter names (see
:mod:`trainer.model`): float32 :class:`LayerNorm`, :class:`QuickGELU`, :class:`Attention`
(``nn.MultiheadAttention``'s names, computed with ``F.scaled_dot_product_attention``),
:class:`ResidualAttentionBlock` and :class:`Transformer`."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wit_builder.core import WitError

__all__ = ["LayerNorm", "QuickGELU", "Attention", "ResidualAttentionBlock", "Transformer",
           "attention"]

# The explicit attention (scores materialised) is used on CPU for reduced-precision inputs while
# batch x heads x queries x keys stays under this many scores (128 MB of bf16 per call).
EXPLICIT_ATTENTION_MAX_SCORES = 64 * 2 ** 20


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and returned in the input's dtype (as OpenAI's, so
    half-precision weights or activations keep a float32 normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                         self.bias.float(), self.eps)
        return y.to(x.dtype)


class _QuickGELUFunction(torch.autograd.Function):
    """x * sigmoid(1.702 x) written as silu(1.702 x) / 1.702, so that the forward and the
    backward pass each run torch's fused SiLU kernel instead of three elementwise passes
    (and their saved intermediates); the same function, up to rounding."""

    @staticmethod
    def forward(ctx, x):
        scaled = x * 1.702
        ctx.save_for_backward(scaled)   # what the backward needs (instead of x: one pass less)
        return F.silu(scaled).mul_(1 / 1.702)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (scaled,) = ctx.saved_tensors
        # d/dx [silu(a x) / a] = silu'(a x)
        return torch.ops.aten.silu_backward(grad, scaled)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuickGELUFunction.apply(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              causal: bool = False, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over ``[..., n, d]`` tensors (causal: query i sees keys <= i;
    ``allowed``: instead, a boolean mask broadcastable to ``[..., n, m]``, True where a query
    sees a key).

    ``F.scaled_dot_product_attention`` everywhere except on CPU with bf16/fp16 inputs and
    modest sizes: there torch's fused (flash) kernel is slow for CLIP's short sequences (its
    backward took a fifth of a ViT-B/32 bf16 training step), and the explicit form, two batched
    GEMMs (the scale and the causal mask folded into the first) and a softmax that accumulates
    in float32, is 2-6x faster forward + backward.
    """
    *lead, n, d = q.shape
    m = k.shape[-2]
    if (q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16)
            or q.numel() // d * m > EXPLICIT_ATTENTION_MAX_SCORES):
        if allowed is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    # the scale and the causal mask (additive, -inf above the diagonal: top-left aligned, as
    # SDPA's is_causal) go into the scores' GEMM: baddbmm(bias, q, k^T, alpha=scale)
    if allowed is not None:
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(
            ~allowed, float("-inf")).expand(*lead, n, m).reshape(-1, n, m)
        beta = 1
    elif causal:
        bias = torch.zeros(n, m, dtype=q.dtype, device=q.device).masked_fill_(
            torch.ones(n, m, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        beta = 1
    else:
        bias, beta = torch.zeros(1, 1, dtype=q.dtype, device=q.device), 0
    q3, k3, v3 = q.reshape(-1, n, d), k.reshape(-1, m, d), v.reshape(-1, m, v.shape[-1])
    scores = torch.baddbmm(bias.expand(q3.shape[0], n, m), q3, k3.transpose(1, 2),
                           beta=beta, alpha=d ** -0.5)
    # torch's CPU softmax on bf16/fp16 accumulates in float32 and rounds the result once
    return torch.bmm(scores.softmax(-1), v3).view(*lead, n, v.shape[-1])


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, computed
    batch-first with ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise WitError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[b, n, d]`` -> ``[b, n, d]``; with ``rows`` (``[b]`` positions), only the output
        at each sequence's ``rows[i]`` is computed: ``[b, 1, d]`` (keys and values still come
        from every position; causal: that query sees the positions up to its own)."""
        b, n, d = x.shape
        h = self.heads
        if rows is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
            y = attention(q, k, v, causal)              # [b, heads, n, d/heads]
            return self.out_proj(y.transpose(1, 2).reshape(b, n, d))
        w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
        picked = x[torch.arange(b, device=x.device), rows].unsqueeze(1)          # [b, 1, d]
        q = F.linear(picked, w_q, b_q).view(b, 1, h, d // h).transpose(1, 2)
        k, v = F.linear(x, w_kv, b_kv).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        allowed = None
        if causal:
            allowed = (torch.arange(n, device=x.device) <= rows[:, None]).view(b, 1, 1, n)
        y = attention(q, k, v, allowed=allowed)         # [b, heads, 1, d/heads]
        return self.out_proj(y.transpose(1, 2).reshape(b, 1, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); MLP ratio 4."""

    def __init__(self, width: int, heads: int, quick_gelu: bool):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, causal: bool = False,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """``rows`` (``[B]`` positions): compute only the block's output at those positions,
        ``[B, 1, width]`` (what a tower's last block needs: the CLS or end-of-text token)."""
        if rows is None:
            x = x + self.attn(self.ln_1(x), causal=causal)
        else:
            x = (x[torch.arange(x.shape[0], device=x.device), rows].unsqueeze(1)
                 + self.attn(self.ln_1(x), causal=causal, rows=rows))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` residual attention blocks on batch-first ``[B, L, width]`` tensors."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool,
                 causal: bool = False):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.grad_checkpointing = False
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, quick_gelu)
                                         for _ in range(layers)])

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, width]`` -> ``[B, L, width]``; with ``rows`` (``[B]`` positions) the last
        block computes only those positions: ``[B, 1, width]``, the same values as
        ``forward(x)[arange(B), rows]`` (the pooled token of a tower) without the last block's
        work on the others (its attention queries, output projection and MLP for the L - 1
        unused positions)."""
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            picked = rows if i == last else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, self.causal, picked, use_reentrant=False)
            else:
                x = block(x, self.causal, picked)
        return x
