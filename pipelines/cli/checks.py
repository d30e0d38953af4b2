"""What every stage's command line does after its driver returns: exit non-zero with one line when
nothing usable came out, and warn when more than a set share of the input was skipped."""
from __future__ import annotations

import argparse
import sys

from wit_builder.core import WitError

__all__ = ["add_skip_share", "warn_skipped", "nothing_usable"]


def add_skip_share(parser: argparse.ArgumentParser, default: float, what: str) -> None:
    parser.add_argument("--warn-skip-share", type=_share, default=default, metavar="SHARE",
                        help=f"print a warning when more than this share of {what} is skipped (0..1)")


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def warn_skipped(stage: str, skipped: int, total: int, limit: float, what: str, detail: str = "") -> bool:
    """One warning line on stderr when ``skipped / total`` is above ``limit``; True if warned."""
    if total <= 0 or skipped / total <= limit:
        return False
    print(f"wit {stage}: warning: {skipped:,} of {total:,} {what} skipped ({skipped / total:.1%}, above "
          f"--warn-skip-share {limit:g}){': ' + detail if detail else ''}", file=sys.stderr)
    return True


def nothing_usable(why: str, where: str) -> WitError:
    """The one-line error of a run that finished with nothing a later stage can use."""
    return WitError(f"nothing usable came out: {why} (details: {where})")


def top(counts: dict, n: int = 3) -> str:
    """``"a 5, b 2"``: the largest counts of a {reason: count} dict."""
    items = sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{k} {v:,}" for k, v in items) or "none"
