"""Small helpers every stage shares: errors, atomic writes, paths through Beam FileSystems."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from typing import IO, Iterator

from wit_builder.cli import WitError

__all__ = ["WitError", "atomic_open", "atomic_write_json", "atomic_write_parquet", "is_local",
           "open_read", "exists", "match_paths", "read_json_or_none"]


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open ``path`` for writing so that it appears only when complete.

    Local paths: write ``.name.tmp-XXXX`` in the same directory, fsync, then ``os.replace``.
    Remote paths (gs://, s3://): object stores publish an object only on close, which is atomic.
    """
    if not is_local(path):
        from apache_beam.io.filesystems import FileSystems
        mime = "application/octet-stream"
        with FileSystems.create(path, mime_type=mime) as raw:
            if "b" in mode:
                yield raw
            else:
                import io
                text = io.TextIOWrapper(raw, encoding="utf-8")
                yield text
                text.flush()
                text.detach()
        return
    path = _local(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        # mkstemp makes 0600 files; give the result the mode an ordinary open() would (umask)
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once at import: os.umask is process-wide, so never toggle it later
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_json(path: str, obj) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


def read_json_or_none(path: str):
    """A local JSON file's content, or None when it is missing or not valid JSON (markers,
    summaries and stats that a later step may or may not have written)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def atomic_write_parquet(path: str, table) -> None:
    """Write a pyarrow Table to ``path`` atomically."""
    import pyarrow.parquet as pq
    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh)


def open_read(path: str) -> IO[bytes]:
    """Open any local or remote path for binary reading (no decompression)."""
    if is_local(path):
        return open(_local(path), "rb")
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.filesystem import CompressionTypes
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(_local(path))
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.exists(path)


def match_paths(patterns: list[str], what: str = "input") -> list[str]:
    """Expand globs (local or remote) into a sorted list of files; a pattern matching nothing is an error."""
    from apache_beam.io.filesystems import FileSystems
    out: list[str] = []
    for pattern in patterns:
        if is_local(pattern) and os.path.isdir(_local(pattern)):
            pattern = os.path.join(_local(pattern), "*")
        try:
            results = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:  # Beam raises BeamIOError with the per-pattern cause inside
            raise WitError(f"{what} path {pattern!r} could not be listed: {exc}") from None
        files = sorted(m.path for m in results if not os.path.basename(m.path).startswith("."))
        if not files:
            raise WitError(f"{what} path {pattern!r} matches no files")
        out.extend(files)
    return out


def unique_tmp_suffix() -> str:
    return uuid.uuid4().hex[:8]
