"""The worker side of `wit download`: what runs inside img2dataset's download processes.

Kept apart from :mod:`wit_builder.download` because it subclasses img2dataset's writer (and so
imports img2dataset, webdataset and torch): ``wit download --help`` and the planning code stay
light. :class:`WitShardWriter` travels to the spawned workers by reference (module and name).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before img2dataset imports albumentations

import pyarrow as pa
from img2dataset.logger import LoggerProcess
from img2dataset.writer import FilesSampleWriter, ParquetSampleWriter, WebDatasetSampleWriter

from wit_builder.core import filesystem
from wit_builder.core import is_local
from wit_builder.download_layout import WORK, error_kind, one_line_error
from wit_builder.netsafety import NetPolicy, install_guard

__all__ = ["WitShardWriter", "WitParquetWriter", "WitFilesWriter", "WRITERS", "WitLoggerProcess"]

_setup_lock = threading.Lock()
_watchdog_started = False
_stats_patched = False


def _url_join(folder: str, *parts: str) -> str:
    """Join below a local path or a remote URL (keeps the gs:// or s3:// protocol)."""
    return "/".join([folder.rstrip("/"), *parts])


def _start_watchdog() -> None:
    """In a multiprocessing child: exit as soon as the parent is gone (killed with -9), so an
    orphan never keeps running, or finishes a shard, behind a re-run."""
    global _watchdog_started
    parent_process = multiprocessing.parent_process()
    with _setup_lock:
        if _watchdog_started or parent_process is None:
            return
        _watchdog_started = True
    # The parent's pid as multiprocessing recorded it at spawn time, not os.getppid() now: a kill
    # that lands while this process is still importing would otherwise go unnoticed (getppid()
    # already names the reaper by then).
    parent = parent_process.pid
    if os.getppid() != parent:  # re-parented already
        os._exit(3)

    def watch():
        while True:
            if os.getppid() != parent:  # re-parented: the parent died
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, name="wit-parent-watchdog", daemon=True).start()


def _worker_setup(output_folder: str) -> None:
    """Once per worker process (idempotent): the SSRF guard for this output's policy, atomic
    stats files, and the parent watchdog."""
    global _stats_patched
    fs, root = filesystem(output_folder)
    with fs.open(f"{root}/{WORK}/policy.json", "r") as fh:  # missing/broken: the shard fails (closed)
        policy = NetPolicy(**json.load(fh))
    with _setup_lock:
        install_guard(policy)  # keeps an identical guard already installed (Beam's DoFn.setup)
        if not _stats_patched:
            import img2dataset.downloader as i2d_downloader
            i2d_downloader.write_stats = _atomic_stats_writer(i2d_downloader.write_stats)
            _stats_patched = True
    _start_watchdog()


def _atomic_stats_writer(write_stats):
    """Wrap img2dataset's ``write_stats`` (which writes ``NNNNN_stats.json`` in place) so that
    the file is written in a private folder, then renamed into the output folder."""
    if getattr(write_stats, "_wit_atomic", False):
        return write_stats

    def atomic_write_stats(output_folder, *args, **kwargs):
        fs, root = filesystem(output_folder)
        tmp = _url_join(output_folder, WORK, "partial", f"stats.{os.getpid()}-{threading.get_ident()}")
        tmp_fs, tmp_root = filesystem(tmp)
        tmp_fs.makedirs(tmp_root, exist_ok=True)
        write_stats(tmp, *args, **kwargs)
        for path in tmp_fs.ls(tmp_root, detail=False):
            fs.mv(path, f"{root}/{os.path.basename(path)}")
        tmp_fs.rm(tmp_root, recursive=True)

    atomic_write_stats._wit_atomic = True
    return atomic_write_stats


class _AtomicShard:
    """What wit adds to an img2dataset sample writer: it writes in a private folder and renames
    its files into place on close (``FILES``: the shard's files, in the order they are moved).

    img2dataset constructs it in the worker with (shard_id, output_folder, save_caption,
    oom_shard_count, schema, encode_format) before the shard's first request, which is where the
    guard is installed. Rows get an ``error_kind`` column (parquet, and the json of tar or files).
    """

    FILES: tuple[str, ...] = ()

    def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
        _worker_setup(output_folder)
        name = f"{shard_id:0{oom_shard_count}d}"
        partial = _url_join(output_folder, WORK, "partial", f"{name}.{os.getpid()}-{threading.get_ident()}")
        self._fs, self._partial = filesystem(partial)
        _, root = filesystem(output_folder)
        self._fs.makedirs(self._partial, exist_ok=True)
        super().__init__(shard_id, partial, save_caption, oom_shard_count,
                         schema.append(pa.field("error_kind", pa.string())), encode_format)
        self._moves = [(f"{self._partial}/{name}{ext}", f"{root}/{name}{ext}") for ext in self.FILES]
        self._progress_path = (os.path.join(root, WORK, "progress", f"{name}.json")
                               if is_local(output_folder) else None)
        if self._progress_path:
            os.makedirs(os.path.dirname(self._progress_path), exist_ok=True)
        self._count = 0
        self._success = 0
        self._last = 0.0

    def write(self, img_str, key, caption, meta):
        meta["error_message"] = one_line_error(meta.get("error_message"))
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
        for src, dst in self._moves:
            if self._fs.isdir(src):  # the files format's NNNNN/ (fsspec's mv of a folder needs recursive)
                if self._fs.exists(dst):  # an earlier, unfinished try's: a folder would be moved into it
                    self._fs.rm(dst, recursive=True)
                self._fs.mv(src, dst, recursive=True)
            else:
                self._fs.mv(src, dst)
        self._fs.rm(self._partial, recursive=True)
        if self._progress_path:
            self._report()


class WitShardWriter(_AtomicShard, WebDatasetSampleWriter):
    """img2dataset's WebDataset writer (``NNNNN.tar`` + ``NNNNN.parquet``), atomic."""
    FILES = (".parquet", ".tar")  # parquet first: a tar without its parquet is never taken for a finished shard


class WitParquetWriter(_AtomicShard, ParquetSampleWriter):
    """img2dataset's parquet writer (``NNNNN.parquet``: every sample with its image bytes), atomic."""
    FILES = (".parquet",)


class WitFilesWriter(_AtomicShard, FilesSampleWriter):
    """img2dataset's files writer (``NNNNN/KEY.jpg``, ``.txt``, ``.json`` + ``NNNNN.parquet``), atomic."""
    FILES = (".parquet", "")


# --output-format -> writer; download() looks the classes up by these names in img2dataset.main
WRITERS = {"webdataset": WitShardWriter, "parquet": WitParquetWriter, "files": WitFilesWriter}
I2D_NAMES = {"webdataset": "WebDatasetSampleWriter", "parquet": "ParquetSampleWriter", "files": "FilesSampleWriter"}


class WitLoggerProcess(LoggerProcess):
    """img2dataset's stats-logger process, plus the parent watchdog (img2dataset's own would
    poll forever if its parent were killed with -9)."""

    def run(self):
        _start_watchdog()
        super().run()
