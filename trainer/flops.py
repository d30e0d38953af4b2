"""Model FLOPs per image-text pair, computed from a model config.

Counts the multiply-adds of convolutions, linear layers and attention matmuls (QK^T and AV) as
2 FLOPs each; normalisation, activations, pooling and the loss are left out (they are not
matmul work and are a small fraction). Attention is counted in full also for the causal text
transformer, as FLOP counters do. A training step costs about 3x the forward pass (the backward
pass computes gradients for activations and for weights: 2x the forward).

ViT-B/32 at 224 px with 77 text tokens: 8.82 GFLOPs image + 5.96 GFLOPs text = 14.78 GFLOPs.

These are the *model's* FLOPs, the figure FLOP tables (OpenCLIP's among them) give and the one
MFU is defined on (PaLM, Chowdhery et al. 2022: throughput x model FLOPs / peak). With
``executed=True`` the functions count instead what the trainer's towers compute: the last
transformer block only at the pooled token (CLS, end of text; keys and values at every
position), and a ResNet's 3x3 convolutions on maps of at most ``trainer.vision.SMALL_MAP``
positions as the dense GEMM they run as (no multiply-adds with the zero padding).
"""
from __future__ import annotations

__all__ = ["image_flops", "text_flops", "forward_flops", "train_flops"]


def _transformer_macs(tokens: int, width: int, layers: int, pooled: bool = False) -> int:
    # per token and layer: qkv 3w^2 + out w^2 + MLP 8w^2; attention: QK^T and AV, n^2 w each
    if not pooled or layers == 0:
        return layers * (tokens * 12 * width * width + 2 * tokens * tokens * width)
    # the last block at one query: k, v at every position; q, out, MLP and attention for one
    last = tokens * 2 * width * width + 10 * width * width + 2 * tokens * width
    return _transformer_macs(tokens, width, layers - 1) + last


def image_flops(cfg: dict, executed: bool = False) -> int:
    """Forward FLOPs of the image tower for one image (``executed``: as the trainer runs it,
    see the module docstring)."""
    v, embed = cfg["vision_cfg"], cfg["embed_dim"]
    size, w = v["image_size"], v["width"]
    if not isinstance(v["layers"], (list, tuple)):
        p = v["patch_size"]
        grid = size // p
        n = grid * grid + 1
        macs = (grid * grid * 3 * p * p * w + _transformer_macs(n, w, v["layers"], executed)
                + w * embed)
        return 2 * macs
    from trainer.vision import SMALL_MAP
    # ModifiedResNet: stem at size/2, bottlenecks from size/4, attention pool at size/32
    half = size // 2
    macs = half * half * 9 * (3 * (w // 2) + (w // 2) * (w // 2) + (w // 2) * w)
    res, inplanes = size // 4, w
    for i, blocks in enumerate(v["layers"]):
        planes = w * 2 ** i
        for b in range(blocks):
            stride = 2 if i > 0 and b == 0 else 1
            out_res = res // stride
            small = executed and res * res <= SMALL_MAP   # conv2 as one dense GEMM
            macs += res * res * (inplanes * planes + (res * res if small else 9) * planes * planes)
            macs += out_res * out_res * planes * 4 * planes
            if b == 0:
                macs += out_res * out_res * inplanes * 4 * planes
            inplanes, res = 4 * planes, out_res
    c = 32 * w
    tokens = (size // 32) ** 2 + 1
    macs += 2 * tokens * c * c + c * c + 2 * tokens * c + c * embed   # k, v, q(1), attn, c_proj
    return 2 * macs


def text_flops(cfg: dict, tokens: int | None = None, executed: bool = False) -> int:
    """Forward FLOPs of the text tower for one text of ``tokens`` positions (default: the
    context length; the trainer runs only up to the batch's last end-of-text token)."""
    t = cfg["text_cfg"]
    n = t["context_length"] if tokens is None else tokens
    return 2 * (_transformer_macs(n, t["width"], t["layers"], executed)
                + t["width"] * cfg["embed_dim"])


def forward_flops(cfg: dict, tokens: int | None = None, executed: bool = False) -> int:
    return image_flops(cfg, executed) + text_flops(cfg, tokens, executed)


def train_flops(cfg: dict, tokens: int | None = None, executed: bool = False) -> int:
    """FLOPs of one training step per pair (3x forward; recomputation not counted)."""
    return 3 * forward_flops(cfg, tokens, executed)
