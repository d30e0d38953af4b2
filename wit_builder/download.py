"""Download balanced (url, text) pairs into img2dataset WebDataset shards, safely and resumably.

The engine is img2dataset (its reader, resizer, downloader, WebDataset writer and, locally, its
``download()``, whose multiprocessing distributor wit replaces with its own shard pool that
notices a dead worker: :mod:`wit_builder.download_local`). What this module adds around it:

* **Planning.** The pairs become one sample per image URL, ordered by a hash of the URL and cut
  into shards of at most ``samples_per_shard`` samples (:mod:`wit_builder.download_plan`: the
  rules; the local runner plans in memory, a Beam runner with ``PlanDownload``), whatever the
  number and sizes of the input parquets. Shard ``NNNNN``'s samples are written to
  ``IMAGES/_wit/input/NNNNN.parquet``, img2dataset's input. img2dataset's
  ``number_sample_per_shard`` is ``max(10000, samples_per_shard)``, so keys are its usual 9 digits
  (5 for the shard, 4 for the row) up to 10000 samples per shard. The plan is stored in
  ``IMAGES/_wit/plan.json``; re-running with other inputs or options is refused.
* **Our classes inside img2dataset.** ``download()`` looks its writer and logger-process classes
  up by name in ``img2dataset.main``; for the call we bind them to
  :class:`~wit_builder.download_worker.WitShardWriter` (installs the SSRF guard of
  :mod:`wit_builder.netsafety` in each worker before the shard's first request, writes the tar
  and parquet in a private folder and renames them into place, writes the stats file
  atomically, adds ``error_kind``, reports progress) and ``WitLoggerProcess``; both exit when
  their parent is killed. The Beam runner (``pipelines/download.py``) builds
  img2dataset's ``Downloader`` with the same writer, one element per shard.
* **Resume.** A shard is done when its ``NNNNN_stats.json`` (written last) parses with the right
  count and its tar and parquet exist. Before each run everything else of unfinished shards is
  deleted; img2dataset's ``incremental`` mode (local) or the DoFn (Beam) skips done shards. The
  planning is kept once ``_wit/parts.json`` is written (and is deterministic, so a redone
  planning gives the same shards and keys).
* **Summary.** Counts by status and error kind from the per-shard parquets, printed and written
  to ``IMAGES/_wit/summary.json``.
* **Other inputs and outputs** (img2dataset's own options): ``url_col``/``caption_col`` read a
  LAION or DataComp parquet as it is (a uid is kept, or derived as `wit collect` does);
  ``min_image_size``/``max_aspect_ratio`` go to img2dataset's resizer; ``output_format``
  ``parquet`` or ``files`` picks img2dataset's other writers, made atomic the same way.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before img2dataset imports albumentations
import pyarrow as pa
import pyarrow.parquet as pq

from wit_builder import records
from wit_builder.core import (WitError, atomic_write_json, content_key, filesystem, is_local, match_paths,
                              open_read)
from wit_builder.download_layout import OOM_SHARD_COUNT, WORK, error_kind, shard_name  # noqa: F401
from wit_builder.download_plan import (PART_COLUMNS, SAMPLES_PER_SHARD, PlanJob, part_path, plan_digest,
                                       plan_in_memory, read_manifest)
from wit_builder.netsafety import (DEFAULT_CONTENT_TYPES, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS,
                                   DEFAULT_USER_AGENT, NetPolicy)

__all__ = ["DownloadConfig", "DownloadOptions", "InputShard", "Plan", "plan_inputs", "prepare",
           "summarize", "format_summary", "error_kind", "shard_name",
           "completed_shards", "reconcile", "make_downloader", "download_one_shard",
           "img2dataset_kwargs", "plan_to_json", "plan_from_json", "summarize_shard", "Planner", "shard_files",
           "OUTPUT_FORMATS"]

MIN_SAMPLES_PER_SHARD = 10_000  # img2dataset's number_sample_per_shard at least: 4 row digits, 9-digit keys
ADDITIONAL_COLUMNS = ("uid", "query_ids", "page_url")  # optional input columns carried along
# img2dataset's own default list (noai/noimageai are the AI-training opt-outs)
DEFAULT_DISALLOWED = ("noai", "noimageai", "noindex", "noimageindex")
OUTPUT_FORMATS = ("webdataset", "parquet", "files")  # img2dataset's output_format values we write atomically
# options added after the first plans: they enter _wit/plan.json only when they differ from these
# defaults, so the plan (and its digest) of a download started with an older wit stays the same
PLAN_EXTRAS = {"url_col": "url", "caption_col": "text", "min_image_size": 0, "max_aspect_ratio": None,
               "output_format": "webdataset"}


@dataclass
class DownloadOptions:
    """Everything that shapes a download (the policy part travels to the workers)."""

    image_size: int = 256
    resize_mode: str = "border"
    resize_only_if_bigger: bool = False
    encode_format: str = "jpg"
    encode_quality: int = 95
    processes: int = 0                   # 0: os.cpu_count()
    threads: int = 64
    timeout: float = 10
    retries: int = 0
    user_agent_token: str = "wit"
    disallowed_header_directives: list[str] = field(default_factory=lambda: list(DEFAULT_DISALLOWED))
    allow_private_networks: bool = False
    allowed_endpoints: list[str] = field(default_factory=list)
    resolve: dict[str, str] = field(default_factory=dict)
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    content_types: list[str] = field(default_factory=lambda: list(DEFAULT_CONTENT_TYPES))
    user_agent: str = DEFAULT_USER_AGENT
    max_seconds: float | None = 60.0
    max_shard_retry: int = 1
    samples_per_shard: int = SAMPLES_PER_SHARD
    url_col: str = "url"                 # input columns (img2dataset's url_col / caption_col): LAION's URL, TEXT
    caption_col: str = "text"
    min_image_size: int = 0              # img2dataset's: smaller width or height fails (too_small)
    max_aspect_ratio: float | None = None  # img2dataset's: longer / shorter side above it fails (aspect_ratio)
    output_format: str = "webdataset"    # webdataset, parquet (images in the parquet) or files (NNNNN/KEY.jpg)

    def policy(self) -> NetPolicy:
        return NetPolicy(allow_private_networks=self.allow_private_networks,
                         allowed_endpoints=list(self.allowed_endpoints), resolve=dict(self.resolve),
                         max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                         content_types=list(self.content_types), user_agent=self.user_agent,
                         max_seconds=self.max_seconds)

    def validate(self) -> None:
        if self.image_size <= 0 or self.threads <= 0 or self.timeout <= 0:
            raise WitError("--image-size, --threads and --timeout must be positive")
        if self.samples_per_shard <= 0:
            raise WitError("--samples-per-shard must be positive")
        if self.retries < 0 or self.processes < 0 or self.max_shard_retry < 0:
            raise WitError("--retries, --processes and --max-shard-retry must be >= 0")
        if self.resize_mode not in ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"):
            raise WitError(f"--resize-mode {self.resize_mode!r} is not one of img2dataset's modes")
        if self.encode_format not in ("jpg", "png", "webp"):
            raise WitError(f"--encode-format {self.encode_format!r}: choose jpg, png or webp")
        if self.output_format not in OUTPUT_FORMATS:
            raise WitError(f"--output-format {self.output_format!r}: choose {', '.join(OUTPUT_FORMATS)}")
        if not self.url_col or not self.caption_col or self.url_col == self.caption_col:
            raise WitError(f"--url-col {self.url_col!r} and --caption-col {self.caption_col!r} must be two "
                           "different, non-empty column names")
        if self.min_image_size < 0:
            raise WitError(f"--min-image-size {self.min_image_size} must be >= 0")
        if self.max_aspect_ratio is not None and not self.max_aspect_ratio >= 1:
            raise WitError(f"--max-aspect-ratio {self.max_aspect_ratio} must be >= 1 (longer side / shorter side)")
        try:
            self.policy()
        except ValueError as exc:
            raise WitError(f"bad network policy option: {exc}") from None


@dataclass
class DownloadConfig:
    """What ``wit download`` reads and writes, and how (``options``)."""
    pairs: str | list                    # balanced parquets: a folder, a glob or a list of files
    out: str                             # IMAGES
    options: DownloadOptions = field(default_factory=DownloadOptions)


@dataclass(frozen=True)
class InputShard:
    """A download shard (``path``: its samples, ``_wit/input/NNNNN.parquet``) or an input file."""
    shard_id: int
    path: str
    rows: int


# --------------------------------------------------------------------------------------------
# planning and resume
# --------------------------------------------------------------------------------------------
def plan_inputs(pairs: str | list[str], samples_per_shard: int = SAMPLES_PER_SHARD, url_col: str = "url",
                caption_col: str = "text") -> tuple[list[InputShard], list[str], int, int]:
    """The input files: (non-empty inputs, their optional columns of :data:`ADDITIONAL_COLUMNS`,
    img2dataset's ``number_sample_per_shard``, skipped empty inputs)."""
    inputs, extra, empty, _ = _read_inputs(pairs, url_col, caption_col)
    return inputs, extra, max(MIN_SAMPLES_PER_SHARD, samples_per_shard), empty


def _read_inputs(pairs: str | list[str], url_col: str = "url", caption_col: str = "text"
                 ) -> tuple[list[InputShard], list[str], int, list[tuple[str, int]]]:
    """(non-empty inputs, optional columns, empty inputs, (path, row group) of every row group);
    ``url_col`` and ``caption_col`` name the URL and caption columns (``--url-col``, ``--caption-col``)."""
    patterns = [pairs] if isinstance(pairs, str) else list(pairs)
    if all(is_local(p) for p in patterns):
        paths = _match_local(patterns)
    else:
        paths = [absolute_path(p) for p in match_paths(patterns, what="--pairs")]
    paths = [p for p in paths if p.endswith(".parquet")]
    if not paths:
        raise WitError(f"--pairs {patterns}: no .parquet files found")
    records.verify_inputs(paths, "--pairs")
    inputs: list[InputShard] = []
    units: list[tuple[str, int]] = []
    extra: list[str] | None = None
    empty = 0
    for path in paths:
        try:
            with open_read(path) as fh:
                meta = pq.ParquetFile(fh).metadata
                names = set(meta.schema.to_arrow_schema().names)
                rows, groups = meta.num_rows, meta.num_row_groups
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise WitError(f"--pairs file {path} is not a readable parquet file: {exc}") from None
        missing = [c for c in (url_col, caption_col) if c not in names]
        if missing:
            found = sorted(names)
            shown = ", ".join(found[:30]) + (f", ... ({len(found)} in all)" if len(found) > 30 else "")
            raise WitError(f"--pairs file {path} lacks column(s) {missing} (--url-col {url_col}, "
                           f"--caption-col {caption_col}); its columns: {shown or 'none'}")
        cols = [c for c in ADDITIONAL_COLUMNS if c in names and c not in (url_col, caption_col)]
        if extra is None:
            extra = cols
        elif cols != extra:
            raise WitError(f"--pairs file {path} has columns {cols} of {list(ADDITIONAL_COLUMNS)} "
                           f"but earlier files have {extra}")
        if rows == 0:
            empty += 1
            continue
        inputs.append(InputShard(len(inputs), path, rows))
        units += [(path, g) for g in range(groups)]
    if not inputs:
        raise WitError(f"--pairs {patterns}: every input file is empty")
    return inputs, extra or [], empty, units


def _match_local(patterns: list[str]) -> list[str]:
    """``common.match_paths`` for local patterns, without importing Beam (saves seconds per run)."""
    import glob
    out: list[str] = []
    for pattern in patterns:
        pattern = absolute_path(pattern)
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        files = sorted(p for p in glob.glob(pattern) if os.path.isfile(p)
                       and not os.path.basename(p).startswith("."))
        if not files:
            raise WitError(f"--pairs path {pattern!r} matches no files")
        out.extend(files)
    return out




def _read_json(fs, path: str):
    try:
        with fs.open(path, "r") as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError, OSError):
        return None


def shard_files(output_format: str = "webdataset") -> tuple[str, ...]:
    """The suffixes of a finished shard's data files besides its stats file, for ``output_format``:
    ``""`` is the folder ``NNNNN/`` of the files format."""
    return {"webdataset": (".tar", ".parquet"), "parquet": (".parquet",), "files": ("", ".parquet")}[output_format]


def completed_shards(out: str, shards: list[InputShard], output_format: str = "webdataset") -> set[int]:
    """Shard ids whose stats json parses (with the right count) and whose data files (tar+parquet;
    parquet; folder+parquet: :func:`shard_files`) exist."""
    fs, root = filesystem(out)
    done = set()
    for s in shards:
        name = shard_name(s.shard_id)
        stats = _read_json(fs, f"{root}/{name}_stats.json")
        if (isinstance(stats, dict) and stats.get("count") == s.rows
                and all(fs.exists(f"{root}/{name}{ext}") for ext in shard_files(output_format))):
            done.add(s.shard_id)
    return done


def reconcile(out: str, shards: list[InputShard], output_format: str = "webdataset") -> set[int]:
    """Keep complete shards, delete every trace of incomplete ones; return the complete ids."""
    fs, root = filesystem(out)
    done = completed_shards(out, shards, output_format)
    for s in shards:
        if s.shard_id in done:
            continue
        name = shard_name(s.shard_id)
        for suffix in ("_stats.json", ".tar", ".parquet", ""):
            if fs.exists(f"{root}/{name}{suffix}"):
                fs.rm(f"{root}/{name}{suffix}", recursive=not suffix)
    keep = {shard_name(i) for i in done}
    for sub in ("partial", "progress"):  # partial files are never part of a finished shard
        if fs.exists(f"{root}/{WORK}/{sub}"):
            for path in fs.ls(f"{root}/{WORK}/{sub}", detail=False):
                if sub == "partial" or os.path.basename(path).split(".")[0] not in keep:
                    fs.rm(path, recursive=True)
    return done


def _check_plan(out: str, plan: dict) -> None:
    """Refuse ``out`` if it holds a download of another plan (the shards it planned, ``inputs``,
    follow from the rest) or shards that no `wit download` wrote."""
    fs, root = filesystem(out)
    old = _read_json(fs, f"{root}/{WORK}/plan.json")
    if old is not None:
        old = {k: v for k, v in old.items() if k != "inputs"}
    if old is not None and old != plan:
        changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        names = ["inputs (--pairs files)" if k == "pairs" else k for k in changed]
        raise WitError(f"{out} holds a download with other {', '.join(names)} "
                       f"(see {out}/{WORK}/plan.json); use another --out, or delete it to start over")
    if old is None and fs.exists(root):
        stray = [p for p in fs.ls(root, detail=False) if re.fullmatch(r"\d+(_stats\.json|\.tar|\.parquet)?",
                                                                       os.path.basename(p))]
        if stray:
            raise WitError(f"{out} already holds shards not written by `wit download`; use another --out")


# --------------------------------------------------------------------------------------------
# error kinds and summary
# --------------------------------------------------------------------------------------------
def summarize(out: str, shards: list[InputShard] | None = None, output_format: str = "webdataset") -> dict:
    """Counts by status and error kind over the per-shard parquets of ``out``."""
    fs, root = filesystem(out)
    names = sorted(p for p in fs.ls(root, detail=False) if re.fullmatch(r"\d+\.parquet", os.path.basename(p)))
    status, kinds, messages = Counter(), Counter(), Counter()
    for path in names:
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh, columns=["status", "error_message", "error_kind"])
        for st, msg, kind in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            status[st] += 1
            if st != "success":
                kinds[kind or error_kind(st, msg)] += 1
                messages[(msg or "")[:160]] += 1
    total = sum(status.values())
    summary = {
        "shards": len(names),
        "samples": total,
        "success": status.get("success", 0),
        "success_rate": (status.get("success", 0) / total) if total else 0.0,
        "by_status": dict(status.most_common()),
        "by_error_kind": dict(kinds.most_common()),
        "top_error_messages": dict(messages.most_common(10)),
    }
    if shards is not None:
        done = completed_shards(out, shards, output_format)
        summary["incomplete_shards"] = [shard_name(s.shard_id) for s in shards if s.shard_id not in done]
    return summary


def summarize_shard(out: str, shard: InputShard) -> dict:
    """{status: count} of one finished shard's parquet."""
    fs, root = filesystem(out)
    with fs.open(f"{root}/{shard_name(shard.shard_id)}.parquet", "rb") as fh:
        statuses = pq.read_table(fh, columns=["status"]).column("status").to_pylist()
    return dict(Counter(statuses))


def format_summary(summary: dict) -> str:
    lines = [f"downloaded {summary['success']}/{summary['samples']} images "
             f"({100 * summary['success_rate']:.1f}%) in {summary['shards']} shards"]
    if summary.get("pairs", 0) > summary["samples"]:
        lines.append(f"  {summary['pairs']} pairs -> {summary['samples']} images: "
                     f"{summary['pairs'] - summary['samples']} pairs shared an image URL with another")
    if summary.get("images_this_run"):
        lines.append(f"  this run: {summary['images_this_run']} rows in {summary['seconds']:.1f} s "
                     f"({summary['images_per_s']:.1f} rows/s, start-up included)")
    lines += [f"  status {k:<20} {v}" for k, v in summary["by_status"].items()]
    lines += [f"  error  {k:<20} {v}" for k, v in summary["by_error_kind"].items()]
    if summary.get("incomplete_shards"):
        lines.append(f"  incomplete shards: {', '.join(summary['incomplete_shards'])} "
                     "(re-run the same command to retry them)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# running it
# --------------------------------------------------------------------------------------------
Planner = Callable[[PlanJob], object]  # writes the parts and _wit/parts.json (download_plan.plan_in_memory)


@dataclass
class Plan:
    """What a download will do: built by :func:`prepare`, used by both runners."""

    out: str
    options: DownloadOptions
    shards: list[InputShard]             # the download shards (their samples: _wit/input/NNNNN.parquet)
    extra_columns: list[str]
    per_shard: int                       # img2dataset's number_sample_per_shard (key width)
    empty_inputs: int
    done: set[int]
    inputs: list[InputShard] = field(default_factory=list)  # the --pairs files read
    pairs: int = 0                       # input pairs (rows with a URL), before merging by URL

    def todo(self) -> list[InputShard]:
        return [s for s in self.shards if s.shard_id not in self.done]


def plan_to_json(plan: Plan) -> str:
    return json.dumps({"out": plan.out, "options": asdict(plan.options),
                       "shards": [[s.shard_id, s.path, s.rows] for s in plan.shards],
                       "extra_columns": plan.extra_columns, "per_shard": plan.per_shard,
                       "empty_inputs": plan.empty_inputs, "done": sorted(plan.done),
                       "inputs": [[s.shard_id, s.path, s.rows] for s in plan.inputs], "pairs": plan.pairs})


def plan_from_json(text: str) -> Plan:
    d = json.loads(text)
    return Plan(d["out"], DownloadOptions(**d["options"]), [InputShard(*s) for s in d["shards"]],
                d["extra_columns"], d["per_shard"], d["empty_inputs"], set(d["done"]),
                [InputShard(*s) for s in d.get("inputs", [])], d.get("pairs", 0))


def prepare(pairs, out: str, opts: DownloadOptions, planner: Planner | None = None) -> Plan:
    """Plan, check against an earlier run in ``out``; merge the pairs by URL into shards of at most
    ``opts.samples_per_shard`` samples with ``planner`` (default: in memory) unless an earlier run
    of this plan did; write ``_wit/plan.json`` (with the shards as ``inputs``); reconcile (drop
    partial shards); write ``policy.json`` (read by the workers) and ``options.json``."""
    opts.validate()
    out = absolute_path(out)
    inputs, extra, empty, units = _read_inputs(pairs, opts.url_col, opts.caption_col)
    per_shard = max(MIN_SAMPLES_PER_SHARD, opts.samples_per_shard)
    # an input rewritten under the same name (and row count) is another input: its content key
    plan = {"pairs": [[s.path, s.rows, content_key(s.path)] for s in inputs], "additional_columns": PART_COLUMNS,
            "samples_per_shard": opts.samples_per_shard, "one_sample_per": "url",
            "number_sample_per_shard": per_shard, "oom_shard_count": OOM_SHARD_COUNT,
            "image_size": opts.image_size, "resize_mode": opts.resize_mode,
            "resize_only_if_bigger": opts.resize_only_if_bigger, "encode_format": opts.encode_format}
    plan.update({k: getattr(opts, k) for k, default in PLAN_EXTRAS.items() if getattr(opts, k) != default})
    _check_plan(out, plan)
    fs, root = filesystem(out)
    fs.makedirs(f"{root}/{WORK}", exist_ok=True)
    digest = plan_digest(plan)
    manifest = read_manifest(out, digest)
    if manifest is None or not _parts_exist(fs, root, manifest):
        if fs.exists(f"{root}/{WORK}/input"):  # a killed planning's parts (or an older layout's links)
            fs.rm(f"{root}/{WORK}/input", recursive=True)
        total = sum(s.rows for s in inputs)
        job = PlanJob(out, units, extra, opts.samples_per_shard,
                      partitions=max(1, math.ceil(total / opts.samples_per_shard)), digest=digest,
                      url_col=opts.url_col, caption_col=opts.caption_col)
        (planner or plan_in_memory)(job)
        manifest = read_manifest(out, digest)
        if manifest is None:
            raise WitError(f"--pairs: none of the {total:,} pairs has a URL")
    shards = [InputShard(k, part_path(out, k), rows) for k, rows, _ in manifest["parts"]]
    # "inputs": img2dataset's input files, one per shard (`wit shards` counts the planned shards)
    atomic_write_json(f"{out}/{WORK}/plan.json", {**plan, "inputs": [[s.path, s.rows] for s in shards]})
    done = reconcile(out, shards, opts.output_format)
    atomic_write_json(f"{out}/{WORK}/policy.json", json.loads(opts.policy().to_json()))
    atomic_write_json(f"{out}/{WORK}/options.json", asdict(opts))
    return Plan(out, opts, shards, list(PART_COLUMNS), per_shard, empty, done, inputs, manifest["pairs"])


def _parts_exist(fs, root: str, manifest: dict) -> bool:
    try:
        have = {os.path.basename(p) for p in fs.ls(f"{root}/{WORK}/input", detail=False)}
    except FileNotFoundError:
        return False
    return all(os.path.basename(part_path(root, k)) in have for k, _, _ in manifest["parts"])


def absolute_path(path: str) -> str:
    return os.path.abspath(path.removeprefix("file://")) if is_local(path) else path.rstrip("/")


def img2dataset_kwargs(opts: DownloadOptions, extra: list[str], per_shard: int) -> dict:
    """The arguments we give img2dataset's download() (also used by bench/download.py)."""
    return dict(
        image_size=opts.image_size, processes_count=opts.processes or os.cpu_count() or 1,
        resize_mode=opts.resize_mode, resize_only_if_bigger=opts.resize_only_if_bigger,
        encode_format=opts.encode_format, encode_quality=opts.encode_quality,
        output_format=opts.output_format, input_format="parquet", url_col="url", caption_col="text",
        save_additional_columns=list(extra) or None, thread_count=opts.threads,
        number_sample_per_shard=per_shard, oom_shard_count=OOM_SHARD_COUNT, timeout=opts.timeout,
        retries=opts.retries, distributor="multiprocessing", incremental_mode="incremental",
        max_shard_retry=opts.max_shard_retry, max_image_area=float(opts.max_pixels),
        user_agent_token=opts.user_agent_token, compute_hash="sha256", extract_exif=False,
        disallowed_header_directives=list(opts.disallowed_header_directives),
        min_image_size=opts.min_image_size, max_aspect_ratio=_aspect(opts),
        enable_wandb=False,
    )


def _aspect(opts: DownloadOptions) -> float:
    return float("inf") if opts.max_aspect_ratio is None else float(opts.max_aspect_ratio)


def make_downloader(plan: Plan):
    """img2dataset's own ``Downloader`` (resizer, thread pool, hashing) with our writer: what
    ``download()`` builds in its parent, for runners that call it per shard (the Beam DoFn)."""
    from img2dataset.downloader import Downloader
    from img2dataset.resizer import Resizer

    from wit_builder.download_worker import WRITERS
    kw = img2dataset_kwargs(plan.options, plan.extra_columns, plan.per_shard)
    resizer = Resizer(image_size=kw["image_size"], resize_mode=kw["resize_mode"],
                      resize_only_if_bigger=kw["resize_only_if_bigger"], encode_quality=kw["encode_quality"],
                      encode_format=kw["encode_format"], max_image_area=kw["max_image_area"],
                      min_image_size=kw["min_image_size"], max_aspect_ratio=kw["max_aspect_ratio"])
    directives = kw["disallowed_header_directives"] or None  # download() maps [] to None too
    return Downloader(
        sample_writer_class=WRITERS[plan.options.output_format], resizer=resizer, thread_count=kw["thread_count"],
        save_caption=True, extract_exif=kw["extract_exif"], output_folder=plan.out,
        column_list=_column_list(plan.extra_columns), timeout=kw["timeout"],
        number_sample_per_shard=plan.per_shard, oom_shard_count=OOM_SHARD_COUNT,
        compute_hash=kw["compute_hash"], verify_hash_type=None, encode_format=kw["encode_format"],
        retries=kw["retries"], user_agent_token=kw["user_agent_token"],
        disallowed_header_directives=directives)


def _column_list(extra: list[str]) -> list[str]:
    return [*extra, "caption", "url"]  # the order img2dataset's Reader uses


def download_one_shard(plan: Plan, shard: InputShard, downloader, tmp_dir: str) -> bool:
    """Download one input shard with ``downloader`` (see :func:`make_downloader`); True if the
    shard is complete afterwards (already complete counts). Used by the Beam pipeline."""
    from img2dataset.reader import Reader
    fmt = plan.options.output_format
    if completed_shards(plan.out, [shard], fmt):
        return True
    reader = Reader(shard.path, "parquet", "url", "text", None, None, list(plan.extra_columns) or None,
                    plan.per_shard, set(), tmp_dir, shard.shard_id)
    with contextlib.redirect_stdout(io.StringIO()):  # the reader's chatter
        tasks = list(reader)
    ok = True
    for task in tasks:
        ok = downloader(task)[0] and ok
    return ok and bool(completed_shards(plan.out, [shard], fmt))
