"""CLIP's text cleaning and pre-tokenisation pattern (see :mod:`trainer.tokenizer`).

* :func:`clean_text`: CLIP's cleaning, as published: ``ftfy.fix_text``, ``html.unescape``
  applied twice, strip; whitespace runs -> one space; lower-case;
* :data:`CLIP_PATTERN`: CLIP's pre-tokenisation regex (used case-insensitively);
* :func:`_clean_words` / :func:`_clean_fast`: the same cleaning, faster: ftfy's fixers are not
  run where they provably change nothing (see "fast cleaning" below; tests compare the two on
  large random, Unicode and mojibake corpora).
"""
from __future__ import annotations

import functools
import html
import unicodedata
from typing import Callable, NamedTuple

import regex

__all__ = ["basic_clean", "whitespace_clean", "clean_text", "CLIP_PATTERN"]

# CLIP's published pre-tokenisation pattern (used with IGNORECASE).
CLIP_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                r"""[^\s\p{L}\p{N}]+""")
_PAT = regex.compile(CLIP_PATTERN, regex.IGNORECASE)
_WS = regex.compile(r"\s+")


def basic_clean(text: str) -> str:
    import ftfy
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def clean_text(text: str) -> str:
    """CLIP's cleaning: ftfy, html-unescape twice, whitespace runs -> one space, lower-case."""
    return whitespace_clean(basic_clean(text)).lower()


# --- fast cleaning -------------------------------------------------------------------------
# ``ftfy.fix_text`` is the cost of CLIP's cleaning (tens to hundreds of microseconds per caption,
# most of it Python overhead around fixers that change nothing). ``_fix_text_fast`` returns the
# same string as ``ftfy.fix_text`` (default configuration, ftfy 6.x): it re-states ftfy's loop
# (``fix_text`` -> per-line ``fix_and_explain``) calling ftfy's own fixer functions, and skips
# work only where ftfy provably changes nothing:
#
# * ``fix_encoding`` is a no-op on text that is ASCII or that ftfy's ``is_bad`` does not flag
#   (the first test in ftfy's ``_fix_encoding_one_step_and_explain``); text it would act on
#   (mojibake) goes to ``ftfy.fix_text`` itself;
# * each character fixer (C1 controls, ligatures, width, curly quotes, line breaks, surrogates,
#   terminal escapes, control characters) is an identity on text without any of its characters
#   in :func:`_fixer_chars`, built from ftfy's own tables (a test checks every code point), and
#   runs only on text holding one;
# * ``unescape_html`` needs a ``&``; NFC is checked with ``unicodedata.is_normalized``.
_FTFY_FIXERS = ("fix_c1_controls", "fix_latin_ligatures", "fix_character_width", "uncurl_quotes",
                "fix_line_breaks", "fix_surrogates", "remove_terminal_escapes",
                "remove_control_chars")  # the order of ftfy's fix_and_explain


@functools.lru_cache(maxsize=None)
def _fixer_chars() -> dict[str, str]:
    """For each of ftfy's character fixers, every character it may change (from ftfy's own
    tables; a test checks that each fixer leaves every other code point alone)."""
    from ftfy import chardata
    bmp = "".join(map(chr, range(0x10000)))
    quotes = chardata.SINGLE_QUOTE_RE.findall(bmp) + chardata.DOUBLE_QUOTE_RE.findall(bmp)
    chars = {"fix_c1_controls": chardata.C1_CONTROL_RE.findall(bmp),
             "fix_latin_ligatures": map(chr, chardata.LIGATURES),
             "fix_character_width": map(chr, chardata.WIDTH_MAP),
             "uncurl_quotes": quotes,
             "fix_line_breaks": "\r\u2028\u2029\x85",
             "fix_surrogates": map(chr, range(0xD800, 0xE000)),
             "remove_terminal_escapes": "\x1b",
             "remove_control_chars": map(chr, chardata.CONTROL_CHARS)}
    return {name: "".join(sorted(set(chars[name]))) for name in _FTFY_FIXERS}


def _unsafe_chars() -> str:
    """Every character one of ftfy's character fixers may change (``unescape_html`` aside)."""
    return "".join(sorted(set("".join(_fixer_chars().values()))))


def _char_class(chars: str) -> str:
    return "[" + "".join(f"\\U{ord(c):08x}" for c in chars) + "]"


class _Ftfy(NamedTuple):
    """What the fast path calls, prepared once (see :func:`_ftfy`)."""
    plain: Callable  # fullmatch: printable ASCII and \t \n without '&' (ftfy changes nothing)
    unsafe: Callable  # search: a character some character fixer may change
    fixers: tuple  # (search: a character this fixer may change, the fixer), in ftfy's order
    unescape_html: Callable
    is_bad: Callable  # ftfy.badness.is_bad, see _is_bad_function
    max_segment: int


@functools.lru_cache(maxsize=None)
def _ftfy() -> _Ftfy | None:
    """None where ftfy is not 6.x (the re-statement follows ftfy 6's fix_text)."""
    import re

    import ftfy
    if not ftfy.__version__.startswith("6."):
        return None
    return _Ftfy(plain=re.compile(r"[\t\n -%'-~]*").fullmatch,
                 unsafe=re.compile(_char_class(_unsafe_chars())).search,
                 fixers=tuple((re.compile(_char_class(chars)).search, ftfy.FIXERS[name])
                              for name, chars in _fixer_chars().items()),
                 unescape_html=ftfy.FIXERS["unescape_html"], is_bad=_is_bad_function(),
                 max_segment=ftfy.TextFixerConfig().max_decode_length)


def _required_chars(items) -> frozenset | None:
    """Characters of which every match of the parsed regex ``items`` contains one (None: no
    such finite non-ASCII set). Picks, per sequence, the element with the fewest characters
    common in correct text (letters, curly quotes, dashes...), then the fewest characters."""
    from re import _constants as c
    best = None
    for op, av in items:
        cand = None
        if op is c.LITERAL and av >= 128:
            cand = frozenset(chr(av))
        elif op is c.IN and all(o in (c.LITERAL, c.RANGE) for o, _ in av):
            chars = set()
            for o, a in av:
                chars.update(chr(a) if o is c.LITERAL else map(chr, range(a[0], a[1] + 1)))
            cand = frozenset(chars) if all(ord(ch) >= 128 for ch in chars) else None
        elif op is c.BRANCH:
            alts = [_required_chars(alt.data) for alt in av[1]]
            cand = None if None in alts else frozenset().union(*alts)
        elif op is c.SUBPATTERN:
            cand = _required_chars(av[-1].data)
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[0] >= 1:
            cand = _required_chars(av[2].data)
        if cand is not None and (best is None or _rank(cand) < _rank(best)):
            best = cand
    return best


# characters common in correct captions (letters aside): not good window anchors
_COMMON_IN_CAPTIONS = frozenset("\xa0\u2019\u2018\u201c\u201d\u2013\u2014\u2026\u2022\xb7\xa9\xae"
                                "\u2122\xb0\xab\xbb\xbf\xa1\xbd")


def _rank(chars: frozenset) -> tuple[int, int]:
    return sum(ch.isalpha() or ch in _COMMON_IN_CAPTIONS for ch in chars), len(chars)


@functools.lru_cache(maxsize=None)
def _badness_windows():
    """``(finditer of the characters every match of ftfy's BADNESS_RE contains, the longest
    match)`` or None where that cannot be derived (then ``is_bad`` runs on the whole text)."""
    import re
    from ftfy.badness import BADNESS_RE
    try:
        from re import _parser
    except ImportError:  # not CPython 3.11+
        return None
    if BADNESS_RE.flags & re.IGNORECASE:
        return None
    parsed = _parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    required = _required_chars(parsed.data)
    span = parsed.getwidth()[1]
    if not required or span > 64:
        return None
    return re.compile(_char_class("".join(sorted(required)))).finditer, span


def _is_bad_function() -> Callable[[str], bool]:
    r"""``ftfy.badness.is_bad``, searching only around the characters every match needs: a
    match of length <= span containing one at index j lies inside [j - span + 1, j + span).
    ``search(text, pos, endpos)`` keeps ``^`` at the real start; the pattern has no other
    context-dependent construct (no lookaround, ``\b`` or ``$``; a test checks)."""
    from ftfy.badness import BADNESS_RE, is_bad
    windows = _badness_windows()
    if windows is None:
        return is_bad
    finditer, span = windows
    search = BADNESS_RE.search

    def is_bad_windowed(text: str) -> bool:
        start = end = -1
        for m in finditer(text):
            j = m.start()
            lo = max(0, j - span + 1)
            if lo > end:  # disjoint from the current window: search that one, start a new one
                if end >= 0 and search(text, start, end):
                    return True
                start = lo
            end = j + span
        return end >= 0 and search(text, start, end) is not None
    return is_bad_windowed


def _is_bad(text: str) -> bool:
    """``ftfy.badness.is_bad(text)`` (the windowed search)."""
    return _is_bad_function()(text)


def _fix_segment(text: str, unescape: bool, f: _Ftfy) -> str | None:
    """ftfy's ``fix_and_explain`` loop on one segment; ``None`` where fix_encoding would act."""
    while True:
        orig = text
        if unescape and "&" in text:
            text = f.unescape_html(text)
        if not text.isascii() and f.is_bad(text):  # isascii == possible_encoding(, 'ascii')
            return None
        if f.unsafe(text):
            for needs, fix in f.fixers:
                if needs(text):
                    text = fix(text)
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def _fix_text_fast(text: str) -> str:
    """``ftfy.fix_text(text)``, faster where ftfy has nothing to fix (see above)."""
    f = _ftfy()
    if f is not None:
        if f.plain(text):
            return text
        if "\n" not in text and len(text) <= f.max_segment:  # one segment
            fixed = _fix_segment(text, "<" not in text, f)
            if fixed is not None:
                return fixed
        elif len(text) <= f.max_segment:
            # fix_text's segments: lines including their '\n'; once a segment contains '<',
            # HTML unescaping is off for it and all later segments ("auto")
            lines = text.split("\n")
            segments = [line + "\n" for line in lines[:-1]]
            if lines[-1]:
                segments.append(lines[-1])
            out, unescape = [], True
            for seg in segments:
                unescape = unescape and "<" not in seg
                fixed = _fix_segment(seg, unescape, f)
                if fixed is None:
                    break
                out.append(fixed)
            else:
                return "".join(out)
    import ftfy
    return ftfy.fix_text(text)


_ODD_SPACE = regex.compile(r"[\x1c-\x1f]")  # str.isspace() but not regex's \s (a test checks)


def _clean_words(text: str) -> list[str]:
    r"""``clean_text(text)`` split at its spaces (``[]`` for an empty result), computed faster.

    ``str.split()`` splits at the characters regex's ``\s`` matches except U+001C..U+001F
    (those take the exact path), and ``str.lower`` neither makes nor removes whitespace (tests
    check both over every code point), so lower-casing first and splitting once gives the words
    of CLIP's "whitespace runs -> one space, strip, lower-case".
    """
    f = _ftfy()
    if f is not None and f.plain(text):  # printable ASCII without '&': nothing to fix
        return text.lower().split()
    text = _fix_text_fast(text)
    if "&" in text:
        text = html.unescape(html.unescape(text))
    if _ODD_SPACE.search(text):
        cleaned = whitespace_clean(text.strip()).lower()
        return cleaned.split(" ") if cleaned else []
    return text.lower().split()


def _clean_fast(text: str) -> str:
    """Same result as :func:`clean_text` (tests compare them on large random corpora)."""
    return " ".join(_clean_words(text))
