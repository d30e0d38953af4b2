"""Step 1 of ``wit dedup run``: images of webdataset shards (or folders) -> embeddings files.

Each shard's embeddings are written atomically to ``OUT/embeddings/<shard>-<hash>.parquet``
(``EMBEDDINGS_SCHEMA``); a re-run reuses files made by the same detector weights, so an
interrupted run resumes per shard. Undecodable images are kept as rows with ``status`` set to
the skip reason and no embedding (counted, never a crash).
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from wit_builder.core import WitError, atomic_write_parquet, content_key, exists, open_read
from wit_builder.imageshards import IMAGE_EXTS, BadImage, decode_image, split_name
from wit_builder.schemas import EMBEDDINGS_SCHEMA


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
            if current is not None and current["image"] is not None and current["meta"] is not None:
                yield finish(current)  # its image and metadata arrived whole; the cut hit a later member
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


def embed_records(embedder, records, shard: str, batch_size: int = 64, progress: bool = False):
    """Decode + embed records (from :func:`iter_shard_records` or :func:`iter_image_files`) into a
    pyarrow Table (``EMBEDDINGS_SCHEMA``). Bad images become rows with a status and a null embedding."""
    import pyarrow as pa
    from tqdm import tqdm

    from wit_builder.detector import to_array

    size = embedder.image_size
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
    return pa.table({**{k: pa.array(v, type=EMBEDDINGS_SCHEMA.field(k).type) for k, v in rows.items()},
                     "embedding": emb}, schema=EMBEDDINGS_SCHEMA)


def embed_shard_to_file(embedder, shard: str, out_dir: str, batch_size: int = 64, progress: bool = False) -> dict:
    """Embed one shard into its parquet file (skipped if a file from the same detector exists);
    returns its status counts."""
    import pyarrow.parquet as pq

    import pyarrow as pa

    path = embedding_path(out_dir, shard)
    shard_key = content_key(shard)  # the cache holds for this detector and this content of the shard
    if exists(path):
        try:
            meta = pq.read_schema(path).metadata or {}
            if (meta.get(b"detector_fingerprint", b"").decode() == embedder.fingerprint
                    and meta.get(b"shard_content", b"").decode() == shard_key):
                t = pq.read_table(path, columns=["status"])
                return {"shard": shard, "reused": True, **_status_counts(t.column("status").to_pylist())}
        except (OSError, pa.ArrowException, UnicodeDecodeError, KeyError):
            pass  # unreadable or from an older layout: re-embed
    table = embed_records(embedder, iter_shard_records(shard), shard, batch_size, progress)
    table = table.replace_schema_metadata({"detector_fingerprint": embedder.fingerprint, "shard": shard,
                                           "shard_content": shard_key})
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

    def is_sample(self) -> np.ndarray:
        """Rows that are samples: all but the marker row a truncated shard adds (counted only)."""
        return self.status != "truncated_shard"

    def __len__(self) -> int:
        return len(self.key)


def load_embeddings(files: Sequence[str]) -> Embeddings:
    """Concatenate embedding files and sort rows by (key, shard, uid) (deterministic order).

    Memory: the vectors once (4 bytes x dim per image) plus a few hundred bytes of keys per image,
    and one file's embedding column at a time (they are read file by file into one array)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = list(files)
    if not files:
        raise WitError("no embeddings to load")
    # pass 1: everything but the vectors (a few hundred bytes per image), sorted in Arrow
    meta_cols = ["key", "uid", "shard", "width", "height", "status"]
    meta = pa.concat_tables([pq.read_table(f, columns=meta_cols) for f in files])
    order = pc.sort_indices(meta, sort_keys=[("key", "ascending"), ("shard", "ascending"),
                                             ("uid", "ascending")]).to_numpy().astype(np.int64)
    meta = meta.take(pa.array(order))
    key = np.array(meta.column("key").to_pylist(), dtype=object)
    uid = np.array(meta.column("uid").to_pylist(), dtype=object)
    shard = np.array(meta.column("shard").to_pylist(), dtype=object)
    status = np.array(meta.column("status").to_pylist(), dtype=object)
    width = np.array(meta.column("width").fill_null(-1).to_numpy(), dtype=np.int64)
    height = np.array(meta.column("height").fill_null(-1).to_numpy(), dtype=np.int64)
    ok = status == "ok"
    del meta
    # pass 2: one file's vectors at a time, straight into their sorted rows of one array
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))           # input row -> sorted row
    ok_slot = np.cumsum(ok) - 1                    # sorted row -> row of `vectors`
    vectors, start = None, 0
    for f in files:
        col = pq.read_table(f, columns=["embedding"]).column("embedding").combine_chunks()
        rows = np.arange(start, start + len(col))
        start += len(col)
        valid = ok[rank[rows]]
        if not valid.any():
            continue
        taken = col.filter(pa.array(valid))
        flat = taken.flatten().to_numpy(zero_copy_only=False)
        dim = len(flat) // len(taken)
        if dim * len(taken) != len(flat) or (vectors is not None and vectors.shape[1] != dim):
            raise WitError(f"embedding files {files[:3]} mix embedding sizes")
        if vectors is None:
            vectors = np.empty((int(ok.sum()), dim), np.float32)
        vectors[ok_slot[rank[rows[valid]]]] = flat.reshape(len(taken), dim)
    if vectors is None:
        vectors = np.zeros((0, 0), np.float32)
    return Embeddings(key, uid, shard, width, height, status, vectors, ok)


