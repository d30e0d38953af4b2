"""``wit dedup overlap``: which examples of evaluation sets have a near-duplicate in the training
shards (CLIP section 5), optionally the training images to drop for them, and a model's accuracy
on the All / Overlap / Clean subsets (:func:`subset_accuracy`, :func:`add_accuracy`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from wit_builder import records
from wit_builder.core import WitError, atomic_write_json, atomic_write_parquet, exists, expand_shards, is_local
from wit_builder.dedup import EmbedFn, resolve_threshold, skip_counts, build_index, search
from wit_builder.embeddings import embed_records, iter_image_files, load_embeddings


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


OVERLAP_SCHEMA = pa.schema([("eval_set", pa.string()), ("id", pa.string()), ("uid", pa.string()),
                            ("overlap", pa.bool_()), ("max_similarity", pa.float32()),
                            ("nearest_train_key", pa.string()), ("nearest_train_uid", pa.string())])


def _embed_eval_set(cfg: OverlapConfig, name: str, path: str, embed: EmbedFn):
    """Embeddings of one eval set: a folder of images (embedded here) or shards (``embed``)."""
    emb_dir = os.path.join(cfg.out, "embeddings", name)
    if is_local(path) and os.path.isdir(path) and not any(f.endswith(".tar") for f in os.listdir(path)):
        from wit_builder.detector import Embedder
        embedder = Embedder(cfg.detector, threads=cfg.threads)
        table = embed_records(embedder, iter_image_files(path), path, cfg.batch_size)
        table = table.replace_schema_metadata({"detector_fingerprint": embedder.fingerprint})
        f = os.path.join(emb_dir, "images.parquet")
        atomic_write_parquet(f, table)
        return load_embeddings([f])
    return load_embeddings(embed(expand_shards(path, f"--eval {name}"), emb_dir))


def _eval_set_rows(name: str, ev, train, train_ok_rows: np.ndarray, r: dict) -> list[dict]:
    """overlap.parquet rows of one eval set: embedded examples, then the undecodable ones."""
    rows = []
    ok_rows = np.nonzero(ev.ok)[0]
    for j, row in enumerate(ok_rows):
        nn = int(r["eval_nearest"][j])
        t_row = train_ok_rows[nn] if nn >= 0 else None
        rows.append({"eval_set": name, "id": ev.key[row], "uid": ev.uid[row], "overlap": bool(r["eval_overlap"][j]),
                     "max_similarity": float(r["eval_max"][j]) if np.isfinite(r["eval_max"][j]) else None,
                     "nearest_train_key": None if t_row is None else train.key[t_row],
                     "nearest_train_uid": None if t_row is None else train.uid[t_row]})
    for row in np.nonzero(~ev.ok & ev.is_sample())[0]:
        rows.append({"eval_set": name, "id": ev.key[row], "uid": ev.uid[row], "overlap": None,
                     "max_similarity": None, "nearest_train_key": None, "nearest_train_uid": None})
    return rows


def _write_train_decisions(cfg: OverlapConfig, train, train_ok_rows: np.ndarray, train_overlap: np.ndarray,
                           train_max: np.ndarray) -> None:
    """OUT/decisions.parquet (kept = False for training images near an eval image, combined with
    ``cfg.decisions``) and OUT/train_overlapping.txt."""
    import pyarrow.parquet as pq

    from wit_builder.core import atomic_open
    n = len(train)
    kept = np.zeros(n, bool)
    kept[train_ok_rows] = ~train_overlap
    cluster = np.full(n, -1, np.int64)
    cluster[train_ok_rows] = np.arange(len(train_ok_rows))
    size = np.zeros(n, np.int32)
    size[train_ok_rows] = 1
    sim = np.full(n, np.nan, np.float32)
    sim[train_ok_rows] = np.where(np.isfinite(train_max), train_max, np.nan)
    if cfg.decisions:
        dpath = os.path.join(cfg.decisions, "decisions.parquet") if os.path.isdir(cfg.decisions) else cfg.decisions
        if not exists(dpath):
            raise WitError(f"--decisions {cfg.decisions!r}: {dpath} does not exist")
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
    }).filter(pa.array(train.is_sample()))
    atomic_write_parquet(os.path.join(cfg.out, "decisions.parquet"), table)
    with atomic_open(os.path.join(cfg.out, "train_overlapping.txt"), "w") as fh:
        fh.writelines(f"{train.key[i]}\t{train.uid[i]}\n" for i in train_ok_rows[train_overlap])


def run_overlap(cfg: OverlapConfig, embed: EmbedFn) -> dict:
    """``wit dedup overlap``: per eval set, which examples have a near-duplicate in the training
    shards (CLIP section 5). Writes OUT/summary.json, OUT/overlap.parquet, OUT/<set>.overlap.txt and
    OUT/<set>.clean.txt (ids: the webdataset key, or the relative file path for a folder of
    images); with ``drop_overlapping`` also OUT/decisions.parquet (all training images, kept =
    False for those near-duplicating any eval image, combined with ``decisions`` if given) and
    OUT/train_overlapping.txt."""
    from wit_builder.core import atomic_open

    out = cfg.out
    thr = resolve_threshold(cfg.threshold, cfg.detector)
    sets = [parse_eval_arg(a) for a in cfg.evals]
    names = [n for n, _ in sets]
    if len(set(names)) != len(names):
        raise WitError(f"--eval set names must be unique, got {names}; use NAME=PATH")
    if not sets:
        raise WitError("give at least one --eval")
    train_shards = records.verify_inputs(expand_shards(list(cfg.shards)), "--shards")
    train_files = embed(train_shards, cfg.train_embeddings or os.path.join(out, "embeddings", "_train"))
    train = load_embeddings(train_files)
    summary = {"threshold": thr, "train_images": int(len(train)), "train_embedded": int(train.ok.sum()),
               "train_skipped": skip_counts(train), "sets": {}}
    rows = []
    train_overlap = np.zeros(int(train.ok.sum()), bool)
    train_max = np.full(int(train.ok.sum()), -np.inf, np.float32)
    train_ok_rows = np.nonzero(train.ok)[0]
    for name, path in sets:
        ev = _embed_eval_set(cfg, name, path, embed)
        r = overlap_vectors(train.vectors, ev.vectors, thr, cfg.exact_below, cfg.nprobe,
                            train_side=cfg.drop_overlapping)
        if cfg.drop_overlapping:
            train_overlap |= r["train_overlap"]
            train_max = np.maximum(train_max, r["train_max"])
        rows.extend(_eval_set_rows(name, ev, train, train_ok_rows, r))
        ok_rows = np.nonzero(ev.ok)[0]
        overlap_ids = ev.key[ok_rows[r["eval_overlap"]]].tolist()
        clean_ids = ev.key[ok_rows[~r["eval_overlap"]]].tolist()
        for kind, ids in (("overlap", overlap_ids), ("clean", clean_ids)):
            with atomic_open(os.path.join(out, f"{name}.{kind}.txt"), "w") as fh:
                fh.writelines(f"{i}\n" for i in ids)
        n = len(ok_rows)
        summary["sets"][name] = {"path": path, "examples": int(len(ev)), "embedded": n, "skipped": skip_counts(ev),
                                 "overlap": len(overlap_ids), "clean": len(clean_ids),
                                 "overlap_fraction": (len(overlap_ids) / n) if n else None}
    atomic_write_parquet(os.path.join(out, "overlap.parquet"), pa.Table.from_pylist(rows, schema=OVERLAP_SCHEMA))
    if cfg.drop_overlapping:
        _write_train_decisions(cfg, train, train_ok_rows, train_overlap, train_max)
        summary["train_overlapping"] = int(train_overlap.sum())
        summary["decisions"] = os.path.join(out, "decisions.parquet")
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary


def _subset(hits: dict, ids: list[str]) -> dict:
    n = len(ids)
    return {"examples": n,
            "top1": sum(hits[i][0] for i in ids) / n if n else None,
            "top5": sum(hits[i][1] for i in ids) / n if n else None}


def subset_accuracy(hits: dict, overlap_ids, clean_ids) -> dict:
    """Accuracy on All / Overlap / Clean (CLIP section 5). ``hits`` maps an example id to
    (top-1 correct, top-5 correct); All is Overlap + Clean, over the examples that have both a
    prediction and an overlap decision (the others are counted under ``unmatched``).
    ``all_minus_clean_top1`` is the paper's measure of how much the overlap inflates accuracy."""
    overlap_set, clean_set = set(overlap_ids), set(clean_ids)
    both = overlap_set & clean_set
    if both:
        raise WitError(f"{len(both)} example id(s) are both overlapping and clean, e.g. {sorted(both)[0]!r}")
    overlap = sorted(i for i in overlap_set if i in hits)
    clean = sorted(i for i in clean_set if i in hits)
    out = {"all": _subset(hits, overlap + clean), "overlap": _subset(hits, overlap),
           "clean": _subset(hits, clean),
           "unmatched": {"no_prediction": len(overlap_set | clean_set) - len(overlap) - len(clean),
                         "no_overlap_decision": len(set(hits) - overlap_set - clean_set)}}
    a, c = out["all"]["top1"], out["clean"]["top1"]
    out["all_minus_clean_top1"] = a - c if a is not None and c is not None else None
    return out


def _read_ids(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh if line.rstrip("\n")]
    except OSError as exc:
        raise WitError(f"{path}: {exc.strerror or exc} (run `wit dedup overlap` first)") from None


def add_accuracy(out: str, name: str, hits: dict, skipped: dict | None = None) -> dict:
    """Accuracy of eval set ``name`` on All / Overlap / Clean from the OUT/<name>.overlap.txt and
    OUT/<name>.clean.txt lists :func:`run_overlap` wrote; stored under the set's ``accuracy`` in
    OUT/summary.json (rewritten) and returned."""
    import json
    acc = subset_accuracy(hits, _read_ids(os.path.join(out, f"{name}.overlap.txt")),
                          _read_ids(os.path.join(out, f"{name}.clean.txt")))
    if skipped is not None:
        acc["skipped"] = dict(skipped)   # examples the model could not read or label
    summary_path = os.path.join(out, "summary.json")
    try:
        with open(summary_path, encoding="utf-8") as fh:
            summary = json.load(fh)
        summary["sets"][name]["accuracy"] = acc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WitError(f"{summary_path}: cannot add the accuracy of set {name!r} ({exc})") from None
    atomic_write_json(summary_path, summary)
    return acc
