"""Byte-level BPE with ``</w>`` as CLIP uses it: the vocabulary, merges files and
:class:`ReferenceBPE`, the pure-Python implementation of the algorithm (the ground truth the
fast :class:`trainer.tokenizer.Tokenizer` is tested against); see :mod:`trainer.tokenizer`.
"""
from __future__ import annotations

import functools
import gzip
import os
from typing import Iterable, Sequence

from wit_builder.core import WitError, atomic_open

from trainer.pretokenize import _PAT, clean_text

__all__ = ["ReferenceBPE", "read_merges", "write_merges", "format_merges", "openai_vocab_path",
           "bytes_to_unicode", "SOT", "EOT", "CONTEXT_LENGTH", "OPENAI_NUM_MERGES",
           "MERGES_HEADER", "OPENAI_VOCAB_FILE", "OPENAI"]

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
CONTEXT_LENGTH = 77
# OpenAI's tokenizer uses the first 49152 - 256 - 2 = 48,894 merges of its file
# (vocabulary 49408 = 512 byte symbols + 48,894 merges + 2 special tokens).
OPENAI_NUM_MERGES = 49152 - 256 - 2
MERGES_HEADER = "#version: 0.2"
# OpenAI's merges file, as OpenAI's ``clip`` and OpenCLIP (``open_clip_torch``) ship it inside
# their packages; ``--tokenizer openai`` / ``read_merges("openai")`` take it from there
OPENAI = "openai"
OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_VOCAB_PACKAGES = ("open_clip", "clip")  # import names of packages that ship OPENAI_VOCAB_FILE


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


def openai_vocab_path() -> str:
    """The path of OpenAI's BPE vocabulary (:data:`OPENAI_VOCAB_FILE`) inside an installed
    package that ships it (OpenCLIP's ``open_clip``, OpenAI's ``clip``), found without importing
    the package; a :class:`WitError` saying how to get one when none is installed."""
    import importlib.util
    for name in _VOCAB_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)   # a top-level name: located, not imported
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, OPENAI_VOCAB_FILE)
            if os.path.isfile(path):
                return path
    raise WitError(f"--tokenizer {OPENAI}: no installed package ships OpenAI's BPE vocabulary "
                   f"({OPENAI_VOCAB_FILE}); install one with `pip install --no-deps "
                   "open_clip_torch`, or pass that file's path")


def format_merges(merges: Sequence[tuple[str, str]]) -> str:
    """A merges file's text in CLIP's format: the version header, then one ``a b`` per line,
    with no newline after the last merge. OpenAI's reader (OpenCLIP's ``SimpleTokenizer``)
    splits the text at newlines and makes every piece after the header a merge: a trailing
    newline would add an empty merge and shift the two special tokens' ids by one."""
    return "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)])


def read_merges(path_or_text: str) -> str:
    """The text of a merges file given a path (gzip or plain), the text itself, or ``"openai"``
    (OpenAI's file from an installed package, :func:`openai_vocab_path`)."""
    if path_or_text == OPENAI and not os.path.exists(path_or_text):
        path_or_text = openai_vocab_path()
    if "\n" not in path_or_text and os.path.exists(path_or_text):
        with open(path_or_text, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WitError(f"{path_or_text}: merges file is not UTF-8 ({exc})") from None
    if "\n" not in path_or_text and path_or_text != MERGES_HEADER:  # (a header alone: no merges)
        raise WitError(f"merges file not found: {path_or_text}")
    return path_or_text


def write_merges(merges: Sequence[tuple[str, str]], out_path: str) -> str:
    """Write merges in CLIP's format (:func:`format_merges`: header line, one ``a b`` per line,
    no trailing newline), atomically; gzip if ``.gz`` (OpenCLIP reads only gzip)."""
    body = format_merges(merges)
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
