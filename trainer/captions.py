"""Captions for learning a tokenizer: from WebDataset tars, Parquet tables or text files."""
from __future__ import annotations

import tarfile
from typing import Iterator

from wit_builder.core import WitError, expand_shards

__all__ = ["expand_paths", "iter_captions"]


def expand_paths(spec: str) -> list[str]:
    """Caption files: ``a::b`` sources, ``{00000..00009}`` braces, globs (any file: .tar and .parquet
    by type, others as text lines), and folders (their .tar files, else .parquet, else .txt)."""
    return expand_shards(spec, "captions input", exts=(".tar", ".parquet", ".txt"), globs="all", unique=False)


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
