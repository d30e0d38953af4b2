"""CLIP models with OpenAI CLIP's parameter names and shapes (Radford et al. 2021).

* Image towers: :class:`ModifiedResNet` (3-conv stem with an average pool, anti-aliased
  strided blocks: an average pool before every stride-2 step, attention pooling instead of a
  global average pool) and :class:`VisionTransformer` (patch convolution without bias, class
  token, positional embedding, the extra LayerNorm ``ln_pre`` before the transformer,
  ``ln_post`` on the class token, projection ``proj``).
* Text tower: a causal :class:`Transformer`; the features are taken at the end-of-text token
  (the largest id in each row), after ``ln_final``, projected by ``text_projection``.
* ``logit_scale``: the learnable log temperature, initialised to ln(1/0.07).

The state_dict keys and shapes are OpenAI's (``visual.conv1.weight``,
``transformer.resblocks.0.attn.in_proj_weight``, ``visual.layer1.0.downsample.0.weight``, ...),
so OpenAI / OpenCLIP checkpoints load into these modules and ours into theirs. Attention keeps
``nn.MultiheadAttention``'s parameter names (``attn.in_proj_weight``, ``attn.in_proj_bias``,
``attn.out_proj.{weight,bias}``) but runs through ``F.scaled_dot_product_attention`` (the fused
kernels, causal masking by ``is_causal``) on batch-first tensors.

Initialisation follows OpenAI's release: token embedding N(0, 0.02), text positional embedding
N(0, 0.01); text transformer blocks: in_proj N(0, w^-0.5), out_proj and c_proj
N(0, w^-0.5 (2L)^-0.5), c_fc N(0, (2w)^-0.5); text_projection N(0, w^-0.5); ViT class and
positional embeddings and ``proj`` w^-0.5 * N(0, 1); ResNet attention-pool projections
N(0, C^-0.5) and positional embedding N(0, 1) / C^0.5; the last BatchNorm gain of every
bottleneck zero. Everything else keeps PyTorch's default initialisation (as in OpenAI's code,
including the vision transformer's blocks and attention, initialised like
``nn.MultiheadAttention``: Xavier-uniform in_proj, zero in_proj / out_proj biases).

Configs are data: ``trainer/model_configs/NAME.json`` (``embed_dim``, ``quick_gelu``,
``vision_cfg``, ``text_cfg``). ``create_model(name_or_cfg) -> (model, cfg)``.
"""
from __future__ import annotations

import copy
import glob
import json
import math
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from wit_builder.core import WitError

__all__ = ["CLIP", "VisionTransformer", "ModifiedResNet", "Transformer",
           "Attention", "AttentionPool2d", "create_model", "list_models", "get_model_config",
           "resolve_config", "config_from_state_dict", "CONFIG_DIR"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")


# --- building blocks --------------------------------------------------------------------------
class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and returned in the input's dtype (as OpenAI's, so
    half-precision weights or activations keep a float32 normalisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                         self.bias.float(), self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


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

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [b, heads, n, d/heads]
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


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

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x


# --- image towers -----------------------------------------------------------------------------
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.to(self.conv1.weight.dtype))           # [B, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)                          # [B, grid^2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj.to(x.dtype)


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
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


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
        y = F.scaled_dot_product_attention(q, k, v)                         # [B, h, 1, d]
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


# --- CLIP -------------------------------------------------------------------------------------
class CLIP(nn.Module):
    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, quick_gelu: bool = True):
        super().__init__()
        v, t = vision_cfg, text_cfg
        if isinstance(v["layers"], (list, tuple)):
            self.visual = ModifiedResNet(list(v["layers"]), embed_dim, v["heads"],
                                         v["image_size"], v["width"])
        else:
            self.visual = VisionTransformer(v["image_size"], v["patch_size"], v["width"],
                                            v["layers"], v["heads"], embed_dim, quick_gelu)
        self.context_length = t["context_length"]
        self.vocab_size = t["vocab_size"]
        self.transformer = Transformer(t["width"], t["layers"], t["heads"], quick_gelu,
                                       causal=True)
        self.token_embedding = nn.Embedding(t["vocab_size"], t["width"])
        self.positional_embedding = nn.Parameter(torch.empty(t["context_length"], t["width"]))
        self.ln_final = LayerNorm(t["width"])
        self.text_projection = nn.Parameter(torch.empty(t["width"], embed_dim))
        self.logit_scale = nn.Parameter(torch.full([], math.log(1 / 0.07)))
        self.initialize_parameters()

    @torch.no_grad()
    def initialize_parameters(self) -> None:
        """OpenAI's initialisation (see the module docstring)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features ** -0.5
            for lin in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(lin.weight, std=std)
            for name, p in self.visual.named_parameters():
                if name.startswith("layer") and name.endswith("bn3.weight"):
                    nn.init.zeros_(p)
        w, n = self.transformer.width, self.transformer.layers
        proj_std, attn_std, fc_std = w ** -0.5 * (2 * n) ** -0.5, w ** -0.5, (2 * w) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks in the backward pass (both towers' transformers).
        The ResNet trunk is not checkpointed: recomputing BatchNorm in training mode would
        update its running statistics twice."""
        self.transformer.grad_checkpointing = enable
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enable

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features ``[B, embed_dim]``."""
        return self.visual(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features ``[B, embed_dim]`` at each row's end-of-text token (its
        largest id).

        Rows longer than the model's context length (e.g. 77-token rows for a model with a
        shorter context) are cut to it with the end token kept last, which gives exactly the
        tokens the tokenizer would have produced for that context length. Positions after the
        last end token of the batch are dropped before the transformer (except under
        torch.compile, to keep shapes static): with the causal mask they cannot influence any
        end-token feature, so this only saves work.
        """
        eot = text.argmax(dim=-1)
        if text.shape[1] > self.context_length:
            eot_id = text[torch.arange(text.shape[0], device=text.device), eot]
            cut = eot >= self.context_length
            text = text[:, :self.context_length].clone()
            text[cut, -1] = eot_id[cut]
            eot = torch.where(cut, torch.full_like(eot, self.context_length - 1), eot)
        if text.numel() and not torch.compiler.is_compiling():
            text = text[:, :int(eot.max()) + 1]   # compiled graphs keep static shapes instead
        length = text.shape[1]
        x = self.token_embedding(text).to(self.dtype)
        x = x + self.positional_embedding[:length].to(x.dtype)
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection.to(x.dtype)

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        """(L2-normalised image features, L2-normalised text features, exp(logit_scale))."""
        img = F.normalize(self.encode_image(image), dim=-1)
        txt = F.normalize(self.encode_text(text), dim=-1)
        return img, txt, self.logit_scale.exp()


# --- configs ----------------------------------------------------------------------------------
def _canonical(name: str) -> str:
    return name.replace("/", "-")


def list_models() -> list[str]:
    """Names of the bundled configs (``trainer/model_configs/*.json``)."""
    return sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(CONFIG_DIR, "*.json")))


def get_model_config(name: str) -> dict:
    """A bundled config by name (``ViT-B/32`` and ``ViT-B-32`` both work) or a JSON file path."""
    path = name if name.endswith(".json") and os.path.exists(name) else \
        os.path.join(CONFIG_DIR, _canonical(name) + ".json")
    if not os.path.exists(path):
        raise WitError(f"unknown model {name!r}; choose from {', '.join(list_models())} "
                       "or give a config .json file")
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    cfg.setdefault("name", _canonical(os.path.splitext(os.path.basename(path))[0]))
    return cfg


def resolve_config(cfg: str | dict, image_size: int | None = None, **text_overrides) -> dict:
    """A complete config dict: defaults filled in (heads, quick_gelu), ``image_size`` applied to
    ``vision_cfg`` and ``text_overrides`` (``vocab_size=``, ``context_length=``) to ``text_cfg``,
    values checked."""
    cfg = copy.deepcopy(get_model_config(cfg) if isinstance(cfg, str) else dict(cfg))
    try:
        v, t = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
        cfg["embed_dim"] = int(cfg["embed_dim"])
        cfg["quick_gelu"] = bool(cfg.get("quick_gelu", True))
        if isinstance(v["layers"], (list, tuple)):
            v["layers"] = [int(n) for n in v["layers"]]
            v.setdefault("heads", v["width"] * 32 // 64)
            v.pop("patch_size", None)
        else:
            v.setdefault("heads", v["width"] // 64)
            v["patch_size"] = int(v["patch_size"])
        if image_size is not None:
            v["image_size"] = image_size
        for key in ("image_size", "width", "heads"):
            v[key] = int(v[key])
        t.update({k: val for k, val in text_overrides.items() if val is not None})
        t.setdefault("heads", t["width"] // 64)
        for key in ("context_length", "vocab_size", "width", "heads", "layers"):
            t[key] = int(t[key])
    except (KeyError, TypeError, ValueError) as exc:
        raise WitError(f"bad model config {cfg.get('name', '')!r}: {type(exc).__name__} {exc}") \
            from None
    if min(v["width"], v["heads"], t["width"], t["heads"], t["layers"], cfg["embed_dim"]) < 1 \
            or t["context_length"] < 2 or t["vocab_size"] < 1:
        raise WitError(f"bad model config {cfg.get('name', '')!r}: sizes must be positive")
    cfg["vision_cfg"], cfg["text_cfg"] = v, t
    return cfg


def create_model(cfg: str | dict, *, grad_checkpointing: bool = False,
                 image_size: int | None = None, **text_overrides):
    """Build a CLIP model: ``(model, resolved cfg)``. ``cfg`` is a bundled config name, a
    ``.json`` path or a config dict (e.g. a checkpoint's ``model_cfg``). Build on the ``meta``
    device with ``with torch.device("meta"): create_model(...)`` to inspect shapes for free."""
    cfg = resolve_config(cfg, image_size=image_size, **text_overrides)
    model = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], cfg["quick_gelu"])
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, cfg


OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def config_from_state_dict(state_dict: dict, quick_gelu: bool = True) -> dict:
    """The config of an OpenAI-layout state_dict (OpenAI's released weights, OpenCLIP's or
    ours), inferred from parameter shapes. Heads cannot be inferred: the OpenAI rule is used
    (64-dim heads; ResNet pools with width*32/64 heads). OpenAI's weights need ``quick_gelu``."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

    try:
        if "visual.proj" in sd:
            width, _, patch, _ = sd["visual.conv1.weight"].shape
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"image_size": patch * grid, "layers": count("visual.transformer.resblocks."),
                      "width": width, "patch_size": patch, "heads": max(1, width // 64)}
        else:
            layers = [count(f"visual.layer{i}.") for i in range(1, 5)]
            grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"image_size": grid * 32, "layers": layers,
                      "width": sd["visual.layer1.0.conv1.weight"].shape[0]}
        width = sd["ln_final.weight"].shape[0]
        text = {"context_length": sd["positional_embedding"].shape[0],
                "vocab_size": sd["token_embedding.weight"].shape[0], "width": width,
                "heads": max(1, width // 64), "layers": count("transformer.resblocks.")}
        cfg = {"embed_dim": sd["text_projection"].shape[1], "quick_gelu": quick_gelu,
               "vision_cfg": vision, "text_cfg": text}
    except KeyError as exc:
        raise WitError(f"not a CLIP state_dict in OpenAI's layout (missing {exc})") from None
    return resolve_config(cfg)


def model_from_state_dict(state_dict: dict, quick_gelu: bool = True):
    """``(model, cfg)`` with the weights of an OpenAI-layout state_dict loaded (OpenAI's JIT
    archives' extra ``input_resolution``/``context_length``/``vocab_size`` entries and a DDP
    ``module.`` prefix are dropped)."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()
          if k not in OPENAI_EXTRA_KEYS}
    model, cfg = create_model(config_from_state_dict(sd, quick_gelu))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return model, cfg
