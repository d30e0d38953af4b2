"""Captions for learning a tokenizer: from WebDataset tars, Parquet tables or text files."""
from __future__ import annotations

import glob
import os
import tarfile
from typing import Iterator

from wit_builder.core import WitError

__all__ = ["expand_paths", "iter_captions"]


def expand_paths(spec: str) -> list[str]:
    """Expand ``a::b`` sources, ``{00000..00009}`` braces and globs to existing files."""
    import braceexpand
    paths: list[str] = []
    for source in spec.split("::"):
        for item in braceexpand.braceexpand(source.strip()):
            if os.path.isdir(item):
                paths.extend(sorted(glob.glob(os.path.join(item, "*.tar")))
                             or sorted(glob.glob(os.path.join(item, "*.parquet")))
                             or sorted(glob.glob(os.path.join(item, "*.txt"))))
            elif any(c in item for c in "*?["):
                paths.extend(sorted(glob.glob(item)))
            elif os.path.exists(item):
                paths.append(item)
            else:
                raise WitError(f"captions input not found: {item}")
    if not paths:
        raise WitError(f"no caption files match {spec!r}")
    return paths


def iter_captions(spec: str, column: str | None = None) -> Iterator[str]:
    """Captions from WebDataset tars (``.txt`` members), Parquet (``text``/``caption`` column)
    or text files (one caption per line)."""
    for path in expand_paths(spec):
        if path.endswith(".tar"):
            try:
                with tarfile.open(path) as tf:
                    for member in tf:
                        if member.isfile() and member.name.endswith(".txt"):
                            yield tf.extractfile(member).read().decode("utf-8", errors="replace")
            except tarfile.TarError as exc:
                raise WitError(f"{path}: not a readable tar ({exc})") from None
        elif path.endswith(".parquet"):
            import pyarrow.parquet as pq
            names = pq.read_schema(path).names
            col = column or next((c for c in ("text", "caption") if c in names), None)
            if col is None or col not in names:
                raise WitError(f"{path}: no caption column (looked for {column or 'text, caption'})")
            for value in pq.read_table(path, columns=[col]).column(col).to_pylist():
                if value:
                    yield value
        else:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.strip():
                        yield line.rstrip("\n")
