"""Final training shards: successful, deduplicated images as WebDataset tars + Parquet metadata.

The stage (driven by ``pipelines/shards.py``, one Beam element per download shard, then per
output shard, each with only its download shards' dedup decisions) reads the shards of
``wit download`` (``IMAGES/NNNNN.tar`` + ``NNNNN.parquet``, finished ones: ``NNNNN_stats.json``
present), keeps the rows whose ``status`` is ``success`` and whose image is in the tar, drops
those that ``DEDUP/decisions.parquet`` (``wit dedup run``) marks ``kept = False``, and writes

* ``OUT/NNNNN.tar``: samples in key order, ``KEY.jpg`` (the downloaded bytes, unchanged),
  ``KEY.txt`` (the caption), ``KEY.json`` (uid, url, text, query_ids, sha256, width, height,
  original_width, original_height, cluster_id, cluster_size, key, page_url). Tar members have
  a fixed mtime, owner and mode, so the same inputs give byte-identical shards;
* ``OUT/NNNNN.parquet``: the same metadata, one row per sample (plus ``key``);
* ``OUT/NNNNN_stats.json``: img2dataset's per-shard stats (``count``, ``successes``, ...), which
  DataComp's resharder reads for each input shard's size (``successes``) and img2dataset's own
  logger sums; ``shard_digits`` (default 5) gives the names' width, 8 for DataComp's
  ``00000000.tar``;
* ``OUT/sizes.json``: ``{"NNNNN.tar": samples}`` (OpenCLIP's ``get_dataset_size`` reads it);
* ``OUT/manifest.json``: per shard name, samples, bytes and sha256 of the tar and the parquet,
  first/last key; totals (kept, dropped by dedup, ...); inputs. Written last: its presence
  means the set is complete.

Every file is written under a temporary name and renamed (``atomic_open``). The manifest of an
earlier run is removed first and stale ``NNNNN.tar``/``.parquet`` beyond the new set are removed
before the new manifest appears, so ``OUT/{00000..N}.tar`` is always exactly the set the
manifest lists. Keys are the download keys (9 digits: 5 for the download shard, 4 for the row),
unique across the set; the output shard number is independent of them.

The dedup decisions are never loaded whole: the launcher reads the footer of
``decisions.parquet`` (:func:`open_decisions`); the workers read it one row group at a time,
batch by batch (:func:`read_decision_group`), send each row to the download shard whose name
begins its key (:class:`ShardRouter`), and a download shard's step gets its own rows only
(:func:`shard_decisions`). Rows whose key is in no finished download shard are left out (the
manifest's ``inputs.decisions`` is the table's row count).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from wit_builder import records
from wit_builder.core import WitError, atomic_open, atomic_write_json, filesystem, remove_temporaries
from wit_builder.imageshards import ImageRef, index_shard
from wit_builder.schemas import SHARD_JSON_FIELDS, SHARD_SCHEMA

__all__ = ["ShardsConfig", "start_shards", "count_kept", "assign_output_shards", "write_output_shard",
           "finish_shards", "remove_folder", "open_decisions", "DecisionsFile", "ShardRouter", "read_decision_group",
           "shard_decisions", "find_image_shards", "SHARD_SCHEMA", "train_data_pattern", "shard_stats",
           "output_shard_name"]

IMAGE_EXTS = ("jpg", "png", "webp")
MTIME = 946684800  # 2000-01-01: a fixed member time keeps the tars reproducible



def _download_plan(fs, root: str) -> dict:
    """``IMAGES/_wit/plan.json`` of `wit download` ({} when absent or unreadable)."""
    try:
        with fs.open(f"{root}/_wit/plan.json", "r") as fh:
            plan = json.load(fh)
    except (FileNotFoundError, ValueError):
        return {}
    return plan if isinstance(plan, dict) else {}


def find_image_shards(images: str, allow_incomplete: bool = False) -> list[str]:
    """Names (``00000``...) of the finished download shards in ``images``, sorted."""
    fs, root = filesystem(images)
    if not fs.isdir(root):
        raise WitError(f"--images {images}: not a directory")
    plan = _download_plan(fs, root)
    fmt = plan.get("output_format", "webdataset")
    if fmt != "webdataset":
        raise WitError(f"--images {images}: a `wit download --output-format {fmt}` download; wit shards, "
                       "wit balance --pool and wit dedup read WebDataset downloads only (NNNNN.tar): "
                       "download again with --output-format webdataset")
    names = {os.path.basename(p) for p in fs.ls(root, detail=False)}
    done = sorted(m.group(1) for n in names if (m := re.fullmatch(r"(\d+)_stats\.json", n))
                  and f"{m.group(1)}.tar" in names and f"{m.group(1)}.parquet" in names)
    try:
        planned = len(plan["inputs"])
    except (KeyError, TypeError):
        planned = None
    if planned is not None and len(done) < planned and not allow_incomplete:
        raise WitError(f"--images {images}: only {len(done)} of {planned} download shards are finished; "
                       "re-run the same `wit download` command to finish them (or pass --allow-incomplete)")
    if not done:
        raise WitError(f"--images {images}: no finished download shards (NNNNN.tar + .parquet + _stats.json)")
    if not allow_incomplete:
        records.verify_inputs([f"{images.rstrip('/')}/{n}.{ext}" for n in done for ext in ("tar", "parquet")],
                              "--images")
    return done


@dataclass(slots=True)
class Decision:
    uid: str | None
    kept: bool
    cluster_id: int | None
    cluster_size: int | None


DECISION_COLUMNS = ("key", "uid", "kept", "cluster_id", "cluster_size")
DECISION_BATCH = 65_536   # rows of the decisions table decoded at a time


@dataclass(frozen=True)
class DecisionsFile:
    """``DEDUP/decisions.parquet`` as its footer describes it: all the launcher reads of it."""
    dedup: str          # --dedup as given (for messages)
    path: str
    rows: int
    row_groups: int


def open_decisions(dedup: str) -> DecisionsFile:
    """Check ``DEDUP/decisions.parquet`` (``dedup`` is the folder or the file) from its footer
    alone: a finished run's output, a parquet file, the decision columns. One-line errors."""
    path = dedup if dedup.endswith(".parquet") else dedup.rstrip("/") + "/decisions.parquet"
    fs, p = filesystem(path)
    if fs.exists(p):
        records.verify_inputs([path], "--dedup")
    try:
        with fs.open(p, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
            columns = set(meta.schema.to_arrow_schema().names)
    except FileNotFoundError:
        raise WitError(f"--dedup {dedup}: {path} not found (run `wit dedup run` first)") from None
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise WitError(f"--dedup {dedup}: {path} is not a decisions table: {exc}") from None
    missing = [c for c in DECISION_COLUMNS if c not in columns]
    if missing:
        raise WitError(f"--dedup {dedup}: {path} is not a decisions table (no {', '.join(missing)} column)")
    return DecisionsFile(dedup, path, meta.num_rows, meta.num_row_groups)


class ShardRouter:
    """Key -> the download shards (among ``names``) whose name begins it: a download key is its
    shard's name followed by the row digits (img2dataset's rule)."""

    def __init__(self, names):
        self.names = frozenset(names)
        self.lengths = sorted({len(n) for n in self.names})

    def __call__(self, key: str) -> list[str]:
        return [key[:n] for n in self.lengths if len(key) > n and key[:n] in self.names]


def read_decision_group(decisions: DecisionsFile, row_group: int, route: ShardRouter) -> Iterator[tuple[str, list]]:
    """Row group ``row_group`` of the decisions, decoded a batch at a time, as ``(download shard,
    [(key, uid, kept, cluster_id, cluster_size), ...])`` fragments; rows whose key is in no
    download shard are left out."""
    fs, p = filesystem(decisions.path)
    try:
        with fs.open(p, "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=DECISION_BATCH, row_groups=[row_group],
                                                          columns=list(DECISION_COLUMNS)):
                fragments: dict[str, list] = {}
                for row in zip(*(batch.column(c).to_pylist() for c in DECISION_COLUMNS)):
                    if row[0] is None:
                        continue
                    for name in route(row[0]):
                        fragments.setdefault(name, []).append(row)
                yield from sorted(fragments.items())
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise WitError(f"--dedup {decisions.dedup}: {decisions.path} is not a decisions table: {exc}") from None


def shard_decisions(decisions: DecisionsFile, fragments) -> dict[str, Decision]:
    """One download shard's decisions, key -> Decision, from its fragments (in any order)."""
    out: dict[str, Decision] = {}
    twice = []
    for rows in fragments:
        for key, uid, kept, cid, csize in rows:
            if key in out:
                twice.append(key)
            out[key] = Decision(uid, bool(kept), cid, csize)
    if twice:  # the smallest such key: the same message whatever order the fragments came in
        raise WitError(f"--dedup {decisions.dedup}: key {min(twice)} appears twice in {decisions.path}")
    return out


class _HashingWriter(io.RawIOBase):
    """Pass-through writer that counts bytes and computes sha256."""

    def __init__(self, fh):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # tarfile asks where it starts
        return self.size

    def write(self, data) -> int:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = 0o444
    info.uname = info.gname = "wit"
    tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class ShardsConfig:
    """What ``wit shards`` reads and writes."""
    images: str                      # `wit download` output folder
    out: str
    dedup: str | None = None         # `wit dedup run` folder or its decisions.parquet
    samples_per_shard: int = 10_000
    allow_incomplete: bool = False
    shard_digits: int = 5            # output names: 00000.tar; 8 = DataComp's 00000000.tar

    def __post_init__(self):
        if self.samples_per_shard <= 0:
            raise WitError("--samples-per-shard must be positive")
        if not 5 <= self.shard_digits <= 12:
            raise WitError(f"--shard-digits {self.shard_digits}: choose 5 to 12 (DataComp's names have 8)")


def _shard_samples(images: str, name: str, decisions: dict[str, Decision] | None, counts: Counter,
                   with_images: bool = True, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Successful, kept samples ``start:stop`` of download shard ``name``, in key order, each with
    its image bytes (``with_images``) or only its metadata; skips are counted in ``counts``."""
    fs, root = filesystem(images)
    with fs.open(f"{root}/{name}.parquet", "rb") as fh:
        table = pq.read_table(fh)
    rows = table.to_pylist()
    counts["download_rows"] += len(rows)
    ok = sorted((r for r in rows if r.get("status") == "success"), key=lambda r: r["key"])
    counts["download_failed"] += len(rows) - len(ok)
    refs, broken = index_shard(f"{images.rstrip('/')}/{name}.tar")
    # a tar cut short gives its whole images; the ones it lost count as missing_in_tar
    counts["truncated_tar"] += broken
    members = {r.key: r for r in refs if r.ext in IMAGE_EXTS}
    with fs.open(f"{root}/{name}.tar", "rb") as fh:
        index, last_key = -1, None
        for row in ok:
            key = row["key"]
            if last_key is not None and key <= last_key:
                raise WitError(f"--images {images}: key {key} appears twice in shard {name}")
            last_key = key
            if decisions is not None and not key.startswith(name):
                raise WitError(f"--images {images}: key {key} of shard {name} does not begin with the shard's "
                               "name, which --dedup's decisions are joined by")
            if key not in members:
                counts["missing_in_tar"] += 1
                continue
            decision = decisions.get(key) if decisions is not None else None
            if decisions is not None:
                if decision is None:
                    counts["not_in_dedup"] += 1
                elif decision.uid is not None and row.get("uid") is not None and decision.uid != row["uid"]:
                    raise WitError(f"--dedup: key {key} has uid {decision.uid} in the decisions but "
                                   f"{row['uid']} in {images}/{name}.parquet: decisions of another download?")
                elif not decision.kept:
                    counts["dropped_by_dedup"] += 1
                    if decision.cluster_id == -1:
                        counts["dropped_undecodable"] += 1
                    continue
            ref = members[key]
            if not _image_readable(fh, ref):
                counts["bad_image"] += 1
                continue
            index += 1
            if index < start or (stop is not None and index >= stop):
                continue
            yield {
                "key": key, "ext": ref.ext, "image": _read(fh, ref) if with_images else None,
                "uid": row.get("uid"), "url": row.get("url"), "text": row.get("caption"),
                "query_ids": row.get("query_ids"), "sha256": row.get("sha256"),
                "width": row.get("width"), "height": row.get("height"),
                "original_width": row.get("original_width"), "original_height": row.get("original_height"),
                "cluster_id": decision.cluster_id if decision else None,
                "cluster_size": decision.cluster_size if decision else None,
                "page_url": row.get("page_url"),
            }


def _read(fh, ref: ImageRef, limit: int | None = None) -> bytes:
    fh.seek(ref.offset)
    return fh.read(ref.size if limit is None else min(limit, ref.size))


def _image_readable(fh, ref: ImageRef, head: int = 65536) -> bool:
    """A cheap check that an image will decode: not empty, and Pillow reads a valid size from its
    header (no pixels decoded; the whole file is read only when the header lies beyond ``head``)."""
    import warnings

    from PIL import Image
    if ref.size == 0:
        return False
    for data in (_read(fh, ref, head), None):
        if data is None:
            if ref.size <= head:
                return False
            data = _read(fh, ref)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(data)) as im:
                    width, height = im.size
            return width > 0 and height > 0
        except Exception:  # noqa: BLE001 - any failure to read a header means "not an image"
            continue
    return False


def count_kept(images: str, name: str, decisions: dict[str, Decision] | None) -> dict:
    """One download shard's plan: how many samples it gives, the first and last key of its
    successful rows, its counts; or ``{"name", "error"}`` (a one-line reason) for a bad shard."""
    fs, root = filesystem(images)
    try:
        counts: Counter = Counter()
        kept = sum(1 for _ in _shard_samples(images, name, decisions, counts, with_images=False))
        with fs.open(f"{root}/{name}.parquet", "rb") as fh:
            table = pq.read_table(fh, columns=["key", "status"])
    except WitError as exc:
        return {"name": name, "error": str(exc)}
    keys = sorted(k for k, st in zip(table.column("key").to_pylist(), table.column("status").to_pylist())
                  if st == "success")
    return {"name": name, "kept": kept, "first_key": keys[0] if keys else None,
            "last_key": keys[-1] if keys else None, "counts": dict(counts)}


def assign_output_shards(plans: list[dict], samples_per_shard: int, images: str) -> list[tuple[int, list]]:
    """Download shards' plans (any order) -> output shards as ``(index, [(name, start, stop)])``:
    the kept samples of all download shards in key order, cut every ``samples_per_shard``.
    Download shards whose keys overlap are an error."""
    plans = sorted(plans, key=lambda p: p["name"])
    for p in plans:
        if "error" in p:
            raise WitError(p["error"])
    last_key, last_name = "", None
    for p in plans:
        if p["first_key"] is not None and p["first_key"] <= last_key:
            raise WitError(f"--images {images}: key {p['first_key']} of shard {p['name']} is not after "
                           f"{last_key} (shard {last_name}); download shards overlap")
        if p["last_key"] is not None:
            last_key, last_name = p["last_key"], p["name"]
    if not sum(p["kept"] for p in plans):
        counts: Counter = Counter()
        for p in plans:
            counts.update(p["counts"])
        raise WitError(f"no images left to write from {images} "
                       f"({counts['download_rows']} rows, {counts['dropped_by_dedup']} dropped by dedup)")
    out, current, filled = [], [], 0
    for p in plans:
        start = 0
        while start < p["kept"]:
            take = min(samples_per_shard - filled, p["kept"] - start)
            current.append((p["name"], start, start + take))
            start += take
            filled += take
            if filled == samples_per_shard:
                out.append((len(out), current))
                current, filled = [], 0
    if current:
        out.append((len(out), current))
    return out


def write_output_shard(cfg: ShardsConfig, index: int, ranges: list,
                       decisions: dict[str, dict[str, Decision]] | None) -> dict:
    """Write output shard ``index`` from its ``(download shard, start, stop)`` ranges;
    ``decisions``: download shard -> its decisions (those of the ranges' shards suffice)."""
    samples: list[dict] = []
    for name, start, stop in ranges:
        samples.extend(_shard_samples(cfg.images, name, decisions.get(name, {}) if decisions is not None else None,
                                      Counter(), start=start, stop=stop))
    return _write_shard(cfg.out.rstrip("/"), index, samples, cfg.shard_digits)


def output_shard_name(index: int, digits: int = 5) -> str:
    """Output shard ``index``'s name (``00000``; ``00000000`` with 8 digits, DataComp's)."""
    if index >= 10 ** digits:
        raise WitError(f"output shard {index} does not fit in --shard-digits {digits}; raise it")
    return f"{index:0{digits}d}"


def shard_stats(samples: int, start_time: float, end_time: float) -> dict:
    """``NNNNN_stats.json`` of an output shard: img2dataset's per-shard stats fields (every sample
    of a final shard is a success)."""
    return {"count": samples, "successes": samples, "failed_to_download": 0, "failed_to_resize": 0,
            "duration": end_time - start_time, "start_time": start_time, "end_time": end_time,
            "status_dict": {"success": samples}}


def _write_shard(out: str, index: int, samples: list[dict], digits: int = 5) -> dict:
    import time
    started = time.time()
    name = output_shard_name(index, digits)
    with atomic_open(f"{out}/{name}.tar", "wb") as fh:
        hashing = _HashingWriter(fh)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples:
                meta = {k: s[k] for k in SHARD_JSON_FIELDS}
                _add_member(tar, f"{s['key']}.{s['ext']}", s["image"])
                _add_member(tar, f"{s['key']}.txt", (s["text"] or "").encode("utf-8"))
                _add_member(tar, f"{s['key']}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    table = pa.Table.from_pylist([{k: s[k] for k in SHARD_SCHEMA.names} for s in samples], schema=SHARD_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    with atomic_open(f"{out}/{name}.parquet", "wb") as fh:
        fh.write(data)
    atomic_write_json(f"{out}/{name}_stats.json", shard_stats(len(samples), started, time.time()))
    return {"name": name, "tar": f"{name}.tar", "parquet": f"{name}.parquet", "stats": f"{name}_stats.json",
            "samples": len(samples),
            "tar_bytes": hashing.size, "tar_sha256": hashing.sha.hexdigest(),
            "parquet_bytes": len(data), "parquet_sha256": hashlib.sha256(data).hexdigest(),
            "first_key": samples[0]["key"], "last_key": samples[-1]["key"]}


def train_data_pattern(out: str, shards: int, digits: int = 5) -> str:
    """OpenCLIP's --train-data brace pattern for ``shards`` shards in ``out``."""
    return f"{out.rstrip('/')}/{{{0:0{digits}d}..{shards - 1:0{digits}d}}}.tar"


def finish_shards(cfg: ShardsConfig, shards: list[dict], plans: list[dict], decisions: int | None) -> dict:
    """Remove shards an earlier, larger run left, write sizes.json, then manifest.json (last)."""
    out = cfg.out.rstrip("/")
    fs, root = filesystem(out)
    shards = sorted(shards, key=lambda s: s["name"])
    counts: Counter = Counter()
    for p in plans:
        counts.update(p["counts"])
    keep = {f"{s['name']}{ext}" for s in shards for ext in (".tar", ".parquet", "_stats.json")}
    for path in fs.ls(root, detail=False):
        base = os.path.basename(path)
        if re.fullmatch(r"\d{5,12}(\.tar|\.parquet|_stats\.json)", base) and base not in keep:
            fs.rm(path)  # left by an earlier run with more shards
    atomic_write_json(f"{out}/sizes.json", {s["tar"]: s["samples"] for s in shards})
    deduped = decisions is not None
    manifest = {
        "format": "wit-shards/1",
        "shards": shards,
        "totals": {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "tar_bytes": sum(s["tar_bytes"] for s in shards),
            "download_rows": counts["download_rows"],
            "download_failed": counts["download_failed"],
            "missing_in_tar": counts["missing_in_tar"],
            "bad_image": counts["bad_image"],
            "truncated_tar": counts["truncated_tar"],
            "dropped_by_dedup": counts["dropped_by_dedup"] if deduped else None,
            "dropped_undecodable": counts["dropped_undecodable"] if deduped else None,
            "not_in_dedup": counts["not_in_dedup"] if deduped else None,
        },
        "samples_per_shard": cfg.samples_per_shard,
        "train_data": train_data_pattern(out, len(shards), cfg.shard_digits),
        "inputs": {"images": cfg.images, "image_shards": sorted(p["name"] for p in plans), "dedup": cfg.dedup,
                   "decisions": decisions},
    }
    atomic_write_json(f"{out}/manifest.json", manifest)
    records.complete_folder(out, "shards", inputs=[f"{cfg.images.rstrip('/')}/{p['name']}.tar" for p in plans],
                            counts={"shards": len(shards), "samples": manifest["totals"]["samples"]})
    return manifest


def remove_folder(path: str) -> None:
    """Remove a work folder and everything in it (missing is fine)."""
    fs, root = filesystem(path)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def start_shards(cfg: ShardsConfig) -> tuple[list[str], DecisionsFile | None]:
    """Check the inputs and remove an earlier manifest (a half-rewritten set must never look
    complete); returns the finished download shards' names and the decisions file (its footer
    only: a missing or broken table fails here; its rows are read on the workers)."""
    names = find_image_shards(cfg.images, cfg.allow_incomplete)
    decisions = open_decisions(cfg.dedup) if cfg.dedup else None
    fs, root = filesystem(cfg.out.rstrip("/"))
    fs.makedirs(root, exist_ok=True)
    records.begin(cfg.out, "shards")
    remove_temporaries(cfg.out, r"\d{5,12}(\.tar|\.parquet|_stats\.json)|sizes\.json|manifest\.json",
                       folders=r"\.wit-work-[0-9a-f]+")
    if fs.exists(f"{root}/manifest.json"):
        fs.rm(f"{root}/manifest.json")
    return names, decisions
