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

import hashlib
import json
import math
import os
import tarfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from wit_builder.core import (WitError, atomic_write_json, atomic_write_parquet, exists, expand_shards, is_local,
                              open_read)
from wit_builder.imageshards import IMAGE_EXTS, BadImage, decode_image, split_name



# --- shards -------------------------------------------------------------------------------------

def iter_shard_records(path: str) -> Iterator[dict]:
    """Stream a webdataset tar as records {key, image (bytes|None), image_ext, meta (dict|None),
    error (None or a skip reason)} grouped by key. A truncated tar yields one record with error
    "truncated_shard" and stops."""
    current: dict | None = None

    def finish(rec: dict) -> dict:
        if rec["error"] is None and rec["image"] is None:
            rec["error"] = "no_image"
        return rec

    with open_read(path) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r|") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = split_name(m.name)
                    if current is not None and current["key"] != key:
                        yield finish(current)
                        current = None
                    if current is None:
                        current = {"key": key, "image": None, "image_ext": None, "meta": None, "error": None}
                    data = tf.extractfile(m).read()
                    if ext in IMAGE_EXTS and current["image"] is None:
                        current["image"], current["image_ext"] = data, ext
                    elif ext == "json":
                        try:
                            meta = json.loads(data.decode("utf-8"))
                            current["meta"] = meta if isinstance(meta, dict) else None
                        except (UnicodeDecodeError, json.JSONDecodeError):
                            current["meta"] = None
        except (tarfile.TarError, OSError, EOFError):
            if current is not None and current["image"] is not None:
                yield finish(current)  # its image arrived whole; the cut hit a later member
            current = None  # a record cut before its image is part of the truncated_shard count
            yield {"key": "", "image": None, "image_ext": None, "meta": None, "error": "truncated_shard"}
    if current is not None:
        yield finish(current)


# --- embeddings ---------------------------------------------------------------------------------

def embedding_path(out_dir: str, shard: str) -> str:
    stem = os.path.basename(shard)
    stem = stem[:-4] if stem.endswith(".tar") else stem
    h = hashlib.blake2b(shard.encode(), digest_size=4).hexdigest()
    return os.path.join(out_dir, f"{stem}-{h}.parquet")


def _schema(dim: int):
    import pyarrow as pa
    return pa.schema([("key", pa.string()), ("uid", pa.string()), ("shard", pa.string()),
                      ("width", pa.int32()), ("height", pa.int32()), ("status", pa.string()),
                      ("embedding", pa.list_(pa.float32()))])  # null where status != "ok"


def embed_records(embedder, records, shard: str, batch_size: int = 64, progress: bool = False):
    """Decode + embed records (from :func:`iter_shard_records` or :func:`iter_image_files`) into a
    pyarrow Table (schema above). Bad images become rows with a status and a null embedding."""
    import pyarrow as pa
    from tqdm import tqdm

    from wit_builder.detector import to_array

    size = embedder.image_size
    dim = int(embedder.config["embed_dim"])
    rows = {"key": [], "uid": [], "shard": [], "width": [], "height": [], "status": []}
    vecs: list[np.ndarray | None] = []
    buf, buf_rows = [], []

    def flush():
        if buf:
            e = embedder.embed_arrays(buf)
            for r, v in zip(buf_rows, e):
                vecs[r] = v
            buf.clear()
            buf_rows.clear()

    for rec in tqdm(records, desc=f"embed {os.path.basename(shard)}", unit="img", disable=not progress,
                    leave=False):
        meta = rec.get("meta") or {}
        uid = meta.get("uid")
        uid = str(uid) if uid not in (None, "") else rec["key"]
        status, width, height = rec["error"], None, None
        if status is None:
            try:
                img, (width, height) = decode_image(rec["image"], min_size=size)
                arr = to_array(img, size)
                status = "ok"
            except BadImage:
                status = "corrupt_image"
        rows["key"].append(rec["key"])
        rows["uid"].append(uid)
        rows["shard"].append(shard)
        rows["width"].append(width)
        rows["height"].append(height)
        rows["status"].append(status)
        vecs.append(None)
        if status == "ok":
            buf.append(arr)
            buf_rows.append(len(vecs) - 1)
            if len(buf) >= batch_size:
                flush()
    flush()
    emb = pa.array([None if v is None else v for v in vecs], type=pa.list_(pa.float32()))
    return pa.table({**{k: pa.array(v, type=_schema(dim).field(k).type) for k, v in rows.items()},
                     "embedding": emb}, schema=_schema(dim))


def embed_shard_to_file(embedder, shard: str, out_dir: str, batch_size: int = 64, progress: bool = False) -> dict:
    """Embed one shard into its parquet file (skipped if a file from the same detector exists);
    returns its status counts."""
    import pyarrow.parquet as pq

    import pyarrow as pa

    path = embedding_path(out_dir, shard)
    if exists(path):
        try:
            meta = pq.read_schema(path).metadata or {}
            if meta.get(b"detector_fingerprint", b"").decode() == embedder.fingerprint:
                t = pq.read_table(path, columns=["status"])
                return {"shard": shard, "reused": True, **_status_counts(t.column("status").to_pylist())}
        except (OSError, pa.ArrowException, UnicodeDecodeError, KeyError):
            pass  # unreadable or from an older layout: re-embed
    table = embed_records(embedder, iter_shard_records(shard), shard, batch_size, progress)
    table = table.replace_schema_metadata({"detector_fingerprint": embedder.fingerprint, "shard": shard})
    atomic_write_parquet(path, table)
    return {"shard": shard, "reused": False, **_status_counts(table.column("status").to_pylist())}


def _status_counts(statuses: list[str]) -> dict:
    out: dict[str, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return {"counts": out}


def iter_image_files(root: str) -> Iterator[dict]:
    """Records for a directory of loose image files (an eval set): key = path relative to root."""
    files = []
    for d, _, names in os.walk(root):
        for n in names:
            if n.rsplit(".", 1)[-1].lower() in IMAGE_EXTS and not n.startswith("."):
                files.append(os.path.join(d, n))
    for f in sorted(files):
        rel = os.path.relpath(f, root)
        with open(f, "rb") as fh:
            yield {"key": rel, "image": fh.read(), "image_ext": rel.rsplit(".", 1)[-1], "meta": None,
                   "error": None}


@dataclass
class Embeddings:
    key: np.ndarray          # object array of str
    uid: np.ndarray
    shard: np.ndarray
    width: np.ndarray        # int64, -1 where unknown
    height: np.ndarray
    status: np.ndarray
    vectors: np.ndarray      # float32 (n_ok, dim), rows of the "ok" entries in order
    ok: np.ndarray           # bool mask over all rows

    def __len__(self) -> int:
        return len(self.key)


def load_embeddings(files: Sequence[str]) -> Embeddings:
    """Concatenate embedding files and sort rows by (key, shard, uid) (deterministic order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(f) for f in files]
    if not tables:
        raise WitError("no embeddings to load")
    t = pa.concat_tables(tables)
    key = np.array(t.column("key").to_pylist(), dtype=object)
    uid = np.array(t.column("uid").to_pylist(), dtype=object)
    shard = np.array(t.column("shard").to_pylist(), dtype=object)
    order = sorted(range(len(key)), key=lambda i: (key[i], shard[i], uid[i]))
    order = np.array(order, dtype=np.int64)
    status = np.array(t.column("status").to_pylist(), dtype=object)[order]
    ok = status == "ok"
    width = t.column("width").to_numpy(zero_copy_only=False)
    height = t.column("height").to_numpy(zero_copy_only=False)
    width = np.where(np.isnan(width.astype(float)), -1, width).astype(np.int64)[order]
    height = np.where(np.isnan(height.astype(float)), -1, height).astype(np.int64)[order]
    emb_col = t.column("embedding").combine_chunks()
    taken = emb_col.take(pa.array(order[ok]))
    flat = taken.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    dim = len(flat) // max(1, len(taken))
    if len(taken) and dim * len(taken) != len(flat):
        raise WitError(f"embedding files {list(files)[:3]} mix embedding sizes")
    vectors = flat.reshape(len(taken), dim)
    return Embeddings(key[order], uid[order], shard[order], width, height, status, vectors, ok)


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
    rows = np.repeat(np.arange(n), sims.shape[1]).reshape(n, -1)
    not_self = (ids != rows) & (ids >= 0)
    masked = np.where(not_self, sims, -np.inf)
    best = masked.argmax(axis=1)
    nearest_sim = masked[np.arange(n), best].astype(np.float32)
    nearest = np.where(np.isfinite(nearest_sim), ids[np.arange(n), best], -1)
    nearest_sim[~np.isfinite(nearest_sim)] = np.nan
    edge = not_self & (sims >= threshold)
    labels = connected_components(n, rows[edge], ids[edge])
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
    return pa.table({
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
    })


def _resolve_threshold(threshold: float | None, detector: str) -> float:
    if threshold is not None:
        return float(threshold)
    from wit_builder.detector import read_detector
    thr = read_detector(detector).get("threshold")
    if thr is None:
        raise WitError(f"detector {detector!r} is not calibrated: run `wit dedup calibrate` or pass --threshold")
    return float(thr)


def _skips(e: Embeddings) -> dict:
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
    paths = expand_shards(list(cfg.shards))
    thr = _resolve_threshold(cfg.threshold, cfg.detector)
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
        "shards": len(paths), "images": int(len(e)), "embedded": n_ok, "skipped": _skips(e),
        "threshold": thr, "k": k, "index": res["index"], "edges": res["edges"],
        "clusters": int(len(sizes)), "duplicate_clusters": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "kept": int(res["kept"].sum()), "dropped_duplicates": int(n_ok - res["kept"].sum()),
        "keep_rule": "most pixels (original width x height), then smallest key, shard, uid",
        "seconds": {"embed": round(t1 - t0, 3), "cluster": round(t2 - t1, 3)},
    }
    atomic_write_json(os.path.join(out, "stats.json"), stats)
    return stats


# --- eval-set overlap ---------------------------------------------------------------------------

def parse_eval_arg(arg: str) -> tuple[str, str]:
    """"NAME=PATH" or "PATH" (name = basename of the path, without a shard pattern)."""
    if "=" in arg and not arg.startswith(("gs://", "s3://")) and "/" not in arg.split("=", 1)[0]:
        name, path = arg.split("=", 1)
    else:
        path = arg
        base = path.rstrip("/")
        if "{" in base or "*" in base or base.endswith(".tar"):
            base = os.path.dirname(base)
        name = os.path.basename(base) or "eval"
    if not name or any(c in name for c in "/\\"):
        raise WitError(f"--eval {arg!r}: bad set name {name!r}")
    return name, path


def overlap_vectors(train: np.ndarray, evals: np.ndarray, threshold: float, exact_below: int = 100_000,
                    nprobe: int = 32, train_side: bool = False) -> dict:
    """For each eval vector: max similarity to any training vector and its index; overlap if >=
    threshold. With ``train_side``, also for each training vector its max similarity to the eval
    vectors (to drop the training images that overlap)."""
    out: dict = {}
    if len(train) and len(evals):
        index, info = build_index(train, exact_below, nprobe)
        s, i = search(index, evals, 1)
        out.update(eval_max=s[:, 0], eval_nearest=i[:, 0], eval_overlap=s[:, 0] >= threshold, index=info)
        if train_side:
            eindex, _ = build_index(evals, exact_below, nprobe)
            s2, i2 = search(eindex, train, 1)
            out.update(train_max=s2[:, 0], train_nearest=i2[:, 0], train_overlap=s2[:, 0] >= threshold)
    else:
        out.update(eval_max=np.full(len(evals), -np.inf, np.float32), eval_nearest=np.full(len(evals), -1),
                   eval_overlap=np.zeros(len(evals), bool), index={"index": "none"})
        if train_side:
            out.update(train_max=np.full(len(train), -np.inf, np.float32), train_nearest=np.full(len(train), -1),
                       train_overlap=np.zeros(len(train), bool))
    return out


@dataclass(frozen=True)
class OverlapConfig:
    """What ``wit dedup overlap`` compares: eval sets (NAME=PATH) against training shards."""
    evals: tuple
    shards: tuple
    detector: str
    out: str
    threshold: float | None = None
    drop_overlapping: bool = False
    decisions: str | None = None
    exact_below: int = 100_000
    nprobe: int = 32
    batch_size: int = 64
    threads: int | None = None
    train_embeddings: str | None = None


def run_overlap(cfg: OverlapConfig, embed: EmbedFn) -> dict:
    """``wit dedup overlap``: per eval set, which examples have a near-duplicate in the training
    shards (CLIP section 5). Writes OUT/summary.json, OUT/overlap.parquet, OUT/<set>.overlap.txt and
    OUT/<set>.clean.txt (ids: the webdataset key, or the relative file path for a folder of
    images); with ``drop_overlapping`` also OUT/decisions.parquet (all training images, kept =
    False for those near-duplicating any eval image, combined with ``decisions`` if given) and
    OUT/train_overlapping.txt."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wit_builder.core import atomic_open

    evals, shards, detector, out = cfg.evals, cfg.shards, cfg.detector, cfg.out
    drop_overlapping, decisions, threads, batch_size = cfg.drop_overlapping, cfg.decisions, cfg.threads, cfg.batch_size
    exact_below, nprobe = cfg.exact_below, cfg.nprobe
    thr = _resolve_threshold(cfg.threshold, detector)
    sets = [parse_eval_arg(a) for a in evals]
    names = [n for n, _ in sets]
    if len(set(names)) != len(names):
        raise WitError(f"--eval set names must be unique, got {names}; use NAME=PATH")
    if not sets:
        raise WitError("give at least one --eval")
    train_paths = expand_shards(list(shards))
    train_files = embed(train_paths, cfg.train_embeddings or os.path.join(out, "embeddings", "_train"))
    train = load_embeddings(train_files)
    summary = {"threshold": thr, "train_images": int(len(train)), "train_embedded": int(train.ok.sum()),
               "train_skipped": _skips(train), "sets": {}}
    rows = []
    train_overlap = np.zeros(int(train.ok.sum()), bool)
    train_max = np.full(int(train.ok.sum()), -np.inf, np.float32)
    train_ok_rows = np.nonzero(train.ok)[0]
    for name, path in sets:
        emb_dir = os.path.join(out, "embeddings", name)
        if is_local(path) and os.path.isdir(path) and not any(f.endswith(".tar") for f in os.listdir(path)):
            from wit_builder.detector import Embedder
            embedder = Embedder(detector, threads=threads)
            table = embed_records(embedder, iter_image_files(path), path, batch_size)
            table = table.replace_schema_metadata({"detector_fingerprint": embedder.fingerprint})
            f = os.path.join(emb_dir, "images.parquet")
            atomic_write_parquet(f, table)
            files = [f]
        else:
            files = embed(expand_shards(path, f"--eval {name}"), emb_dir)
        ev = load_embeddings(files)
        r = overlap_vectors(train.vectors, ev.vectors, thr, exact_below, nprobe, train_side=drop_overlapping)
        if drop_overlapping:
            train_overlap |= r["train_overlap"]
            train_max = np.maximum(train_max, r["train_max"])
        ok_rows = np.nonzero(ev.ok)[0]
        overlap_ids = ev.key[ok_rows[r["eval_overlap"]]].tolist()
        clean_ids = ev.key[ok_rows[~r["eval_overlap"]]].tolist()
        for j, row in enumerate(ok_rows):
            nn = int(r["eval_nearest"][j])
            t_row = train_ok_rows[nn] if nn >= 0 else None
            rows.append({"eval_set": name, "id": ev.key[row], "uid": ev.uid[row], "overlap": bool(r["eval_overlap"][j]),
                         "max_similarity": float(r["eval_max"][j]) if np.isfinite(r["eval_max"][j]) else None,
                         "nearest_train_key": None if t_row is None else train.key[t_row],
                         "nearest_train_uid": None if t_row is None else train.uid[t_row]})
        for row in np.nonzero(~ev.ok)[0]:
            rows.append({"eval_set": name, "id": ev.key[row], "uid": ev.uid[row], "overlap": None,
                         "max_similarity": None, "nearest_train_key": None, "nearest_train_uid": None})
        for kind, ids in (("overlap", overlap_ids), ("clean", clean_ids)):
            with atomic_open(os.path.join(out, f"{name}.{kind}.txt"), "w") as fh:
                fh.writelines(f"{i}\n" for i in ids)
        n = len(ok_rows)
        summary["sets"][name] = {"path": path, "examples": int(len(ev)), "embedded": n, "skipped": _skips(ev),
                                 "overlap": len(overlap_ids), "clean": len(clean_ids),
                                 "overlap_fraction": (len(overlap_ids) / n) if n else None}
    schema = pa.schema([("eval_set", pa.string()), ("id", pa.string()), ("uid", pa.string()),
                        ("overlap", pa.bool_()), ("max_similarity", pa.float32()),
                        ("nearest_train_key", pa.string()), ("nearest_train_uid", pa.string())])
    atomic_write_parquet(os.path.join(out, "overlap.parquet"), pa.Table.from_pylist(rows, schema=schema))
    if drop_overlapping:
        n = len(train)
        kept = np.zeros(n, bool)
        kept[train_ok_rows] = ~train_overlap
        cluster = np.full(n, -1, np.int64)
        cluster[train_ok_rows] = np.arange(len(train_ok_rows))
        size = np.zeros(n, np.int32)
        size[train_ok_rows] = 1
        sim = np.full(n, np.nan, np.float32)
        sim[train_ok_rows] = np.where(np.isfinite(train_max), train_max, np.nan)
        dropped_overlap = int(train_overlap.sum())
        if decisions:
            dpath = os.path.join(decisions, "decisions.parquet") if os.path.isdir(decisions) else decisions
            if not exists(dpath):
                raise WitError(f"--decisions {decisions!r}: {dpath} does not exist")
            d = pq.read_table(dpath, columns=["uid", "key", "kept", "cluster_id", "cluster_size",
                                               "nearest_similarity"]).to_pylist()
            prev = {(r["key"], r["uid"]): r for r in d}
            for i in range(n):
                p = prev.get((train.key[i], train.uid[i]))
                if p is None:
                    continue
                kept[i] = kept[i] and bool(p["kept"])
                cluster[i], size[i] = p["cluster_id"], p["cluster_size"]
                sim[i] = np.nan if p["nearest_similarity"] is None else p["nearest_similarity"]
        table = pa.table({
            "uid": pa.array(train.uid.tolist(), pa.string()), "key": pa.array(train.key.tolist(), pa.string()),
            "cluster_id": pa.array(cluster, pa.int64()), "cluster_size": pa.array(size, pa.int32()),
            "kept": pa.array(kept, pa.bool_()), "nearest_similarity": pa.array(sim, pa.float32()),
            "eval_overlap": pa.array(np.isin(np.arange(n), train_ok_rows[train_overlap]), pa.bool_()),
            "shard": pa.array(train.shard.tolist(), pa.string()), "status": pa.array(train.status.tolist(), pa.string()),
        })
        atomic_write_parquet(os.path.join(out, "decisions.parquet"), table)
        with atomic_open(os.path.join(out, "train_overlapping.txt"), "w") as fh:
            fh.writelines(f"{train.key[i]}\t{train.uid[i]}\n" for i in train_ok_rows[train_overlap])
        summary["train_overlapping"] = dropped_overlap
        summary["decisions"] = os.path.join(out, "decisions.parquet")
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary

