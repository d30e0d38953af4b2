"""Synthetic embedding sets with planted near-duplicate groups (tests and bench/scale.py).

Images are unit vectors around ``topics`` random centres (cosine ~0.6 to their centre, ~0.35
between two images of one topic: embeddings of real images are clustered, not uniform). A share
``dup_share`` of the images are copies of an earlier one: ``normalise(base + eps * g)``, g ~ N(0, I/dim),
eps = ``copy_noise`` = 0.25 (cosine ~0.97 to the base, ~0.94 between two copies), in groups of 2-5 images.
"""
from __future__ import annotations

import os

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_embeddings(n: int, dim: int = 256, dup_share: float = 0.1, seed: int = 0,
                       chunk: int = 65536, copy_noise: float = 0.25):
    """(vectors (n, dim) float32, group (n,) int64: the planted group of each row, -1 for none)."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((max(16, n // 2000), dim)))
    vectors = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        t = rng.integers(0, len(topics), m)
        noise = _unit(rng.standard_normal((m, dim)))
        vectors[s:s + m] = _unit(0.6 * topics[t] + 0.8 * noise)
    group = np.full(n, -1, np.int64)
    n_copies = int(n * dup_share)
    # copies overwrite rows; each base gets 1-4 copies
    rows = rng.permutation(n)
    pos, g = 0, 0
    while pos < len(rows) and n_copies > 0:
        size = int(min(rng.integers(1, 5), n_copies))
        base, copies = rows[pos], rows[pos + 1:pos + 1 + size]
        if len(copies) == 0:
            break
        eps = rng.standard_normal((len(copies), dim)).astype(np.float32) / np.sqrt(dim)
        vectors[copies] = _unit(vectors[base] + copy_noise * eps)
        group[base] = g
        group[copies] = g
        g += 1
        pos += 1 + size
        n_copies -= size
    return vectors, group


def write_embedding_files(folder: str, vectors: np.ndarray, rows_per_file: int = 10_000,
                          pixels: np.ndarray | None = None, order: np.ndarray | None = None) -> list[str]:
    """Write the vectors as ``wit dedup run`` embedding files (key = zero-padded row number)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wit_builder.schemas import EMBEDDINGS_SCHEMA

    os.makedirs(folder, exist_ok=True)
    n, dim = vectors.shape
    order = np.arange(n) if order is None else order
    files = []
    for f, s in enumerate(range(0, n, rows_per_file)):
        rows = order[s:s + rows_per_file]
        side = np.full(len(rows), 64) if pixels is None else np.sqrt(pixels[rows]).astype(int)
        shard = f"{f:05d}"
        table = pa.table({
            "key": [f"{r:012d}" for r in rows], "uid": [f"u{r}" for r in rows], "shard": [shard] * len(rows),
            "width": pa.array(side, pa.int32()), "height": pa.array(side, pa.int32()),
            "status": ["ok"] * len(rows),
            "embedding": pa.FixedSizeListArray.from_arrays(vectors[rows].reshape(-1), dim).cast(pa.list_(pa.float32())),
        }, schema=EMBEDDINGS_SCHEMA)
        path = os.path.join(folder, f"{shard}.parquet")
        pq.write_table(table, path)
        files.append(path)
    return files
