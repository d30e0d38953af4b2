"""Completion records: a stage's output folder says whether the run that wrote it finished, and
which files are its outputs, so no later stage takes a killed run's output, or an earlier run's
leftovers, for a finished one.

A stage calls :func:`begin` before it writes anything (the old record is removed, then
``OUT/_wit/running.json`` written) and :func:`complete` last (``OUT/_wit/complete.json``: the
stage, what it read, every output file with its size, the counts; then the running marker is
removed). A later stage calls :func:`verify_inputs` on the files it is about to read: a file in a
folder (or one level below it, e.g. ``BALANCED/balanced/part-*.parquet``) that holds

- a completion record: the file must be one of the record's outputs, with the recorded size;
- only a running marker: refused, the producing stage did not finish (killed, or still running);
- neither: not written by a wit stage (a user's own table or shards), taken as it is.

Sizes, not content hashes, are compared: a hash would mean reading every byte of every shard
again; a stage's outputs are written under temporary names and renamed, so a changed file is a
rewritten one and its size is what a re-run changes in practice.
"""
from __future__ import annotations

import os
import time

from wit_builder.core import (WitError, atomic_write_json, exists, file_info, read_json_or_none, remove,
                              remove_temporaries)

__all__ = ["RECORD", "RUNNING", "begin", "complete", "complete_folder", "read_record", "verify_inputs",
           "file_entries"]

RECORD = "_wit/complete.json"   # in a folder of its own: img2dataset reads every OUT/*.json as a shard's
RUNNING = "_wit/running.json"
_MAX_LISTED_INPUTS = 10_000


def begin(out: str, stage: str, subfolders: tuple[str, ...] = ()) -> None:
    """Mark ``out`` as being written by ``stage``: the old completion record goes first, then the
    temporaries a killed run left in ``out`` and its ``subfolders`` (atomic_open's names)."""
    out = out.rstrip("/")
    remove([f"{out}/{RECORD}"])
    for folder in (out, *(f"{out}/{sub}" for sub in subfolders)):
        remove_temporaries(folder)
    atomic_write_json(f"{out}/{RUNNING}", {"stage": stage, "started": time.time(), "pid": os.getpid()})


def file_entries(paths, root: str | None = None) -> list[dict]:
    """``{"path", "bytes"}`` of each file, the path relative to ``root`` when given."""
    out = []
    for path in paths:
        size = file_info(path)[0]
        name = _relative(path, root) if root else path
        out.append({"path": name, "bytes": int(size)})
    return out


def complete(out: str, stage: str, outputs, *, inputs=(), counts: dict | None = None) -> dict:
    """Write ``out``'s completion record (last), listing ``outputs`` (paths in ``out``)."""
    out = out.rstrip("/")
    inputs = list(inputs)
    record = {"stage": stage, "finished": time.time(),
              "outputs": sorted(file_entries(outputs, out), key=lambda e: e["path"]),
              "counts": dict(counts or {})}
    if len(inputs) <= _MAX_LISTED_INPUTS:
        record["inputs"] = file_entries(inputs)
    else:
        record["inputs"] = {"files": len(inputs), "bytes": int(sum(file_info(p)[0] for p in inputs))}
    atomic_write_json(f"{out}/{RECORD}", record)
    remove([f"{out}/{RUNNING}"])
    return record


def complete_folder(out: str, stage: str, *, inputs=(), counts: dict | None = None,
                    skip: tuple[str, ...] = ()) -> dict:
    """:func:`complete` with every file under ``out`` as an output, except the record, the
    running marker, temporaries (names starting with ".") and paths starting with one of ``skip``."""
    from wit_builder.core import filesystem
    out = out.rstrip("/")
    fs, root = filesystem(out)
    files = []
    for found in sorted(fs.find(root)):
        rel = _relative(found, root)
        parts = rel.split("/")
        if rel in (RECORD, RUNNING) or any(p.startswith(".") for p in parts) or rel.startswith(tuple(skip)):
            continue
        files.append(f"{out}/{rel}")
    return complete(out, stage, files, inputs=inputs, counts=counts)


def read_record(folder: str) -> dict | None:
    rec = read_json_or_none(f"{folder.rstrip('/')}/{RECORD}")
    return rec if isinstance(rec, dict) and isinstance(rec.get("outputs"), list) else None


def _relative(path: str, root: str) -> str:
    path, root = path.removeprefix("file://"), root.removeprefix("file://").rstrip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return os.path.relpath(path, root) if "://" not in path else path


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0]


def verify_inputs(paths, what: str) -> list[str]:
    """``paths``, after refusing any that an unfinished or another run of a wit stage left (one
    line naming the stage to re-run). See the module's docstring for the rule."""
    paths = list(paths)
    state: dict[str, tuple] = {}  # folder -> (record or None, running marker or None)

    def folder_state(folder):
        if folder not in state:
            rec = read_record(folder)
            run = None
            if rec is None and exists(f"{folder}/{RUNNING}"):
                run = read_json_or_none(f"{folder}/{RUNNING}") or {"stage": "?"}
            state[folder] = (rec, run)
        return state[folder]

    for path in paths:
        for folder in (_parent(path), _parent(_parent(path))):
            if not folder:
                continue
            rec, running = folder_state(folder)
            if rec is not None:
                stage = rec.get("stage", "?")
                sizes = {e["path"]: e.get("bytes") for e in rec["outputs"] if isinstance(e, dict)}
                name = _relative(path, folder)
                if name not in sizes:
                    raise WitError(f"{what}: {path} is not an output of the finished `wit {stage}` run in "
                                   f"{folder} (left from an earlier run?); re-run `wit {stage}` there "
                                   "or remove the file")
                size = file_info(path)[0] if exists(path) else None
                if size != sizes[name]:
                    raise WitError(f"{what}: {path} changed after `wit {stage}` finished ({size} bytes, "
                                   f"its record says {sizes[name]}); re-run `wit {stage}`")
                break
            if running is not None:
                stage = running.get("stage", "?") if isinstance(running, dict) else "?"
                raise WitError(f"{what}: {folder} holds an unfinished `wit {stage}` run (killed, or still "
                               f"running); re-run `wit {stage}` to finish it")
    return paths
