"""Throughput and peak memory of `wit shards` (with --dedup) on synthetic download shards.

    python bench/shards.py                 # 20,000 and 80,000 samples
    python bench/shards.py --sizes 5000,20000 --samples-per-shard 2000

Download shards of 10,000 rows each (every 10th a failed download, small JPEGs) and a decisions
table (every 8th success dropped as a duplicate, row groups of 16,384 rows) are generated once
per size. Each size then runs in a fresh child process (the DirectRunner with one worker runs in
it): rows/s per core = download rows / the child's CPU seconds in `shards.run`, the wall rate,
peak RSS (the child's ru_maxrss) and the most decisions one step held, with the ratios between
the sizes. Target: rows/s per core flat, the decisions one step holds bounded by a download
shard's rows. Peak RSS also holds what the local runner keeps of its shuffles in memory.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import cpu_name  # noqa: E402

PER_SHARD = 10_000


def make_corpus(folder: str, samples: int) -> int:
    """``samples`` download rows in shards of PER_SHARD, and ``folder/dedup/decisions.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    images = []
    for c in range(16):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (16 * c, 255 - 16 * c, 90)).save(buf, "JPEG")
        images.append(buf.getvalue())
    os.makedirs(f"{folder}/images", exist_ok=True)
    os.makedirs(f"{folder}/dedup", exist_ok=True)
    decisions = {c: [] for c in ("uid", "key", "cluster_id", "cluster_size", "kept", "shard")}
    for shard in range((samples + PER_SHARD - 1) // PER_SHARD):
        rows = []
        with tarfile.open(f"{folder}/images/{shard:05d}.tar", "w") as tar:
            for i in range(min(PER_SHARD, samples - shard * PER_SHARD)):
                key, ok = f"{shard:05d}{i:04d}", i % 10 != 7
                row = {"key": key, "uid": f"{shard * PER_SHARD + i:032x}", "url": f"http://img.test/{key}.jpg",
                       "caption": f"a photo {key}", "status": "success" if ok else "failed_to_download",
                       "query_ids": [i % 500], "page_url": None, "sha256": None,
                       "width": 32 if ok else None, "height": 32 if ok else None,
                       "original_width": 32 if ok else None, "original_height": 32 if ok else None}
                rows.append(row)
                if not ok:
                    continue
                for ext, data in (("jpg", images[i % 16]), ("txt", row["caption"].encode()),
                                  ("json", json.dumps(row).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                kept = i % 8 != 3
                for col, value in (("uid", row["uid"]), ("key", key), ("cluster_id", shard * PER_SHARD + i),
                                   ("cluster_size", 1 + (not kept)), ("kept", kept),
                                   ("shard", f"{folder}/images/{shard:05d}.tar")):
                    decisions[col].append(value)
        pq.write_table(pa.Table.from_pylist(rows), f"{folder}/images/{shard:05d}.parquet")
        with open(f"{folder}/images/{shard:05d}_stats.json", "w") as fh:
            json.dump({"count": len(rows)}, fh)
    pq.write_table(pa.table(decisions), f"{folder}/dedup/decisions.parquet", row_group_size=16_384)
    return len(decisions["key"])


def child(folder: str, samples_per_shard: int) -> dict:
    from pipelines import shards as stage
    from wit_builder.shards import ShardsConfig
    held = [0]
    shard_decisions = getattr(stage, "shard_decisions", None)   # None: a version that loads them whole

    def counted(decisions, fragments):
        out = shard_decisions(decisions, fragments)
        held[0] = max(held[0], len(out))
        return out

    if shard_decisions is not None:
        stage.shard_decisions = counted
    cfg = ShardsConfig(f"{folder}/images", f"{folder}/out", dedup=f"{folder}/dedup",
                       samples_per_shard=samples_per_shard)
    wall, cpu = time.perf_counter(), time.process_time()
    m = stage.run(cfg)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"rows": m["totals"]["download_rows"], "samples": m["totals"]["samples"], "shards": len(m["shards"]),
            "wall_s": wall, "cpu_s": cpu, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "max_decisions_held": held[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20000,80000", help="download rows per run, comma-separated")
    ap.add_argument("--samples-per-shard", type=int, default=10_000)
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "SAMPLES_PER_SHARD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"wit shards --dedup, DirectRunner, 1 worker; {cpu_name()}, {os.cpu_count()} cores; "
          f"{args.samples_per_shard} samples per output shard")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = f"{tmp}/n{n}"
            t = time.perf_counter()
            decisions = make_corpus(folder, n)
            made = time.perf_counter() - t
            out = subprocess.run([sys.executable, __file__, "--child", folder, str(args.samples_per_shard)],
                                 check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["decisions"] = decisions
            results.append(r)
            print(f"{n:>8,} rows ({r['decisions']:,} decisions, made in {made:.0f} s): {r['samples']:,} samples in "
                  f"{r['shards']} shards; {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU; "
                  f"{r['rows'] / r['cpu_s']:,.0f} rows/s per core ({r['rows'] / r['wall_s']:,.0f} rows/s wall); "
                  f"peak RSS {r['peak_mib']:.0f} MiB; most decisions one step held {r['max_decisions_held']:,}",
                  flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"ratio {sizes[-1]:,} / {sizes[0]:,} rows: rows/s per core "
              f"{(b['rows'] / b['cpu_s']) / (a['rows'] / a['cpu_s']):.2f}, peak RSS {b['peak_mib'] / a['peak_mib']:.2f}, "
              f"decisions held by one step {b['max_decisions_held'] / max(1, a['max_decisions_held']):.2f}")


if __name__ == "__main__":
    main()
