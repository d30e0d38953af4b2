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

Here: :class:`CLIP` and the configs; the transformer blocks are in :mod:`trainer.layers`, the
image towers in :mod:`trainer.vision` (all importable from here too).
"""
from __future__ import annotations

import copy
import glob
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from wit_builder.core import WitError

from trainer.layers import Attention, LayerNorm, QuickGELU, ResidualAttentionBlock, Transformer
from trainer.vision import AttentionPool2d, Bottleneck, ModifiedResNet, VisionTransformer

__all__ = ["CLIP", "VisionTransformer", "ModifiedResNet", "Transformer",
           "Attention", "AttentionPool2d", "create_model", "list_models", "get_model_config",
           "resolve_config", "config_from_state_dict", "CONFIG_DIR",
           # the building blocks and towers live in trainer.layers / trainer.vision
           "LayerNorm", "QuickGELU", "ResidualAttentionBlock", "Bottleneck"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_configs")


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
        x = self.ln_final(self.transformer(x, rows=eot))    # [B, 1, width]: end tokens only
        return x[:, 0] @ self.text_projection.to(x.dtype)

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
