"""Training checkpoints and the run log.

A checkpoint (``OUT/checkpoints/step-NNNNNNNN.pt``, copied to ``latest.pt``, both written
atomically; the oldest ``step-*.pt`` beyond ``keep`` are removed) holds what
:func:`trainer.train.train` needs to continue exactly: model, optimizer, scaler, step, epoch,
RNG states (:func:`rng_state`), data position, model config, tokenizer merges and the config,
and the weights again as ``state_dict`` for OpenCLIP's loader (:func:`save_checkpoint`).
The run log (``OUT/log.jsonl``) has one JSON record per line; on resume the records written
after the checkpoint's step are dropped (:func:`truncate_log`) since they will be redone.
A re-run first removes the temporaries a killed run left (:func:`remove_stale_temporaries`).
"""
from __future__ import annotations

import json
import os
import random
import shutil

from wit_builder.core import WitError, atomic_open, remove_temporaries

__all__ = ["find_resume", "load_training_checkpoint", "restore", "save_checkpoint", "rng_state",
           "set_rng_state", "read_log", "truncate_log", "remove_stale_temporaries"]

# the files a run writes (atomic_open leaves ".NAME.tmp-XXXXXXXX" of them when killed): step and
# latest checkpoints (in OUT/checkpoints), the log, summary and curves (in OUT)
_CKPT_NAMES = r"(latest|step-\d{8})\.pt"
_OUT_NAMES = r"(log\.jsonl|summary\.json|curves\.png)"


def rng_state() -> dict:
    """The Python, torch, numpy (and CUDA) RNG states, in a ``weights_only``-loadable form."""
    import numpy as np
    import torch
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss),
                      float(gauss)]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states :func:`rng_state` saved."""
    import numpy as np
    import torch
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: str) -> dict:
    """A training checkpoint (``torch.load(weights_only=True)``), checked for the keys resuming
    needs."""
    from trainer.api import load_checkpoint
    ckpt = load_checkpoint(path)
    missing = {"optimizer", "step", "epoch", "data", "rng"} - set(ckpt)
    if missing:
        raise WitError(f"{path}: cannot resume from it (no {', '.join(sorted(missing))})")
    return ckpt


def find_resume(resume: str | None, out: str, ckpt_dir: str) -> str | None:
    """The checkpoint ``--resume`` names (``latest``: ``ckpt_dir/latest.pt`` if there is one);
    None: a new run, refused where ``out`` already holds one."""
    if resume == "latest":
        latest = os.path.join(ckpt_dir, "latest.pt")
        return latest if os.path.exists(latest) else None
    if resume:
        if not os.path.exists(resume):
            raise WitError(f"--resume: checkpoint not found: {resume}")
        return resume
    if os.path.exists(os.path.join(ckpt_dir, "latest.pt")):
        raise WitError(f"{out} already holds a run; pass --resume latest to continue it "
                       "or choose another --out")
    return None


def restore(ckpt: dict, model, optimizer, scaler) -> tuple[int, int, int]:
    """Load a checkpoint's weights, optimizer, scaler and RNG states; returns where the run
    continues: ``(step, epoch, batches taken in that epoch)``."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    where = int(ckpt["step"]), int(ckpt["data"]["epoch"]), int(ckpt["data"]["batches"])
    set_rng_state(ckpt["rng"])
    return where


def save_checkpoint(ckpt_dir: str, step: int, state: dict, keep: int) -> str:
    """Write ``step-NNNNNNNN.pt`` and ``latest.pt``, keep the newest ``keep`` step files (0: all);
    returns the step file's path.

    The weights are also stored under ``state_dict`` (the same tensors: ``torch.save`` writes
    them once), the key OpenCLIP's loader reads, so ``open_clip.create_model(NAME,
    pretrained=CHECKPOINT)`` loads the file; ``openclip_model`` names the built-in OpenCLIP
    config that builds this model with the right activation (``ViT-B-32-quickgelu``), or None
    (:func:`trainer.export.openclip_model_name`)."""
    import torch
    if "model" in state:
        state = {**state, "state_dict": state["model"],
                 "openclip_model": _openclip_name(state.get("model_cfg"))}
    path = os.path.join(ckpt_dir, f"step-{step:08d}.pt")
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)
    with open(path, "rb") as src, atomic_open(os.path.join(ckpt_dir, "latest.pt"), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    if keep > 0:
        old = sorted(f for f in os.listdir(ckpt_dir) if f.startswith("step-") and f.endswith(".pt"))
        for name in old[:-keep]:
            os.unlink(os.path.join(ckpt_dir, name))
    return path


def _openclip_name(model_cfg) -> str | None:
    from trainer.export import openclip_model_name
    try:
        return openclip_model_name(model_cfg) if model_cfg else None
    except WitError:  # a config OpenCLIP cannot express
        return None


def remove_stale_temporaries(out: str, ckpt_dir: str) -> list[str]:
    """Remove what a killed run left half-written in ``out`` and ``ckpt_dir`` (only the
    temporary names its own atomic writes use; nothing else); returns the removed paths."""
    return remove_temporaries(ckpt_dir, _CKPT_NAMES) + remove_temporaries(out, _OUT_NAMES)


def read_log(path: str) -> list[dict]:
    """The records of a run log (``[]`` if there is none)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def truncate_log(path: str, step: int) -> None:
    """On resume, drop records written after the checkpoint's step (they will be redone)."""
    records = [r for r in read_log(path) if r.get("step", 0) <= step]
    with atomic_open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
