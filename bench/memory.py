"""Peak memory of `wit collect` and of `wit dedup run`'s clustering at two input sizes.

    python bench/memory.py            # collect: 2 vs 8 WAT files of 3,000 pages; dedup: 10k vs 40k images
    python bench/memory.py --quick    # 1,000 pages per file; 5k vs 20k images
    python bench/memory.py --collect-only   # skip the dedup part

Each measurement runs in a fresh child process (peak RSS = the child's ru_maxrss; the DirectRunner
with one worker runs in that process), so earlier measurements do not hide later ones.

1. collect, DirectRunner: the same files at two sizes, with the shuffle's runs spilled to files
   (what local runs do) and, as the baseline measured in the same run, held in the runner's memory
   (what they did before); pairs/s per core (image references read / the child's CPU seconds in
   `collect.run`, less a one-page run's: the fixed cost) and peak RSS, with their ratios between the sizes. Also `--num-shards 1` and `8`
   on the larger input, `--num-shards 1` also with `--max-rows-in-memory` below its matched rows
   (merged in uid ranges). Target: pairs/s per core flat in the number of input files, peak RSS
   bounded (independent of the input and of the largest shard).
2. dedup clustering (`wit_builder.dedup.run_dedup` with its Beam clustering, DirectRunner with one
   worker in the child process, on synthetic 256-d embedding files with planted near-copies; the
   embedding step is not measured): peak RSS growth per image between the two sizes, next to the
   size of one vector (1 KiB). With one in-process worker the runner holds the shuffled vectors,
   so this still grows with the input; `bench/scale.py` measures each worker process of a
   multi-worker run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import describe  # noqa: E402


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- children --------------------------------------------------------------------------------
def child_collect(work: str, files: int, num_shards: int | None, spill: bool, max_rows: int = 1_000_000) -> dict:
    import time

    from pipelines import collect
    from wit_builder.collect import make_config
    inputs = [os.path.join(work, "in", f"CC-{i:03d}.warc.wat.gz") for i in range(files)] if files else \
        [os.path.join(work, "tiny.warc.wat.gz")]
    cfg = make_config(os.path.join(work, "q.parquet"), inputs,
                      os.path.join(work, f"out-{files}-{num_shards}-{spill}-{max_rows}"),
                      num_shards=num_shards, langs=None, max_rows_in_memory=max_rows)
    cpu = time.process_time()
    stats = collect.run(cfg, overwrite=True, spill=spill)
    cpu = time.process_time() - cpu
    return {"peak_mib": _peak_mib(), "pairs": stats["pairs_extracted"], "matched": stats["matched"],
            "cpu_s": cpu, "num_shards": stats["num_shards"]}


def child_dedup(folder: str) -> dict:
    import glob

    import wit_builder.dedup as dedup
    files = sorted(glob.glob(os.path.join(folder, "emb-*.parquet")))
    before = _peak_mib()
    cfg = dedup.DedupConfig(shards=tuple(files), detector="-", out=os.path.join(folder, "out"), threshold=0.99,
                            threads=1)
    dedup.expand_shards = lambda patterns, *a, **k: list(patterns)   # embedding files stand in for shards
    dedup.records.verify_inputs = lambda paths, what: paths
    from pipelines.dedup_cells import cluster_files
    stats = dedup.run_dedup(cfg, lambda paths, emb_dir: files,
                            lambda fs, out, params: cluster_files(list(fs), out, params))
    return {"peak_mib": _peak_mib(), "start_mib": before, "images": stats["images"],
            "duplicate_clusters": stats["duplicate_clusters"]}


# --- data ------------------------------------------------------------------------------------
def make_wats(work: str, files: int, pages: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import synthetic
    from wit_builder.sim.webgen import write_wat
    vocab = synthetic.vocabulary()
    queries = synthetic.queries(20_000, vocab)
    pq.write_table(pa.table({"id": pa.array(range(len(queries)), pa.int32()), "query": queries}),
                   os.path.join(work, "q.parquet"))
    for i in range(files):
        write_wat(synthetic.pages(pages, vocab, seed=10 + i, start=i * pages),
                  os.path.join(work, "in", f"CC-{i:03d}.warc.wat.gz"))
    write_wat(synthetic.pages(1, vocab, seed=99), os.path.join(work, "tiny.warc.wat.gz"))   # the fixed cost
    return sum(os.path.getsize(os.path.join(work, "in", n)) for n in os.listdir(os.path.join(work, "in"))) / 2**20


def make_embeddings(folder: str, n: int, dim: int = 256, per_file: int = 5000) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wit_builder.schemas import EMBEDDINGS_SCHEMA
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for f, start in enumerate(range(0, n, per_file)):
        m = min(per_file, n - start)
        v = rng.standard_normal((m, dim)).astype(np.float32)
        v[1::50] = v[0::50][:len(v[1::50])] + 0.001 * rng.standard_normal(v[1::50].shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        keys = [f"{f:05d}{i:04d}" for i in range(m)]
        pq.write_table(pa.table({
            "key": keys, "uid": [f"u{f:05d}{i:04d}" for i in range(m)], "shard": [f"/images/{f:05d}.tar"] * m,
            "width": pa.array([64] * m, pa.int32()), "height": pa.array([64] * m, pa.int32()),
            "status": ["ok"] * m, "embedding": pa.array(list(v), pa.list_(pa.float32()))}, schema=EMBEDDINGS_SCHEMA),
            os.path.join(folder, f"emb-{f:05d}.parquet"))


def _child(*args) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--collect-only", action="store_true", help="skip the dedup measurement")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        args = json.loads(a.child)
        result = child_collect(*args[1:]) if args[0] == "collect" else child_dedup(*args[1:])
        print(json.dumps(result))
        return
    pages, sizes = (1000, (5_000, 20_000)) if a.quick else (3000, (10_000, 40_000))
    print(f"CPU: {describe()}")
    with tempfile.TemporaryDirectory() as work:
        mib = make_wats(work, 8, pages)
        print(f"\ncollect: WAT files of {pages:,} pages ({mib / 8:.1f} MiB each), 20,000 queries; "
              f"pairs/s per core and peak RSS")
        print(f"  {'input':>30} {'pairs/s/core':>13} {'spilled (now)':>14} {'in memory (before)':>19}")
        fixed = _child("collect", work, 0, None, True)["cpu_s"]
        print(f"  fixed cost of a run (one-page input: pipeline, automaton, model, summary): {fixed:.1f} s CPU")
        res = {}
        for files in (2, 8):
            now = _child("collect", work, files, None, True)
            before = _child("collect", work, files, None, False)
            res[files] = now, before
            print(f"  {files} files, {now['num_shards']} shards ({now['matched']:>7,} matched) "
                  f"{now['pairs'] / (now['cpu_s'] - fixed):>11,.0f} {now['peak_mib']:>10,.0f} MiB "
                  f"{before['peak_mib']:>14,.0f} MiB")
        (s2, b2), (s8, b8) = res[2], res[8]
        rate2, rate8 = s2["pairs"] / (s2["cpu_s"] - fixed), s8["pairs"] / (s8["cpu_s"] - fixed)
        print(f"  8 vs 2 files (input 4.00x): pairs/s per core (without the fixed cost) {rate8 / rate2:.2f}x, "
              f"with it {s8['pairs'] / s8['cpu_s'] / (s2['pairs'] / s2['cpu_s']):.2f}x; "
              f"peak RSS {s8['peak_mib'] / s2['peak_mib']:.2f}x spilled, {b8['peak_mib'] / b2['peak_mib']:.2f}x in memory")
        small_bound = max(1000, s8["matched"] // 8)
        for shards, bound in ((1, 1_000_000), (1, small_bound), (8, 1_000_000)):
            now = _child("collect", work, 8, shards, True, bound)
            before = _child("collect", work, 8, shards, False, bound)
            print(f"  8 files, --num-shards {shards}, --max-rows-in-memory {bound:,}: {now['peak_mib']:,.0f} MiB "
                  f"spilled, {before['peak_mib']:,.0f} MiB in memory; {now['pairs'] / (now['cpu_s'] - fixed):,.0f} pairs/s per core")
        if a.collect_only:
            return

        res = {}
        for n in sizes:
            make_embeddings(os.path.join(work, f"emb{n}"), n)
            res[n] = _child("dedup", os.path.join(work, f"emb{n}"))
        small, large = sizes
        per_image = (res[large]["peak_mib"] - res[small]["peak_mib"]) * 2**20 / (large - small)
        print(f"\ndedup clustering (256-d float32 vectors, Beam, one in-process DirectRunner worker): peak RSS "
              f"{res[small]['peak_mib']:,.0f} MiB at {small:,} images, {res[large]['peak_mib']:,.0f} MiB at {large:,}")
        print(f"  growth {per_image / 1024:.2f} KiB per image = {per_image / 1024:.2f}x one vector (1 KiB): the "
              f"in-process runner holds the shuffled vectors; bench/scale.py measures each worker of a 2-worker run")


if __name__ == "__main__":
    main()
