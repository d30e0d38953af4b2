"""Deduplication at scale with the learned detector, and the eval-set overlap (contamination) report.

Stages of ``wit dedup run``:

1. **Embed** every image of every shard (``pipelines/dedup.py``: a Beam DoFn per shard,
   model loaded once in ``setup``, images embedded in batches). Each shard's embeddings are
   written atomically to ``OUT/embeddings/<shard>-<hash>.parquet`` (key, uid, shard, width,
   height, status, embedding); a re-run reuses files made by the same detector weights, so an
   interrupted run resumes per shard. Undecodable images are kept as rows with ``status`` set to
   the skip reason and no embedding (counted, never a crash).
2. **Neighbours** with faiss on the L2-normalised embeddings (inner product = cosine similarity):
   an exact ``IndexFlatIP`` below ``exact_below`` images (default 100,000), otherwise an
   ``IndexIVFFlat`` (inner product) with ``nlist = clamp(sqrt(n), 16, 65536)`` lists, trained
   on a fixed-seed sample of ``min(n, 64 * nlist)`` vectors, searched with ``nprobe`` lists
   (default 32). Each image asks for its ``k`` nearest (default 16).
3. **Clusters**: an edge joins two images whose similarity is >= the threshold (the calibrated
   one stored in the detector, or ``threshold=``); clusters are the connected components
   (union-find), so duplication is transitive: A~B and B~C put A, B and C in one cluster even if
   A and C are not similar enough themselves. Rows are first sorted by (key, shard, uid), the
   union keeps the smaller row index as root, and cluster ids are numbered by each cluster's first
   row: the output does not depend on shard or worker order.
4. **Keep rule**: per cluster keep the image with the most pixels (original width x height), then
   the smallest key (then shard, then uid). All others get ``kept = False``.

``OUT/decisions.parquet``: uid, key, cluster_id (int64), cluster_size (int32), kept (bool),
nearest_similarity (float32: cosine similarity to the most similar *other* image, NaN when there
is none), plus shard, nearest_key, width, height, status. Rows whose image could not be decoded
have status = the reason, cluster_id = -1, cluster_size = 0 and kept = False (so `wit shards`
drops them too).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np



from wit_builder import records
from wit_builder.core import WitError, atomic_write_json, atomic_write_parquet, expand_shards
from wit_builder.embeddings import Embeddings, load_embeddings
from wit_builder.schemas import DECISIONS_SCHEMA


# --- neighbours and clusters ----------------------------------------------------------------------

def choose_index(n: int, exact_below: int = 100_000) -> str:
    return "flat" if n < exact_below else "ivf"


def ivf_nlist(n: int) -> int:
    return int(min(65536, max(16, round(math.sqrt(n)))))


def build_index(vectors: np.ndarray, exact_below: int = 100_000, nprobe: int = 32, seed: int = 0):
    """faiss inner-product index over L2-normalised vectors: exact IndexFlatIP for fewer than
    ``exact_below`` vectors, else IndexIVFFlat (nlist = clamp(sqrt(n), 16, 65536), trained on a
    fixed-seed sample of min(n, 64 nlist) vectors). Returns (index, info dict)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    kind = choose_index(n, exact_below)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, {"index": "IndexFlatIP", "n": n}
    nlist = ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
    index.cp.seed = seed
    index.train(sample)
    index.add(x)
    index.nprobe = min(nprobe, nlist)
    return index, {"index": "IndexIVFFlat", "n": n, "nlist": nlist, "nprobe": index.nprobe,
                   "train_sample": int(len(sample))}


def search(index, queries: np.ndarray, k: int, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """k nearest (similarities desc, ids; id -1 / sim -inf where fewer exist), in query batches."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(k, index.ntotal))
    sims = np.empty((len(q), k), np.float32)
    ids = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), batch):
        D, I = index.search(q[s:s + batch], k)
        sims[s:s + batch], ids[s:s + batch] = D, I
    sims[ids < 0] = -np.inf
    return sims, ids


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over edges (a[i], b[i]); returns dense component ids 0..C-1 numbered by each
    component's smallest member (deterministic, independent of edge order)."""
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:
            if rx < ry:
                parent[ry] = rx
            else:
                parent[rx] = ry
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    # roots are each component's minimum; numbering them in increasing order numbers components by
    # their first member
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64)


def pick_kept(labels: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """One kept row per component: most pixels, ties -> smallest row index (rows are sorted by key)."""
    n = len(labels)
    if n == 0:
        return np.zeros(0, bool)
    order = np.lexsort((np.arange(n), -pixels, labels))
    first = np.ones(n, bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    kept = np.zeros(n, bool)
    kept[order[first]] = True
    return kept


def cluster_vectors(vectors: np.ndarray, threshold: float, k: int = 16, exact_below: int = 100_000,
                    nprobe: int = 32, pixels: np.ndarray | None = None) -> dict:
    """Neighbour search + connected components + keep rule over rows in a fixed order."""
    n = len(vectors)
    if n == 0:
        z = np.zeros(0, np.int64)
        return {"labels": z, "kept": np.zeros(0, bool), "nearest_similarity": np.zeros(0, np.float32),
                "nearest": z, "sizes": z, "index": {"index": "none", "n": 0}, "edges": 0}
    index, info = build_index(vectors, exact_below, nprobe)
    sims, ids = search(index, vectors, k + 1)
    not_self = (ids != np.arange(n)[:, None]) & (ids >= 0)   # broadcast: no (n, k+1) row-id array
    masked = np.where(not_self, sims, -np.inf)
    best = masked.argmax(axis=1)
    nearest_sim = masked[np.arange(n), best].astype(np.float32)
    nearest = np.where(np.isfinite(nearest_sim), ids[np.arange(n), best], -1)
    nearest_sim[~np.isfinite(nearest_sim)] = np.nan
    edge = not_self & (sims >= threshold)
    labels = connected_components(n, np.nonzero(edge)[0], ids[edge])
    sizes = np.bincount(labels)
    kept = pick_kept(labels, np.zeros(n) if pixels is None else pixels)
    return {"labels": labels, "kept": kept, "nearest_similarity": nearest_sim, "nearest": nearest,
            "sizes": sizes[labels], "index": info, "edges": int(edge.sum())}


def decisions_table(e: Embeddings, result: dict):
    """The contract's decisions.parquet table (plus a few explanatory columns)."""
    import pyarrow as pa

    n = len(e)
    ok_rows = np.nonzero(e.ok)[0]
    cluster = np.full(n, -1, np.int64)
    size = np.zeros(n, np.int32)
    kept = np.zeros(n, bool)
    nearest_sim = np.full(n, np.nan, np.float32)
    nearest_key = np.full(n, None, dtype=object)
    cluster[ok_rows] = result["labels"]
    size[ok_rows] = result["sizes"]
    kept[ok_rows] = result["kept"]
    nearest_sim[ok_rows] = result["nearest_similarity"]
    has = result["nearest"] >= 0
    nearest_key[ok_rows[has]] = e.key[ok_rows[result["nearest"][has]]]
    table = pa.table({
        "uid": pa.array(e.uid.tolist(), pa.string()),
        "key": pa.array(e.key.tolist(), pa.string()),
        "cluster_id": pa.array(cluster, pa.int64()),
        "cluster_size": pa.array(size, pa.int32()),
        "kept": pa.array(kept, pa.bool_()),
        "nearest_similarity": pa.array(nearest_sim, pa.float32()),
        "nearest_key": pa.array(nearest_key.tolist(), pa.string()),
        "shard": pa.array(e.shard.tolist(), pa.string()),
        "width": pa.array(np.where(e.width < 0, None, e.width).tolist(), pa.int32()),
        "height": pa.array(np.where(e.height < 0, None, e.height).tolist(), pa.int32()),
        "status": pa.array(e.status.tolist(), pa.string()),
    }, schema=DECISIONS_SCHEMA)
    return table.filter(pa.array(e.is_sample()))  # a truncated shard's marker row is counted, not a sample


def resolve_threshold(threshold: float | None, detector: str) -> float:
    if threshold is not None:
        return float(threshold)
    from wit_builder.detector import read_detector
    thr = read_detector(detector).get("threshold")
    if thr is None:
        raise WitError(f"detector {detector!r} is not calibrated: run `wit dedup calibrate` or pass --threshold")
    return float(thr)


def skip_counts(e: Embeddings) -> dict:
    out: dict[str, int] = {}
    for s in e.status[~e.ok]:
        out[s] = out.get(s, 0) + 1
    return out


@dataclass(frozen=True)
class DedupConfig:
    """What ``wit dedup run`` reads, writes and decides with."""
    shards: tuple                       # shard paths or patterns (brace, glob, folder)
    detector: str
    out: str
    threshold: float | None = None      # None: the detector's calibrated threshold
    k: int = 16
    exact_below: int = 100_000
    nprobe: int = 32
    batch_size: int = 64
    threads: int | None = None


# embed(shard paths, embeddings folder) -> one embeddings file per shard (the Beam step)
EmbedFn = Callable[[Sequence[str], str], list]


def run_dedup(cfg: DedupConfig, embed: EmbedFn) -> dict:
    """``wit dedup run``: embed (with ``embed``), neighbours, clusters, keep rule; writes
    OUT/decisions.parquet and OUT/stats.json; returns the stats."""
    if cfg.k < 1:
        raise WitError("--k must be >= 1")
    out, threads, k = cfg.out, cfg.threads, cfg.k
    paths = records.verify_inputs(expand_shards(list(cfg.shards)), "--shards")
    thr = resolve_threshold(cfg.threshold, cfg.detector)
    os.makedirs(out, exist_ok=True)
    records.begin(out, "dedup", ("embeddings",))
    t0 = time.time()
    files = embed(paths, os.path.join(out, "embeddings"))
    t1 = time.time()
    e = load_embeddings(files)
    if threads:
        import faiss
        faiss.omp_set_num_threads(int(threads))
    pixels = (np.maximum(e.width, 0) * np.maximum(e.height, 0))[e.ok]
    res = cluster_vectors(e.vectors, thr, k=k, exact_below=cfg.exact_below, nprobe=cfg.nprobe, pixels=pixels)
    t2 = time.time()
    table = decisions_table(e, res)
    atomic_write_parquet(os.path.join(out, "decisions.parquet"), table)
    n_ok = int(e.ok.sum())
    sizes = np.bincount(res["labels"]) if n_ok else np.zeros(0, np.int64)
    stats = {
        "shards": len(paths), "images": int(e.is_sample().sum()), "embedded": n_ok, "skipped": skip_counts(e),
        "threshold": thr, "k": k, "index": res["index"], "edges": res["edges"],
        "clusters": int(len(sizes)), "duplicate_clusters": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "kept": int(res["kept"].sum()), "dropped_duplicates": int(n_ok - res["kept"].sum()),
        "keep_rule": "most pixels (original width x height), then smallest key, shard, uid",
        "seconds": {"embed": round(t1 - t0, 3), "cluster": round(t2 - t1, 3)},
    }
    atomic_write_json(os.path.join(out, "stats.json"), stats)
    records.complete_folder(out, "dedup", inputs=paths, skip=("embeddings/",),
                            counts={"images": stats["images"], "kept": stats["kept"]})
    return stats


