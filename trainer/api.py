"""Python API: ``load(checkpoint) -> (model, preprocess, tokenizer)``, like ``clip.load``.

    from trainer import load
    model, preprocess, tokenizer = load("RUN/checkpoints/latest.pt")
    image = preprocess(PIL.Image.open("x.jpg"))[None]
    text = tokenizer(["a dog", "a cat"])
    img, txt, scale = model(image, text)          # normalised features, exp(logit_scale)
    probs = (scale * img @ txt.T).softmax(dim=-1)
"""
from __future__ import annotations

import os

from wit_builder.core import WitError

__all__ = ["load", "load_checkpoint", "label_probs"]


def load_checkpoint(path: str, device: str = "cpu") -> dict:
    """A trainer checkpoint dict, read with ``torch.load(weights_only=True)``."""
    import torch
    if not os.path.exists(path):
        raise WitError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise WitError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or not {"model", "model_cfg", "tokenizer_merges"} <= set(ckpt):
        raise WitError(f"{path}: not a wit trainer checkpoint (needs model, model_cfg, "
                       "tokenizer_merges)")
    return ckpt


def image_size_of(cfg: dict) -> int:
    vision = cfg.get("vision_cfg") or {}
    return int(vision.get("image_size", cfg.get("image_size", 224)))


def load(checkpoint_path: str, device: str = "cpu", create_model=None):
    """(model in eval mode on ``device``, eval preprocess: PIL image -> tensor, tokenizer).

    ``create_model`` defaults to :func:`trainer.model.create_model`.
    """
    from trainer.tokenizer import Tokenizer
    from trainer.transforms import image_transform
    ckpt = load_checkpoint(checkpoint_path, device="cpu")
    if create_model is None:
        from trainer.model import create_model
    cfg = dict(ckpt["model_cfg"])
    model, _ = create_model(cfg)
    state = {k[len("module."):] if k.startswith("module.") else k: v
             for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WitError(f"{checkpoint_path}: weights do not match model_cfg ({exc})") from None
    model = model.to(device).eval()
    preprocess = image_transform(image_size_of(cfg), train=False)
    tokenizer = Tokenizer.from_merges(ckpt["tokenizer_merges"])
    return model, preprocess, tokenizer


def label_probs(model, preprocess, tokenizer, image, labels: list[str], device: str = "cpu"):
    """Softmax over ``labels`` of exp(logit_scale) * cosine similarity, as in CLIP's README."""
    import torch
    if not labels:
        raise WitError("no labels given")
    x = preprocess(image)[None].to(device)
    tokens = tokenizer(labels).to(device)
    with torch.no_grad():
        img, txt, scale = model(x, tokens)
        logits = scale * img.float() @ txt.float().T
    return logits.softmax(dim=-1)[0].cpu().tolist()
