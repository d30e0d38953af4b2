"""Download throughput: `wit download` (local runner) vs img2dataset's download() called directly,
on the same URL list, against a loopback image server, in the same run.

    python bench/download.py [--quick] [--images 20000] [--shards 8] [--processes 2] [--threads 32]

The server (a separate process, so neither side shares its GIL) serves small distinct JPEGs on
127.0.0.1. Both sides get the same img2dataset arguments (``img2dataset_kwargs``: processes,
threads, resize, sha256, one shard per input parquet); `wit download` adds its planning, the
SSRF guard and limits in every request (the server's IP:PORT is an allowed endpoint, so every
connection is checked and allowed), atomic shard files, progress files and the summary. Times
are wall clock of the whole call, process start-up included; images/s = successful images /
seconds. Runs alternate (wit, img2dataset, img2dataset, wit, ...) and the best of each is kept.
Prints the ratio wit / img2dataset (target >= 0.9: our orchestration costs at most 10%).
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _serve(queue, distinct: int, size: tuple[int, int]) -> None:
    from PIL import Image

    from wit_builder.sim.loopback import LoopbackServer
    images = []
    for i in range(distinct):
        buf = io.BytesIO()
        Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())

    def route(path: str, headers: dict) -> dict:
        stem = path.rsplit("/", 1)[-1].split(".")[0]
        body = images[int(stem) % distinct] if stem.isdigit() else b""
        return {"body": body, "headers": {"Content-Type": "image/jpeg"}} if body else {"status": 404}

    srv = LoopbackServer(default=route).start()  # every path: a computed answer
    queue.put(srv.port)
    while True:
        time.sleep(3600)


def write_pairs(folder: str, port: int, images: int, shards: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(folder, exist_ok=True)
    per = -(-images // shards)
    for s in range(shards):
        ids = range(s * per, min(images, (s + 1) * per))
        urls = [f"http://127.0.0.1:{port}/{i}.jpg" for i in ids]
        pq.write_table(pa.table({
            "uid": [f"{i:032x}" for i in ids], "url": urls, "text": [f"image number {i}" for i in ids],
            "page_url": [None] * len(urls), "query_ids": pa.array([[i % 1000] for i in ids], pa.list_(pa.int32())),
        }), os.path.join(folder, f"part-{s:05d}-of-{shards:05d}.parquet"))


def phase_seconds(out: str) -> float:
    """First shard start to last shard end, from img2dataset's NNNNN_stats.json files: the
    downloading itself, without process start-up."""
    import json
    stats = [json.load(open(os.path.join(out, f))) for f in os.listdir(out) if f.endswith("_stats.json")]
    return max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)


def run_wit(pairs: str, out: str, opts) -> tuple[float, float, int]:
    from pipelines import download
    from wit_builder.download import DownloadConfig
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = download.run(DownloadConfig(pairs, out, opts), progress=False)
    return time.perf_counter() - t0, phase_seconds(out), summary["success"]


def run_img2dataset(pairs: str, out: str, opts) -> tuple[float, float, int]:
    import img2dataset
    import pyarrow.parquet as pq

    from wit_builder.download import img2dataset_kwargs, plan_inputs
    from wit_builder.download_local import _redirect_fds
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.perf_counter()
    shards, extra, per_shard, _ = plan_inputs(pairs)  # the same shard size as wit's
    with _redirect_fds(os.path.join(out, "img2dataset.log")):
        img2dataset.download(url_list=pairs, output_folder=out, **img2dataset_kwargs(opts, extra, per_shard))
    dt = time.perf_counter() - t0
    ok = sum(pq.read_table(os.path.join(out, f), columns=["status"]).column("status").to_pylist().count("success")
             for f in os.listdir(out) if f.endswith(".parquet"))
    return dt, phase_seconds(out), ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 400 images, 2 shards, one run each")
    ap.add_argument("--images", type=int, default=20000, help="URLs in the list")
    ap.add_argument("--shards", type=int, default=8, help="input parquet files (= download shards)")
    ap.add_argument("--processes", type=int, default=2, help="download processes (both sides)")
    ap.add_argument("--threads", type=int, default=32, help="download threads per process (both sides)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side (best kept)")
    ap.add_argument("--image-size", type=int, default=64, help="resize target (both sides)")
    a = ap.parse_args()
    if a.quick:
        a.images, a.shards, a.repeats = 400, 2, 1

    from wit_builder.download import DownloadOptions
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    server = ctx.Process(target=_serve, args=(queue, 97, (96, 72)), daemon=True)
    server.start()
    port = queue.get(timeout=120)
    tmp = tempfile.mkdtemp(prefix="wit-bench-download-")
    try:
        pairs = os.path.join(tmp, "balanced")
        write_pairs(pairs, port, a.images, a.shards)
        opts = DownloadOptions(processes=a.processes, threads=a.threads, timeout=10, image_size=a.image_size,
                               allowed_endpoints=[f"127.0.0.1:{port}"])
        import img2dataset  # noqa: F401 - import costs outside the timings, for both sides
        import wit_builder.download_worker  # noqa: F401
        best = {"wit download": [float("inf")] * 2, "img2dataset": [float("inf")] * 2}
        counts = {}
        sides = [("wit download", run_wit), ("img2dataset", run_img2dataset)]
        for r in range(a.repeats):
            for name, fn in (sides if r % 2 == 0 else sides[::-1]):
                dt, phase, ok = fn(pairs, os.path.join(tmp, name.replace(" ", "_")), opts)
                print(f"  run {r + 1} {name:13s} {ok} images  call {dt:7.2f} s ({ok / dt:7.1f} images/s)  "
                      f"download phase {phase:6.2f} s ({ok / phase:7.1f} images/s)", flush=True)
                best[name] = [min(best[name][0], dt), min(best[name][1], phase)]
                counts.setdefault(name, ok)
        if counts["wit download"] != counts["img2dataset"]:
            print(f"WARNING: different success counts {counts}")
        print(f"\n{a.images} URLs, {a.shards} shards, {a.processes} processes x {a.threads} threads, "
              f"best of {a.repeats} (images/s):")
        print(f"  {'':13s} {'whole call':>12s} {'download phase':>15s}")
        rates = {k: [counts[k] / t for t in v] for k, v in best.items()}
        for name, (call, phase) in rates.items():
            print(f"  {name:13s} {call:12.1f} {phase:15.1f}")
        ratio = [w / i for w, i in zip(rates["wit download"], rates["img2dataset"])]
        print(f"  ratio wit/img2dataset: whole call {ratio[0]:.3f}, download phase {ratio[1]:.3f}  "
              f"(target >= 0.9 on the whole call: {'met' if ratio[0] >= 0.9 else 'NOT met'})")
    finally:
        server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
