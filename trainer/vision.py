"""CLIP's image towers with OpenAI's parameter names (see :mod:`trainer.model`):
:class:`VisionTransformer` and :class:`ModifiedResNet` (with its :class:`Bottleneck` blocks and
:class:`AttentionPool2d`)."""
from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from wit_builder.core import WitError

from trainer.layers import LayerNorm, Transformer, attention

__all__ = ["VisionTransformer", "ModifiedResNet", "Bottleneck", "AttentionPool2d", "use_channels_last"]


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, quick_gelu: bool):
        super().__init__()
        if image_size % patch_size:
            raise WitError(f"image size {image_size} is not a multiple of patch size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """``conv1`` (kernel = stride = patch, no bias) as one GEMM: ``[B, grid^2, width]``.
        The image is cut into its patches by a reshape (kernel = stride: the patches do not
        overlap) and multiplied by the kernel viewed as a ``[width, 3 p^2]`` matrix; the same
        numbers as the convolution up to summation order, and a much faster weight gradient
        on CPU (oneDNN's bf16 backward of this convolution took 0.67 s of a ViT-B/32 step)."""
        b, c, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise WitError(f"image of {h}x{w} px is not a multiple of patch size {p}")
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        weight = self.conv1.weight
        return F.linear(x.reshape(b, (h // p) * (w // p), c * p * p).to(weight.dtype),
                        weight.reshape(weight.shape[0], -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_patches(x)                                 # [B, grid^2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        first = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)   # the CLS token
        x = self.transformer(self.ln_pre(x), rows=first)           # [B, 1, width]: CLS only
        return self.ln_post(x[:, 0]) @ self.proj.to(x.dtype)


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1, stride-1, bias-free convolution; on CPU, for a channels-last input in reduced
    precision (bf16 autocast or weights) or on a map of at most 2x2, computed as one GEMM over
    the NHWC rows (a view, no copy) with the kernel viewed as a matrix: the same numbers up to
    summation order. oneDNN's convolution backward is slow there: 19x (bf16) and 3.6x (fp32)
    the GEMM's time for tiny-rn's last 1x1 convolutions (512 -> 1024 channels on a 1x1 map)."""
    h, w = x.shape[-2:]
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
    reduced = x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
    if x.device.type != "cpu" or not nhwc or not (reduced or h * w <= 4):
        return conv(x)
    weight = conv.weight
    y = F.linear(x.permute(0, 2, 3, 1), weight.reshape(weight.shape[0], -1))
    return y.permute(0, 3, 1, 2)                                  # NCHW shape, NHWC memory


@lru_cache(maxsize=None)
def _tap_index(h: int, w: int, k: int) -> torch.Tensor:
    """``[h w * h w]`` indices: entry (o, i) is the kernel tap (``dy * k + dx``) through which
    input position i reaches output position o of a stride-1, ``k // 2``-padded k x k
    convolution on an h x w map, or ``k * k`` (a zero block) where it does not."""
    idx = torch.full((h * w, h * w), k * k, dtype=torch.long)
    for oy in range(h):
        for ox in range(w):
            for iy in range(h):
                for ix in range(w):
                    dy, dx = iy - oy + k // 2, ix - ox + k // 2
                    if 0 <= dy < k and 0 <= dx < k:
                        idx[oy * w + ox, iy * w + ix] = dy * k + dx
    return idx


SMALL_MAP = 4  # positions (h * w) up to which conv_small_map is one dense GEMM


def conv_small_map(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A stride-1, same-padded, bias-free k x k convolution on a map of at most
    :data:`SMALL_MAP` positions, on CPU, as one GEMM: on a 2 x 2 map every output position
    sees every input position, so the convolution *is* a dense linear map from the
    ``h w C_in`` inputs to the ``h w C_out`` outputs, whose ``[C_out h w, h w C_in]`` matrix
    holds kernel taps in blocks (:func:`_tap_index`; no arithmetic wasted on padding). The
    same numbers up to summation order; the weight gradient flows back through the block
    gather (its backward adds each tap's blocks). tiny-rn's last 3 x 3 convolution (256
    channels, 2 x 2 map, batch 256) takes 3.1 ms forward + backward this way against 16 ms
    in oneDNN's bf16 convolution (7.8 ms against 27 ms in fp32); on a 4 x 4 map the dense
    GEMM's wasted blocks make it slower than the convolution, hence the cap."""
    h, w = x.shape[-2:]
    k = conv.kernel_size[0]
    plain = (conv.kernel_size == (k, k) and k % 2 and conv.stride == (1, 1)
             and conv.padding == (k // 2, k // 2) and conv.dilation == (1, 1)
             and conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros")
    if x.device.type != "cpu" or not plain or h * w > SMALL_MAP:
        return conv(x)
    n, c = x.shape[:2]
    weight = conv.weight
    if torch.is_autocast_enabled("cpu"):
        weight = weight.to(torch.get_autocast_dtype("cpu"))
    taps = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], k * k, c)   # [C_out, k k, C_in]
    taps = torch.cat([taps, taps.new_zeros(taps.shape[0], 1, c)], dim=1)  # + the zero block
    matrix = taps.index_select(1, _tap_index(h, w, k).reshape(-1))        # [C_out, o, i, C_in]
    matrix = matrix.reshape(taps.shape[0] * h * w, h * w * c)
    y = F.linear(x.permute(0, 2, 3, 1).reshape(n, h * w * c).to(matrix.dtype), matrix)
    y = y.view(n, taps.shape[0], h, w)                                     # rows (C_out, o)
    if x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


class Bottleneck(nn.Module):
    """ResNet bottleneck; stride is done by an average pool after conv2 (anti-aliasing), and the
    shortcut's downsample is avgpool -> 1x1 conv -> BN (module names -1, 0, 1 as OpenAI's)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                ("1", nn.BatchNorm2d(out)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(conv1x1(self.conv1, x)))
        y = F.relu(self.bn2(conv_small_map(self.conv2, y)))
        y = self.bn3(conv1x1(self.conv3, self.avgpool(y)))
        if self.downsample is None:
            return F.relu(y + x)
        pool, conv, bn = self.downsample
        return F.relu(y + bn(conv1x1(conv, pool(x))))


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean of the feature map (plus positional embeddings) is the one
    query attending over itself and all positions; ``c_proj`` maps to the embedding size."""

    def __init__(self, spatial: int, channels: int, heads: int, output_dim: int):
        super().__init__()
        if channels % heads:
            raise WitError(f"attention-pool width {channels} is not divisible by {heads} heads")
        self.positional_embedding = nn.Parameter(torch.randn(spatial * spatial + 1, channels)
                                                 / channels ** 0.5)
        self.k_proj = nn.Linear(channels, channels)
        self.q_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.c_proj = nn.Linear(channels, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)                                    # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        h, d = self.heads, c // self.heads
        q = self.q_proj(x[:, :1]).view(b, 1, h, d).transpose(1, 2)
        k = self.k_proj(x).view(b, -1, h, d).transpose(1, 2)
        v = self.v_proj(x).view(b, -1, h, d).transpose(1, 2)
        y = attention(q, k, v)                                              # [B, h, 1, d]
        return self.c_proj(y.reshape(b, c))


class ModifiedResNet(nn.Module):
    def __init__(self, layers: list[int], output_dim: int, heads: int, image_size: int,
                 width: int):
        super().__init__()
        if image_size % 32:
            raise WitError(f"ResNet image size {image_size} is not a multiple of 32")
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, n in enumerate(layers):
            planes, stride = width * 2 ** i, (1 if i == 0 else 2)
            blocks = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            blocks += [Bottleneck(inplanes, planes) for _ in range(1, n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_layers = len(layers)
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = self.avgpool(x)
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.attnpool(x)


def use_channels_last(visual: nn.Module) -> bool:
    """Store a ResNet image tower's weights channels-last (NHWC); True when it did. The first
    convolution then returns NHWC activations for NCHW input, so the whole trunk runs oneDNN's
    NHWC kernels (CPU) or cuDNN's (GPU): the tiny-rn step of the demo, `python bench/train.py
    --models tiny-rn`, runs faster that way. The numbers are those of the contiguous layout up to
    floating-point summation order; state dicts load into either layout. ViT towers are left
    as they are (no convolution after the patch embedding)."""
    if not isinstance(visual, ModifiedResNet):
        return False
    visual.to(memory_format=torch.channels_last)
    return True
