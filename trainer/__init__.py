"""The bundled CLIP trainer: models, tokenizer, data, training and evaluation.

``from trainer import load`` is resolved lazily so importing the package does not import torch.
"""
from __future__ import annotations

__all__ = ["load"]


def __getattr__(name):
    if name == "load":
        from trainer.api import load
        return load
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
