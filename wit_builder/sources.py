"""Readers that turn raw web data into (image url, alt text, page url) candidates.

Three kinds of input, read through :func:`wit_builder.core.open_read` (local paths, or any fsspec
URL such as ``gs://`` / ``s3://``), gzipped or not:

* **WAT** (Common Crawl metadata): WARC ``metadata`` records whose JSON has
  ``Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata.Links``; entries with
  ``path == "IMG@/src"`` give ``url`` and ``alt`` (and ``title``). The page URL is the record's
  ``WARC-Target-URI``; ``HTML-Metadata.Head.Base`` (the page's ``<base href>``), when present, is
  the base for relative URLs. Records whose bytes do not contain ``"IMG@/src"`` are not parsed at
  all (request/metadata records and pages without images: about two thirds of a WAT).
* **WARC**: ``response`` records with a 2xx HTML payload are parsed with selectolax's Lexbor
  parser; every ``<img>`` gives ``src``, ``alt`` and ``title``; ``<base href>`` is honoured.
  Chunked transfer coding and gzip/deflate content coding are undone when the crawler kept them.
* **tables** (parquet, csv, tsv, jsonl; LAION/CC12M style): configurable url, caption and
  optional page-url columns.

Image URLs are made absolute (relative ones are resolved against the base/page URL; about 40% of
Common Crawl's image URLs are relative), ``data:`` and non-http(s) URLs are dropped. The text of a
pair is the ``alt`` attribute, or, when alt is missing or blank and ``title_fallback`` is on, the
``title`` attribute.

Everything that is not turned into a pair is counted in a :class:`collections.Counter` by reason:
``skipped.*`` for damaged input (see :mod:`wit_builder.warcfile` for WARC framing damage, plus
``invalid_json``, ``unexpected_json``, ``bad_http``, ``undecodable_body``, ``binary_payload``,
``bad_table_row``), ``dropped.*`` for candidates without text (``empty_text``) or that failed a URL
check (``empty_url``, ``data_url``, ``non_http_url``, ``relative_url_without_base``, ``bad_url``,
``url_too_long``). No
input makes a reader raise except a missing file or a table without the named columns (a
:class:`~wit_builder.core.WitError`).
"""
from __future__ import annotations

import gzip
import io
import json
import zlib
from collections import Counter
from typing import IO, Iterator

from wit_builder.core import WitError, open_read
from wit_builder.candidates import SourceOptions, _safe_base, resolve_url  # noqa: F401 (re-exported)
from wit_builder.webarchive import warc_candidates, wat_candidates

__all__ = ["SourceOptions", "detect_format", "iter_candidates", "resolve_url", "check_table_columns",
           "TABLE_FORMATS"]

TABLE_FORMATS = ("parquet", "csv", "tsv", "jsonl")


def detect_format(path: str, fmt: str = "auto") -> str:
    """``wat``, ``warc`` or a table format for ``path`` (by name unless ``fmt`` says otherwise)."""
    if fmt != "auto":
        if fmt not in ("wat", "warc") + TABLE_FORMATS:
            raise WitError(f"unknown input format {fmt!r}: use auto, wat, warc, {', '.join(TABLE_FORMATS)}")
        return fmt
    name = path.rsplit("/", 1)[-1].lower()
    for suffix in (".gz", ".gzip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith(".wat") or ".wat." in name:
        return "wat"
    if name.endswith((".warc", ".arc")) or ".warc." in name:
        return "warc"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise WitError(f"cannot tell the format of {path!r} from its name; pass --input-format "
                   f"(wat, warc, {', '.join(TABLE_FORMATS)})")


# -- URLs -----------------------------------------------------------------------------------------
def _maybe_gunzip(raw: IO[bytes]) -> IO[bytes]:
    buffered = io.BufferedReader(raw) if not hasattr(raw, "peek") else raw
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered)
    return buffered


def _table_columns(opts: SourceOptions) -> list[str]:
    cols = [opts.url_col, opts.caption_col]
    if opts.page_url_col:
        cols.append(opts.page_url_col)
    if not opts.table_header:      # pyarrow names header-less columns f0, f1, ...; accept 0, 1, ... too
        cols = [f"f{c}" if c.isdigit() else c for c in cols]
    return cols


def check_table_columns(path: str, fmt: str, opts: SourceOptions) -> None:
    """Raise WitError if a parquet/csv/tsv table lacks a configured column (jsonl: per row)."""
    if fmt == "jsonl":
        return
    with open_read(path) as raw:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            import pyarrow as pa
            try:
                names = pq.ParquetFile(raw).schema_arrow.names
            except (pa.ArrowInvalid, OSError) as exc:
                raise WitError(f"{path}: not a readable parquet file ({exc})") from None
        else:
            reader = _open_csv(_maybe_gunzip(raw), fmt, opts, Counter())
            names = reader.schema.names
    missing = [c for c in _table_columns(opts) if c not in names]
    if missing:
        raise WitError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, names[:20]))}); "
                       f"set --url-col/--caption-col/--page-url-col")


def _open_csv(stream, fmt: str, opts: SourceOptions, stats: Counter):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def bad_row(row):
        stats["skipped.bad_table_row"] += 1
        return "skip"

    read = pacsv.ReadOptions(block_size=1 << 22, autogenerate_column_names=not opts.table_header)
    parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", invalid_row_handler=bad_row,
                               quote_char=False if fmt == "tsv" else '"', newlines_in_values=fmt != "tsv")
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in _table_columns(opts)},
                                   strings_can_be_null=False)
    try:
        return pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise WitError(f"cannot read table: {exc}") from None


def _rows_from_columns(cols: list[list], stats: Counter) -> Iterator[tuple]:
    if len(cols) == 2:
        cols = cols + [[None] * len(cols[0])]
    for url, text, page in zip(*cols):
        page = _safe_base(page)
        if text is not None and not isinstance(text, str):
            text = str(text)
        yield url, text, page, page


def _table_candidates(raw: IO[bytes], fmt: str, opts: SourceOptions, stats: Counter, path: str) -> Iterator[tuple]:
    import pyarrow as pa
    names = _table_columns(opts)
    if fmt == "parquet":
        import pyarrow.parquet as pq
        try:
            pf = pq.ParquetFile(raw)
        except (pa.ArrowInvalid, OSError):
            stats["skipped.unreadable_table"] += 1
            return
        missing = [c for c in names if c not in pf.schema_arrow.names]
        if missing:
            raise WitError(f"{path}: no column {missing[0]!r}")
        try:
            for batch in pf.iter_batches(batch_size=65536, columns=names):
                stats["records_read"] += batch.num_rows
                cols = [batch.column(i).cast(pa.string()).to_pylist() for i in range(len(names))]
                yield from _rows_from_columns(cols, stats)
        except (pa.ArrowInvalid, OSError):
            stats["skipped.unreadable_table"] += 1
        return
    stream = _maybe_gunzip(raw)
    if fmt == "jsonl":
        for line in stream:
            line = line.strip()
            if not line:
                continue
            stats["records_read"] += 1
            try:
                row = json.loads(line)
            except (ValueError, UnicodeDecodeError, RecursionError):
                stats["skipped.invalid_json"] += 1
                continue
            if not isinstance(row, dict):
                stats["skipped.bad_table_row"] += 1
                continue
            page = row.get(opts.page_url_col) if opts.page_url_col else None
            text = row.get(opts.caption_col)
            if text is not None and not isinstance(text, str):
                text = str(text)
            page = _safe_base(page)
            yield row.get(opts.url_col), text, page, page
        return
    reader = _open_csv(stream, fmt, opts, stats)
    missing = [c for c in names if c not in reader.schema.names]
    if missing:
        raise WitError(f"{path}: no column {missing[0]!r}")
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError, EOFError):
            stats["skipped.unreadable_table"] += 1    # e.g. a truncated gzip stream
            return
        stats["records_read"] += batch.num_rows
        cols = [batch.column(batch.schema.get_field_index(c)).to_pylist() for c in names]
        yield from _rows_from_columns(cols, stats)


# -- all ------------------------------------------------------------------------------------------
def iter_candidates(path: str, fmt: str, opts: SourceOptions, stats: Counter) -> Iterator[tuple]:
    """Yield ``(url, text, page_url or None)`` for every image reference in ``path`` that has a
    non-blank text and a usable URL.

    A reference without text is counted as ``dropped.empty_text`` (checked first), one whose URL
    fails as ``dropped.<reason>``; neither is yielded. ``stats["pairs_extracted"]`` counts every
    reference, yielded or not. URLs are resolved; texts are raw (see :mod:`wit_builder.textclean`)."""
    max_url = opts.max_url_chars
    try:
        raw = open_read(path)
    except OSError as exc:
        raise WitError(f"cannot open input {path}: {exc}") from None
    with raw:
        if fmt == "wat":
            it = wat_candidates(raw, opts, stats)
        elif fmt == "warc":
            it = warc_candidates(raw, opts, stats)
        else:
            it = _table_candidates(raw, fmt, opts, stats, path)
        try:
            for src, text, page, base in it:
                stats["pairs_extracted"] += 1
                if not text or text.isspace():          # checked first: it is the cheapest check
                    stats["dropped.empty_text"] += 1
                    continue
                url, reason = resolve_url(src, base, max_url)
                if url is None:
                    stats["dropped." + reason] += 1
                    continue
                yield url, text, page
        except (OSError, EOFError, zlib.error):
            # a read error below the WARC/gzip layers (e.g. a remote stream that broke off)
            stats["skipped.read_error"] += 1
