"""Benchmark: wikitext throughput of `wit queries` (parse + clean + count) on the local runner.

Writes a synthetic English-Wikipedia-like multistream dump (infoboxes, links, refs, tables,
images, lists, categories: see wit_builder.sim.dumpgen.synthetic_article), then measures, in the same run:

* the Beam pipeline's counting part (``CountWikipedia``: work units -> XML parse -> mwparserfromhell
  clean -> per-page counts -> CombinePerKey) on the DirectRunner with ``--workers`` processes;
* a plain single-process loop doing the same parse + clean + count into two Counters
  (the baseline; the same library functions, no Beam).

It prints MB/s of wikitext per core for both, their ratio, and the projected wall time for the
full English Wikipedia (~22 GB of wikitext) on 100 workers at the measured per-core rate. The two
results are compared (distinct keys, total and a checksum of every key's count; a mismatch fails
the benchmark).

    python bench/queries.py            # ~20 MB of wikitext (about a minute on a quiet core)
    python bench/queries.py --quick    # ~2 MB, a few seconds
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ENWIKI_WIKITEXT_BYTES = 22e9  # the figure for English Wikipedia's wikitext


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ta", "ri", "so", "ul", "an", "ber", "cor", "den", "ex", "fil",
                 "gar", "hon", "is", "jun", "kel", "mor", "nat", "or", "pel", "quin", "ros", "ste", "tur"]
    words = set()
    while len(words) < n:
        w = "".join(rng.choice(syllables) for _ in range(rng.choice([1, 2, 2, 3, 3, 4])))
        words.add(w.capitalize() if rng.random() < 0.15 else w)
    return sorted(words)


def make_dump(folder: str, target_mb: float, seed: int = 0) -> tuple[str, str, float, int]:
    from wit_builder.sim.dumpgen import Page, synthetic_article, write_dump
    rng = random.Random(seed)
    vocab = _vocabulary(rng, 20000)
    weights = [1.0 / (i + 1) for i in range(len(vocab))]  # Zipf-like word frequencies
    zipf_vocab = rng.choices(vocab, weights, k=200_000)
    titles = [f"Article {i}" for i in range(100_000)]
    pages, total = [], 0
    while total < target_mb * 1e6:
        text = synthetic_article(rng, zipf_vocab, titles, paragraphs=rng.randint(3, 8), sentences=6, words=14)
        pages.append(Page(titles[len(pages)], text))
        total += len(text.encode("utf-8"))
    dump, index = write_dump(pages, os.path.join(folder, "enwiki-bench-pages-articles-multistream.xml.bz2"),
                             multistream=True)
    return dump, index, total / 1e6, len(pages)


def loop_count(dump: str, index: str) -> tuple[Counter, Counter, float, float]:
    """The baseline: one process, no Beam."""
    from queries.wikidump import iter_articles, plan_units
    from queries.wikitext import clean_wikitext, count_terms
    t0, c0 = time.perf_counter(), time.process_time()
    unigrams, bigrams, counters = Counter(), Counter(), Counter()
    for unit in plan_units(dump, index):
        for page in iter_articles(unit, counters):
            count_terms(clean_wikitext(page.text), unigrams, bigrams)
    return unigrams, bigrams, time.perf_counter() - t0, time.process_time() - c0


def fingerprint(counts) -> tuple[int, int, int]:
    """(distinct keys, total count, order-free checksum) of a ``{key: count}`` table."""
    import zlib
    keys = total = check = 0
    for key, n in counts:
        keys += 1
        total += n
        check ^= zlib.crc32(f"{key}\t{n}".encode("utf-8"))
    return keys, total, check


def _merge_fingerprints(fps) -> tuple[int, int, int]:
    out = (0, 0, 0)
    for k, t, c in fps:
        out = (out[0] + k, out[1] + t, out[2] ^ c)
    return out


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the DirectRunner's worker processes)."""
    import resource
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + child.ru_utime + child.ru_stime


def beam_count(dump: str, index: str, workers: int, out_dir: str, unit_mb: float) -> tuple[dict, float, float]:
    import json

    import apache_beam as beam

    from pipelines.beam_options import BeamOptions, make_options
    from pipelines.queries import CountWikipedia
    t0, c0 = time.perf_counter(), _cpu()
    with beam.Pipeline(options=make_options(BeamOptions("DirectRunner", workers))) as p:
        counted = (p | beam.Create([(dump, index)])
                   | "Wikipedia" >> CountWikipedia(int(unit_mb * (1 << 20))))
        for name in ("unigram", "bigram"):
            (counted[name]
             | f"Shard{name}" >> beam.Map(lambda kv: fingerprint(kv[1].items()))
             | f"Fingerprint{name}" >> beam.CombineGlobally(_merge_fingerprints)
             | f"Json{name}" >> beam.Map(lambda fp, name=name: json.dumps([name, list(fp)]))
             | f"Write{name}" >> beam.io.WriteToText(os.path.join(out_dir, name)))
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    result = {}
    for fn in os.listdir(out_dir):
        with open(os.path.join(out_dir, fn), encoding="utf-8") as fh:
            for line in fh:
                name, fp = json.loads(line)
                result[name] = tuple(fp)
    return result, wall, cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~2 MB of wikitext: a smoke run of seconds")
    ap.add_argument("--mb", type=float, default=20.0, help="MB of wikitext to generate (full run)")
    ap.add_argument("--workers", type=int, default=1, help="DirectRunner worker processes")
    ap.add_argument("--unit-mb", type=float, default=None,
                    help="compressed MB per work unit (default: the dump cut into 8 units per worker)")
    ap.add_argument("--project-workers", type=int, default=100, help="workers for the projection")
    ap.add_argument("--cores-per-worker", type=int, default=1, help="cores per worker for the projection")
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    mb = 2.0 if args.quick else args.mb
    folder = tempfile.mkdtemp(prefix="wit-bench-queries-")
    try:
        dump, index, text_mb, n_pages = make_dump(folder, mb)
        print(f"synthetic dump: {n_pages:,} articles, {text_mb:.1f} MB wikitext, "
              f"{os.path.getsize(dump) / 1e6:.1f} MB multistream bz2")
        uni, bi, loop_wall, loop_cpu = loop_count(dump, index)
        print(f"single-process loop : {loop_wall:7.2f} s wall {loop_cpu:7.2f} s CPU   "
              f"{text_mb / loop_wall:6.3f} MB/s per core (wall)  {text_mb / loop_cpu:6.3f} MB/s per CPU-second")
        out = os.path.join(folder, "beam")
        os.makedirs(out)
        unit_mb = args.unit_mb or os.path.getsize(dump) / 1e6 / (8 * args.workers)
        fps, beam_wall, beam_cpu = beam_count(dump, index, args.workers, out, unit_mb)
        if fps != {"unigram": fingerprint(uni.items()), "bigram": fingerprint(bi.items())}:
            print("MISMATCH: the pipeline's counts differ from the loop's", file=sys.stderr)
            return 1
        beam_rate = text_mb / beam_wall / args.workers
        print(f"Beam DirectRunner x{args.workers}: {beam_wall:7.2f} s wall {beam_cpu:7.2f} s CPU   "
              f"{beam_rate:6.3f} MB/s per core (wall)  {text_mb / beam_cpu:6.3f} MB/s per CPU-second "
              f"(start-up included)")
        # the fixed cost of a pipeline run (start-up, graph, teardown): the same pipeline on one page
        tiny_dir = os.path.join(folder, "tiny")
        os.makedirs(os.path.join(tiny_dir, "beam"))
        from wit_builder.sim.dumpgen import Page, write_dump
        tiny, tiny_index = write_dump([Page("One", "one page")], os.path.join(tiny_dir, "t-multistream.xml.bz2"),
                                      multistream=True)
        _, startup, startup_cpu = beam_count(tiny, tiny_index, args.workers, os.path.join(tiny_dir, "beam"), 1.0)
        # CPU seconds, not wall: on a shared machine wall time says more about the neighbours
        steady = text_mb / max(beam_cpu - startup_cpu, 1e-9)
        print(f"Beam fixed cost     : {startup:7.2f} s wall {startup_cpu:7.2f} s CPU (same pipeline, one-page dump); "
              f"steady state {steady:.3f} MB/s per CPU-second")
        print(f"ratio Beam / loop   : {beam_rate / (text_mb / loop_wall):.2f} per core (wall, start-up included), "
              f"{loop_cpu / beam_cpu:.2f} per CPU-second (start-up included), "
              f"{steady / (text_mb / loop_cpu):.2f} per CPU-second in steady state")
        cores = args.project_workers * args.cores_per_worker
        hours = ENWIKI_WIKITEXT_BYTES / (steady * 1e6 * cores) / 3600
        print(f"projection: English Wikipedia (~{ENWIKI_WIKITEXT_BYTES / 1e9:.0f} GB wikitext) on "
              f"{args.project_workers} workers x {args.cores_per_worker} core(s) at the steady {steady:.3f} MB/s "
              f"per busy core: {hours:.2f} h ({hours * 60:.0f} min) of parse + clean + count "
              f"(+ Dataflow start-up and the shuffle's tail)")
        print(f"counts identical: {len(uni):,} distinct words, {len(bi):,} distinct bigrams, "
              f"{sum(uni.values()):,} words")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
