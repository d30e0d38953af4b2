"""Download balanced (url, text) pairs into img2dataset WebDataset shards, safely and resumably.

The engine is img2dataset's ``download()`` (its multiprocessing distributor, reader, resizer,
downloader and WebDataset writer). What this module adds around it:

* **Planning.** Every non-empty input parquet (``OUT/balanced/part-*.parquet``) becomes exactly
  one img2dataset shard: inputs are staged as ``IMAGES/_wit/input/NNNNN.parquet`` symlinks and
  ``number_sample_per_shard`` is at least the largest input's row count (and at least 10000, so
  keys are img2dataset's usual 9 digits: 5 for the shard, 4 for the row). The plan is stored in
  ``IMAGES/_wit/plan.json``; re-running against different inputs is refused.
* **Our writer class.** ``download()`` picks its writer by name from ``img2dataset.main``; for
  the call we bind that name to :class:`WitShardWriter`, a subclass of img2dataset's
  ``WebDatasetSampleWriter`` (pickled by reference into the spawned workers). In each worker it
  (1) installs the SSRF guard and limits of :mod:`wit_builder.netsafety`, read from
  ``IMAGES/_wit/policy.json``, before the shard's first request; (2) writes the tar and parquet
  under ``IMAGES/_wit/partial/`` and renames them into place on close, so shard files appear
  atomically; (3) adds an ``error_kind`` column; (4) reports progress for the progress bar;
  (5) exits if its parent dies (kill -9), so an orphan never finishes a shard behind a re-run.
* **Resume.** Before each run, a shard counts as done only if its ``_stats.json`` parses and
  its tar and parquet exist; anything else of that shard is deleted, then img2dataset's
  ``incremental`` mode skips the done shards and redoes the rest.
* **Summary.** Counts by status and by error kind, from the per-shard parquets, printed and
  written to ``IMAGES/_wit/summary.json``.
"""
from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before img2dataset imports albumentations

import fsspec  # noqa: E402
import pyarrow as pa
import pyarrow.parquet as pq
from img2dataset.writer import BufferedParquetWriter, WebDatasetSampleWriter

from wit_builder.common import WitError, atomic_write_json, is_local, match_paths, open_read
from wit_builder.netsafety import (DEFAULT_CONTENT_TYPES, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS,
                                   DEFAULT_USER_AGENT, NetPolicy, install_guard)

__all__ = ["DownloadOptions", "InputShard", "plan_inputs", "download_pairs", "summarize",
           "error_kind", "WitShardWriter", "shard_name", "completed_shards", "reconcile"]

OOM_SHARD_COUNT = 5  # shard ids have 5 digits: 00000.tar
MIN_SAMPLES_PER_SHARD = 10_000  # -> 4 row digits -> 9-digit keys, img2dataset's usual
ADDITIONAL_COLUMNS = ("uid", "query_ids", "page_url")
# img2dataset's own default list (noai/noimageai are the AI-training opt-outs)
DEFAULT_DISALLOWED = ("noai", "noimageai", "noindex", "noimageindex")
WORK = "_wit"


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{OOM_SHARD_COUNT}d}"


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
    timeout: int = 10
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

    def policy(self) -> NetPolicy:
        return NetPolicy(allow_private_networks=self.allow_private_networks,
                         allowed_endpoints=list(self.allowed_endpoints), resolve=dict(self.resolve),
                         max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                         content_types=list(self.content_types), user_agent=self.user_agent,
                         max_seconds=self.max_seconds)

    def validate(self) -> None:
        if self.image_size <= 0 or self.threads <= 0 or self.timeout <= 0 or self.retries < 0:
            raise WitError("--image-size, --threads and --timeout must be positive, --retries >= 0")
        if self.resize_mode not in ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"):
            raise WitError(f"--resize-mode {self.resize_mode!r} is not one of img2dataset's modes")
        if self.encode_format not in ("jpg", "png", "webp"):
            raise WitError(f"--encode-format {self.encode_format!r}: choose jpg, png or webp")
        try:
            self.policy()
        except ValueError as exc:
            raise WitError(f"bad network policy option: {exc}") from None


@dataclass(frozen=True)
class InputShard:
    shard_id: int
    path: str
    rows: int


# --------------------------------------------------------------------------------------------
# planning and resume
# --------------------------------------------------------------------------------------------
def plan_inputs(pairs: str | list[str]) -> tuple[list[InputShard], list[str], int, int]:
    """(shards, additional columns, samples per img2dataset shard, skipped empty inputs)."""
    patterns = [pairs] if isinstance(pairs, str) else list(pairs)
    paths = [p for p in match_paths(patterns, what="--pairs") if p.endswith(".parquet")]
    if not paths:
        raise WitError(f"--pairs {patterns}: no .parquet files found")
    shards: list[InputShard] = []
    extra: list[str] | None = None
    empty = 0
    for path in paths:
        try:
            with open_read(path) as fh:
                meta = pq.ParquetFile(fh).metadata
                names = set(meta.schema.to_arrow_schema().names)
                rows = meta.num_rows
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise WitError(f"--pairs file {path} is not a readable parquet file: {exc}") from None
        missing = {"url", "text"} - names
        if missing:
            raise WitError(f"--pairs file {path} lacks column(s) {sorted(missing)}")
        cols = [c for c in ADDITIONAL_COLUMNS if c in names]
        if extra is None:
            extra = cols
        elif cols != extra:
            raise WitError(f"--pairs file {path} has columns {cols} of {list(ADDITIONAL_COLUMNS)} "
                           f"but earlier files have {extra}")
        if rows == 0:
            empty += 1
            continue
        shards.append(InputShard(len(shards), path, rows))
    if not shards:
        raise WitError(f"--pairs {patterns}: every input file is empty")
    per_shard = max(MIN_SAMPLES_PER_SHARD, max(s.rows for s in shards))
    return shards, extra or [], per_shard, empty


def _fs(path: str):
    return fsspec.core.url_to_fs(path)


def _read_json(fs, path: str):
    try:
        with fs.open(path, "r") as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError, OSError):
        return None


def completed_shards(out: str, shards: list[InputShard]) -> set[int]:
    """Shard ids whose stats json parses (with the right count) and whose tar+parquet exist."""
    fs, root = _fs(out)
    done = set()
    for s in shards:
        name = shard_name(s.shard_id)
        stats = _read_json(fs, f"{root}/{name}_stats.json")
        if (isinstance(stats, dict) and stats.get("count") == s.rows
                and fs.exists(f"{root}/{name}.tar") and fs.exists(f"{root}/{name}.parquet")):
            done.add(s.shard_id)
    return done


def reconcile(out: str, shards: list[InputShard]) -> set[int]:
    """Keep complete shards, delete every trace of incomplete ones; return the complete ids."""
    fs, root = _fs(out)
    done = completed_shards(out, shards)
    for s in shards:
        if s.shard_id in done:
            continue
        name = shard_name(s.shard_id)
        for suffix in ("_stats.json", ".tar", ".parquet"):
            if fs.exists(f"{root}/{name}{suffix}"):
                fs.rm(f"{root}/{name}{suffix}")
    keep = {shard_name(i) for i in done}
    for sub in ("partial", "progress"):  # partial files are never part of a finished shard
        if fs.exists(f"{root}/{WORK}/{sub}"):
            for path in fs.ls(f"{root}/{WORK}/{sub}", detail=False):
                if sub == "partial" or os.path.basename(path).split(".")[0] not in keep:
                    fs.rm(path)
    return done


def _check_plan(out: str, plan: dict) -> None:
    fs, root = _fs(out)
    old = _read_json(fs, f"{root}/{WORK}/plan.json")
    if old is not None and old != plan:
        raise WitError(f"{out} holds a download of other inputs (see {out}/{WORK}/plan.json); "
                       "use another --out, or delete it to start over")
    if old is None and fs.exists(root):
        stray = [p for p in fs.ls(root, detail=False) if re.fullmatch(r"\d+(_stats\.json|\.tar|\.parquet)",
                                                                       os.path.basename(p))]
        if stray:
            raise WitError(f"{out} already holds shards not written by `wit download`; use another --out")


# --------------------------------------------------------------------------------------------
# the worker side: guard + atomic files + progress
# --------------------------------------------------------------------------------------------
_guard_lock = threading.Lock()
_guard_policy: str | None = None
_watchdog_started = False


def _worker_setup(output_folder: str) -> None:
    """Install the SSRF guard for this output's policy (once per process) and a parent watchdog."""
    global _guard_policy, _watchdog_started
    fs, root = _fs(output_folder)
    with fs.open(f"{root}/{WORK}/policy.json", "r") as fh:  # missing/broken: fail the shard (closed)
        text = json.dumps(json.load(fh), sort_keys=True)
    with _guard_lock:
        import urllib.request
        if _guard_policy != text or not getattr(urllib.request._opener, "_wit_policy", None) == text:
            guard = install_guard(NetPolicy.from_json(text))
            guard.opener._wit_policy = text
            _guard_policy = text
        if not _watchdog_started and multiprocessing.parent_process() is not None:
            _watchdog_started = True
            parent = os.getppid()

            def watch():
                while True:
                    time.sleep(0.5)
                    if os.getppid() != parent:  # the parent died (kill -9): stop, don't finish
                        os._exit(3)

            threading.Thread(target=watch, name="wit-parent-watchdog", daemon=True).start()


class WitShardWriter(WebDatasetSampleWriter):
    """img2dataset's WebDataset writer, writing under temp names and renaming on close."""

    def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
        import webdataset as wds
        _worker_setup(output_folder)
        self.oom_shard_count = oom_shard_count
        self.shard_id = shard_id
        self.save_caption = save_caption
        self.encode_format = encode_format
        name = f"{shard_id:0{oom_shard_count}d}"
        self.fs, root = _fs(output_folder)
        tag = f"{os.getpid()}-{threading.get_ident()}"
        self._moves = [(f"{root}/{WORK}/partial/{name}.{tag}.parquet", f"{root}/{name}.parquet"),
                       (f"{root}/{WORK}/partial/{name}.{tag}.tar", f"{root}/{name}.tar")]
        self.fs.makedirs(f"{root}/{WORK}/partial", exist_ok=True)
        self.tar_fd = self.fs.open(self._moves[1][0], "wb")
        self.tarwriter = wds.TarWriter(self.tar_fd)
        schema = schema.append(pa.field("error_kind", pa.string()))
        self.buffered_parquet_writer = BufferedParquetWriter(self._moves[0][0], schema, 100)
        self._progress_path = (f"{root}/{WORK}/progress/{name}.json" if is_local(output_folder) else None)
        if self._progress_path:
            os.makedirs(os.path.dirname(self._progress_path), exist_ok=True)
        self._count = 0
        self._success = 0
        self._last = 0.0

    def write(self, img_str, key, caption, meta):
        meta["error_kind"] = error_kind(meta.get("status"), meta.get("error_message"))
        super().write(img_str, key, caption, meta)
        self._count += 1
        self._success += meta.get("status") == "success"
        now = time.monotonic()
        if self._progress_path and now - self._last > 0.5:
            self._last = now
            self._report()

    def _report(self):
        tmp = f"{self._progress_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump({"count": self._count, "successes": self._success}, fh)
        os.replace(tmp, self._progress_path)

    def close(self):
        super().close()
        for src, dst in self._moves:  # parquet first: a tar without a parquet is never "done"
            self.fs.mv(src, dst)
        if self._progress_path:
            self._report()


# --------------------------------------------------------------------------------------------
# error kinds and summary
# --------------------------------------------------------------------------------------------
_KINDS = (
    ("ssrf guard", "ssrf_blocked"),
    ("x-robots-tag", "opted_out"),
    ("content type", "content_type"),
    ("too many bytes", "too_many_bytes"),
    ("decompression bomb", "too_many_pixels"),
    ("image area too large", "too_many_pixels"),
    ("body took longer", "too_slow"),
    ("timed out", "timeout"),
    ("unknown url type", "bad_scheme"),
    ("redirection to url not allowed", "bad_scheme"),
    ("infinite loop", "redirect_loop"),
    ("image decoding error", "decode_error"),
    ("image too small", "too_small"),
    ("aspect ratio too large", "aspect_ratio"),
    ("connection refused", "connection_refused"),
    ("connection reset", "connection_reset"),
    ("remote end closed", "connection_reset"),
    ("name or service not known", "dns"),
    ("nodename nor servname", "dns"),
    ("temporary failure in name resolution", "dns"),
    ("certificate", "tls"),
    ("ssl", "tls"),
    ("hash mismatch", "hash_mismatch"),
)


def error_kind(status: str | None, message: str | None) -> str | None:
    """A short, stable category for an img2dataset error message (None on success)."""
    if status == "success":
        return None
    text = (message or "").lower()
    match = re.match(r"http error (\d{3})", text)
    if match:
        return f"http_{match.group(1)}"
    for needle, kind in _KINDS:
        if needle in text:
            return kind
    return "other" if text else "unknown"


def summarize(out: str, shards: list[InputShard] | None = None) -> dict:
    """Counts by status and error kind over the per-shard parquets of ``out``."""
    fs, root = _fs(out)
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
        done = completed_shards(out, shards)
        summary["incomplete_shards"] = [shard_name(s.shard_id) for s in shards if s.shard_id not in done]
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"downloaded {summary['success']}/{summary['samples']} images "
             f"({100 * summary['success_rate']:.1f}%) in {summary['shards']} shards"]
    lines += [f"  status {k:<20} {v}" for k, v in summary["by_status"].items()]
    lines += [f"  error  {k:<20} {v}" for k, v in summary["by_error_kind"].items()]
    if summary.get("incomplete_shards"):
        lines.append(f"  incomplete shards: {', '.join(summary['incomplete_shards'])} "
                     "(re-run the same command to retry them)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# progress bar (parent side)
# --------------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, out: str, shards: list[InputShard], done: set[int], stream):
        from tqdm import tqdm
        self.out = out
        self.shards = shards
        self.base = sum(s.rows for s in shards if s.shard_id in done)
        total = sum(s.rows for s in shards)
        self.bar = tqdm(total=total, initial=self.base, unit="img", desc="download", file=stream,
                        dynamic_ncols=True, smoothing=0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.done = done

    def _poll(self):
        fs, root = _fs(self.out)
        count = success = 0
        for s in self.shards:
            if s.shard_id in self.done:
                continue
            rec = _read_json(fs, f"{root}/{WORK}/progress/{shard_name(s.shard_id)}.json") if is_local(self.out) else None
            if rec:
                count += rec.get("count", 0)
                success += rec.get("successes", 0)
        new = self.base + count - self.bar.n
        if new > 0:
            self.bar.update(new)
        if count:
            self.bar.set_postfix(success=f"{100 * success / count:.1f}%", refresh=False)

    def _loop(self):
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                self._poll()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self._poll()
        self.bar.close()


@contextlib.contextmanager
def _redirect_fds(log_path: str):
    """Send fd 1 and 2 (img2dataset's prints, its workers' and logger's) to ``log_path``.

    Yields a text stream on the original stderr for our own progress bar.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = open(log_path, "ab")
    stream = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield stream
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()
        stream.close()


@contextlib.contextmanager
def _wit_writer_bound():
    import img2dataset  # noqa: F401 - the package binds the name `main` to a function
    i2d_main = sys.modules["img2dataset.main"]
    original = i2d_main.WebDatasetSampleWriter
    i2d_main.WebDatasetSampleWriter = WitShardWriter
    try:
        yield
    finally:
        i2d_main.WebDatasetSampleWriter = original


def _prepare(pairs, out: str, opts: DownloadOptions):
    """Plan, check against an earlier run, reconcile, write policy.json. Returns the plan pieces."""
    opts.validate()
    shards, extra, per_shard, empty = plan_inputs(pairs)
    plan = {"inputs": [[s.path, s.rows] for s in shards], "additional_columns": extra,
            "number_sample_per_shard": per_shard, "oom_shard_count": OOM_SHARD_COUNT,
            "image_size": opts.image_size, "resize_mode": opts.resize_mode,
            "encode_format": opts.encode_format}
    _check_plan(out, plan)
    fs, root = _fs(out)
    fs.makedirs(f"{root}/{WORK}", exist_ok=True)
    done = reconcile(out, shards)
    atomic_write_json(f"{out}/{WORK}/plan.json", plan)
    atomic_write_json(f"{out}/{WORK}/policy.json", json.loads(opts.policy().to_json()))
    atomic_write_json(f"{out}/{WORK}/options.json", asdict(opts))
    return shards, extra, per_shard, empty, done


def _stage_inputs(out: str, shards: list[InputShard]) -> str:
    """A folder whose sorted *.parquet are exactly the planned inputs, in shard order."""
    if not is_local(out) or not all(is_local(s.path) for s in shards):
        raise WitError("the local img2dataset runner needs local --pairs and --out; "
                       "use --runner beam for remote paths")
    stage = os.path.join(out.removeprefix("file://"), WORK, "input")
    if os.path.isdir(stage):
        for name in os.listdir(stage):
            os.unlink(os.path.join(stage, name))
    os.makedirs(stage, exist_ok=True)
    for s in shards:
        os.symlink(os.path.abspath(s.path.removeprefix("file://")),
                   os.path.join(stage, f"{shard_name(s.shard_id)}.parquet"))
    return stage


def img2dataset_kwargs(opts: DownloadOptions, extra: list[str], per_shard: int) -> dict:
    """The arguments we give img2dataset's download() (also used by bench/download.py)."""
    return dict(
        image_size=opts.image_size, processes_count=opts.processes or os.cpu_count() or 1,
        resize_mode=opts.resize_mode, resize_only_if_bigger=opts.resize_only_if_bigger,
        encode_format=opts.encode_format, encode_quality=opts.encode_quality,
        output_format="webdataset", input_format="parquet", url_col="url", caption_col="text",
        save_additional_columns=list(extra) or None, thread_count=opts.threads,
        number_sample_per_shard=per_shard, oom_shard_count=OOM_SHARD_COUNT, timeout=opts.timeout,
        retries=opts.retries, distributor="multiprocessing", incremental_mode="incremental",
        max_shard_retry=opts.max_shard_retry, max_image_area=float(opts.max_pixels),
        user_agent_token=opts.user_agent_token, compute_hash="sha256",
        disallowed_header_directives=list(opts.disallowed_header_directives),
        enable_wandb=False,
    )


def download_pairs(pairs, out: str, options: DownloadOptions | None = None, *, quiet: bool = True,
                   progress: bool = True, **overrides) -> dict:
    """Download ``pairs`` (dir/glob/list of balanced parquets) into ``out``; return the summary.

    ``options`` or keyword overrides of :class:`DownloadOptions` fields. With ``quiet``,
    img2dataset's own output goes to ``out/_wit/img2dataset.log``. Safe to re-run after any
    interruption: complete shards are kept, the rest redone.
    """
    import img2dataset
    opts = options or DownloadOptions()
    if overrides:
        opts = DownloadOptions(**{**asdict(opts), **overrides})
    shards, extra, per_shard, empty, done = _prepare(pairs, out, opts)
    stage = _stage_inputs(out, shards)
    kwargs = img2dataset_kwargs(opts, extra, per_shard)
    started = time.time()
    if len(done) < len(shards):
        import signal
        previous_sigint = signal.getsignal(signal.SIGINT)
        log_path = os.path.join(out.removeprefix("file://"), WORK, "img2dataset.log")
        redirect = _redirect_fds(log_path) if quiet else contextlib.nullcontext(sys.stderr)
        try:
            with redirect as stream, _wit_writer_bound():
                bar = _Progress(out, shards, done, stream) if progress else contextlib.nullcontext()
                with bar:
                    img2dataset.download(url_list=stage, output_folder=out, **kwargs)
        except SystemExit:  # img2dataset's SIGINT handler exits; report it as an interrupt
            raise KeyboardInterrupt from None
        finally:
            signal.signal(signal.SIGINT, previous_sigint)
    summary = summarize(out, shards)
    summary["empty_inputs_skipped"] = empty
    summary["seconds"] = round(time.time() - started, 3)
    atomic_write_json(f"{out}/{WORK}/summary.json", summary)
    return summary
