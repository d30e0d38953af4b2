"""The demo's simulated web: how fast it renders, encodes, builds and serves.

    python bench/demo_web.py [--quick] [--scenes 3000] [--images 600] [--threads 16]

Prints, measured in the same run:

* scene rendering (images/s) next to JPEG-encoding the same, already rendered, images: the
  baseline is the cheapest thing a web server could do with a ready picture;
* per-format encode cost as served (JPEG / PNG / WebP);
* ``build_web`` time for ``--scenes`` (pages, alt texts, manifest);
* serving: images/s fetched from the loopback server over HTTP with ``--threads`` client threads
  (rendered on request) next to the same URLs serving pre-encoded bytes (ratio = the cost of
  rendering on the fly, i.e. what the demo's download stage waited for);
* ``SimWeb.prerender`` (one forked process per core) + serving from memory, the demo's download
  stage now, against rendering on request.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from wit_builder.sim.loopback import LoopbackServer  # noqa: E402
from wit_builder.sim.render import render, sample_scene  # noqa: E402
from wit_builder.sim.simweb import build_web  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def fetch_all(base: str, paths: list[str], threads: int) -> float:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path):
        with opener.open(base + path, timeout=30) as resp:
            return len(resp.read())

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, paths))
    assert total > 0
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few seconds: 300 scenes, 150 images")
    ap.add_argument("--scenes", type=int, default=3000, help="web size for the build timing")
    ap.add_argument("--images", type=int, default=600, help="images rendered / served per timing")
    ap.add_argument("--threads", type=int, default=16, help="client threads for the serving timing")
    args = ap.parse_args()
    if args.quick:
        args.scenes, args.images = 300, 150
    n = args.images

    scenes, t_sample = timed(lambda: [sample_scene(i) for i in range(n)])
    images, t_render = timed(lambda: [render(s) for s in scenes])

    def encode(fmt, **kw):
        def run():
            size = 0
            for im in images:
                buf = io.BytesIO()
                im.save(buf, fmt, **kw)
                size += buf.tell()
            return size
        return run

    (jpeg_bytes, t_jpeg) = timed(encode("JPEG", quality=90))
    print(f"render: {n / t_render:8.0f} images/s ({1000 * t_render / n:.2f} ms each; sampling "
          f"{1000 * t_sample / n:.2f} ms)")
    print(f"JPEG encode of the rendered images (baseline): {n / t_jpeg:8.0f} images/s; "
          f"render / encode = {t_render / t_jpeg:.2f}x")
    for fmt, kw in (("PNG", {"compress_level": 3}), ("WEBP", {"quality": 90, "method": 0})):
        size, t = timed(encode(fmt, **kw))
        print(f"{fmt} encode: {n / t:8.0f} images/s ({t / t_jpeg:.2f}x JPEG), "
              f"{size / n / 1024:.1f} KiB each (JPEG {jpeg_bytes / n / 1024:.1f} KiB)")

    web, t_build = timed(lambda: build_web(scenes=args.scenes))
    print(f"build_web(scenes={args.scenes}): {t_build:.2f} s, {len(web.pages)} pages, "
          f"{len(web.links)} <img> tags, {len(web.images)} image URLs")

    with LoopbackServer() as server:
        web = build_web(scenes=max(n, 50), port=server.port)
        for path, handler in web.routes().items():
            server.add_route(path, handler)
        served = [im for im in web.images if im.kind == "ok"][:n]
        live = fetch_all(server.base_url, [im.path for im in served], args.threads)
        for im in served:  # the same paths, pre-encoded
            server.add_route(im.path, {"status": 200, "body": web.image_bytes(im),
                                       "headers": {"Content-Type": "image/jpeg"}})
        static = fetch_all(server.base_url, [im.path for im in served], args.threads)
    print(f"serving {len(served)} images, {args.threads} client threads: rendered on request "
          f"{len(served) / live:.0f} images/s, pre-encoded {len(served) / static:.0f} images/s "
          f"(on-the-fly costs {live / static:.2f}x)")
    # what the demo's download stage does now: prerender in forked workers, then serve from memory
    cores = os.cpu_count() or 1
    ahead = build_web(scenes=max(n, 50))
    urls = [im.url for im in ahead.images if im.kind == "ok"][:n]
    _, t_pre = timed(lambda: ahead.prerender(urls, processes=cores))
    print(f"prerender of {len(urls)} images in {cores} processes: {len(urls) / t_pre:.0f} images/s; "
          f"prerender + serve from memory {len(urls) / (t_pre + static):.0f} images/s against "
          f"rendered on request {len(served) / live:.0f} ({live / (t_pre + static):.2f}x)")


if __name__ == "__main__":
    main()
