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
header line, then one merge per line, two space-separated symbols; gzip or plain text. Files we
write end without a newline after the last merge, so OpenAI's and OpenCLIP's reader (split at
newlines, every piece after the header a merge) gives the same ids as ours.

Two implementations: :class:`ReferenceBPE` (in :mod:`trainer.bpe`), a direct pure-Python
implementation of the algorithm above (the ground truth the tests compare against), and
:class:`Tokenizer` (here), the fast one: the same cleaning without running ftfy's fixers where
they provably change nothing (:func:`trainer.pretokenize._fix_text_fast`, checked against
``ftfy.fix_text`` including on mojibake), a per-word id cache, BPE of unseen pieces in
HuggingFace ``tokenizers`` (Rust, one call per batch) and the output array built with numpy.
Tests check both give identical ids on large random, Unicode and mojibake corpora.

Where the pieces live (all public names are importable from here too): cleaning and the
pattern in :mod:`trainer.pretokenize`; the byte table, vocabulary, merges files and
:class:`ReferenceBPE` in :mod:`trainer.bpe`; :func:`train_merges` in :mod:`trainer.bpe_train`.
"""
from __future__ import annotations

import array
import itertools
from typing import Iterable, Sequence

from wit_builder.core import WitError

from trainer.bpe import (CONTEXT_LENGTH, EOT, OPENAI, OPENAI_NUM_MERGES, SOT, ReferenceBPE,
                         _build_vocab, _byte_table, _parse_merges, bytes_to_unicode, format_merges,
                         openai_vocab_path, read_merges, write_merges)
from trainer.bpe_train import train_merges
from trainer.pretokenize import (_PAT, CLIP_PATTERN, _clean_words, basic_clean, clean_text,
                                 whitespace_clean)

__all__ = ["Tokenizer", "ReferenceBPE", "train_merges", "read_merges", "write_merges",
           "format_merges", "openai_vocab_path", "OPENAI", "bytes_to_unicode", "basic_clean", "whitespace_clean", "clean_text", "CLIP_PATTERN",
           "SOT", "EOT", "CONTEXT_LENGTH", "OPENAI_NUM_MERGES"]


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
        self.merges_text = format_merges(merges)  # no trailing newline: see format_merges
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
        """Load a CLIP-format merges file (path, gzip or plain, the file's text itself, or
        ``"openai"``: OpenAI's file from an installed package, see :func:`openai_vocab_path`).

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
