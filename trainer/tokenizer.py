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
fast one: cleaning and the pre-tokenisation regex in Python (the regex runs in C), the byte
mapping and BPE in HuggingFace ``tokenizers`` (Rust, batched). Tests check both give identical
ids on large random and Unicode corpora.
"""
from __future__ import annotations

import functools
import gzip
import html
import io
import os
from typing import Iterable, Sequence

import regex

from wit_builder.common import WitError, atomic_open

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


_NOT_PLAIN = regex.compile(r"[^\t\n\r -%'-~]")  # anything but printable ASCII without '&'


def _is_plain(text: str) -> bool:
    return _NOT_PLAIN.search(text) is None


def _clean_fast(text: str) -> str:
    """Same result as :func:`clean_text`; skips ftfy on printable ASCII without ``&`` (which
    ftfy leaves unchanged: its fixes concern mojibake, non-ASCII characters, control characters,
    terminal escapes and HTML entities, all excluded by the test). Verified against
    :func:`clean_text` in the tests."""
    if _is_plain(text):
        return whitespace_clean(text).lower()
    return clean_text(text)


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


class Tokenizer:
    """Fast CLIP tokenizer (HuggingFace ``tokenizers`` BPE), identical ids to :class:`ReferenceBPE`.

    >>> tok = Tokenizer.from_merges("merges.txt.gz")
    >>> tok(["a photo of a cat"]).shape      # torch.LongTensor [1, 77]
    """

    def __init__(self, merges_text: str, max_merges: int | None = OPENAI_NUM_MERGES):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        merges = _parse_merges(merges_text, max_merges, "merges")
        self.merges = merges
        self.merges_text = MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges)
        vocab = _build_vocab(merges)
        self.vocab_size = len(vocab)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self._ref: ReferenceBPE | None = None
        bpe = models.BPE(vocab=dict(self.encoder), merges=list(merges), end_of_word_suffix="</w>",
                         fuse_unk=False)
        hf = HFTokenizer(bpe)
        # input arrives already split by CLIP's regex (is_pretokenized); ByteLevel here only
        # maps each piece's UTF-8 bytes through the byte-to-unicode table.
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        self._hf = hf
        # Printable-ASCII texts (most captions) are split in Rust too: after cleaning the only
        # whitespace left is ' ', so CLIP's pattern is equivalent to this one on them
        # (\p{L} = [a-z], \p{N} = [0-9] on ASCII, so Unicode-table versions cannot differ).
        from tokenizers import Regex
        ascii_pat = r"(?i)'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^ \p{L}\p{N}]+"
        hf_ascii = HFTokenizer(models.BPE(vocab=dict(self.encoder), merges=list(merges),
                                          end_of_word_suffix="</w>", fuse_unk=False))
        hf_ascii.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(" "), "removed"),
            pre_tokenizers.Split(Regex(ascii_pat), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._hf_ascii = hf_ascii

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
    def _pieces(self, text: str) -> list[str] | None:
        cleaned = _clean_fast(text)
        if "<|" in cleaned and (SOT in cleaned or EOT in cleaned):
            return None  # literal special tokens: rare, handled by the reference path
        return _PAT.findall(cleaned)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in texts]
        plain = [i for i, t in enumerate(texts) if _is_plain(t)]
        if plain:
            cleaned = [whitespace_clean(texts[i]).lower() for i in plain]
            batch = [c for c in cleaned if "<|" not in c]
            if len(batch) == len(cleaned):
                for i, enc in zip(plain, self._hf_ascii.encode_batch_fast(
                        cleaned, add_special_tokens=False)):
                    out[i] = enc.ids
            else:
                plain = []  # literal special tokens somewhere: use the general path below
        done = set(plain)
        rest = [i for i in range(len(texts)) if i not in done]
        pieces = {i: self._pieces(texts[i]) for i in rest}
        todo = [i for i in rest if pieces[i]]
        if todo:
            encs = self._hf.encode_batch_fast([pieces[i] for i in todo], is_pretokenized=True,
                                              add_special_tokens=False)
            for i, enc in zip(todo, encs):
                out[i] = enc.ids
        for i, p in pieces.items():
            if p is None:
                out[i] = self.reference.encode(texts[i])
        return out

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
        result = np.zeros((len(texts), context_length), dtype=np.int64)
        result[:, 0] = self.sot_token_id
        for row, ids in enumerate(self.encode_batch(texts)):
            n = min(len(ids), context_length - 2)
            result[row, 1:n + 1] = ids[:n]
            result[row, n + 1] = self.eot_token_id
        return torch.from_numpy(result)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


# --- training ----------------------------------------------------------------------------
def _pretokenize_for_training(texts: Iterable[str]) -> Iterable[str]:
    enc = bytes_to_unicode()
    table = {i: enc[i] for i in range(256)}
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
