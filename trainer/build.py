"""Setting a training run up; :func:`trainer.train.train` calls these in this order (the order
of RNG use matters for exact resuming): config checks, device and process group, tokenizer,
seeds, model (with the resume checks), optimizer, DDP / torch.compile / autocast, step budget.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

from wit_builder.core import WitError

from trainer.config import PRECISIONS, TrainConfig
from trainer.step import param_groups

__all__ = ["check_config", "init_distributed", "setup_device", "load_tokenizer", "seed_everything",
           "FROM_CHECKPOINT", "check_resume", "build_model", "build_optimizer", "wrap_model",
           "StepPlan", "plan_steps"]


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings no run can use."""
    if cfg.precision not in PRECISIONS:
        raise WitError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.batch_size < 1 or cfg.accum_freq < 1 or cfg.epochs < 1:
        raise WitError("--batch-size, --accum-freq and --epochs must be >= 1")
    if not 0 <= cfg.warn_skip_share <= 1:
        raise WitError(f"--warn-skip-share must be between 0 and 1, got {cfg.warn_skip_share}")


def init_distributed(device_pref: str):
    """(rank, local_rank, world_size, device, initialised_here)."""
    import torch
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if device_pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise WitError("--device cuda: no CUDA device is available")
        device = torch.device("cuda", local_rank if device_pref == "cuda" else
                              torch.device(device_pref).index or 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_pref)
    here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        here = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, local_rank, world, device, here


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (True where it did: Linux with glibc).

    By default every allocation above a threshold (tens of MB: a training step's activations
    and gradients) is a fresh ``mmap`` returned to the OS when freed, so each step faults in and
    zeroes its memory again, and the heap's top is trimmed back. Here: no ``mmap`` for
    allocations, no trimming; the process keeps its peak step memory (as torch's GPU caching
    allocator does). A ViT-B/32 bf16 step at batch 64 on a 2-core Xeon: 4.0-4.2 s -> 3.5 s.
    """
    import ctypes
    import ctypes.util
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))   # -1: never trim


def setup_device(cfg: TrainConfig):
    """Threads, process group and device: ``(rank, world_size, device, initialised_here)``."""
    import torch
    if cfg.workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenising in forked workers
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, _, world, device, dist_here = init_distributed(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()
    if cfg.precision == "fp16" and device.type != "cuda":
        raise WitError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return rank, world, device, dist_here


def load_tokenizer(cfg: TrainConfig, ckpt: dict | None):
    """The checkpoint's tokenizer on resume, else ``--tokenizer``'s merges."""
    from trainer.tokenizer import Tokenizer
    if ckpt is not None:
        return Tokenizer.from_merges(ckpt["tokenizer_merges"])
    if cfg.tokenizer:
        if not os.path.exists(cfg.tokenizer):
            raise WitError(f"--tokenizer: merges file not found: {cfg.tokenizer}")
        return Tokenizer.from_merges(cfg.tokenizer)
    raise WitError("a tokenizer is required: --tokenizer MERGES (make one with `wit tokenizer train`) or "
                   "--tokenizer openai (OpenAI's vocabulary, from an installed open_clip_torch)")


def seed_everything(seed: int) -> None:
    """Seed Python's, torch's and numpy's global RNGs."""
    import numpy as np
    import torch
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# On resume these come from the checkpoint, never from the command line; a flag that asks for
# another value is refused (nanoGPT's resume block keeps the same list). Everything else (lr,
# steps, batch size, data, ...) is taken from the command line as given.
FROM_CHECKPOINT = ("model", "image_size", "context_length", "tokenizer")


def check_resume(cfg: TrainConfig, ckpt: dict, resume_path: str, tokenizer) -> None:
    """Refuse a resume whose flags contradict what the checkpoint fixes (FROM_CHECKPOINT)."""
    from trainer.model import resolve_config
    from trainer.tokenizer import Tokenizer
    saved = ckpt["model_cfg"]
    have = {"model": saved.get("name"), "image_size": saved["vision_cfg"]["image_size"],
            "context_length": saved["text_cfg"]["context_length"]}
    asked = {"model": resolve_config(cfg.model).get("name"), "image_size": cfg.image_size,
             "context_length": cfg.context_length}
    if have["model"] and asked["model"] and have["model"] != asked["model"]:
        raise WitError(f"{resume_path} is a {have['model']} run but --model is {asked['model']}; pass "
                       f"--model {have['model']} to resume it")
    for key in ("image_size", "context_length"):
        if asked[key] is not None and asked[key] != have[key]:
            flag = "--" + key.replace("_", "-")
            raise WitError(f"{resume_path} was trained with {flag} {have[key]}, not {asked[key]}; on resume "
                           f"{', '.join(FROM_CHECKPOINT)} come from the checkpoint: drop {flag} or start a new --out")
    if cfg.tokenizer and os.path.exists(cfg.tokenizer) and \
            Tokenizer.from_merges(cfg.tokenizer).merges_text != tokenizer.merges_text:
        raise WitError(f"--tokenizer {cfg.tokenizer} differs from the merges {resume_path} was trained with; "
                       f"on resume the checkpoint's tokenizer is used: drop --tokenizer or start a new --out")


def build_model(cfg: TrainConfig, ckpt: dict | None, resume_path: str | None, tokenizer,
                 device):
    """``(model on device, model config)``: the checkpoint's config on resume (after
    :func:`check_resume`), else the flags'."""
    from trainer.model import create_model
    from trainer.vision import use_channels_last
    if ckpt is not None:
        check_resume(cfg, ckpt, resume_path, tokenizer)
        model, model_cfg = create_model(ckpt["model_cfg"])
    else:
        model, model_cfg = create_model(cfg.model, image_size=cfg.image_size,
                                        context_length=cfg.context_length,
                                        vocab_size=tokenizer.vocab_size)
    if tokenizer.vocab_size > model_cfg["text_cfg"]["vocab_size"]:
        raise WitError(f"tokenizer has {tokenizer.vocab_size} tokens, model only "
                       f"{model_cfg['text_cfg']['vocab_size']}")
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    use_channels_last(model.visual)  # ResNet towers: NHWC convolutions (bench/train.py)
    model.to(device)
    return model, model_cfg


def build_optimizer(cfg: TrainConfig, model, device):
    """``(AdamW, GradScaler)``; the scaler is enabled for fp16 only. AdamW is torch's fused
    kernel on CPU as on GPU (one vectorised pass over each parameter: on ViT-B/32's parameters
    4.5-6.9x faster than the per-tensor loop torch uses on CPU by default, bench/train.py)."""
    import torch
    optimizer = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    return optimizer, scaler


def wrap_model(cfg: TrainConfig, model, device, world: int):
    """``(the module the steps run: DDP over the ranks, compiled if asked; autocast context)``."""
    import torch
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    if cfg.precision == "fp32":
        return train_model, contextlib.nullcontext
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16

    def autocast():
        return torch.autocast(device.type, dtype=dtype)
    return train_model, autocast


@dataclass
class StepPlan:
    """The step budget of the run."""
    num_samples: int       # per epoch
    global_batch: int      # batch_size x accum_freq x world size
    steps_per_epoch: int
    total_steps: int       # what the schedule spans
    stop_at: int           # where this invocation stops (stop_at_step)


def plan_steps(cfg: TrainConfig, num_samples: int, world: int) -> StepPlan:
    """Steps per epoch from the epoch size and the global batch; the schedule's length
    (``epochs``, capped by ``max_steps``) and where to stop (``stop_at_step``)."""
    global_batch = cfg.batch_size * cfg.accum_freq * world
    steps_per_epoch = num_samples // global_batch
    if steps_per_epoch < 1:
        raise WitError(f"{num_samples} samples per epoch are fewer than one global batch "
                       f"({global_batch} = batch size x accum freq x ranks)")
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    stop_at = min(total_steps, cfg.stop_at_step or total_steps)
    return StepPlan(num_samples, global_batch, steps_per_epoch, total_steps, stop_at)
