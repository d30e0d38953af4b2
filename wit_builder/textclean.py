"""Alt-text cleaning: HTML unescape, ftfy, whitespace collapse, length bounds.

``clean_text(raw)`` returns ``(text, None)`` or ``(None, reason)`` with reason one of
``empty_text``, ``text_too_short``, ``text_too_long``. Steps, in order:

1. a raw text longer than ``4 * max_chars + 64`` characters is dropped as ``text_too_long`` before
   anything else runs on it (megabyte alt texts exist; cleaning them would only waste time);
2. ``html.unescape`` when the text contains ``&`` (WAT alt texts sometimes keep entities);
3. ``ftfy.fix_text`` (mojibake, C1 controls, curly quotes, ligatures, width, NFC, control
   characters), with its own HTML unescaping off so entities are not decoded twice. Printable ASCII
   text is left alone: ftfy changes nothing in it (checked in the tests), and skipping it there makes
   cleaning several times faster on the common case;
4. every run of whitespace (any Unicode space, tab, newline) becomes one space; ends are stripped;
5. bounds on the result, in characters: ``min_chars`` (default 2; shorter alt texts such as "a"
   or "-" say nothing) and ``max_chars`` (default 1000: CLIP's text encoder reads 76 BPE tokens,
   about 300 characters, and longer alt texts are mostly keyword stuffing or pasted paragraphs).
"""
from __future__ import annotations

import html
from dataclasses import dataclass

__all__ = ["TextCleaner", "clean_text", "DEFAULT_MIN_CHARS", "DEFAULT_MAX_CHARS"]

DEFAULT_MIN_CHARS = 2
DEFAULT_MAX_CHARS = 1000


@dataclass(frozen=True)
class TextCleaner:
    min_chars: int = DEFAULT_MIN_CHARS
    max_chars: int = DEFAULT_MAX_CHARS

    @property
    def raw_limit(self) -> int:
        return 4 * self.max_chars + 64

    def __call__(self, raw: str | None) -> tuple[str | None, str | None]:
        if not raw:
            return None, "empty_text"
        if len(raw) > self.raw_limit:
            return None, "text_too_long"
        text = raw
        if "&" in text:
            text = html.unescape(text)
        if not (text.isascii() and text.isprintable()):
            text = _ftfy(text)
            text = " ".join(text.split())
        elif "  " in text or text[:1] == " " or text[-1:] == " ":
            text = " ".join(text.split())
        if not text:
            return None, "empty_text"
        if len(text) < self.min_chars:
            return None, "text_too_short"
        if len(text) > self.max_chars:
            return None, "text_too_long"
        return text, None


_FTFY_CONFIG = None


def _ftfy(text: str) -> str:
    global _FTFY_CONFIG
    import ftfy
    if _FTFY_CONFIG is None:   # built once: passing keyword arguments rebuilds it on every call
        _FTFY_CONFIG = ftfy.TextFixerConfig(unescape_html=False)
    return ftfy.fix_text(text, _FTFY_CONFIG)


_default = TextCleaner()


def clean_text(raw: str | None) -> tuple[str | None, str | None]:
    """Clean with the default bounds (see module docstring)."""
    return _default(raw)
