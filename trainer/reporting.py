"""The training scalars to TensorBoard and/or Weights & Biases (``wit train --report-to``).

Off by default. :func:`open_reporter` returns a :class:`Reporter` that the training loop hands
every ``log.jsonl`` record (rank 0 only); it writes

* ``train`` records: ``train/loss``, ``train/lr``, ``train/logit_scale``,
  ``train/samples_per_s``;
* ``eval`` records: every number in them under ``eval/`` (nested keys joined with ``/``, e.g.
  ``eval/zeroshot/top1``, ``eval/retrieval/image_to_text_R@1``),

at the record's step. TensorBoard: event files in ``OUT/tensorboard`` (a resumed run drops the
events after its checkpoint's step, as ``log.jsonl`` is cut back). W&B: a run in ``OUT/wandb``,
in offline mode unless ``WANDB_MODE`` is set (``wandb sync OUT/wandb/offline-run-*`` uploads
it later), so nothing goes to the network unless asked.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

from wit_builder.core import WitError

__all__ = ["ReportConfig", "Reporter", "REPORT_TARGETS", "parse_report_to", "check_available",
           "open_reporter", "scalars"]

REPORT_TARGETS = ("tensorboard", "wandb")
TRAIN_SCALARS = ("loss", "lr", "logit_scale", "samples_per_s")


@dataclass
class ReportConfig:
    """Where the scalars go: ``targets`` a subset of :data:`REPORT_TARGETS`."""
    targets: tuple = ()
    wandb_project: str = "wit"
    wandb_notes: str = ""
    name: str | None = None      # the W&B run name (default: the run directory's name)


def parse_report_to(value: str | None) -> tuple:
    """``"tensorboard,wandb"`` (also ``"all"``, ``""``) -> the targets; bad names are an error."""
    targets = []
    for part in (value or "").split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            targets.extend(REPORT_TARGETS)
        elif part in REPORT_TARGETS:
            targets.append(part)
        else:
            raise WitError(f"--report-to: unknown target {part!r}; choose from "
                           f"{', '.join(REPORT_TARGETS)} or all (comma-separated)")
    return tuple(dict.fromkeys(targets))


def check_available(cfg: ReportConfig | None) -> None:
    """Fail before training starts when a target's package is missing."""
    for target in (cfg.targets if cfg else ()):
        if importlib.util.find_spec(target) is None:
            raise WitError(f"--report-to {target} needs the {target} package, which is not "
                           f"installed: pip install {target}")


def scalars(record: dict) -> dict:
    """The scalars of one log record, named as written (``train/loss``, ``eval/zeroshot/top1``)."""
    kind = record.get("type")
    if kind == "train":
        return {f"train/{k}": float(record[k]) for k in TRAIN_SCALARS
                if _is_number(record.get(k))}
    if kind != "eval":
        return {}
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif _is_number(value):
            out[prefix] = float(value)
    for k, v in record.items():
        if k not in ("type", "step", "epoch"):
            walk(f"eval/{k}", v)
    return out


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


class Reporter:
    """Writes each record's scalars to the open TensorBoard writer and/or W&B run."""

    def __init__(self, tb_writer=None, wandb_run=None):
        self.tb_writer, self.wandb_run = tb_writer, wandb_run

    def write(self, record: dict) -> None:
        values = scalars(record)
        if not values or "step" not in record:
            return
        step = int(record["step"])
        if self.tb_writer is not None:
            for name, value in values.items():
                self.tb_writer.add_scalar(name, value, step)
            self.tb_writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def close(self) -> None:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def open_reporter(cfg: ReportConfig | None, out: str, run_config: dict,
                  start_step: int = 0) -> Reporter | None:
    """The reporter of a run writing into ``out`` (None when no target is asked for).
    ``start_step`` > 0 (a run resumed at that step): TensorBoard events after it are dropped."""
    if not cfg or not cfg.targets:
        return None
    check_available(cfg)
    tb_writer = wandb_run = None
    if "tensorboard" in cfg.targets:
        from torch.utils.tensorboard import SummaryWriter
        # a resumed run re-logs the steps after its checkpoint: drop what an earlier run wrote
        tb_writer = SummaryWriter(log_dir=os.path.join(out, "tensorboard"),
                                  purge_step=start_step + 1 if start_step else None)
    if "wandb" in cfg.targets:
        import wandb
        kwargs = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
        os.makedirs(out, exist_ok=True)
        wandb_run = wandb.init(project=cfg.wandb_project, notes=cfg.wandb_notes or None,
                               name=cfg.name or os.path.basename(os.path.normpath(out)),
                               dir=out, config=run_config, **kwargs)
    return Reporter(tb_writer, wandb_run)
