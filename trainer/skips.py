"""What the training loop says about skipped samples: an error when the data has nothing to
train on, a warning when a pass over the data skips more than ``warn_skip_share`` of it.

The counts are the loader's (``loader.skipped``: reason -> samples, see :mod:`trainer.data`);
every rank judges its own. Warnings go to the ``trainer`` logger (``wit train`` prints them as
``wit train: warning: ...``; without a handler Python prints the bare message to stderr).
"""
from __future__ import annotations

import logging
from collections import Counter

from wit_builder.core import WitError

__all__ = ["describe_skips", "no_usable_data", "SkipWatch", "LOGGER"]

LOGGER = logging.getLogger("trainer")

# reason (trainer.data) -> how a message counts it
REASONS = {"bad_image": "images skipped as undecodable",
           "bad_tar": "unreadable tar members",
           "missing_image": "samples without an image",
           "missing_text": "samples without a caption",
           "bad_text": "captions that are not UTF-8"}


def describe_skips(skipped: Counter) -> str:
    """``"96 images skipped as undecodable, 2 unreadable tar members"`` (most first; "" if none)."""
    return ", ".join(f"{n} {REASONS.get(reason, reason + ' skips')}"
                     for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
                     if n)


def _where(num_shards: int, rank: int, world: int) -> str:
    return f"{num_shards} shard(s)" + (f" (rank {rank} of {world})" if world > 1 else "")


def no_usable_data(num_shards: int, skipped: Counter, batches: int, accum_freq: int,
                   rank: int = 0, world: int = 1) -> WitError:
    """The error for a pass over a whole epoch that could not make one optimisation step:
    ``batches`` full micro-batches came out, ``accum_freq`` were needed."""
    where, why = _where(num_shards, rank, world), describe_skips(skipped)
    if batches >= accum_freq:  # this rank had a step's worth; another had not
        return WitError(f"another rank found no usable sample in its shards ({where} had "
                        f"{batches} batch(es))")
    if batches == 0:
        return WitError(f"no usable sample in {where}: {why or 'they hold no samples'}")
    return WitError(f"only {batches} batch(es) of usable samples in {where}, fewer than the "
                    f"{accum_freq} of one step (--accum-freq)" + (f": {why}" if why else ""))


class SkipWatch:
    """One pass's skip share: :meth:`start` at the beginning of a pass, :meth:`took` for every
    micro-batch trained on, :meth:`finish` at its end (warns above ``limit``)."""

    def __init__(self, loader, batch_size: int, limit: float, rank: int = 0, world: int = 1):
        self.loader, self.batch_size, self.limit = loader, batch_size, limit
        self.rank, self.world = rank, world
        self.before: Counter = Counter()
        self.batches = 0

    def start(self) -> None:
        self.before, self.batches = Counter(self.loader.skipped), 0

    def took(self, batches: int) -> None:
        self.batches += batches

    def skipped(self) -> Counter:
        """What the current pass has skipped so far."""
        return Counter(self.loader.skipped) - self.before

    def finish(self, epoch: int) -> str | None:
        """The warning (also logged) if the pass skipped more than ``limit`` of the samples it
        read, else None."""
        skipped = self.skipped()
        bad, used = sum(skipped.values()), self.batches * self.batch_size
        if not bad or bad <= self.limit * (bad + used):
            return None
        rank = f" rank {self.rank}:" if self.world > 1 else ""
        message = (f"epoch {epoch}:{rank} {bad:,} of {bad + used:,} samples skipped "
                   f"({bad / (bad + used):.1%}, above --warn-skip-share {self.limit:g}): "
                   f"{describe_skips(skipped)}")
        LOGGER.warning(message)
        return message
