"""`wit train`: contrastive CLIP training on WebDataset shards (see docs/trainer.md)."""
from __future__ import annotations

import argparse
import json
import os

from pipelines.cli.checks import add_skip_share
from trainer.train import PRECISIONS, TrainConfig

DESCRIPTION = (
    "Train a CLIP model (OpenAI-compatible ResNet/ViT image tower, causal text transformer) "
    "with CLIP's symmetric contrastive loss on WebDataset shards. Multi-GPU / multi-node: "
    "launch with torchrun (DDP; NCCL on GPU, gloo on CPU). Writes RUN/checkpoints/"
    "{step-NNNNNNNN,latest}.pt, RUN/log.jsonl, RUN/curves.png and RUN/summary.json; re-run "
    "with --resume latest to continue an interrupted run.")


def _model_names() -> list[str]:
    """Bundled config names, without importing torch (keeps `wit train --help` fast)."""
    import importlib.util
    package = importlib.util.find_spec("trainer")            # found, not imported
    configs = os.path.join(list(package.submodule_search_locations)[0], "model_configs")
    return sorted(f[:-len(".json")] for f in os.listdir(configs) if f.endswith(".json"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig(train_data="", out="")
    a = parser.add_argument
    a("--train-data", required=True,
      help="training shards: brace pattern 'SHARDS/{00000..00099}.tar'; several sources "
           "joined with '::'. Epoch size comes from sizes.json next to the shards")
    a("--out", default=None,
      help="run directory (checkpoints, log.jsonl, curves.png); required, or OpenCLIP's "
           "--logs DIR --name NAME for DIR/NAME")
    a("--model", default=d.model,
      help=f"model config: one of {', '.join(_model_names())}, or a config .json file")
    a("--tokenizer", default=None,
      help="CLIP-format BPE merges file (e.g. from `wit tokenizer train`), or 'openai': "
           "OpenAI's vocabulary (bpe_simple_vocab_16e6.txt.gz) from an installed package that "
           "ships it (`pip install --no-deps open_clip_torch`). The text vocabulary size "
           "follows it. Not needed when resuming (the checkpoint holds it)")
    g = parser.add_argument_group("batch and schedule")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="pairs per micro-batch per process; global batch = batch size x "
                        "accum freq x processes")
    g.add_argument("--accum-freq", type=int, default=d.accum_freq,
                   help="micro-batches per optimisation step; with feature caching, the loss "
                        "and gradients equal those of one batch of all of them")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the data")
    g.add_argument("--max-steps", type=int, default=None,
                   help="cap on optimisation steps (the cosine schedule ends there)")
    g.add_argument("--stop-at-step", type=int, default=None,
                   help="stop with a checkpoint at this step without changing the schedule "
                        "(for time-sliced jobs; continue with --resume latest)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--wd", type=float, default=d.wd,
                   help="AdamW decoupled weight decay, on weights with >= 2 dims only (not on "
                        "biases, gains, logit_scale, class_embedding)")
    g.add_argument("--warmup", type=int, default=d.warmup,
                   help="linear warmup steps before the cosine decay")
    g.add_argument("--beta1", type=float, default=d.beta1, help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=d.beta2,
                   help="AdamW beta2 (the paper: 0.98 for ViTs, 0.999 for ResNets)")
    g.add_argument("--eps", type=float, default=d.eps,
                   help="AdamW epsilon (the paper: 1e-6 for ViTs, 1e-8 for ResNets)")
    g.add_argument("--grad-clip", "--grad-clip-norm", type=float, default=None,
                   help="clip the global gradient norm to this value (default: no clipping)")
    c = parser.add_argument_group("compute")
    c.add_argument("--precision", choices=PRECISIONS + tuple(OPENCLIP_PRECISIONS),
                   default="auto",
                   help="auto (default): bf16 on a CPU with native bf16 (AMX / AVX512-BF16) or a "
                        "GPU with bf16, fp16 on an older GPU, else fp32 (the choice is printed and "
                        "in summary.json); fp32; bf16 autocast (CPU or GPU); fp16 autocast with a gradient "
                        "scaler (GPU only). Parameters and the loss stay float32. OpenCLIP's "
                        "amp = fp16, amp_bf16 = amp_bfloat16 = bf16; pure_bf16/pure_fp16 "
                        "(half-precision weights) are not implemented")
    c.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute transformer blocks in the backward pass (less memory)")
    c.add_argument("--compile", "--torchcompile", action="store_true", help="torch.compile the model")
    c.add_argument("--device", default=d.device,
                   help="auto (CUDA if available), cpu or cuda; under torchrun each process "
                        "uses cuda:LOCAL_RANK")
    c.add_argument("--workers", type=int, default=d.workers,
                   help="data loader worker processes per training process (0: load in the "
                        "training process between steps, often faster when --threads already "
                        "fill every core, e.g. on a 2-core CPU)")
    c.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of each training process (default: torch's "
                        "choice, all cores). On a small or shared CPU use cores minus workers: "
                        "oversubscribed OpenMP threads make every op wait")
    m = parser.add_argument_group("model overrides")
    m.add_argument("--image-size", "--force-image-size", type=int, default=None,
                   help="image resolution instead of the config's")
    m.add_argument("--context-length", "--force-context-length", type=int, default=None,
                   help="text context length instead of the config's")
    dg = parser.add_argument_group("data")
    dg.add_argument("--seed", type=int, default=d.seed,
                    help="seed for initialisation, shard order, shuffling and crops")
    dg.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer,
                    help="samples in each worker's shuffle buffer")
    dg.add_argument("--resampled", "--dataset-resampled", action="store_true",
                    help="draw shards with replacement (exactly epoch-size samples per epoch)")
    dg.add_argument("--train-num-samples", type=int, default=None,
                    help="samples per epoch (default: the sum of the shards in sizes.json)")
    add_skip_share(dg, d.warn_skip_share,
                   "the samples of a pass over the data (undecodable images, unreadable tar "
                   "members, missing captions; none usable at all is an error)")
    k = parser.add_argument_group("checkpoints and logs")
    k.add_argument("--resume", default=None,
                   help="'latest' (RUN/checkpoints/latest.pt; starts fresh if there is none) "
                        "or a checkpoint path")
    k.add_argument("--save-every", type=int, default=d.save_every,
                   help="checkpoint every N steps (and at the end)")
    k.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="step checkpoints to keep besides latest.pt (0 = all)")
    k.add_argument("--log-every", "--log-every-n-steps", type=int, default=d.log_every,
                   help="write a log.jsonl record every N steps")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = parser.add_argument_group("evaluation during training (rank 0)")
    e.add_argument("--zeroshot-dir", default=None,
                   help="image folder, one subfolder per class: zero-shot top-1/top-5")
    e.add_argument("--zeroshot-classes", default=None,
                   help="class names, one per line (default: the folder names)")
    e.add_argument("--zeroshot-templates", default=None,
                   help="prompt templates with '{}', one per line (default: 8 CLIP templates)")
    e.add_argument("--retrieval-data", "--val-data", default=None,
                   help="held-out shards for image<->text recall@1/5/10")
    e.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="evaluate every N steps (0: only at the end)")
    e.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                   help="images per evaluation forward pass")
    r = parser.add_argument_group("reporting")
    r.add_argument("--report-to", default="",
                   help="also write the logged scalars (loss, lr, logit scale, samples/s, "
                        "evaluation results) to: tensorboard (RUN/tensorboard; needs the "
                        "tensorboard package), wandb (RUN/wandb, offline unless WANDB_MODE is "
                        "set), both comma-separated, or all")
    r.add_argument("--wandb-project-name", default="wit", help="W&B project")
    r.add_argument("--wandb-notes", default="", help="W&B run notes")
    _add_openclip_names(parser)


# --- OpenCLIP's option names (open_clip_train/params.py, 3.3.0) -------------------------------
# The ones that name the same thing as ours are aliases on our options above (e.g.
# --grad-clip-norm, --torchcompile, --dataset-resampled, --val-data); the ones handled here are
# accepted where ours already behaves so, and refused with one line otherwise (never ignored).
OPENCLIP_PRECISIONS = {"amp": "fp16", "amp_bf16": "bf16", "amp_bfloat16": "bf16",
                       "pure_bf16": None, "pure_fp16": None}
OPENCLIP_ALWAYS_ON = {  # flags for what wit train always does
    "--local-loss": "each rank computes only its rows of the similarity matrix",
    "--gather-with-grad": "the features are all-gathered with gradients",
    "--save-most-recent": "RUN/checkpoints/latest.pt is always written"}
OPENCLIP_ONE_VALUE = {"--dataset-type": ("webdataset", "auto"), "--opt": ("adamw",),
                      "--lr-scheduler": ("cosine",)}
OPENCLIP_REFUSED_HINTS = {
    "--save-frequency": "checkpoints are every --save-every STEPS and at the end",
    "--zeroshot-frequency": "evaluation is every --eval-every STEPS and at the end",
    "--val-frequency": "evaluation is every --eval-every STEPS and at the end",
    "--imagenet-val": "use --zeroshot-dir DIR (one folder per class) with --zeroshot-classes",
    "--dist-url": "torchrun's environment sets up the process group",
    "--dist-backend": "the backend is NCCL on GPU, gloo on CPU",
    "--pretrained": "a run starts from scratch or from --resume",
}
OPENCLIP_REFUSED = (
    "--train-data-upsampling-factors", "--val-num-samples", "--csv-separator", "--csv-img-key",
    "--csv-caption-key", "--imagenet-v2", "--cache-dir", "--log-local", "--epochs-cooldown",
    "--momentum", "--use-bn-sync", "--skip-scheduler", "--lr-cooldown-end",
    "--lr-cooldown-power", "--pretrained-image", "--lock-image", "--lock-image-unlocked-groups",
    "--lock-image-freeze-bn-stats", "--image-mean", "--image-std", "--image-interpolation",
    "--image-resize-mode", "--aug-cfg", "--force-quick-gelu", "--force-patch-dropout",
    "--force-custom-text", "--torchscript", "--trace", "--debug", "--copy-codebase",
    "--horovod", "--ddp-static-graph", "--no-set-device-rank", "--lock-text",
    "--lock-text-unlocked-layers", "--lock-text-freeze-layer-norm", "--coca-caption-loss-weight",
    "--coca-contrastive-loss-weight", "--remote-sync", "--remote-sync-frequency",
    "--remote-sync-protocol", "--delete-previous-checkpoint", "--distill-model",
    "--distill-pretrained", "--use-bnb-linear", "--siglip", "--loss-dist-impl",
    *OPENCLIP_REFUSED_HINTS)


class _Refused(argparse.Action):
    """Records an OpenCLIP option wit train does not implement (the error comes in run())."""

    def __init__(self, option_strings, dest, hint="", **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="*",
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        msg = f"{option_string} is an OpenCLIP option that wit train does not implement"
        _refuse(namespace, msg + (f"; {self.hint}" if self.hint else ""))


class _OneValue(argparse.Action):
    """An OpenCLIP option of which wit train implements one value (what it always does)."""

    def __init__(self, option_strings, dest, allowed=(), **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.allowed = allowed

    def __call__(self, parser, namespace, values, option_string=None):
        if values not in self.allowed:
            _refuse(namespace, f"{option_string} {values}: wit train implements only "
                               f"{' / '.join(self.allowed)}")


def _refuse(namespace, message: str) -> None:
    namespace.openclip_refused = [*(getattr(namespace, "openclip_refused", None) or []), message]


def _add_openclip_names(parser: argparse.ArgumentParser) -> None:
    o = parser.add_argument_group(
        "OpenCLIP option names",
        "OpenCLIP's names for our options are accepted as aliases (shown with the options); "
        "--logs DIR --name NAME = --out DIR/NAME; OpenCLIP options that wit train does not "
        "implement are refused with an error (see docs/trainer.md)")
    o.add_argument("--logs", default=None, help="OpenCLIP: the run directory is LOGS/NAME")
    o.add_argument("--name", default=None,
                   help="OpenCLIP: run name (directory LOGS/NAME, default LOGS ./logs; also "
                        "the W&B run name)")
    for flag, why in OPENCLIP_ALWAYS_ON.items():
        o.add_argument(flag, action="store_true", help=f"accepted, always on: {why}")
    for option, allowed in OPENCLIP_ONE_VALUE.items():
        parser.add_argument(option, action=_OneValue, allowed=allowed)
    for option in OPENCLIP_REFUSED:
        parser.add_argument(option, action=_Refused, hint=OPENCLIP_REFUSED_HINTS.get(option, ""))


def apply_openclip_names(args) -> None:
    """Resolve OpenCLIP's names in ``args`` (run directory, precision) or raise a one-line
    WitError for an OpenCLIP option or value that wit train does not implement."""
    from wit_builder.core import WitError
    if getattr(args, "openclip_applied", False):
        return
    refused = getattr(args, "openclip_refused", None)
    if refused:
        raise WitError(refused[0])
    if args.precision in OPENCLIP_PRECISIONS:
        if OPENCLIP_PRECISIONS[args.precision] is None:
            raise WitError(f"--precision {args.precision} (half-precision weights) is not "
                           "implemented: wit train keeps float32 weights; use bf16 "
                           "(= amp_bf16) or fp16 (= amp) autocast")
        args.precision = OPENCLIP_PRECISIONS[args.precision]
    if args.out is not None and (args.logs is not None or args.name is not None):
        raise WitError("give either --out or OpenCLIP's --logs/--name, not both")
    if args.out is None:
        if args.name is None:
            raise WitError("the run directory is missing: give --out DIR (or OpenCLIP's "
                           "--logs DIR --name NAME)")
        args.out = os.path.join(args.logs or "./logs", args.name)
    args.openclip_applied = True


def config_from_args(args) -> TrainConfig:
    apply_openclip_names(args)
    return TrainConfig(
        train_data=args.train_data, out=args.out, model=args.model, tokenizer=args.tokenizer,
        batch_size=args.batch_size, accum_freq=args.accum_freq, epochs=args.epochs,
        max_steps=args.max_steps, stop_at_step=args.stop_at_step, lr=args.lr, wd=args.wd,
        warmup=args.warmup, beta1=args.beta1, beta2=args.beta2, eps=args.eps,
        grad_clip=args.grad_clip, precision=args.precision,
        grad_checkpointing=args.grad_checkpointing, compile=args.compile,
        image_size=args.image_size, context_length=args.context_length, workers=args.workers,
        threads=args.threads,
        seed=args.seed, shuffle_buffer=args.shuffle_buffer, resampled=args.resampled,
        train_num_samples=args.train_num_samples, warn_skip_share=args.warn_skip_share,
        resume=args.resume,
        save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every, eval_every=args.eval_every, zeroshot_dir=args.zeroshot_dir,
        zeroshot_classes=args.zeroshot_classes, zeroshot_templates=args.zeroshot_templates,
        retrieval_data=args.retrieval_data, eval_batch_size=args.eval_batch_size,
        device=args.device, progress=not args.no_progress)


class _LineFormatter:
    """``wit train: warning: MESSAGE`` (the other stages' form)."""

    def format(self, record) -> str:
        return f"wit train: {record.levelname.lower()}: {record.getMessage()}"


def _check_tokenizer(args) -> None:
    """A new run needs --tokenizer: say how to get one."""
    from trainer.checkpoint import find_resume
    from wit_builder.core import WitError
    if args.tokenizer is None and \
            find_resume(args.resume, args.out, os.path.join(args.out, "checkpoints")) is None:
        raise WitError("a new run needs --tokenizer: a merges file from `wit tokenizer train "
                       "--captions SHARDS --out merges.txt.gz`, or --tokenizer openai for "
                       "OpenAI's vocabulary (`pip install --no-deps open_clip_torch` ships it)")


def report_from_args(args):
    """``--report-to`` and the W&B names -> trainer.reporting.ReportConfig."""
    from trainer.reporting import ReportConfig, parse_report_to
    return ReportConfig(targets=parse_report_to(args.report_to),
                        wandb_project=args.wandb_project_name, wandb_notes=args.wandb_notes,
                        name=args.name)


def run(args) -> int:
    import logging
    import sys

    from trainer.train import train
    # the trainer's warnings (e.g. too many skipped samples) as one "wit train: warning:" line
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_LineFormatter())
    logger = logging.getLogger("trainer")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # not muted by a root level set higher elsewhere in the process
    try:
        apply_openclip_names(args)
        report = report_from_args(args)
        _check_tokenizer(args)
        summary = train(config_from_args(args), report=report)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("step", "total_steps", "epoch", "final_loss", "samples_per_s", "precision",
                "precision_reason", "checkpoint", "eval", "skipped")
        print(json.dumps({k: summary[k] for k in keys}, indent=1, default=str))
    return 0
