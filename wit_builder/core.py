"""The core every stage shares: the one error type, atomic writes, paths on one file layer
(fsspec: local paths through ``os``, ``gs://``/``s3://`` through fsspec's filesystems) and the
run-directory rule. It imports nothing else of the project."""
from __future__ import annotations

import contextlib
import glob as _glob
import json
import os
import re
import tempfile
import uuid
from typing import IO, Iterator, Sequence

__all__ = ["WitError", "atomic_open", "atomic_write_json", "atomic_write_parquet", "is_local",
           "open_read", "exists", "match_paths", "read_json_or_none", "file_info", "remove", "glob_files",
           "finished_run", "expand_shards", "filesystem"]


class WitError(Exception):
    """A user-facing error: printed as one clear line, never a traceback."""


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def filesystem(path: str):
    """(fsspec filesystem, path inside it) for a local path or a remote URL."""
    import fsspec
    return fsspec.core.url_to_fs(path)


_remote = filesystem


def _with_protocol(path: str, like: str) -> str:
    proto = like.split("://", 1)[0]
    return path if "://" in path else f"{proto}://{path}"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open ``path`` for writing so that it appears only when complete.

    Local paths: write ``.name.tmp-XXXX`` in the same directory, fsync, then ``os.replace``.
    Remote paths (gs://, s3://): write a temporary object next to it, then move it into place;
    a failed write removes the temporary object and leaves ``path`` as it was.
    """
    if not is_local(path):
        fs, inner = _remote(path)
        parent, base = inner.rsplit("/", 1)
        tmp = f"{parent}/.{base}.tmp-{unique_tmp_suffix()}"
        try:
            with fs.open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
                yield fh
            fs.mv(tmp, inner)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(tmp)
            raise
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
    """A JSON file's content, or None when it is missing or not valid JSON (markers, summaries
    and stats that a later step may or may not have written)."""
    try:
        with open_read(path) as fh:
            return json.loads(fh.read().decode("utf-8"))
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
    fs, inner = _remote(path)
    return fs.open(inner, "rb")


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(_local(path))
    fs, inner = _remote(path)
    return fs.exists(inner)


def file_info(path: str) -> tuple[int, float | None]:
    """(size in bytes, modification time in seconds or None) of one file."""
    if is_local(path):
        st = os.stat(_local(path))
        return st.st_size, st.st_mtime
    fs, inner = _remote(path)
    info = fs.info(inner)
    mtime = info.get("mtime") or info.get("updated") or info.get("LastModified")
    if mtime is not None and not isinstance(mtime, (int, float)):
        with contextlib.suppress(Exception):
            import datetime as dt
            mtime = dt.datetime.fromisoformat(str(mtime).replace("Z", "+00:00")).timestamp()
    return int(info.get("size") or 0), mtime if isinstance(mtime, (int, float)) else None


def content_key(path: str, edge: int = 65536) -> str:
    """A cheap fingerprint of a file's content, for caches keyed by what a file holds rather
    than by its name: size, modification time (ns), the store's own checksum where it keeps one
    (GCS md5/crc32c, S3 ETag) and SHA-256 of the first and last ``edge`` bytes."""
    import hashlib
    if is_local(path):
        st = os.stat(_local(path))
        size, parts = st.st_size, [str(st.st_size), str(st.st_mtime_ns)]
    else:
        fs, inner = _remote(path)
        info = fs.info(inner)
        size = int(info.get("size") or 0)
        parts = [str(size)] + [str(info.get(k)) for k in ("mtime", "updated", "LastModified", "md5Hash",
                                                          "crc32c", "ETag") if info.get(k) is not None]
    h = hashlib.sha256("|".join(parts).encode())
    with open_read(path) as fh:
        h.update(fh.read(edge))
        if size > 2 * edge:
            fh.seek(size - edge)
            h.update(fh.read(edge))
        elif size > edge:
            h.update(fh.read())
    return h.hexdigest()[:32]


def glob_files(pattern: str) -> list[str]:
    """Files (not folders) matching a glob, local or remote, sorted; ``**`` crosses folders."""
    if is_local(pattern):
        return sorted(p for p in _glob.glob(_local(pattern), recursive=True) if os.path.isfile(p))
    fs, inner = _remote(pattern)
    found = fs.glob(inner, detail=True)
    return sorted(_with_protocol(p, pattern) for p, info in found.items() if info.get("type") != "directory")


def remove(paths) -> None:
    """Remove files (missing ones are fine)."""
    for path in paths:
        if is_local(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_local(path))
        else:
            fs, inner = _remote(path)
            with contextlib.suppress(FileNotFoundError):
                fs.rm(inner)


def match_paths(patterns: list[str], what: str = "input") -> list[str]:
    """Expand globs (local or remote) into a sorted list of files; a pattern matching nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        if is_local(pattern) and os.path.isdir(_local(pattern)):
            pattern = os.path.join(_local(pattern), "*")
        try:
            files = glob_files(pattern)
        except Exception as exc:  # a remote store's own error, with its cause
            raise WitError(f"{what} path {pattern!r} could not be listed: {exc}") from None
        files = [f for f in files if not os.path.basename(f).startswith(".")]
        if not files:
            raise WitError(f"{what} path {pattern!r} matches no files")
        out.extend(files)
    return out


# the temporary names atomic_open gives: ".NAME.tmp-XXXXXXXX" (mkstemp's or unique_tmp_suffix's letters)
TMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp-[A-Za-z0-9_]+")


def remove_temporaries(folder: str, names: str = r".+", folders: str | None = None) -> list[str]:
    """Remove what a killed run left in ``folder``: files named like atomic_open's temporaries of
    files whose name fully matches the regex ``names``, and the sub-folders whose name fully
    matches the regex ``folders`` (work folders); only call it while no other run writes there.
    Returns the removed paths."""
    fs, root = filesystem(folder.rstrip("/"))
    removed = []
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return removed
    wanted = re.compile(names)
    for entry in entries:
        path = entry["name"]
        base = path.rstrip("/").rsplit("/", 1)[-1]
        m = TMP_NAME.fullmatch(base)
        if entry.get("type") == "file" and m and wanted.fullmatch(m.group("name")):
            fs.rm(path)
            removed.append(path)
        elif entry.get("type") == "directory" and folders and re.fullmatch(folders, base):
            fs.rm(path, recursive=True)
            removed.append(path)
    return removed


def unique_tmp_suffix() -> str:
    return uuid.uuid4().hex[:8]


def expand_shards(patterns: Sequence[str] | str, what: str = "--shards", *, exts: Sequence[str] = (".tar",),
                  globs: str = "filter", must_exist: bool = True, unique: bool = True) -> list[str]:
    """The one shard-pattern expander: sources joined by ``::`` (OpenCLIP's convention), brace
    ranges (``IMAGES/{00000..00009}.tar``), globs, and folders (their files with the first of
    ``exts`` that has any). ``globs``: "filter" keeps the matches with one of ``exts``, "all" keeps
    every match, "off" takes ``*?[`` literally (URLs with a query string, ``pipe:`` commands).
    Plain paths must exist unless ``must_exist`` is off (remote training data is opened later);
    with ``unique``, a path listed twice is kept once."""
    import braceexpand

    if isinstance(patterns, str):
        patterns = [patterns]
    sources = [src.strip() for pattern in patterns for src in str(pattern).split("::") if src.strip()]
    out: list[str] = []
    for source in sources:
        for p in braceexpand.braceexpand(source):
            if is_local(p) and os.path.isdir(_local(p)):
                listed = sorted(f for f in os.listdir(_local(p)) if not f.startswith("."))
                files = next(([os.path.join(p, f) for f in listed if f.endswith(ext)]
                              for ext in exts if any(f.endswith(ext) for f in listed)), [])
                if not files:
                    raise WitError(f"{what}: directory {p!r} holds no {' or '.join(exts)} shards")
                out.extend(files)
            elif globs != "off" and any(c in p for c in "*?["):
                out.extend(f for f in match_paths([p], what) if globs == "all" or f.endswith(tuple(exts)))
            else:
                if must_exist and not exists(p):
                    raise WitError(f"{what}: {p!r} not found (does not exist)")
                out.append(p)
    if unique:
        out = list(dict.fromkeys(out))
    if not out:
        raise WitError(f"{what}: no shards in {list(patterns)}")
    return out


# -- the run-directory rule -------------------------------------------------------------------------
def finished_run(out: str, expect: dict, *, overwrite: bool, record: str = "stats.json",
                 needs: tuple = (), flag: str = "--overwrite") -> dict | None:
    """The one rule for an output folder whose completion record ``OUT/record`` is written last.

    - A finished run (the record, and every file in ``needs``, present) whose record holds
      ``expect`` (every key with an equal value): returned with ``"resumed": True``; the caller
      does nothing.
    - A finished run of other inputs or options: an error unless ``overwrite``; with it the old
      record is removed first, so a run killed half-way is never taken for either run.
    - No finished run: None; the caller runs.
    With ``overwrite`` a finished run of the same inputs and options is redone too.
    """
    out = out.rstrip("/")
    path = f"{out}/{record}"
    prev = read_json_or_none(path) if exists(path) else None
    if prev is None or not all(exists(f"{out}/{name}") for name in needs):
        return None
    if all(prev.get(k) == v for k, v in expect.items()) and not overwrite:
        prev["resumed"] = True
        return prev
    if not overwrite:
        raise WitError(f"{out} holds a finished run with other inputs or options; "
                       f"pass {flag} to replace it, or choose another --out")
    remove([path])
    return None
