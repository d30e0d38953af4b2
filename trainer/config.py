"""The settings of a training run: :class:`TrainConfig` (``wit train``'s flags, see
:mod:`trainer.train`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["TrainConfig", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a run needs. ``batch_size`` is per rank and per micro-batch."""
    train_data: str                       # shards: 'DIR/{00000..00009}.tar', sources joined by ::
    out: str                              # run directory
    model: str = "tiny-vit"               # bundled config name or a config .json
    tokenizer: str | None = None          # CLIP-format merges file or "openai" (OpenAI's, from an
                                          # installed package); from the checkpoint on resume
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
    precision: str = "fp32"               # fp32 | bf16 (autocast) | fp16 (autocast + scaler, GPU) |
                                          # auto (trainer.precision; `wit train`'s default)
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
    warn_skip_share: float = 0.1          # warn when a pass skips more than this share of samples
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

    def __post_init__(self) -> None:
        # "openai": the path of OpenAI's merges file in an installed package (one-line error
        # saying how to get one when none is), so the run and its checkpoint name a real file
        # (a file named "openai" in the working directory wins, as in trainer.bpe.read_merges)
        if self.tokenizer == "openai" and not os.path.exists(self.tokenizer):
            from trainer.bpe import openai_vocab_path
            self.tokenizer = openai_vocab_path()
