"""The CLIP training loop: ``train(TrainConfig(...)) -> summary dict`` (``wit train`` calls it).

One optimisation step, read top to bottom in :func:`train`:

1. take ``accum_freq`` micro-batches of ``batch_size`` pairs from the WebDataset loader (every
   rank; the global batch is ``batch_size * accum_freq * world_size``);
2. :func:`forward_backward`: the contrastive loss of the whole global batch and its gradient
   (feature caching across micro-batches when ``accum_freq > 1``, see there);
3. set the learning rate for this step (:func:`lr_at`: linear warmup, then cosine), clip
   gradients if asked, AdamW step (through the GradScaler for fp16), clamp the log temperature
   to <= ln 100;
4. log, evaluate, checkpoint.

Distributed: launched by torchrun (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment),
one process per device, DDP over gloo (CPU) or NCCL (CUDA); see :mod:`trainer.loss` for the
all-gather and sharded similarity.

Checkpoints (``OUT/checkpoints/step-NNNNNNNN.pt`` and ``latest.pt``, written atomically by rank
0) hold the model, optimizer, scaler, step, epoch, RNG states, data position, model config,
tokenizer merges and the config; ``resume="latest"`` continues the run where the checkpoint
was taken: on CPU the loss sequence equals the uninterrupted run's exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field

from wit_builder.core import WitError, atomic_open, atomic_write_json

__all__ = ["TrainConfig", "train", "forward_backward", "param_groups", "lr_at",
           "ContextTokenizer", "load_training_checkpoint", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16", "fp16")
PLOT_INTERVAL_S = 300  # curves.png is redrawn at checkpoints at most this often, and at the end


@dataclass
class TrainConfig:
    """Everything a run needs. ``batch_size`` is per rank and per micro-batch."""
    train_data: str                       # shards: 'DIR/{00000..00009}.tar', sources joined by ::
    out: str                              # run directory
    model: str = "tiny-vit"               # bundled config name or a config .json
    tokenizer: str | None = None          # CLIP-format merges file (from the checkpoint on resume)
    batch_size: int = 64
    accum_freq: int = 1
    epochs: int = 1
    max_steps: int | None = None          # cap on optimisation steps (the schedule spans them)
    stop_at_step: int | None = None       # stop (with a checkpoint) here; schedule unchanged
    lr: float = 5e-4
    wd: float = 0.2
    warmup: int = 100                     # linear warmup steps
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float | None = None        # max global gradient norm
    precision: str = "fp32"               # fp32 | bf16 (autocast) | fp16 (autocast + scaler, GPU)
    grad_checkpointing: bool = False
    compile: bool = False
    image_size: int | None = None         # override the config's image size
    context_length: int | None = None     # override the config's text context length
    workers: int = 2
    threads: int | None = None            # torch intra-op threads (default: torch's choice)
    seed: int = 0
    shuffle_buffer: int = 1000
    resampled: bool = False
    train_num_samples: int | None = None  # epoch size (default: sizes.json)
    resume: str | None = None             # 'latest' or a checkpoint path
    save_every: int = 1000                # steps; also at the end (or at stop_at_step)
    keep_checkpoints: int = 3             # step-*.pt files kept (0 = all)
    log_every: int = 10
    eval_every: int = 0                   # steps (0: only at the end); needs eval data
    zeroshot_dir: str | None = None       # image folder, one subfolder per class
    zeroshot_classes: str | None = None   # class names file (default: folder names)
    zeroshot_templates: str | None = None  # templates file (default: 8 CLIP templates)
    retrieval_data: str | None = None     # held-out shards for image<->text recall@K
    eval_batch_size: int = 64
    device: str = "auto"                  # auto | cpu | cuda
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free-form notes stored in the checkpoint


class ContextTokenizer:
    """The tokenizer bound to the model's context length (picklable for loader workers)."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts):
        return self.tokenizer(texts, context_length=self.context_length)


# --- optimiser and schedule -------------------------------------------------------------------
def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decoupled weight decay on every parameter with >= 2 dimensions (linear and
    conv weights, token and positional embeddings, ``proj``/``text_projection``, the attention
    pool's positional embedding); none on 1-d and scalar parameters: biases, LayerNorm and
    BatchNorm gains, ``logit_scale`` (a temperature: decay would pull it to scale 1) and the
    ViT ``class_embedding`` (a learned input vector that acts as a bias of the class token)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def lr_at(step: int, base_lr: float, warmup: int, total_steps: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warmup to ``base_lr`` over
    ``warmup`` steps, then cosine decay to 0 at ``total_steps``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if total_steps <= warmup:
        return base_lr
    progress = min(1.0, (step - warmup) / (total_steps - warmup))
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


# --- one step ---------------------------------------------------------------------------------
def _backward(loss, scaler):
    (scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss).backward()


def forward_backward(model, loss_fn, batches, autocast=contextlib.nullcontext, scaler=None):
    """Forward and backward passes of one optimisation step over ``batches``, a list of
    ``(images, tokens)`` micro-batches already on the device. Gradients are accumulated into
    ``.grad``; returns this rank's loss (detached).

    With one micro-batch this is the plain step. With K > 1 (gradient accumulation) it uses
    feature caching so that the loss and the gradient equal those of the single batch made
    of all K micro-batches:

    1. without building graphs, compute the features of every micro-batch;
    2. for each micro-batch j: recompute its features with a graph, put them in place of the
       cached ones, compute the loss of the whole batch (every pair is a negative for every
       other, exactly as in the big batch) and backpropagate. Only micro-batch j's features
       carry gradient, so the K backward passes add up to exactly the big batch's gradient.
       ``logit_scale`` gets its gradient only in the last pass (detached in the others) so it
       is counted once. Under DDP, gradients are synchronised only in the last pass.

    Equal, with the same global batch: the loss, the gradients of all parameters, hence the
    optimiser step (up to floating-point summation order). Not equal: BatchNorm statistics
    (ResNets normalise per micro-batch, and the caching pass also updates running statistics),
    and the cost: one extra forward pass per micro-batch.
    """
    if len(batches) == 1:
        images, tokens = batches[0]
        with autocast():
            img, txt, scale = model(images, tokens)
            loss = loss_fn(img, txt, scale)
        _backward(loss, scaler)
        return loss.detach()
    import torch
    with torch.no_grad(), autocast():
        cached = [model(images, tokens)[:2] for images, tokens in batches]
    cached_img = [c[0] for c in cached]
    cached_txt = [c[1] for c in cached]
    no_sync = getattr(model, "no_sync", None)
    for j, (images, tokens) in enumerate(batches):
        last = j == len(batches) - 1
        ctx = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with ctx:
            with autocast():
                img, txt, scale = model(images, tokens)
                all_img = torch.cat(cached_img[:j] + [img] + cached_img[j + 1:])
                all_txt = torch.cat(cached_txt[:j] + [txt] + cached_txt[j + 1:])
                loss = loss_fn(all_img, all_txt, scale if last else scale.detach())
            _backward(loss, scaler)
    return loss.detach()


# --- helpers ----------------------------------------------------------------------------------
def _init_distributed(device_pref: str):
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


def _rng_state() -> dict:
    import numpy as np
    import torch
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss),
                      float(gauss)]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
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


def _save_checkpoint(ckpt_dir: str, step: int, state: dict, keep: int) -> str:
    import torch
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


def _read_log(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _truncate_log(path: str, step: int) -> None:
    """On resume, drop records written after the checkpoint's step (they will be redone)."""
    records = [r for r in _read_log(path) if r.get("step", 0) <= step]
    with atomic_open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def plot_curves(log_path: str, out_path: str) -> None:
    """``curves.png``: loss, learning rate, logit scale, samples/s and eval metrics vs step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = _read_log(log_path)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    if not train:
        return
    steps = [r["step"] for r in train]
    panels = [("loss", "loss"), ("lr", "learning rate"), ("logit_scale", "logit scale (exp)"),
              ("samples_per_s", "samples/s")]
    eval_series: dict[str, list] = {}
    for r in evals:
        for group in ("zeroshot", "retrieval"):
            for key, value in (r.get(group) or {}).items():
                if key in ("top1", "top5", "image_to_text_R@1", "text_to_image_R@1"):
                    eval_series.setdefault(f"{group} {key}", []).append((r["step"], value))
    n = len(panels) + (1 if eval_series else 0)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2))
    for ax, (key, title) in zip(axes, panels):
        ax.plot(steps, [r[key] for r in train])
        ax.set_title(title)
        ax.set_xlabel("step")
    if eval_series:
        ax = axes[-1]
        for name, pts in eval_series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_title("evaluation")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(out_path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)


def _evaluate(model, tokenizer, image_size: int, cfg: TrainConfig, device) -> dict:
    from trainer.evaluate import evaluate_checkpoint
    from trainer.transforms import image_transform
    was_training = model.training
    model.eval()
    try:
        metrics = evaluate_checkpoint(
            "", zeroshot_dir=cfg.zeroshot_dir, classes=cfg.zeroshot_classes,
            templates=cfg.zeroshot_templates, retrieval_data=cfg.retrieval_data,
            batch_size=cfg.eval_batch_size, device=str(device),
            model_bundle=(model, image_transform(image_size, train=False), tokenizer))
    finally:
        model.train(was_training)
    metrics.pop("checkpoint", None)
    return metrics


# --- the loop ---------------------------------------------------------------------------------
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


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) a CLIP model; returns a summary (also written to ``OUT/summary.json``)."""
    import torch
    import torch.distributed as dist
    from tqdm import tqdm

    from trainer.data import make_train_loader
    from trainer.loss import ClipLoss, clamp_logit_scale
    from trainer.model import create_model, resolve_config
    from trainer.tokenizer import Tokenizer

    if cfg.precision not in PRECISIONS:
        raise WitError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.batch_size < 1 or cfg.accum_freq < 1 or cfg.epochs < 1:
        raise WitError("--batch-size, --accum-freq and --epochs must be >= 1")
    if cfg.workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenising in forked workers
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, _, world, device, dist_here = _init_distributed(cfg.device)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise WitError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    ckpt_dir = os.path.join(cfg.out, "checkpoints")
    log_path = os.path.join(cfg.out, "log.jsonl")

    # resume?
    resume_path = None
    if cfg.resume == "latest":
        latest = os.path.join(ckpt_dir, "latest.pt")
        resume_path = latest if os.path.exists(latest) else None
    elif cfg.resume:
        if not os.path.exists(cfg.resume):
            raise WitError(f"--resume: checkpoint not found: {cfg.resume}")
        resume_path = cfg.resume
    elif os.path.exists(os.path.join(ckpt_dir, "latest.pt")):
        raise WitError(f"{cfg.out} already holds a run; pass --resume latest to continue it "
                       "or choose another --out")
    ckpt = load_training_checkpoint(resume_path) if resume_path else None

    # tokenizer and model
    if ckpt is not None:
        tokenizer = Tokenizer.from_merges(ckpt["tokenizer_merges"])
    elif cfg.tokenizer:
        if not os.path.exists(cfg.tokenizer):
            raise WitError(f"--tokenizer: merges file not found: {cfg.tokenizer}")
        tokenizer = Tokenizer.from_merges(cfg.tokenizer)
    else:
        raise WitError("--tokenizer MERGES is required (make one with `wit tokenizer train`)")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    import numpy as np
    np.random.seed(cfg.seed % 2**32)
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
    model.to(device)
    image_size = model_cfg["vision_cfg"]["image_size"]
    context_length = model_cfg["text_cfg"]["context_length"]

    optimizer = torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                  **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    step, epoch, skip_batches = 0, 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, epoch = int(ckpt["step"]), int(ckpt["data"]["epoch"])
        skip_batches = int(ckpt["data"]["batches"])
        _set_rng_state(ckpt["rng"])
        del ckpt

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    loss_fn = ClipLoss(rank, world)
    if cfg.precision == "fp32":
        autocast = contextlib.nullcontext
    else:
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16

        def autocast():
            return torch.autocast(device.type, dtype=dtype)

    # data
    loader, num_samples = make_train_loader(
        cfg.train_data, ContextTokenizer(tokenizer, context_length), image_size,
        cfg.batch_size, cfg.workers, cfg.seed, cfg.shuffle_buffer, cfg.resampled, world, rank,
        num_samples=cfg.train_num_samples)
    global_batch = cfg.batch_size * cfg.accum_freq * world
    steps_per_epoch = num_samples // global_batch
    if steps_per_epoch < 1:
        raise WitError(f"{num_samples} samples per epoch are fewer than one global batch "
                       f"({global_batch} = batch size x accum freq x ranks)")
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    stop_at = min(total_steps, cfg.stop_at_step or total_steps)

    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        if resume_path:
            _truncate_log(log_path, step)
        elif os.path.exists(log_path):
            os.unlink(log_path)
    log_fh = open(log_path, "a", encoding="utf-8") if rank == 0 else None

    def log(record: dict) -> None:
        if log_fh is not None:
            log_fh.write(json.dumps(record) + "\n")
            log_fh.flush()

    def checkpoint_state() -> dict:
        return {"model": model.state_dict(), "model_cfg": model_cfg,
                "tokenizer_merges": tokenizer.merges_text, "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "step": step, "epoch": epoch, "rng": _rng_state(),
                "data": {"epoch": epoch, "batches": batches_in_epoch},
                "args": dataclasses.asdict(cfg)}

    last_ckpt = os.path.join(ckpt_dir, "latest.pt") if resume_path else None
    last_eval: dict | None = None
    last_loss: float | None = None
    have_eval = bool(cfg.zeroshot_dir or cfg.retrieval_data)
    rates: list[float] = []
    bar = tqdm(total=stop_at, initial=step, disable=rank != 0 or not cfg.progress,
               unit="step", desc="train")
    batches_in_epoch = skip_batches
    model.train()
    window_t, window_steps = time.perf_counter(), 0
    last_plot = time.perf_counter()
    while step < stop_at and epoch < cfg.epochs:
        loader.set_epoch(epoch, skip_batches=batches_in_epoch)
        data = iter(loader)
        while step < stop_at:
            # 1. the micro-batches of this step (all ranks agree whether there is a full set)
            batches = []
            for _ in range(cfg.accum_freq):
                item = next(data, None)
                if item is None:
                    break
                batches.append(item)
            have = len(batches) == cfg.accum_freq
            if world > 1:
                flag = torch.tensor([int(have)], dtype=torch.int32, device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MIN)
                have = bool(flag.item())
            if not have:
                # a rank ran out of data before steps_per_epoch (uneven shards): next epoch.
                # A checkpoint taken earlier in this epoch resumes to the same point.
                epoch, batches_in_epoch = epoch + 1, 0
                break
            batches_in_epoch += cfg.accum_freq
            batches = [(i.to(device, non_blocking=True), t.to(device, non_blocking=True))
                       for i, t in batches]
            # 2. loss and gradients of the global batch
            loss = forward_backward(train_model, loss_fn, batches, autocast, scaler)
            # 3. schedule, optimiser step, temperature clamp
            lr = lr_at(step, cfg.lr, cfg.warmup, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            clamp_logit_scale(model)
            step += 1
            window_steps += 1
            bar.update(1)
            # 4. log, evaluate, checkpoint
            end_of_epoch = batches_in_epoch // cfg.accum_freq >= steps_per_epoch
            if step % cfg.log_every == 0 or step == stop_at or end_of_epoch:
                if world > 1:
                    dist.all_reduce(loss, op=dist.ReduceOp.SUM)  # gloo has no AVG
                    loss = loss / world
                last_loss = float(loss)
                rate = window_steps * global_batch / (time.perf_counter() - window_t)
                rates.append(rate)
                log({"type": "train", "step": step, "epoch": epoch, "loss": last_loss, "lr": lr,
                     "logit_scale": float(model.logit_scale.detach().exp()),
                     "samples_per_s": rate,
                     "skipped": dict(loader.skipped)})
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                window_t, window_steps = time.perf_counter(), 0
            if have_eval and rank == 0 and (
                    (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps):
                last_eval = _evaluate(model, tokenizer, image_size, cfg, device)
                log({"type": "eval", "step": step, "epoch": epoch, **last_eval})
                window_t = time.perf_counter()
            if end_of_epoch:
                epoch, batches_in_epoch = epoch + 1, 0
            if step % cfg.save_every == 0 or step == stop_at:
                if rank == 0:
                    last_ckpt = _save_checkpoint(ckpt_dir, step, checkpoint_state(),
                                                 cfg.keep_checkpoints)
                    if time.perf_counter() - last_plot > PLOT_INTERVAL_S:
                        plot_curves(log_path, os.path.join(cfg.out, "curves.png"))
                        last_plot = time.perf_counter()
                window_t = time.perf_counter()
            if end_of_epoch:
                break
    bar.close()
    if log_fh is not None:
        log_fh.close()
    summary = {"step": step, "total_steps": total_steps, "epoch": epoch,
               "steps_per_epoch": steps_per_epoch, "global_batch_size": global_batch,
               "num_samples": num_samples, "world_size": world, "final_loss": last_loss,
               "samples_per_s": (sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else
                                 (rates[0] if rates else None)),
               "skipped": dict(loader.skipped), "checkpoint": last_ckpt, "log": log_path,
               "curves": os.path.join(cfg.out, "curves.png"), "eval": last_eval,
               "model_cfg": model_cfg, "done": step >= total_steps}
    if rank == 0:
        plot_curves(log_path, summary["curves"])
        atomic_write_json(os.path.join(cfg.out, "summary.json"), summary)
    if dist_here:
        dist.destroy_process_group()
    return summary
