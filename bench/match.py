"""Query matcher throughput with a 500,000-query automaton, next to the naive reference loop.

    python bench/match.py            # 500k queries, 200k texts, naive loop on 20 texts
    python bench/match.py --quick    # 500k queries, 40k texts, naive loop on 5 texts (seconds)

Data: bench/synthetic.py (pseudo-English Zipf vocabulary; unigram/bigram/title-shaped queries;
alt-text-shaped texts of 3-20 words with several matches each). Prints, per core (process CPU
time, so other load on the machine matters less): automaton build time and memory; texts/s of
``Matcher.match_batch`` (the pipeline's path) and of ``Matcher.match`` (one text at a time); texts/s
of the naive MetaCLIP loop (``" q " in spaced_text`` over all queries) on a small sample; the
ratio; and a check that all three give identical query ids. Target: >= 100,000 texts/s per core.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import synthetic  # noqa: E402
from wit_builder.matcher import Matcher, naive_match  # noqa: E402

TARGET = 100_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=500_000)
    ap.add_argument("--texts", type=int, default=200_000)
    ap.add_argument("--naive", type=int, default=20, help="texts for the naive reference loop")
    ap.add_argument("--batch", type=int, default=20_000, help="texts per match_batch call (the pipeline's batch)")
    ap.add_argument("--case-insensitive", action="store_true")
    ap.add_argument("--layout", choices=["relaid", "built"], default="relaid",
                    help="relaid: nodes re-allocated in traversal order by a pickle round trip, as the "
                         "pipeline's Matcher does for large query lists; built: as pyahocorasick built them. "
                         "Compare in separate runs: two automata in one process share the caches")
    ap.add_argument("--quick", action="store_true", help="40k texts, 5 naive texts")
    a = ap.parse_args()
    if a.quick:
        a.texts, a.naive = 40_000, 5

    t = time.perf_counter()
    vocab = synthetic.vocabulary()
    queries = synthetic.queries(a.queries, vocab)
    texts = synthetic.texts(a.texts, vocab)
    print(f"data: {len(queries):,} queries, {len(texts):,} texts "
          f"({sum(map(len, texts)) / len(texts):.0f} chars/text), generated in {time.perf_counter() - t:.1f}s")

    rss0 = rss_bytes()
    c0, w0 = time.process_time(), time.perf_counter()
    matcher = Matcher(queries, case_insensitive=a.case_insensitive, relayout=a.layout == "relaid")
    build_cpu, build_wall = time.process_time() - c0, time.perf_counter() - w0
    print(f"automaton build ({a.layout}): {build_cpu:.2f} s CPU ({build_wall:.2f} s wall); pyahocorasick nodes "
          f"{matcher.memory_bytes() / 2**20:.0f} MiB, process RSS +{(rss_bytes() - rss0) / 2**20:.0f} MiB")

    def run_batches(m) -> tuple[float, float, int, list]:
        c0, w0 = time.process_time(), time.perf_counter()
        n_ids, first = 0, []
        for i in range(0, len(texts), a.batch):
            offsets, ids = m.match_batch(texts[i:i + a.batch])
            n_ids += len(ids)
            if i == 0:
                first = [ids[offsets[j]:offsets[j + 1]].tolist() for j in range(min(len(texts), 1000))]
        return time.process_time() - c0, time.perf_counter() - w0, n_ids, first

    batch_cpu, batch_wall, n_ids, batch_results = run_batches(matcher)
    batch_rate = len(texts) / batch_cpu

    single_n = min(len(texts), 20_000)
    c0 = time.process_time()
    single = [matcher.match(x) for x in texts[:single_n]]
    single_rate = single_n / (time.process_time() - c0)

    c0 = time.process_time()
    naive = [naive_match(x, queries, a.case_insensitive) for x in texts[:a.naive]]
    naive_rate = a.naive / (time.process_time() - c0)

    same = naive == single[:a.naive] == batch_results[:a.naive] and single[:1000] == batch_results[:1000]
    print(f"matches per text: {n_ids / len(texts):.1f}")
    print(f"{'naive loop over all queries':34s} {naive_rate:12,.1f} texts/s per core  (on {a.naive} texts)")
    print(f"{'Matcher.match (one text per call)':34s} {single_rate:12,.0f} texts/s per core")
    print(f"{'Matcher.match_batch (' + a.layout + ')':34s} {batch_rate:12,.0f} texts/s per core  "
          f"({len(texts) / batch_wall:,.0f}/s wall)")
    print(f"ratio batch / naive: {batch_rate / naive_rate:,.0f}x;  target {TARGET:,}/s: "
          f"{'met' if batch_rate >= TARGET else 'NOT met'} ({batch_rate / TARGET:.2f}x)")
    print(f"identical query ids (naive, single, batch): {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
