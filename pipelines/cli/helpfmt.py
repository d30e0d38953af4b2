"""How `wit COMMAND --help` shows defaults.

argparse's ``ArgumentDefaultsHelpFormatter`` appends ``(default: X)`` to every option. That prints
"(default: None)" after required options and options that are simply off, "(default: False)"
after flags, a second default after help that already states one, and Python list syntax
(``['noai', 'noimageai']``) for options that take comma-separated lists. This formatter appends
the default only where it tells the user something, in the form they would type it.
"""
from __future__ import annotations

import argparse
import re

__all__ = ["HelpFormatter"]

# help text that already gives the default: "(default: ...", "default = ...", "default: ...", %(default)s
_STATES_DEFAULT = re.compile(r"\(default\b|\bdefaults? ?[:=]|%\(default\)", re.I)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        default = action.default
        if (action.required or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or _STATES_DEFAULT.search(help_)
                or action.nargs == 0 or default in ("", [], ())):
            return help_
        if isinstance(default, (list, tuple)):
            shown = ",".join(str(v) for v in default)
        else:
            shown = str(default)
        return f"{help_} (default: {shown.replace('%', '%%')})"
