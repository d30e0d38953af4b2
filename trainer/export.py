"""Our models for OpenCLIP users: OpenCLIP model configs and a folder OpenCLIP loads as it is.

Our checkpoints hold OpenAI CLIP's parameter names, which are also OpenCLIP's for these
architectures (``CLIP`` with a built-in text tower), so the weights need no renaming. What
differs is the config:

* vision heads: ours is ``heads``; OpenCLIP's ``vision_cfg`` has ``head_width`` instead (and
  rejects ``heads``): a ViT gets ``width // head_width`` heads, a ResNet's attention pool
  ``width * 32 // head_width``. :func:`openclip_model_cfg` converts, and refuses a head count
  that no ``head_width`` gives;
* the activation: OpenCLIP's ``quick_gelu`` defaults to false (``nn.GELU``), OpenAI's weights
  and our paper configs use QuickGELU (``x * sigmoid(1.702 x)``), the built-in OpenCLIP names
  ending in ``-quickgelu``. The exported config always states it, and
  :func:`openclip_model_name` gives the built-in name with the right activation (``ViT-B-32``
  with QuickGELU -> ``ViT-B-32-quickgelu``; the tiny configs, plain GELU, have no built-in name).

:func:`export_openclip` writes OpenCLIP's hub layout, loadable with
``open_clip.create_model_and_transforms("local-dir:OUT")`` and ``open_clip.get_tokenizer(
"local-dir:OUT")``:

* ``open_clip_pytorch_model.bin``: the state_dict (``torch.save``, ``weights_only``-loadable;
  also what ``create_model(NAME, pretrained=FILE)`` takes);
* ``bpe_simple_vocab.txt.gz``: the run's merges, gzip (OpenCLIP reads only gzip), no newline
  after the last merge (see :func:`trainer.bpe.format_merges`);
* ``open_clip_config.json``: ``{"model_cfg": ..., "preprocess_cfg": ...}``; ``model_cfg``
  carries ``quick_gelu``, and, unless the merges are OpenAI's own (OpenCLIP's default),
  ``text_cfg.tokenizer_kwargs.bpe_path``: the absolute path of the vocabulary file (OpenCLIP
  resolves no path relative to the folder; after moving the folder pass
  ``get_tokenizer("local-dir:NEW", bpe_path="NEW/bpe_simple_vocab.txt.gz")``).

Each file is written atomically (temporary name, then rename), the config last: a folder with
a config has its weights and vocabulary.
"""
from __future__ import annotations

import gzip
import os

from wit_builder.core import WitError, atomic_open, atomic_write_json

__all__ = ["openclip_model_cfg", "openclip_model_name", "openclip_preprocess_cfg",
           "export_openclip", "checkpoint_path", "OPENCLIP_CONFIG", "OPENCLIP_WEIGHTS",
           "OPENCLIP_VOCAB"]

OPENCLIP_CONFIG = "open_clip_config.json"
OPENCLIP_WEIGHTS = "open_clip_pytorch_model.bin"   # a name OpenCLIP's local-dir loader prefers
OPENCLIP_VOCAB = "bpe_simple_vocab.txt.gz"


def _head_width(vision: dict) -> int:
    """OpenCLIP's ``head_width`` that gives our number of vision heads."""
    resnet = isinstance(vision["layers"], (list, tuple))
    channels = vision["width"] * 32 if resnet else vision["width"]  # ResNet: attention-pool width
    heads = vision["heads"]
    if channels % heads:
        raise WitError(f"vision tower: {heads} heads over {channels} channels has no OpenCLIP "
                       "head_width (the channels must be a multiple of the heads)")
    return channels // heads


def openclip_model_cfg(cfg: dict | str) -> dict:
    """OpenCLIP's ``model_cfg`` for one of our configs (a name, a path or a dict such as a
    checkpoint's ``model_cfg``): the same sizes, ``head_width`` for the vision heads, and
    ``quick_gelu`` always stated."""
    from trainer.model import resolve_config
    cfg = resolve_config(cfg)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    vision = {"image_size": v["image_size"], "layers": v["layers"], "width": v["width"],
              "patch_size": v.get("patch_size"), "head_width": _head_width(v)}
    text = {key: t[key] for key in ("context_length", "vocab_size", "width", "heads", "layers")}
    return {"embed_dim": cfg["embed_dim"], "quick_gelu": cfg["quick_gelu"],
            "vision_cfg": vision, "text_cfg": text}


def openclip_model_name(cfg: dict | str) -> str | None:
    """The name of OpenCLIP's built-in config that builds exactly this model (for
    ``open_clip.create_model(NAME, pretrained=CHECKPOINT)``): one of our paper configs' names,
    with ``-quickgelu`` when the model uses QuickGELU; None when none does (the tiny configs, a
    vocabulary other than OpenAI's 49,408 tokens, another image size or context length)."""
    from trainer.model import list_models
    ours = openclip_model_cfg(cfg)
    for name in list_models():
        if name.startswith("tiny-"):
            continue
        paper = openclip_model_cfg(name)
        paper["quick_gelu"] = ours["quick_gelu"]
        if paper == ours:
            return name + ("-quickgelu" if ours["quick_gelu"] else "")
    return None


def openclip_preprocess_cfg(cfg: dict | str) -> dict:
    """OpenCLIP's ``preprocess_cfg`` equal to our evaluation transform: resize the shorter side
    (bicubic), centre crop, OpenAI's mean and std."""
    from trainer.api import image_size_of
    from trainer.model import resolve_config
    from trainer.transforms import CLIP_MEAN, CLIP_STD
    return {"size": image_size_of(resolve_config(cfg)), "mode": "RGB", "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD), "interpolation": "bicubic", "resize_mode": "shortest",
            "fill_color": 0}


def checkpoint_path(run_or_checkpoint: str) -> str:
    """A checkpoint file, or a run directory's ``checkpoints/latest.pt``."""
    if os.path.isdir(run_or_checkpoint):
        path = os.path.join(run_or_checkpoint, "checkpoints", "latest.pt")
        if not os.path.isfile(path):
            raise WitError(f"{run_or_checkpoint}: no checkpoints/latest.pt in this run directory")
        return path
    if not os.path.isfile(run_or_checkpoint):
        raise WitError(f"checkpoint or run directory not found: {run_or_checkpoint}")
    return run_or_checkpoint


def export_openclip(run_or_checkpoint: str, out: str, overwrite: bool = False) -> dict:
    """Write the OpenCLIP folder ``out`` (see the module docstring) from a checkpoint or a run
    directory; returns ``{"out", "files", "model_name", "model_cfg", "merges", "checkpoint"}``
    (``model_name``: :func:`openclip_model_name`)."""
    import torch

    from trainer.api import load_checkpoint
    from trainer.bpe import OPENAI_NUM_MERGES, format_merges, openai_vocab_path
    from trainer.tokenizer import Tokenizer
    src = checkpoint_path(run_or_checkpoint)
    if os.path.exists(out) and not os.path.isdir(out):
        raise WitError(f"{out}: exists and is not a directory")
    if not overwrite and os.path.exists(os.path.join(out, OPENCLIP_CONFIG)):
        raise WitError(f"{out} already holds an export; pass --overwrite to replace it")
    if os.path.isdir(out):  # OpenCLIP's local-dir loader takes any weights file it finds
        others = sorted(f for f in os.listdir(out) if f != OPENCLIP_WEIGHTS
                        and f.endswith((".safetensors", ".bin", ".pth")))
        if others:
            raise WitError(f"{out}: holds other weights files ({', '.join(others)}) that "
                           "OpenCLIP could load instead of the export; choose an empty folder")
    ckpt = load_checkpoint(src)
    model_cfg = openclip_model_cfg(ckpt["model_cfg"])
    state = {k[len("module."):] if k.startswith("module.") else k: v
             for k, v in ckpt["model"].items()}
    tokenizer = Tokenizer.from_merges(ckpt["tokenizer_merges"])
    if tokenizer.vocab_size > model_cfg["text_cfg"]["vocab_size"]:
        raise WitError(f"{src}: its merges give {tokenizer.vocab_size} tokens but the model has "
                       f"only {model_cfg['text_cfg']['vocab_size']} token embeddings")
    os.makedirs(out, exist_ok=True)
    weights, vocab = os.path.join(out, OPENCLIP_WEIGHTS), os.path.join(out, OPENCLIP_VOCAB)
    with atomic_open(weights, "wb") as fh:
        torch.save(state, fh)
    with atomic_open(vocab, "wb") as fh:
        fh.write(gzip.compress(format_merges(tokenizer.merges).encode("utf-8"), mtime=0))
    openai_merges = False
    if len(tokenizer.merges) == OPENAI_NUM_MERGES:
        try:
            openai_merges = Tokenizer.from_merges(openai_vocab_path()).merges == tokenizer.merges
        except WitError:   # OpenAI's file is not installed here: keep the explicit path
            pass
    if not openai_merges:  # OpenCLIP's default vocabulary is OpenAI's; ours needs its path
        model_cfg["text_cfg"]["tokenizer_kwargs"] = {"bpe_path": os.path.abspath(vocab)}
    config = {"model_cfg": model_cfg, "preprocess_cfg": openclip_preprocess_cfg(ckpt["model_cfg"])}
    atomic_write_json(os.path.join(out, OPENCLIP_CONFIG), config)
    return {"out": out, "files": [weights, vocab, os.path.join(out, OPENCLIP_CONFIG)],
            "model_name": openclip_model_name(ckpt["model_cfg"]), "model_cfg": model_cfg,
            "merges": len(tokenizer.merges), "checkpoint": src}
