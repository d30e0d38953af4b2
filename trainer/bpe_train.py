"""Learning CLIP-format BPE merges from captions: :func:`train_merges`."""
from __future__ import annotations

from typing import Iterable

from wit_builder.core import WitError

from trainer.bpe import EOT, OPENAI_NUM_MERGES, SOT, _byte_table, bytes_to_unicode, write_merges
from trainer.pretokenize import _PAT, _clean_fast

__all__ = ["train_merges"]


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
