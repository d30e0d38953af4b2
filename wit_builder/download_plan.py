"""How `wit download` turns balanced pairs into download shards: one sample per image URL, cut
into shards of at most ``samples_per_shard`` samples, whatever the inputs' partitioning.

The rules (pure functions here; the runners only move data between them):

* **One sample per URL.** The pairs that share a URL become one sample. It keeps the caption
  (``text``), ``uid`` and ``page_url`` of the pair with the smallest ``uid``: uid is a hash of
  (url, text), so this is a pseudo-random choice among the URL's captions that favours no kind
  of text, and the same whatever the order in which pairs arrive. ``query_ids`` is the sorted
  union of the pairs' query ids (null if no pair had any). ``pairs`` counts the input pairs
  merged, ``other_texts`` holds the captions of up to :data:`MAX_OTHER_TEXTS` other pairs (the next
  smallest uids, distinct, in uid order). An accumulator keeps the smallest uids only, so a URL
  with a million captions costs as much as one with 17 (associative and commutative: a Beam
  ``CombineFn`` or a dict give the same sample).
* **Order and shards.** Samples are ordered by (sha256(url), url): a hash order, so one site's
  images are spread over every shard rather than fetched by one worker at once. The ordered
  samples are cut every ``samples_per_shard``: shard ``k`` holds samples ``k*S .. k*S+S-1``, so
  every shard but the last is full. A Beam runner computes the same order without one sorted
  list: URLs go to :func:`range_partition` (ranges of the hash: partition order = sample
  order), each partition is sorted on its own, and a partition's first rank is the number of
  samples in the partitions before it (:func:`partition_offsets`).
* **Files.** Shard ``NNNNN``'s samples are written (atomically) to ``IMAGES/_wit/input/NNNNN.parquet``
  with :data:`PART_SCHEMA`, which img2dataset reads as one shard; ``IMAGES/_wit/parts.json``,
  written last, lists them (:func:`write_manifest`) and marks the planning done.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from wit_builder.core import WitError, atomic_write_json, atomic_write_parquet, open_read, read_json_or_none
from wit_builder.download_layout import OOM_SHARD_COUNT, WORK, shard_name

__all__ = ["SAMPLES_PER_SHARD", "MAX_OTHER_TEXTS", "PART_SCHEMA", "PART_COLUMNS", "PlanJob", "Sample",
           "pair_uid", "sample_order", "range_partition", "partition_offsets", "read_pairs",
           "samples_in_memory", "cut", "part_path", "write_part", "write_manifest", "read_manifest",
           "plan_in_memory", "plan_digest"]

SAMPLES_PER_SHARD = 10_000     # img2dataset's number_sample_per_shard default
MAX_OTHER_TEXTS = 16           # captions of other pairs kept per sample (other_texts)
PART_SCHEMA = pa.schema([
    ("url", pa.string()), ("text", pa.string()), ("uid", pa.string()), ("query_ids", pa.list_(pa.int32())),
    ("page_url", pa.string()), ("pairs", pa.int32()), ("other_texts", pa.list_(pa.string())),
])
PART_COLUMNS = ["uid", "query_ids", "page_url", "pairs", "other_texts"]  # carried by img2dataset
INPUT = "input"                # IMAGES/_wit/input/NNNNN.parquet
MANIFEST = "parts.json"        # IMAGES/_wit/parts.json


@dataclass
class PlanJob:
    """What a planner reads and writes: ``units`` are (input parquet, row group) pairs,
    ``columns`` the optional columns the inputs have, ``digest`` names the plan in the manifest."""
    out: str
    units: list
    columns: list[str]
    samples_per_shard: int
    partitions: int
    digest: str
    url_col: str = "url"       # the inputs' URL and caption columns (--url-col, --caption-col)
    caption_col: str = "text"


def pair_uid(url: str, text: str | None) -> str:
    """docs/schemas.md's uid: the first 16 bytes of sha256(url + "\\n" + text), hex."""
    return hashlib.sha256(f"{url}\n{text or ''}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _url_hash(url: str) -> bytes:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).digest()


def sample_order(url: str) -> tuple[bytes, str]:
    """The order of samples in the download: by sha256 of the URL (the URL breaks ties)."""
    return _url_hash(url), url


def range_partition(url: str, partitions: int) -> int:
    """Which of ``partitions`` hash ranges ``url`` falls in; lower partitions come first in
    :func:`sample_order`."""
    return (int.from_bytes(_url_hash(url)[:8], "big") * partitions) >> 64


def partition_offsets(sizes) -> dict[int, int]:
    """{partition: rank of its first sample} from (partition, samples) pairs."""
    offsets, total = {}, 0
    for part, n in sorted(sizes):
        offsets[part] = total
        total += n
    return offsets


def cut(rank: int, samples_per_shard: int) -> tuple[int, int]:
    """(shard, row in shard) of the sample with this rank in :func:`sample_order`."""
    return divmod(rank, samples_per_shard)


# --------------------------------------------------------------------------------------------
# one sample per URL
# --------------------------------------------------------------------------------------------
def _candidate(uid, text, page_url) -> tuple:
    """A pair's caption fields as a fully ordered tuple (None sorts apart from "")."""
    return (uid, text is None, text or "", page_url is None, page_url or "")


class Sample:
    """The pairs of one URL seen so far (a CombineFn accumulator): the :data:`MAX_OTHER_TEXTS` + 1
    candidates with the smallest uids, the union of query ids and the number of pairs."""

    __slots__ = ("candidates", "query_ids", "pairs")
    KEEP = MAX_OTHER_TEXTS + 1

    def __init__(self):
        self.candidates: list[tuple] = []
        self.query_ids: set[int] | None = None
        self.pairs = 0

    def add(self, uid: str, text: str | None, page_url: str | None, query_ids) -> "Sample":
        """Add one pair (``query_ids``: a list, or None when the pair has none)."""
        self._keep([_candidate(uid, text, page_url)])
        if query_ids is not None:
            self.query_ids = (self.query_ids or set()) | {int(q) for q in query_ids}
        self.pairs += 1
        return self

    def merge(self, other: "Sample") -> "Sample":
        self._keep(other.candidates)
        if other.query_ids is not None:
            self.query_ids = (self.query_ids or set()) | other.query_ids
        self.pairs += other.pairs
        return self

    def _keep(self, more: list[tuple]) -> None:
        # the KEEP smallest of a set: the same after any order of adds and merges
        self.candidates = sorted(set(self.candidates).union(more))[:self.KEEP]

    def row(self, url: str) -> dict:
        """The sample as a row of :data:`PART_SCHEMA`."""
        uid, no_text, text, no_page, page = self.candidates[0]
        text = None if no_text else text
        others: list[str] = []
        for c in self.candidates[1:]:
            if not c[1] and c[2] != text and c[2] not in others:
                others.append(c[2])
        return {"url": url, "text": text, "uid": uid,
                "query_ids": sorted(self.query_ids) if self.query_ids is not None else None,
                "page_url": None if no_page else page, "pairs": self.pairs,
                "other_texts": others[:MAX_OTHER_TEXTS]}


def read_pairs(path: str, row_group: int | None, columns: list[str], url_col: str = "url",
               caption_col: str = "text"):
    """(url, (uid, text, page_url, query_ids)) of each pair in an input parquet (one row group,
    or all with None), its URL and caption read from ``url_col`` and ``caption_col``; the uid is
    the input's (as a string: DataComp's hex uid) or, without one, :func:`pair_uid`; rows without
    a URL are skipped."""
    optional = [c for c in ("uid", "page_url", "query_ids") if c in columns and c not in (url_col, caption_col)]
    with open_read(path) as fh:
        pf = pq.ParquetFile(fh)
        names = [url_col, caption_col, *optional]
        groups = range(pf.num_row_groups) if row_group is None else [row_group]
        for g in groups:
            table = pf.read_row_group(g, columns=names)
            cols = {n: table.column(n).to_pylist() for n in names}
            n = table.num_rows
            uids, pages, qids = (cols.get(c, [None] * n) for c in ("uid", "page_url", "query_ids"))
            for url, text, uid, page, q in zip(cols[url_col], cols[caption_col], uids, pages, qids):
                if url:
                    url, text = str(url), None if text is None else str(text)
                    yield url, (pair_uid(url, text) if uid is None or uid == "" else str(uid), text, page, q)


def samples_in_memory(job: PlanJob) -> list[dict]:
    """Every sample of ``job``'s inputs, in :func:`sample_order` (one machine's memory)."""
    by_url: dict[str, Sample] = {}
    for path, group in job.units:
        for url, pair in read_pairs(path, group, job.columns, job.url_col, job.caption_col):
            sample = by_url.get(url)
            if sample is None:
                sample = by_url[url] = Sample()
            sample.add(*pair)
    return [by_url[u].row(u) for u in sorted(by_url, key=sample_order)]


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def part_path(out: str, shard: int) -> str:
    return f"{out}/{WORK}/{INPUT}/{shard_name(shard)}.parquet"


def write_part(out: str, shard: int, rows: list[dict]) -> tuple[int, int, int]:
    """Write shard ``shard``'s samples (in order) atomically; (shard, samples, pairs)."""
    if shard >= 10 ** OOM_SHARD_COUNT:
        raise WitError(f"the download needs more than {10 ** OOM_SHARD_COUNT:,} shards; "
                       "raise --samples-per-shard")
    atomic_write_parquet(part_path(out, shard), pa.Table.from_pylist(rows, schema=PART_SCHEMA))
    return shard, len(rows), sum(r["pairs"] for r in rows)


def write_manifest(out: str, digest: str, parts) -> dict:
    """``_wit/parts.json`` (written last: the planning is done): the parts and the counts."""
    parts = sorted(parts)
    if [p[0] for p in parts] != list(range(len(parts))):
        raise WitError(f"planning {out} wrote shards {[p[0] for p in parts][:10]}..., not 0..{len(parts) - 1}")
    manifest = {"plan": digest, "parts": [list(p) for p in parts],
                "samples": sum(p[1] for p in parts), "pairs": sum(p[2] for p in parts)}
    atomic_write_json(f"{out}/{WORK}/{MANIFEST}", manifest)
    return manifest


def read_manifest(out: str, digest: str) -> dict | None:
    """The manifest of a finished planning of plan ``digest``, or None."""
    manifest = read_json_or_none(f"{out}/{WORK}/{MANIFEST}")
    if isinstance(manifest, dict) and manifest.get("plan") == digest and manifest.get("parts"):
        return manifest
    return None


def plan_in_memory(job: PlanJob) -> dict:
    """The planner of the local runner: :func:`samples_in_memory`, cut and written."""
    samples = samples_in_memory(job)
    S = job.samples_per_shard
    parts = [write_part(job.out, k, samples[k * S:(k + 1) * S]) for k in range(-(-len(samples) // S))]
    return write_manifest(job.out, job.digest, parts)


def plan_digest(plan: dict) -> str:
    """A short name of a plan (plan.json's content) for the manifest."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:32]
