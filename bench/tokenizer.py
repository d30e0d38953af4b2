"""Tokenizer throughput: fast CLIP tokenizer vs the pure-Python reference BPE on the same texts.

    python bench/tokenizer.py [--texts 10000] [--merges 8000] [--mix 0,0.2] [--threads N]
    python bench/tokenizer.py --quick          # about 15 seconds

Trains a merges file on synthetic Zipf-distributed captions, then for each caption mix times,
on the same texts and producing the same [N, 77] tensor: ReferenceBPE with CLIP's word cache,
ReferenceBPE without it and Tokenizer, each a fresh instance (cold caches), and the cached
ReferenceBPE and the Tokenizer called a second time on the same texts (warm caches, as in
training after the first batches). Construction is not timed. Each figure is the best of
--repeats interleaved runs, in wall time and in process CPU time (all threads; steadier on a
shared machine). Prints texts/s and ratios, and checks all outputs are identical.

A mix is the fraction of captions given something beyond plain ASCII: accented or non-Latin
words, emoji, curly quotes, dashes, non-breaking spaces, HTML entities, full-width letters, or
(for --mojibake of all captions, counted within the mix) UTF-8 mojibake, which both tokenizers
send through ftfy in full. Both tokenizers run on one thread (the fast one calls HuggingFace's
BPE model directly, which does not use its thread pool); --threads 1 pins that pool anyway.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SYLL = ["ka", "lo", "mi", "ra", "te", "su", "pho", "to", "gra", "ph", "dog", "cat", "in", "the",
        "ing", "er", "ed", "ion", "ness", "pre", "un", "re", "st", "ble", "man", "ville"]
# what web alt text has beyond ASCII (a word or a few characters added to a caption)
EXTRAS = ["Café", "naïve", "Zürich", "São Paulo", "Ελλάδα", "Москва", "東京タワー", "서울", "北京",
          "😀", "👍🏽", "it’s", "“quoted”", "2010–2020", "wait…", "100\u00a0km", "©", "½",
          "&amp;", "&quot;hi&quot;", "it&#39;s", "caf&eacute;", "a&nbsp;b", "R&amp;D", "＠ｈｏｍｅ"]
MOJIBAKE = ["cafÃ©", "donâ€™t", "Ã¼ber", "â€œquoteâ€\x9d", "ÐœÐ¾ÑÐºÐ²Ð°"]


def captions(n: int, seed: int, non_ascii: float = 0.2, mojibake: float = 0.0) -> list[str]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(SYLL) for _ in range(rng.randint(1, 4))) for _ in range(30000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]  # Zipf-like word frequencies
    out = []
    for _ in range(n):
        words = rng.choices(vocab, weights, k=rng.randint(3, 20))
        r = rng.random()
        if r < mojibake:
            words.insert(rng.randrange(len(words) + 1), rng.choice(MOJIBAKE))
        elif r < non_ascii:
            words.insert(rng.randrange(len(words) + 1), rng.choice(EXTRAS))
        out.append(" ".join(words).capitalize() + rng.choice([".", "", "!", " - photo"]))
    return out


def _time(fn, texts):
    """(wall seconds, CPU seconds of the whole process: all threads), output"""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(texts)
    return (time.perf_counter() - w0, time.process_time() - c0), out


REF, REF_WARM, REF_NOCACHE = ("reference, cold cache (as CLIP)", "reference, warm cache",
                              "reference, no cache")
FAST, FAST_WARM = "fast, cold cache", "fast, warm cache"


def run_mix(merges_text, texts, repeats):
    """{name: (wall texts/s, CPU texts/s)}, each the best of `repeats` interleaved runs."""
    from trainer.tokenizer import ReferenceBPE, Tokenizer
    makers = {REF: lambda: ReferenceBPE(merges_text),
              REF_NOCACHE: lambda: ReferenceBPE(merges_text, cache=False),
              FAST: lambda: Tokenizer(merges_text, max_merges=None)}
    warm = {REF: REF_WARM, FAST: FAST_WARM}  # the same instance called again on the same texts
    for make in makers.values():  # warm-up: imports (torch, ftfy), regex compilation
        make()(texts[:20])
    best = {name: [float("inf")] * 2 for name in [REF, REF_WARM, REF_NOCACHE, FAST, FAST_WARM]}
    outs = {}
    for _ in range(repeats):
        for name, make in makers.items():
            tok = make()  # construction is not timed
            for key in [name, warm[name]] if name in warm else [name]:
                dt, outs[key] = _time(tok, texts)
                best[key] = [min(b, d) for b, d in zip(best[key], dt)]
    first = next(iter(outs.values()))
    assert all(o.equal(first) for o in outs.values()), "outputs differ"
    return {name: (len(texts) / w, len(texts) / c) for name, (w, c) in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=10000, help="captions per mix (default 10000)")
    ap.add_argument("--merges", type=int, default=8000, help="merges to learn (default 8000)")
    ap.add_argument("--mix", default="0,0.2",
                    help="comma-separated fractions of captions with non-ASCII text or HTML "
                         "entities, one measurement each (default 0,0.2)")
    ap.add_argument("--mojibake", type=float, default=0.005,
                    help="fraction of all captions (counted within the mix) carrying mojibake "
                         "that ftfy repairs; ignored for a mix of 0 (default 0.005)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed runs per tokenizer; the best counts (default 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="RAYON_NUM_THREADS for HuggingFace tokenizers (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="2,000 texts, 2,000 merges, 1 repeat")
    a = ap.parse_args()
    if a.threads is not None:  # before tokenizers is imported
        os.environ["RAYON_NUM_THREADS"] = str(a.threads)
    if a.quick:
        a.texts, a.merges, a.repeats = 2000, 2000, 1
    from trainer.tokenizer import Tokenizer, train_merges
    with tempfile.TemporaryDirectory() as tmp:
        path = train_merges(captions(20000 if a.merges > 2000 else 5000, 0), a.merges,
                            os.path.join(tmp, "m.txt"))
        merges_text = Tokenizer.from_merges(path, max_merges=None).merges_text
    print(f"{a.merges} merges, {a.texts} texts per mix, best of {a.repeats}, "
          f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs")
    for mix in (float(m) for m in a.mix.split(",")):
        texts = captions(a.texts, 1, mix, a.mojibake if mix > 0 else 0.0)
        rates = run_mix(merges_text, texts, a.repeats)
        print(f"\nmix {mix:g} non-ASCII/HTML (mojibake {a.mojibake if mix > 0 else 0:g}): "
              "outputs identical")
        print(f"  {'':34s} {'wall texts/s':>13s} {'CPU texts/s':>12s}")
        for name, (wall, cpu) in rates.items():
            print(f"  {name:34s} {wall:13.0f} {cpu:12.0f}")
        for i, kind in enumerate(("wall", "CPU")):
            print(f"  speed-up ({kind} time): cold vs cold {rates[FAST][i] / rates[REF][i]:.1f}x, "
                  f"warm vs warm {rates[FAST_WARM][i] / rates[REF_WARM][i]:.1f}x, "
                  f"cold vs no-cache reference {rates[FAST][i] / rates[REF_NOCACHE][i]:.1f}x")

if __name__ == "__main__":
    main()
