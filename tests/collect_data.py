"""Small generated inputs shared by the collect tests (real WAT/WARC formats via wit_builder.sim.webgen)."""
from __future__ import annotations

import random
import zlib

import pyarrow as pa
import pyarrow.parquet as pq

from wit_builder.sim.webgen import Image, Page

WORDS = ["a", "the", "cat", "dog", "red", "car", "in", "New", "York", "tree", "house", "blue", "sky",
         "photo", "of", "big", "on", "with", "garden", "beach", "sunset", "old", "city", "street"]
QUERIES = ["cat", "dog", "red car", "New York", "tree", "house", "sky", "sunset", "old city", "beach"]


def write_queries(path, queries=QUERIES) -> str:
    """queries.parquet as the query stage writes it (docs/schemas.md); extra columns null."""
    n = len(queries)
    pq.write_table(pa.table({
        "id": pa.array(range(n), pa.int32()),
        "query": pa.array(list(queries), pa.string()),
        "sources": pa.array([None] * n, pa.list_(pa.string())),
        "unigram_count": pa.array([None] * n, pa.int64()),
        "bigram_count": pa.array([None] * n, pa.int64()),
        "bigram_pmi": pa.array([None] * n, pa.float64()),
        "title_views": pa.array([None] * n, pa.int64()),
        "wordnet_synsets": pa.array([None] * n, pa.int32()),
    }), str(path))
    return str(path)


def make_pages(n: int, seed: int = 0, start: int = 0) -> list[Page]:
    """Pages with 5 images each: relative and absolute srcs, English alt texts over WORDS."""
    rng = random.Random(seed)
    pages = []
    for i in range(start, start + n):
        imgs = []
        for j in range(5):
            src = f"img/{i}_{j}.jpg" if j % 2 else f"https://cdn.example.com/{i}/{j}.png"
            alt = "a photo of the " + " ".join(rng.choices(WORDS, k=rng.randint(2, 7)))
            imgs.append(Image(src, alt=alt))
        pages.append(Page(f"https://site{i % 7}.example.org/p/{i}.html", images=imgs, title=f"page {i}",
                          links=[("/about", "About us"), (f"/p/{i + 1}.html", "next")]))
    return pages


def gzip_members(data: bytes) -> list[int]:
    """Start offsets of the gzip members of ``data`` (one per WARC/WAT record)."""
    offs, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        offs.append(pos)
        pos = len(data) - len(d.unused_data)
    return offs
