"""CLIP's tokenizer: text cleaning, CLIP's pre-tokenisation regex and byte-level BPE with ``</w>``.

The algorithm follows the description published with CLIP (Radford et al. 2021, and the
behaviour of OpenAI's ``simple_tokenizer``):

* cleaning: ``ftfy.fix_text``, ``html.unescape`` applied twice, strip; whitespace runs -> one
  space; lower-case;
* pre-tokenisation with CLIP's published pattern (:data:`CLIP_PATTERN`, case-insensitive);
* each piece is UTF-8 encoded, every byte mapped to a printable character by GPT-2's
  byte-to-unicode table, and the last character gets the end-of-word suffix ``</w>``;
* BPE: repeatedly merge the adjacent pair with the lowest merge rank (all its occurrences,
  left to right) until no ranked pair is left;
* vocabulary = 256 byte symbols + the same 256 with ``</w>`` + one token per merge +
  ``<|startoftext|>``, ``<|endoftext|>``. With OpenAI's 48,894 merges the two special tokens
  are 49406 and 49407;
* a batch is ``[sot] + ids + [eot]`` padded with zeros to the context length (77); a text that
  is too long is cut and its last position set to ``eot``, so the end token is always there.

Merges files are in CLIP's format (that of ``bpe_simple_vocab_16e6.txt.gz``): one version
header line, then one merge per line, two space-separated symbols; gzip or plain text.

Two implementations live here: :class:`ReferenceBPE`, a direct pure-Python implementation of
the algorithm above (the ground truth the tests compare against), and :class:`Tokenizer`, the
fast one: the same cleaning without running ftfy's fixers where they provably change nothing
(:func:`_fix_text_fast`, checked against ``ftfy.fix_text`` including on mojibake), a per-word
id cache, BPE of unseen pieces in HuggingFace ``tokenizers`` (Rust, one call per batch) and the
output array built with numpy. Tests check both give identical ids on large random, Unicode
and mojibake corpora.
"""
from __future__ import annotations

import array
import functools
import gzip
import html
import itertools
import os
import unicodedata
from typing import Callable, Iterable, NamedTuple, Sequence

import regex

from wit_builder.core import WitError, atomic_open

__all__ = ["Tokenizer", "ReferenceBPE", "train_merges", "read_merges", "write_merges",
           "bytes_to_unicode", "basic_clean", "whitespace_clean", "clean_text", "CLIP_PATTERN",
           "SOT", "EOT", "CONTEXT_LENGTH", "OPENAI_NUM_MERGES"]

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
CONTEXT_LENGTH = 77
# OpenAI's tokenizer uses the first 49152 - 256 - 2 = 48,894 merges of its file
# (vocabulary 49408 = 512 byte symbols + 48,894 merges + 2 special tokens).
OPENAI_NUM_MERGES = 49152 - 256 - 2
# CLIP's published pre-tokenisation pattern (used with IGNORECASE).
CLIP_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                r"""[^\s\p{L}\p{N}]+""")
_PAT = regex.compile(CLIP_PATTERN, regex.IGNORECASE)
_WS = regex.compile(r"\s+")
MERGES_HEADER = "#version: 0.2"


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (as used by CLIP).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to chr(256 + n) in order.
    """
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=None)
def _byte_table() -> dict[int, str]:
    """``str.translate`` table: a latin-1 decoded byte string -> its byte-to-unicode mapping."""
    return {b: c for b, c in bytes_to_unicode().items()}


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


def _parse_merges(text: str, max_merges: int | None, where: str) -> list[tuple[str, str]]:
    lines = text.split("\n")
    if not lines or not lines[0].strip():
        raise WitError(f"{where}: empty merges file (expected a version header line then merges)")
    merges: list[tuple[str, str]] = []
    for i, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise WitError(f"{where}: line {i}: expected two space-separated symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
        if max_merges is not None and len(merges) >= max_merges:
            break
    return merges


def read_merges(path_or_text: str) -> str:
    """The text of a merges file given a path (gzip or plain) or the text itself."""
    if "\n" not in path_or_text and os.path.exists(path_or_text):
        with open(path_or_text, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WitError(f"{path_or_text}: merges file is not UTF-8 ({exc})") from None
    if "\n" not in path_or_text:
        raise WitError(f"merges file not found: {path_or_text}")
    return path_or_text


def write_merges(merges: Sequence[tuple[str, str]], out_path: str) -> str:
    """Write merges in CLIP's format (header line, one ``a b`` per line); gzip if ``.gz``."""
    body = MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges)
    with atomic_open(out_path, "wb") as fh:
        data = body.encode("utf-8")
        fh.write(gzip.compress(data, mtime=0) if out_path.endswith(".gz") else data)
    return out_path


def _build_vocab(merges: Sequence[tuple[str, str]]) -> list[str]:
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base]
    vocab.extend("".join(m) for m in merges)
    vocab.extend([SOT, EOT])
    return vocab


class ReferenceBPE:
    """Pure-Python CLIP BPE, a direct implementation of the published algorithm.

    Slow; the ground truth for :class:`Tokenizer` and the baseline in ``bench/tokenizer.py``.
    ``cache=False`` disables the per-word cache (CLIP's tokenizer keeps one).
    """

    def __init__(self, merges_text: str, max_merges: int | None = OPENAI_NUM_MERGES,
                 cache: bool = True):
        merges = _parse_merges(merges_text, max_merges, "merges")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = _build_vocab(merges)
        self.vocab_size = len(vocab)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.use_cache = cache
        self.cache = {SOT: SOT, EOT: EOT}
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]

    def bpe(self, token: str) -> list[str]:
        if token in (SOT, EOT):
            return [token]
        if self.use_cache and token in self.cache:
            return self.cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            new: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = new
        if self.use_cache:
            self.cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _PAT.findall(clean_text(text)):
            if piece in (SOT, EOT):
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH):
        import torch
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            result[row, :len(ids)] = torch.tensor(ids)
        return result


_MAX_CACHED_WORD = 64  # characters


def _c_ints(ids) -> bytes:
    """Ids (or one id) as the bytes of a C-int array (the word cache's values)."""
    return array.array("i", [ids] if isinstance(ids, int) else ids).tobytes()


class Tokenizer:
    """Fast CLIP tokenizer, identical ids to :class:`ReferenceBPE`.

    Per batch: each text is cleaned into words (:func:`_clean_words`: the result of
    :func:`clean_text` split at its spaces, without running ftfy where it provably changes
    nothing); each word not seen before is split with CLIP's pattern and its distinct pieces
    are BPE-encoded by HuggingFace ``tokenizers``' BPE model (Rust); the ids of every word are
    kept in a cache (CLIP's tokenizer keeps one per piece; this one is bounded by ``cache_size``
    words), and the ``[N, context_length]`` array is filled with numpy. One thread.

    >>> tok = Tokenizer.from_merges("merges.txt.gz")
    >>> tok(["a photo of a cat"]).shape      # torch.LongTensor [1, 77]
    """

    def __init__(self, merges_text: str, max_merges: int | None = OPENAI_NUM_MERGES,
                 cache_size: int = 200_000):
        merges = _parse_merges(merges_text, max_merges, "merges")
        self.merges = merges
        self.merges_text = MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges)
        vocab = _build_vocab(merges)
        self.vocab_size = len(vocab)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.cache_size = int(cache_size)
        self._ref: ReferenceBPE | None = None
        from tokenizers import models
        # HuggingFace's BPE model alone, on byte-mapped pieces; no cache of its own (ours is
        # per word, so it would only hold pieces already in ours)
        self._bpe_model = models.BPE(vocab=dict(self.encoder), merges=list(merges),
                                     end_of_word_suffix="</w>", fuse_unk=False, cache_capacity=0)
        self._reset_cache()

    def _reset_cache(self) -> None:
        # cleaned word -> its ids as C-int bytes: a batch's ids are then one bytes.join
        self._cache: dict[str, bytes] = {}

    def __getstate__(self) -> dict:  # pickled to data-loader workers: without the caches
        state = self.__dict__.copy()
        state["_ref"] = None
        del state["_cache"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_cache()

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_merges(cls, path_or_text: str, max_merges: int | None = OPENAI_NUM_MERGES) -> "Tokenizer":
        """Load a CLIP-format merges file (path, gzip or plain, or the file's text itself).

        Like OpenAI's tokenizer, at most ``max_merges`` (48,894) merges are used.
        """
        return cls(read_merges(path_or_text), max_merges=max_merges)

    @property
    def reference(self) -> ReferenceBPE:
        if self._ref is None:
            self._ref = ReferenceBPE(self.merges_text, max_merges=None)
        return self._ref

    # --- encoding -----------------------------------------------------------------------
    def _word_ids(self, texts: Sequence[str]):
        """(the cleaned words of every text, the ids of all of them in order, the number of
        ids of each word).

        CLIP's pattern never matches across whitespace, so a text's pieces are the
        concatenation of its space-separated words' pieces: caching per word is exact.
        """
        import numpy as np
        words = [_clean_words(t) for t in texts]
        chain = itertools.chain.from_iterable
        try:  # the common case: every word already cached
            ids = list(map(self._cache.__getitem__, chain(words)))
        except KeyError:
            missing = set(chain(words)).difference(self._cache)
            if len(self._cache) + len(missing) > self.cache_size:
                self._reset_cache()
                missing = set(chain(words))
            self._add_words(list(missing))
            ids = list(map(self._cache.__getitem__, chain(words)))
            for word in missing:  # very long "words" (URLs, data) are rare: not worth memory
                if len(word) > _MAX_CACHED_WORD:
                    del self._cache[word]
        flat = np.frombuffer(b"".join(ids), dtype=np.intc)  # array("i") is a C int
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) // flat.itemsize
        return words, flat, counts

    def _add_words(self, words: list[str]) -> None:
        chain = itertools.chain.from_iterable
        findall = _PAT.findall
        cache = self._cache
        # an ASCII letter run is one piece of CLIP's pattern (the letters alternative)
        pieces = [[w] if w.isalpha() and w.isascii() else findall(w) for w in words]
        # a piece equal to SOT/EOT can only come from the pattern's special-token alternatives
        piece_ids = {SOT: _c_ints(self.sot_token_id), EOT: _c_ints(self.eot_token_id)}
        todo = set(chain(pieces)).difference(piece_ids)
        # a piece on its own is one piece again, so a cached word equal to it has its ids
        piece_ids.update((p, cache[p]) for p in todo.intersection(cache))
        new = list(todo.difference(cache))
        if new:
            piece_ids.update(zip(new, map(_c_ints, self._bpe(new))))
        get = piece_ids.__getitem__
        cache.update(zip(words, (b"".join(map(get, ps)) for ps in pieces)))

    def _bpe(self, pieces: list[str]) -> list[list[int]]:
        """Ids of each piece: its UTF-8 bytes through the byte-to-unicode table, then BPE with
        ``</w>`` in HuggingFace ``tokenizers`` (Rust)."""
        table = _byte_table()
        tokenize = self._bpe_model.tokenize
        mapped = [p.encode("utf-8").decode("latin-1").translate(table) for p in pieces]
        return [[t.id for t in tokenize(m)] for m in mapped]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no start/end tokens, no truncation)."""
        words, flat, counts = self._word_ids(texts)
        ids, ends = flat.tolist(), [0, *itertools.accumulate(counts.tolist())]
        bounds = [0, *itertools.accumulate(map(len, words))]
        return [ids[ends[a]:ends[b]] for a, b in zip(bounds, bounds[1:])]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: Iterable[int]) -> str:
        return self.reference.decode(ids)

    def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH):
        """Tokenise to a ``torch.LongTensor [N, context_length]``: sot, ids, eot, zero padding;
        over-long texts are truncated and end with eot."""
        import numpy as np
        import torch
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise WitError(f"context_length must be >= 2, got {context_length}")
        room = context_length - 2
        # no per-text Python below: the ids of every word of every text, in order...
        words, flat, counts = self._word_ids(texts)
        # ...each text's slice of them (cumulative token counts at its word boundaries)...
        ends = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=ends[1:])
        bounds = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)), out=bounds[1:])
        starts, lengths = ends[bounds[:-1]], ends[bounds[1:]] - ends[bounds[:-1]]
        # ...and its first `room` ids go to columns 1..room of its row
        row = np.repeat(np.arange(len(words)), lengths)
        col = np.arange(len(flat)) - np.repeat(starts, lengths)
        keep = col < room
        result = np.zeros((len(words), context_length), dtype=np.int64)
        result[:, 0] = self.sot_token_id
        result[row[keep], col[keep] + 1] = flat[keep]
        result[np.arange(len(words)), np.minimum(lengths, room) + 1] = self.eot_token_id
        return torch.from_numpy(result)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


# --- training ----------------------------------------------------------------------------
def _pretokenize_for_training(texts: Iterable[str]) -> Iterable[str]:
    table = _byte_table()
    for text in texts:
        words = []
        for piece in _PAT.findall(_clean_fast(text)):
            if piece in (SOT, EOT):
                continue
            words.append(piece.encode("utf-8").decode("latin-1").translate(table))
        if words:
            yield " ".join(words)


def train_merges(texts: Iterable[str], num_merges: int, out_path: str,
                 min_frequency: int = 2) -> str:
    """Learn ``num_merges`` BPE merges from ``texts`` and write them in CLIP's format.

    Uses the same cleaning, pre-tokenisation, byte mapping and ``</w>`` suffix as the tokenizer
    (HuggingFace's ``BpeTrainer`` does the counting). Returns ``out_path``. Fewer merges are
    written when the corpus runs out of pairs seen at least ``min_frequency`` times.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    if num_merges < 1:
        raise WitError(f"num_merges must be >= 1, got {num_merges}")
    if num_merges > OPENAI_NUM_MERGES:
        raise WitError(f"num_merges must be <= {OPENAI_NUM_MERGES} (CLIP's vocabulary size)")
    alphabet = list(bytes_to_unicode().values())
    hf = HFTokenizer(models.BPE(end_of_word_suffix="</w>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # words are byte-mapped: no spaces
    trainer = trainers.BpeTrainer(vocab_size=512 + num_merges, min_frequency=min_frequency,
                                  show_progress=False, initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", special_tokens=[])
    hf.train_from_iterator(_pretokenize_for_training(texts), trainer=trainer)
    import json
    model = json.loads(hf.to_str())["model"]
    base = set(alphabet) | {a + "</w>" for a in alphabet}
    seen = set(base)
    merges: list[tuple[str, str]] = []
    for m in model["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a not in seen or b not in seen or a + b in seen:
            continue  # keep the file a valid CLIP vocabulary: parts known, results unique
        merges.append((a, b))
        seen.add(a + b)
        if len(merges) >= num_merges:
            break
    if not merges:
        raise WitError("no merges learned: the caption corpus is empty or too small")
    return write_merges(merges, out_path)
