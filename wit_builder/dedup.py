"""Deduplication at scale with the learned detector, and the eval-set overlap (contamination) report.

Stages of ``wit dedup run``:

1. **Embed** every image of every shard (``pipelines/dedup.py``: a Beam DoFn per shard,
   model loaded once in ``setup``, images embedded in batches). Each shard's embeddings are
   written atomically to ``OUT/embeddings/<shard>-<hash>.parquet`` (key, uid, shard, width,
   height, status, embedding); a re-run reuses files made by the same detector weights, so an
   interrupted run resumes per shard. Undecodable images are kept as rows with ``status`` set to
   the skip reason and no embedding (counted, never a crash).
2. **Neighbours and clusters** on Beam, spread over the workers (:mod:`wit_builder.dedup_cells`
   explains it; ``pipelines/dedup_cells.py`` wires it): a coarse quantizer trained on a bounded
   sample, each image searched exactly (one GEMM per slice) in its nearest cell and in the
   nearby ones, big cells split into blocks; below ``exact_below`` images there is one cell, so the
   search is exact over all pairs. An edge joins two images whose similarity is >= the threshold
   (the calibrated one stored in the detector, or ``threshold=``), at most ``k`` per image; the
   edges (never O(images)) are joined into connected components.
3. **Keep rule with a chain guard**: per component keep the image with the most pixels (original
   width x height), then the smallest key, then the smallest row id; another member is dropped as
   its duplicate only if its own similarity to that kept image is >= the threshold. A member that
   is only chained to it (A~B, B~C, C not ~ A) stays, as a cluster of its own (``chained`` in
   stats.json). The result does not depend on worker count or input order.

``OUT/decisions.parquet``: uid, key, cluster_id (int64: the row id of the cluster's kept image),
cluster_size (int32: the kept image and its dropped duplicates), kept (bool), nearest_similarity
(float32: cosine similarity to the most similar *other* image among those searched: exact below
``exact_below`` images, else within the probed cells; NaN when there is none), plus shard, nearest_key, width, height, status. Rows whose image could not be decoded
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
from wit_builder.core import WitError, atomic_write_json, expand_shards
from wit_builder.embeddings import Embeddings, load_embeddings


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
    exact_below: int = 100_000          # below this many images: one cell, exact search of all pairs
    nprobe: int = 32                    # (wit dedup overlap's IVF index)
    batch_size: int = 64
    threads: int | None = None
    cell_size: int = 2048
    probes: int = 3
    margin: float = 0.1
    max_block: int = 8192

    def cell_params(self, threshold: float):
        from wit_builder.dedup_cells import CellParams
        return CellParams(threshold=threshold, k=self.k, exact_below=self.exact_below, cell_size=self.cell_size,
                          probes=self.probes, margin=self.margin, max_block=self.max_block)


# embed(shard paths, embeddings folder) -> one embeddings file per shard (the Beam step)
EmbedFn = Callable[[Sequence[str], str], list]
# cluster(embedding files, output folder, CellParams) -> stats; writes OUT/decisions.parquet (Beam)
ClusterFn = Callable[[Sequence[str], str, object], dict]


def count_statuses(files: Sequence[str]) -> tuple[int, dict]:
    """(images, {status: count}) over embedding files, one file's status column at a time
    (a truncated shard's marker row is not an image)."""
    import pyarrow.parquet as pq

    images, counts = 0, {}
    for f in files:
        for status in pq.read_table(f, columns=["status"]).column("status").to_pylist():
            if status == "truncated_shard":
                counts[status] = counts.get(status, 0) + 1
                continue
            images += 1
            counts[status] = counts.get(status, 0) + 1
    return images, counts


def run_dedup(cfg: DedupConfig, embed: EmbedFn, cluster: ClusterFn) -> dict:
    """``wit dedup run``: embed (with ``embed``), then neighbours, clusters and the keep rule (with
    ``cluster``: :mod:`wit_builder.dedup_cells` on Beam); writes OUT/decisions.parquet and
    OUT/stats.json; returns the stats."""
    if cfg.k < 1:
        raise WitError("--k must be >= 1")
    for name in ("cell_size", "probes", "max_block"):
        if getattr(cfg, name) < 1:
            raise WitError(f"--{name.replace('_', '-')} must be >= 1")
    out = cfg.out
    paths = records.verify_inputs(expand_shards(list(cfg.shards)), "--shards")
    thr = resolve_threshold(cfg.threshold, cfg.detector)
    os.makedirs(out, exist_ok=True)
    records.begin(out, "dedup", ("embeddings",))
    t0 = time.time()
    files = embed(paths, os.path.join(out, "embeddings"))
    t1 = time.time()
    if cfg.threads:
        import faiss
        faiss.omp_set_num_threads(int(cfg.threads))
    images, statuses = count_statuses(files)
    n_ok = statuses.get("ok", 0)
    search = cluster(files, out, cfg.cell_params(thr))
    t2 = time.time()
    kept = n_ok - search["dropped_duplicates"]
    stats = {
        "shards": len(paths), "images": images, "embedded": n_ok,
        "skipped": {s: c for s, c in statuses.items() if s != "ok"},
        "threshold": thr, "k": cfg.k, "search": {key: v for key, v in search.items() if key != "seconds"},
        "edges": search["edges"], "clusters": kept, "duplicate_clusters": search["duplicate_clusters"],
        "largest_cluster": search["largest_cluster"] if n_ok else 0, "chained": search["chained"],
        "kept": kept, "dropped_duplicates": search["dropped_duplicates"],
        "keep_rule": "most pixels (original width x height), then smallest key, then row; a member of a linked "
                     "group is dropped only when similar to the kept image itself (chain guard)",
        "seconds": {"embed": round(t1 - t0, 3), "cluster": round(t2 - t1, 3), **search["seconds"]},
    }
    atomic_write_json(os.path.join(out, "stats.json"), stats)
    records.complete_folder(out, "dedup", inputs=paths, skip=("embeddings/",),
                            counts={"images": stats["images"], "kept": stats["kept"]})
    return stats
