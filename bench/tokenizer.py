"""Tokenizer throughput: fast CLIP tokenizer vs the pure-Python reference BPE on the same texts.

    python bench/tokenizer.py [--texts 20000] [--merges 8000]

Trains a merges file on synthetic captions, then times (a) ReferenceBPE with CLIP's word
cache, (b) ReferenceBPE without the cache, (c) Tokenizer (HF tokenizers), all producing the
[N, 77] tensor, and prints texts/s and ratios. Checks the outputs are identical.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trainer.tokenizer import ReferenceBPE, Tokenizer, train_merges  # noqa: E402

SYLL = ["ka", "lo", "mi", "ra", "te", "su", "pho", "to", "gra", "ph", "dog", "cat", "in", "the",
        "ing", "er", "ed", "ion", "ness", "pre", "un", "re", "st", "ble", "man", "ville"]


def captions(n: int, seed: int, non_ascii: float = 0.2) -> list[str]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(SYLL) for _ in range(rng.randint(1, 4))) for _ in range(30000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]  # Zipf-like word frequencies
    out = []
    for _ in range(n):
        words = rng.choices(vocab, weights, k=rng.randint(3, 20))
        if rng.random() < non_ascii:
            words.append(rng.choice(["Café", "東京", "naïve", "2019", "&amp;", "It's"]))
        out.append(" ".join(words).capitalize() + rng.choice([".", "", "!", " - photo"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=20000)
    ap.add_argument("--merges", type=int, default=8000)
    ap.add_argument("--non-ascii", type=float, default=0.2,
                    help="fraction of captions with a non-ASCII word or HTML entity (these go "
                         "through ftfy in both tokenizers)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = train_merges(captions(20000, 0), a.merges, os.path.join(tmp, "m.txt"))
        fast = Tokenizer.from_merges(path)
        texts = captions(a.texts, 1, a.non_ascii)
        results = {}
        for name, tok in [("reference (word cache, as CLIP)", ReferenceBPE(fast.merges_text)),
                          ("reference (no cache)", ReferenceBPE(fast.merges_text, cache=False)),
                          ("fast (HF tokenizers)", fast)]:
            t0 = time.perf_counter()
            out = tok(texts)
            dt = time.perf_counter() - t0
            results[name] = (len(texts) / dt, out)
            print(f"{name:34s} {len(texts) / dt:10.0f} texts/s")
        base = list(results.values())
        assert all((r[1] == base[0][1]).all() for r in base), "outputs differ"
        f = results["fast (HF tokenizers)"][0]
        print(f"vocab {fast.vocab_size}, {a.texts} texts, non-ASCII fraction {a.non_ascii}; outputs identical")
        print(f"speed-up vs reference with cache: {f / results['reference (word cache, as CLIP)'][0]:.1f}x")
        print(f"speed-up vs reference without cache: {f / results['reference (no cache)'][0]:.1f}x")


if __name__ == "__main__":
    main()
