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

Bad samples are skipped and counted (:mod:`trainer.data`); a pass over the data that skips more
than ``warn_skip_share`` of what it read logs a warning, and an epoch without one usable step
(every image undecodable, say) is an error (:mod:`trainer.skips`), never a silent 0-step run.

Distributed: launched by torchrun (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment),
one process per device, DDP over gloo (CPU) or NCCL (CUDA); see :mod:`trainer.loss` for the
all-gather and sharded similarity.

Checkpoints (``OUT/checkpoints/step-NNNNNNNN.pt`` and ``latest.pt``, written atomically by rank
0) hold the model, optimizer, scaler, step, epoch, RNG states, data position, model config,
tokenizer merges and the config; ``resume="latest"`` continues the run where the checkpoint
was taken: on CPU the loss sequence equals the uninterrupted run's exactly.

Where things are: :class:`TrainConfig` in :mod:`trainer.config`; the set-up steps (device,
tokenizer, model with the resume checks, optimizer) in :mod:`trainer.build`; the step itself
in :mod:`trainer.step`; checkpoint files, RNG states and the log in :mod:`trainer.checkpoint`;
``curves.png`` in :mod:`trainer.curves`. Here: :func:`_setup` (those steps in order), the loop
and its bookkeeping (log, evaluation, checkpoints, summary).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from wit_builder.core import atomic_write_json

from trainer.build import (StepPlan, build_model, build_optimizer, check_config, load_tokenizer,
                           plan_steps, seed_everything, setup_device, wrap_model)
from trainer.checkpoint import (find_resume, load_training_checkpoint, remove_stale_temporaries,
                                restore, rng_state, save_checkpoint, truncate_log)
from trainer.config import PRECISIONS, TrainConfig
from trainer.curves import plot_curves
from trainer.precision import resolve_precision
from trainer.reporting import ReportConfig, open_reporter
from trainer.reporting import check_available as check_report_available
from trainer.skips import SkipWatch, no_usable_data
from trainer.step import forward_backward, lr_at, param_groups

__all__ = ["TrainConfig", "train", "forward_backward", "param_groups", "lr_at",
           "ContextTokenizer", "load_training_checkpoint", "PRECISIONS"]

PLOT_INTERVAL_S = 300  # curves.png is redrawn at checkpoints at most this often, and at the end


class ContextTokenizer:
    """The tokenizer bound to the model's context length (picklable for loader workers)."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts):
        return self.tokenizer(texts, context_length=self.context_length)


# --- what the loop works with -----------------------------------------------------------------
@dataclass
class _Run:
    """The parts of a run the loop uses, set up once by :func:`_setup`."""
    cfg: TrainConfig
    rank: int
    world: int
    device: Any
    dist_here: bool        # the process group was started here (and is destroyed at the end)
    model: Any             # the bare model: checkpoints, evaluation, the temperature clamp
    train_model: Any       # what the steps run: ``model`` under DDP and/or torch.compile
    model_cfg: dict
    tokenizer: Any
    optimizer: Any
    scaler: Any
    loss_fn: Any
    autocast: Callable
    loader: Any
    plan: StepPlan
    ckpt_dir: str
    log_path: str
    resume_path: str | None
    log_fh: Any = None     # the open log (rank 0)
    reporter: Any = None   # rank 0, --report-to: trainer.reporting.Reporter
    precision_why: str = ""  # how cfg.precision was chosen (trainer.precision)

    def log(self, record: dict) -> None:
        if self.log_fh is not None:
            self.log_fh.write(json.dumps(record) + "\n")
            self.log_fh.flush()
        if self.reporter is not None:
            self.reporter.write(record)

    def close_logs(self) -> None:
        if self.log_fh is not None:
            self.log_fh.close()
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None


@dataclass
class _Position:
    """Where training is: optimisation steps done, the epoch, micro-batches taken in it."""
    step: int = 0
    epoch: int = 0
    batches: int = 0

    def next_epoch(self) -> None:
        self.epoch, self.batches = self.epoch + 1, 0


@dataclass
class _Progress:
    """What the loop reports: last loss, evaluation and checkpoint; throughput windows."""
    last_ckpt: str | None
    last_eval: dict | None = None
    last_loss: float | None = None
    rates: list = field(default_factory=list)
    window_t: float = 0.0      # start of the current samples/s window
    window_steps: int = 0
    last_plot: float = 0.0


# --- set-up -----------------------------------------------------------------------------------
def _open_log(rank: int, ckpt_dir: str, log_path: str, resume_path: str | None, step: int):
    """Rank 0: the run log opened for appending (cut back to ``step`` on resume, else new)."""
    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        if resume_path:
            truncate_log(log_path, step)
        elif os.path.exists(log_path):
            os.unlink(log_path)
    return open(log_path, "a", encoding="utf-8") if rank == 0 else None


def _setup(cfg: TrainConfig) -> tuple[_Run, _Position]:
    """Everything before the first step, in this order (the order of RNG use included): device
    and process group, the checkpoint to resume from, tokenizer, seeds, model, optimizer,
    restored state, DDP / compile, loss, data loader, step budget, run directory and log."""
    from trainer.data import LoaderConfig, make_train_loader
    from trainer.loss import ClipLoss

    check_config(cfg)
    rank, world, device, dist_here = setup_device(cfg)
    precision, precision_why = resolve_precision(cfg.precision, device)
    cfg = dataclasses.replace(cfg, precision=precision)
    ckpt_dir = os.path.join(cfg.out, "checkpoints")
    log_path = os.path.join(cfg.out, "log.jsonl")

    # resume? then the tokenizer, model config and states come from the checkpoint
    resume_path = find_resume(cfg.resume, cfg.out, ckpt_dir)
    if rank == 0:  # what a killed run left half-written (this run writes those files anew)
        remove_stale_temporaries(cfg.out, ckpt_dir)
    ckpt = load_training_checkpoint(resume_path) if resume_path else None
    tokenizer = load_tokenizer(cfg, ckpt)
    seed_everything(cfg.seed)
    model, model_cfg = build_model(cfg, ckpt, resume_path, tokenizer, device)
    optimizer, scaler = build_optimizer(cfg, model, device)
    pos = _Position()
    if ckpt is not None:
        pos = _Position(*restore(ckpt, model, optimizer, scaler))
        del ckpt
    train_model, autocast = wrap_model(cfg, model, device, world)
    loss_fn = ClipLoss(rank, world)

    # data
    loader, num_samples = make_train_loader(
        cfg.train_data, ContextTokenizer(tokenizer, model_cfg["text_cfg"]["context_length"]),
        LoaderConfig(model_cfg["vision_cfg"]["image_size"], cfg.batch_size, cfg.workers,
                            cfg.seed, cfg.shuffle_buffer, cfg.resampled, world, rank,
                            num_samples=cfg.train_num_samples))
    plan = plan_steps(cfg, num_samples, world)
    log_fh = _open_log(rank, ckpt_dir, log_path, resume_path, pos.step)
    run = _Run(cfg=cfg, rank=rank, world=world, device=device, dist_here=dist_here, model=model,
               train_model=train_model, model_cfg=model_cfg, tokenizer=tokenizer,
               optimizer=optimizer, scaler=scaler, loss_fn=loss_fn, autocast=autocast,
               loader=loader, plan=plan, ckpt_dir=ckpt_dir, log_path=log_path,
               resume_path=resume_path, log_fh=log_fh, precision_why=precision_why)
    return run, pos


# --- the loop ---------------------------------------------------------------------------------
def train(cfg: TrainConfig, report: ReportConfig | None = None) -> dict:
    """Train (or resume) a CLIP model; returns a summary (also written to ``OUT/summary.json``).
    ``report``: also write the logged scalars to TensorBoard / W&B (:mod:`trainer.reporting`)."""
    from tqdm import tqdm

    check_report_available(report)
    run, pos = _setup(cfg)
    if run.rank == 0:
        run.reporter = open_reporter(report, cfg.out, dataclasses.asdict(cfg), pos.step)
    plan, loader = run.plan, run.loader
    progress = _Progress(last_ckpt=os.path.join(run.ckpt_dir, "latest.pt") if run.resume_path
                         else None)
    have_eval = bool(cfg.zeroshot_dir or cfg.retrieval_data)
    bar = tqdm(total=plan.stop_at, initial=pos.step, disable=run.rank != 0 or not cfg.progress,
               unit="step", desc="train")
    run.model.train()
    progress.window_t = time.perf_counter()
    progress.last_plot = time.perf_counter()
    skips = SkipWatch(loader, cfg.batch_size, cfg.warn_skip_share, run.rank, run.world)
    while pos.step < plan.stop_at and pos.epoch < cfg.epochs:
        loader.set_epoch(pos.epoch, skip_batches=pos.batches)
        data = iter(loader)
        skips.start()
        pass_epoch = pos.epoch
        while pos.step < plan.stop_at:
            # 1. the micro-batches of this step (all ranks agree whether there is a full set)
            batches, full = _next_batches(run, data)
            if not full:
                if pos.batches == 0:  # a whole epoch without one step: nothing to train on
                    bar.close()
                    loader.close()
                    run.close_logs()
                    raise no_usable_data(len(loader.shards), skips.skipped(), len(batches),
                                         cfg.accum_freq, run.rank, run.world)
                # a rank ran out of data before steps_per_epoch (uneven shards): next epoch.
                # A checkpoint taken earlier in this epoch resumes to the same point.
                pos.next_epoch()
                break
            pos.batches += cfg.accum_freq
            skips.took(cfg.accum_freq)
            batches = [(i.to(run.device, non_blocking=True), t.to(run.device, non_blocking=True))
                       for i, t in batches]
            # 2. loss and gradients of the global batch
            loss = forward_backward(run.train_model, run.loss_fn, batches, run.autocast,
                                    run.scaler)
            # 3. schedule, optimiser step, temperature clamp
            lr = _optimizer_step(run, pos.step)
            pos.step += 1
            progress.window_steps += 1
            bar.update(1)
            # 4. log, evaluate, checkpoint
            end_of_epoch = pos.batches // cfg.accum_freq >= plan.steps_per_epoch
            if pos.step % cfg.log_every == 0 or pos.step == plan.stop_at or end_of_epoch:
                _log_train(run, pos, progress, loss, lr)
                bar.set_postfix(loss=f"{progress.last_loss:.4f}", lr=f"{lr:.2e}")
            if have_eval and run.rank == 0 and (
                    (cfg.eval_every and pos.step % cfg.eval_every == 0) or pos.step == plan.total_steps):
                _log_eval(run, pos, progress)
            if end_of_epoch:
                pos.next_epoch()
            if pos.step % cfg.save_every == 0 or pos.step == plan.stop_at:
                _checkpoint(run, pos, progress)
            if end_of_epoch:
                break
        skips.finish(pass_epoch)  # a warning if this pass skipped too much
    bar.close()
    loader.close()
    run.close_logs()
    return _finish(run, pos, progress)


def _next_batches(run: _Run, data) -> tuple[list, bool]:
    """The next ``accum_freq`` ``(images, tokens)`` micro-batches from ``data``, and whether
    they are a full set on every rank (False: this rank or another has run out of them)."""
    import torch
    import torch.distributed as dist
    batches = []
    for _ in range(run.cfg.accum_freq):
        item = next(data, None)
        if item is None:
            break
        batches.append(item)
    have = len(batches) == run.cfg.accum_freq
    if run.world > 1:
        flag = torch.tensor([int(have)], dtype=torch.int32, device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        have = bool(flag.item())
    return batches, have


def _optimizer_step(run: _Run, step: int) -> float:
    """Set step ``step``'s learning rate, clip gradients if asked, AdamW step (through the
    GradScaler), clear the gradients, clamp the log temperature; returns the learning rate."""
    import torch

    from trainer.loss import clamp_logit_scale
    cfg, optimizer, scaler = run.cfg, run.optimizer, run.scaler
    lr = lr_at(step, cfg.lr, cfg.warmup, run.plan.total_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if cfg.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    clamp_logit_scale(run.model)
    return lr


def _log_train(run: _Run, pos: _Position, progress: _Progress, loss, lr: float) -> None:
    """A ``train`` record: the loss averaged over the ranks, lr, temperature, samples/s."""
    import torch.distributed as dist
    if run.world > 1:
        dist.all_reduce(loss, op=dist.ReduceOp.SUM)  # gloo has no AVG
        loss = loss / run.world
    progress.last_loss = float(loss)
    rate = progress.window_steps * run.plan.global_batch / (time.perf_counter() - progress.window_t)
    progress.rates.append(rate)
    run.log({"type": "train", "step": pos.step, "epoch": pos.epoch, "loss": progress.last_loss,
             "lr": lr, "logit_scale": float(run.model.logit_scale.detach().exp()),
             "samples_per_s": rate,
             "skipped": dict(run.loader.skipped)})
    progress.window_t, progress.window_steps = time.perf_counter(), 0


def _log_eval(run: _Run, pos: _Position, progress: _Progress) -> None:
    """Rank 0: evaluate the model now and log an ``eval`` record."""
    image_size = run.model_cfg["vision_cfg"]["image_size"]
    progress.last_eval = _evaluate(run.model, run.tokenizer, image_size, run.cfg, run.device)
    run.log({"type": "eval", "step": pos.step, "epoch": pos.epoch, **progress.last_eval})
    progress.window_t = time.perf_counter()


def _evaluate(model, tokenizer, image_size: int, cfg: TrainConfig, device) -> dict:
    from trainer.evaluate import EvalRequest, evaluate_checkpoint
    from trainer.transforms import image_transform
    was_training = model.training
    model.eval()
    try:
        request = EvalRequest(zeroshot_dir=cfg.zeroshot_dir, classes=cfg.zeroshot_classes,
                              templates=cfg.zeroshot_templates, retrieval_data=cfg.retrieval_data,
                              batch_size=cfg.eval_batch_size, device=str(device))
        metrics = evaluate_checkpoint(
            "", request, model_bundle=(model, image_transform(image_size, train=False), tokenizer))
    finally:
        model.train(was_training)
    metrics.pop("checkpoint", None)
    return metrics


def _checkpoint(run: _Run, pos: _Position, progress: _Progress) -> None:
    """Rank 0: save a checkpoint (and redraw curves.png if it is old)."""
    if run.rank == 0:
        progress.last_ckpt = save_checkpoint(run.ckpt_dir, pos.step, _checkpoint_state(run, pos),
                                             run.cfg.keep_checkpoints)
        if time.perf_counter() - progress.last_plot > PLOT_INTERVAL_S:
            plot_curves(run.log_path, os.path.join(run.cfg.out, "curves.png"))
            progress.last_plot = time.perf_counter()
    progress.window_t = time.perf_counter()


def _checkpoint_state(run: _Run, pos: _Position) -> dict:
    return {"model": run.model.state_dict(), "model_cfg": run.model_cfg,
            "tokenizer_merges": run.tokenizer.merges_text,
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "step": pos.step, "epoch": pos.epoch, "rng": rng_state(),
            "data": {"epoch": pos.epoch, "batches": pos.batches},
            "args": dataclasses.asdict(run.cfg)}


def _finish(run: _Run, pos: _Position, progress: _Progress) -> dict:
    """The summary (rank 0 also writes it and draws curves.png); ends the process group if it
    was started here."""
    import torch.distributed as dist
    plan, rates = run.plan, progress.rates
    summary = {"step": pos.step, "total_steps": plan.total_steps, "epoch": pos.epoch,
               "steps_per_epoch": plan.steps_per_epoch, "global_batch_size": plan.global_batch,
               "num_samples": plan.num_samples, "world_size": run.world,
               "final_loss": progress.last_loss,
               "samples_per_s": (sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else
                                 (rates[0] if rates else None)),
               "skipped": dict(run.loader.skipped), "checkpoint": progress.last_ckpt,
               "log": run.log_path, "curves": os.path.join(run.cfg.out, "curves.png"),
               "eval": progress.last_eval, "model_cfg": run.model_cfg,
               "done": pos.step >= plan.total_steps,
               "precision": run.cfg.precision, "precision_reason": run.precision_why}
    if run.rank == 0:
        plot_curves(run.log_path, summary["curves"])
        atomic_write_json(os.path.join(run.cfg.out, "summary.json"), summary)
    if run.dist_here:
        dist.destroy_process_group()
    return summary
