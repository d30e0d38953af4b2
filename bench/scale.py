"""`wit dedup run`'s clustering at growing sizes on Beam's DirectRunner, against today's
single-process `cluster_vectors` as the baseline measured in the same run.

    python bench/scale.py                          # 250k, 1M, 2M vectors (as far as --budget allows)
    python bench/scale.py --sizes 50000,200000     # quick
    python bench/scale.py --sizes 250000 --baseline-cap 0   # no baseline
    python bench/scale.py --with-stages            # also wit shards and wit collect at two sizes each
    python bench/scale.py --sizes 1000000 --against /tmp/old --pairs 2   # this checkout vs another, A B A B
    python bench/scale.py --sizes 1000000,2000000,4000000 --floor-only    # the runner's shuffle alone

Data: 256-d synthetic embeddings with planted near-duplicate groups (wit_builder/sim/embedsets.py:
clustered around topics, 10% of images copies of another at cosine ~0.97), written as embedding
files of 10,000 rows, the threshold 0.9. Per size:

* wall time of `pipelines.dedup_cells.cluster_files` (all four pipelines, DirectRunner, --workers
  processes), vectors/s per core (n / wall / cores used), the growth exponent between consecutive
  sizes (log of the time ratio over log of the size ratio: 1.0 = linear);
* peak RSS of the launching process (which, on the DirectRunner, also holds the shuffled data)
  and of each worker process (sampled from /proc every 0.2 s);
* recall: for a random sample of query images, the pairs at or above the threshold that an exact
  search over all vectors finds, and the share of them the cell search linked; precision: the
  share of the sample's links that join images of one planted group;
* the baseline: `wit_builder.dedup.cluster_vectors` (the single-process search before this
  change: faiss flat below 100k vectors, IVF with nlist = sqrt(n) above) in a child process, on
  --baseline-sizes (125k, 250k), each capped at --baseline-cap seconds.
* with --runner-floor (or --floor-only): the DirectRunner's own floor for the search stage, i.e.
  n rows of what every row sends at least once (its id and its float16 vector, DIM x 2 + 8 bytes)
  through one GroupByKey into the same number of groups as the search's cells, in pieces of
  FLOOR_PIECE rows, with no dedup code; and the same pipeline with the GroupByKey replaced by a Map
  (start-up and emitting): the difference is what the runner's shuffle alone costs.
Targets (issue 12): >= 20,000 vectors/s per core at 4M, growth exponent <= 1.1, worker RSS flat in
n, recall >= 99% of the exact search's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import cpu_name  # noqa: E402

import numpy as np  # noqa: E402

DIM, THR, ROWS_PER_FILE = 256, 0.9, 10_000


class RssWatch:
    """Peak RSS (MiB) of this process and of every descendant, sampled from /proc."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, {}, threading.Event()
        self.me = os.getpid()

    def _children(self) -> dict[int, int]:
        parent = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        parent[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        out, todo = {}, [self.me]
        while todo:
            p = todo.pop()
            for c, pp in parent.items():
                if pp == p and c not in out:
                    out[c] = p
                    todo.append(c)
        return out

    def _sample(self):
        for pid in [self.me, *self._children()]:
            try:
                with open(f"/proc/{pid}/statm") as fh:
                    rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            except (OSError, IndexError, ValueError):
                continue
            self.peak[pid] = max(self.peak.get(pid, 0.0), rss)

    def __enter__(self):
        def loop():
            while not self._stop.wait(self.every):
                self._sample()
        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self._sample()

    def report(self) -> dict:
        workers = {p: r for p, r in self.peak.items() if p != self.me and r > 50}
        return {"launcher_mib": round(self.peak.get(self.me, 0.0)),
                "workers_mib": sorted(round(r) for r in workers.values())}


def make_files(n: int, folder: str, seed: int = 0):
    from wit_builder.sim.embedsets import planted_embeddings, write_embedding_files
    v, group = planted_embeddings(n, DIM, seed=seed)
    files = write_embedding_files(folder, v, ROWS_PER_FILE)
    return files, group, v


def read_vectors(path: str) -> np.ndarray:
    import pyarrow.parquet as pq
    col = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)


def exact_pairs(files: list[str], queries: np.ndarray) -> set:
    """Pairs (query row, row) at or above the threshold, by brute force over the files."""
    qv = np.concatenate([read_vectors(files[f])[r:r + 1] for f, r in
                         zip(queries // ROWS_PER_FILE, queries % ROWS_PER_FILE)])
    out = set()
    for f, path in enumerate(files):
        sims = qv @ read_vectors(path).T
        r, c = np.nonzero(sims >= THR)
        for q, j in zip(queries[r], c + f * ROWS_PER_FILE):
            if q != j:
                out.add((int(q), int(j)))
    return out


def run_size(n: int, workers: int, tmp: str, sample: int) -> dict:
    import pyarrow.parquet as pq

    from pipelines.beam_options import BeamOptions
    from pipelines.dedup_cells import WORK, cluster_files
    from wit_builder import dedup_cells as dc

    folder = os.path.join(tmp, f"n{n}")
    files, group, v = make_files(n, os.path.join(folder, "emb"))
    del v                                  # the run reads the files; this process keeps no vectors
    params = dc.CellParams(threshold=THR)
    with RssWatch() as watch:
        t = time.time()
        opts = BeamOptions(workers=workers, args=("--default_sdk_harness_log_level=WARNING",))
        stats = cluster_files(files, folder, params, opts, keep_work=True)
        wall = time.time() - t
    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    truth = exact_pairs(files, queries)
    edges = pq.read_table(os.path.join(folder, WORK, "edges"))
    # keys are zero-padded row numbers; file f row r -> row f * ROWS_PER_FILE + r
    qf, qr = dc.split_ids(edges.column("q").to_numpy())
    jf, jr = dc.split_ids(edges.column("id").to_numpy())
    a, b = qf * ROWS_PER_FILE + qr, jf * ROWS_PER_FILE + jr
    linked = set(zip(a.tolist(), b.tolist())) | set(zip(b.tolist(), a.tolist()))
    qset = set(queries.tolist())
    mine = [(x, y) for x, y in linked if x in qset]
    planted = [(x, y) for x, y in mine if group[x] >= 0 and group[x] == group[y]]
    cores = min(workers, os.cpu_count() or 1)
    import shutil
    shutil.rmtree(folder, ignore_errors=True)
    return {"n": n, "seconds": round(wall, 1), "vectors_per_s_per_core": round(n / wall / cores),
            **watch.report(), "recall_vs_exact": round(len(truth & linked) / max(1, len(truth)), 4),
            "exact_pairs_in_sample": len(truth),
            "precision_planted": round(len(planted) / max(1, len(mine)), 4),
            "cells": stats["cells"], "split_cells": stats["split_cells"], "edges": stats["edges"],
            "stage_seconds": stats["seconds"]}


FLOOR_PIECE = 1000          # rows per shuffled element (~0.5 MB): the size of the search's joined pieces


def _floor_rows(index: int, rows: int, groups: int):
    """One file's worth of (group, (ids, float16 vectors)) pieces: what the search's shuffle carries
    at the least (keys, pixels and the rows probed in a second cell come on top)."""
    base = np.full((FLOOR_PIECE, DIM), 0.0625, np.float16)
    for start in range(0, rows, FLOOR_PIECE):
        count = min(FLOOR_PIECE, rows - start)
        ids = np.arange(index * ROWS_PER_FILE + start, index * ROWS_PER_FILE + start + count, dtype=np.int64)
        yield int(ids[0] // FLOOR_PIECE) % groups, (ids, base[:count] + np.float16(index % 7))


def _floor_count(item) -> int:
    _, pieces = item
    return sum(len(ids) for ids, _ in pieces)


def _save_json(path: str, value) -> None:
    with open(path, "w") as fh:
        json.dump(value, fh)


def runner_floor(n: int, workers: int) -> dict:
    """The DirectRunner's GroupByKey over the bytes every row of the search sends at least once, and
    the same pipeline without it (module text); seconds are wall time, start-up included."""
    import apache_beam as beam

    from pipelines.beam_options import BeamOptions, run_pipeline
    from wit_builder import dedup_cells as dc

    files = -(-n // ROWS_PER_FILE)
    groups = dc.cell_count(n, dc.CellParams(threshold=THR))
    opts = BeamOptions(workers=workers, args=("--default_sdk_harness_log_level=WARNING",))
    counted = {}

    def build(shuffle: bool):
        def apply(p):
            pieces = (p | "Files" >> beam.Create(list(range(files))) | "Spread" >> beam.Reshuffle()
                      | "Pieces" >> beam.FlatMap(lambda f: _floor_rows(f, min(ROWS_PER_FILE, n - f * ROWS_PER_FILE), groups)))
            grouped = (pieces | "Shuffle" >> beam.GroupByKey()) if shuffle else \
                (pieces | "NoShuffle" >> beam.Map(lambda kv: (kv[0], [kv[1]])))
            out = os.path.join(tmp, "count.json")
            (grouped | "Count" >> beam.Map(_floor_count) | "Sum" >> beam.CombineGlobally(sum)
             | "Save" >> beam.Map(lambda c: _save_json(out, c)))
        return apply

    secs = {}
    with tempfile.TemporaryDirectory() as tmp, RssWatch() as watch:
        for shuffle in (False, True):
            t = time.time()
            run_pipeline(build(shuffle), opts)
            secs[shuffle] = time.time() - t
            with open(os.path.join(tmp, "count.json")) as fh:
                counted[shuffle] = json.load(fh)
    if counted[True] != n or counted[False] != n:
        raise RuntimeError(f"the floor pipeline counted {counted} rows, not {n}")
    mb = n * (DIM * 2 + 8) / 2**20
    cores = min(workers, os.cpu_count() or 1)
    gbk = secs[True] - secs[False]
    return {"n": n, "shuffled_mib": round(mb), "groups": groups, "with_groupbykey_s": round(secs[True], 1),
            "without_s": round(secs[False], 1), "groupbykey_s": round(gbk, 1),
            "groupbykey_mib_per_s": round(mb / gbk, 1) if gbk > 0 else None,
            "vectors_per_s_per_core_if_the_search_were_only_this": round(n / secs[True] / cores),
            **watch.report()}


BASELINE = """
import sys, time, json
sys.path.insert(0, {root!r})
from wit_builder.sim.embedsets import planted_embeddings
from wit_builder.dedup import cluster_vectors
v, _ = planted_embeddings({n}, {dim}, seed=0)
t = time.time()
cluster_vectors(v, {thr})
print(json.dumps({{"seconds": time.time() - t}}))
"""


def baseline(n: int, cap: float) -> dict:
    code = BASELINE.format(root=ROOT, n=n, dim=DIM, thr=THR)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=cap, check=True)
        secs = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
        return {"n": n, "seconds": round(secs, 1), "vectors_per_s": round(n / secs)}
    except subprocess.TimeoutExpired:
        return {"n": n, "seconds": None, "note": f"did not finish in {cap:.0f} s"}


def exponent(rows: list[dict]) -> list:
    out = []
    for a, b in zip(rows, rows[1:]):
        if a.get("seconds") and b.get("seconds"):
            out.append(round(math.log(b["seconds"] / a["seconds"]) / math.log(b["n"] / a["n"]), 2))
    return out


AGAINST = """
import sys, os, time, json, glob, logging
logging.getLogger().setLevel(logging.ERROR)
from pipelines.beam_options import BeamOptions
from pipelines.dedup_cells import cluster_files
from wit_builder import dedup_cells as dc
assert dc.__file__.startswith({root!r}), dc.__file__
t = time.time()
st = cluster_files(sorted(glob.glob({folder!r} + "/*.parquet")), {out!r}, dc.CellParams(threshold={thr}),
                   BeamOptions(workers={workers}, args=("--default_sdk_harness_log_level=ERROR",)))
print(json.dumps({{"seconds": time.time() - t, "edges": st["edges"], "dropped": st["dropped_duplicates"]}}))
"""


def side_by_side(n: int, roots: dict, workers: int, tmp: str, pairs: int) -> dict:
    """The clustering of the same n vectors by this checkout and another (``roots``: name -> checkout),
    alternating A B A B in child processes whose workers import that checkout (PYTHONPATH)."""
    folder = os.path.join(tmp, f"ab{n}")
    make_files(n, os.path.join(folder, "emb"))
    times = {name: [] for name in roots}
    results = {}
    for _ in range(pairs):
        for name, root in roots.items():
            code = AGAINST.format(root=os.path.abspath(root), folder=os.path.join(folder, "emb"),
                                  out=os.path.join(folder, name), thr=THR, workers=workers)
            env = {**os.environ, "PYTHONPATH": os.path.abspath(root)}
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env=env, cwd=os.path.abspath(root))
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times[name].append(r["seconds"])
            results[name] = (r["edges"], r["dropped"])
    med = {name: float(np.median(t)) for name, t in times.items()}
    return {"n": n, "seconds": {k: [round(x, 1) for x in v] for k, v in times.items()},
            "median_ratio_this_over_other": round(med["this"] / med["other"], 3),
            "edges_and_dropped": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="250000,1000000,2000000", help="comma-separated vector counts")
    ap.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes")
    ap.add_argument("--sample", type=int, default=500, help="query images for the recall check")
    ap.add_argument("--baseline-cap", type=float, default=300, help="seconds per baseline size (0: skip)")
    ap.add_argument("--baseline-sizes", default="125000,250000", help="sizes for the baseline (comma-separated)")
    ap.add_argument("--budget", type=float, default=900, help="stop starting new sizes after this many seconds")
    ap.add_argument("--with-stages", action="store_true",
                    help="also run `wit shards` (bench/shards.py) and `wit collect` (bench/memory.py --collect-only) "
                         "at two sizes each: rows/s per core and peak RSS")
    ap.add_argument("--against", default=None, help="another checkout of the project (e.g. `git worktree add "
                    "/tmp/old REV`): time its clustering and this one's on the same files, alternating, "
                    "instead of the runs above")
    ap.add_argument("--pairs", type=int, default=2, help="with --against: A B rounds")
    ap.add_argument("--runner-floor", action="store_true",
                    help="also time the DirectRunner's GroupByKey alone on the bytes the search shuffles at "
                         "the least, at each size (see the module text)")
    ap.add_argument("--floor-only", action="store_true", help="only the runner's floor at each size (no dedup runs)")
    args = ap.parse_args()
    if args.against:
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; DirectRunner, {args.workers} workers", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for n in [int(s) for s in args.sizes.split(",")]:
                r = side_by_side(n, {"this": ROOT, "other": args.against}, args.workers, tmp, args.pairs)
                print(json.dumps(r), flush=True)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; DirectRunner, {args.workers} workers", flush=True)
    start, rows = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            if time.time() - start > args.budget:
                print(f"{n}: skipped (budget of {args.budget:.0f} s spent)")
                continue
            if not args.floor_only:
                r = run_size(n, args.workers, tmp, args.sample)
                rows.append(r)
                print(json.dumps(r), flush=True)
            if args.runner_floor or args.floor_only:
                print("runner floor", json.dumps(runner_floor(n, args.workers)), flush=True)
    if args.floor_only:
        return 0
    base = []
    if args.baseline_cap > 0:
        for n in [int(x) for x in args.baseline_sizes.split(",")]:
            b = baseline(n, args.baseline_cap)
            base.append(b)
            print("baseline cluster_vectors", json.dumps(b), flush=True)
            if b["seconds"] is None:
                break
    if args.with_stages:
        here = os.path.dirname(os.path.abspath(__file__))
        for script in (["shards.py"], ["memory.py", "--collect-only"]):
            print(f"\n$ python bench/{' '.join(script)}", flush=True)
            subprocess.run([sys.executable, os.path.join(here, script[0]), *script[1:]], check=False)
    print("growth exponent (cells, between sizes):", exponent(rows))
    print("growth exponent (baseline):", exponent([b for b in base if b.get("seconds")]))
    for r in rows:
        b = next((b for b in base if b["n"] == r["n"] and b.get("seconds")), None)
        ratio = f"{b['seconds'] / r['seconds']:.2f}x the baseline's speed" if b else "no baseline at this size"
        print(f"n={r['n']:,}: {r['seconds']} s, {r['vectors_per_s_per_core']:,} vectors/s per core, {ratio}; "
              f"recall {r['recall_vs_exact']:.2%}, launcher {r['launcher_mib']} MiB, workers {r['workers_mib']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
