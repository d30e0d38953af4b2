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
``bad_table_row``, ``unreadable_table``, ``read_error``, ``empty_file`` (a file that holds no data: 0
bytes, or compressed data that holds nothing), ``unterminated_quote_rows`` (the rows of a CSV file
lost to a quote that is never closed: from the row that opens it to the end of the file, which the
CSV parser would otherwise have made one value; also logged as a warning naming the file and line)),
``dropped.*`` for candidates without text (``empty_text``) or that failed a URL
check (``empty_url``, ``data_url``, ``non_http_url``, ``relative_url_without_base``, ``bad_url``,
``url_too_long``). No
input makes a reader raise except a missing file or a table without the named columns (a
:class:`~wit_builder.core.WitError`).
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from collections import Counter
from typing import IO, Iterator

import numpy as np

from wit_builder.core import WitError, open_read
from wit_builder.candidates import SourceOptions, _safe_base, resolve_url  # noqa: F401 (re-exported)
from wit_builder.webarchive import warc_candidates, wat_candidates

__all__ = ["SourceOptions", "detect_format", "iter_candidates", "resolve_url", "check_table_columns",
           "TABLE_FORMATS"]

TABLE_FORMATS = ("parquet", "csv", "tsv", "jsonl")
log = logging.getLogger(__name__)


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
        if _is_empty(raw):
            return                      # counted as skipped.empty_file when read
        if fmt == "parquet":
            import pyarrow.parquet as pq
            import pyarrow as pa
            try:
                names = pq.ParquetFile(raw).schema_arrow.names
            except (pa.ArrowInvalid, OSError) as exc:
                raise WitError(f"{path}: not a readable parquet file ({exc})") from None
        else:
            stream = _maybe_gunzip(raw)
            if not stream.peek(1):
                return
            names = _open_csv(stream, fmt, opts, Counter(), path).schema.names
    missing = [c for c in _table_columns(opts) if c not in names]
    if missing:
        raise WitError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, names[:20]))}); "
                       f"set --url-col/--caption-col/--page-url-col")


def _is_empty(raw: IO[bytes]) -> bool:
    """True for a stream with no bytes at all (left at its start)."""
    if hasattr(raw, "peek"):
        return not raw.peek(1)
    if raw.read(1):
        raw.seek(0)
        return False
    return True


def _open_csv(stream, fmt: str, opts: SourceOptions, stats: Counter, path: str):
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
        raise WitError(f"{path}: cannot read the table ({exc})") from None


_BOM = b"\xef\xbb\xbf"


class _QuoteWatch(io.RawIOBase):
    """A CSV byte stream handed to pyarrow, watched on the way for a quote that is never closed.

    pyarrow's quoting rules: a field that starts with ``"`` is quoted, ``""`` inside it is a quote,
    the next lone ``"`` ends it; a ``"`` elsewhere is an ordinary character. When the file ends
    inside a quoted field, pyarrow silently makes everything from the opening quote to the end of
    the file one value. ``unterminated`` says so; ``open_line`` (1-based) and ``open_col``
    (0-based) say where the quote opened, ``lost_rows`` how many lines it swallowed (its own
    included).

    Vectorised per read: only runs of an odd number of quotes change the state, a run at the
    start of a field flips it (opens or closes) and any other sets it to "outside" (closes, or is
    an ordinary character); so the state after each run is the parity of the flips since the last
    "outside" run. Quotes at the end of a read are held back (their run may go on)."""

    def __init__(self, stream, delimiter: bytes = b","):
        super().__init__()
        self.stream, self.delim = stream, delimiter[0]
        self.carry = b""             # quotes at the end of the last read, not yet scanned
        self.prev = self.delim       # the byte before the next one scanned (the file start: a field start)
        self.start = True            # nothing scanned yet (a byte order mark may come)
        self.inside = False          # inside a quoted field at the end of what was scanned
        self.col = 0                 # field number there (of the open quoted field when inside)
        self.lines = 0               # newlines scanned
        self.open_line = self.open_col = self.quoted_lines = 0
        self.last = b""
        self.eof = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        data = self.stream.read(n)
        self.last, self.eof = data[-1:] or self.last, not data
        self._scan(self.carry + data)
        return data

    @property
    def unterminated(self) -> bool:
        return self.eof and self.inside

    @property
    def lost_rows(self) -> int:
        return 1 + self.quoted_lines - (self.last == b"\n")

    def _scan(self, buf: bytes) -> None:
        if self.start:
            if len(buf) < 3 and _BOM.startswith(buf) and not self.eof:
                self.carry = buf
                return
            self.start = False
            buf = buf[3:] if buf.startswith(_BOM) else buf
        keep = len(buf) - len(buf.rstrip(b'"')) if not self.eof else 0
        self.carry = buf[len(buf) - keep:] if keep else b""
        buf = buf[:len(buf) - keep]
        if not buf:
            return
        a = np.frombuffer(buf, np.uint8)
        q = np.flatnonzero(a == 34)
        odd = after = np.zeros(0, np.int64)
        if q.size:
            cut = np.flatnonzero(np.diff(q) != 1) + 1
            starts = q[np.r_[0, cut]]
            odd = starts[np.diff(np.r_[0, cut, q.size]) % 2 == 1]
        if odd.size:
            before = np.where(odd > 0, a[np.maximum(odd - 1, 0)], self.prev)
            flip = (before == self.delim) | (before == 10) | (before == 13)
            flips = np.cumsum(flip)
            outside = np.maximum.accumulate(np.where(flip, -1, np.arange(odd.size)))
            base = np.where(outside >= 0, flips[np.maximum(outside, 0)], 0)
            after = (np.where(outside >= 0, 0, int(self.inside)) + flips - base) % 2
        newlines = a == 10
        if after.size and after[-1]:                 # a quote opened here is still open
            at = int(odd[-1])
            self.open_line = self.lines + int(np.count_nonzero(newlines[:at])) + 1
            self.open_col = self._col(a, at, odd, after)
            self.quoted_lines = int(np.count_nonzero(newlines[at:]))
            self.inside, self.col = True, self.open_col
        elif after.size or not self.inside:
            self.col, self.inside = self._col(a, len(a), odd, after), False
        else:                                        # still inside a quote opened before
            self.quoted_lines += int(np.count_nonzero(newlines))
        self.lines += int(np.count_nonzero(newlines))
        self.prev = buf[-1]

    def _col(self, a, x: int, odd, after) -> int:
        """Field number at ``a[x]`` (outside quotes): delimiters outside quotes back to the last
        line break outside quotes (or to this read's start, then plus the number there)."""
        def outside(pos):
            g = np.searchsorted(odd, pos)
            return np.where(g > 0, after[np.maximum(g - 1, 0)] if after.size else 0, int(self.inside)) == 0

        head = a[:x]
        breaks = np.flatnonzero((head == 10) | (head == 13))
        breaks = breaks[outside(breaks)]
        start, col = (int(breaks[-1]) + 1, 0) if breaks.size else (0, self.col)
        delims = np.flatnonzero(head[start:] == self.delim) + start
        return col + int(np.count_nonzero(outside(delims)))


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
        if _is_empty(raw):
            stats["skipped.empty_file"] += 1
            return
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
    if not stream.peek(1):
        stats["skipped.empty_file"] += 1
        return
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
    watch = _QuoteWatch(stream) if fmt == "csv" else None
    reader = _open_csv(watch or stream, fmt, opts, stats, path)
    missing = [c for c in names if c not in reader.schema.names]
    if missing:
        raise WitError(f"{path}: no column {missing[0]!r}")
    last = None          # held back: the last batch may end with the row of an unterminated quote
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError, EOFError):
            stats["skipped.unreadable_table"] += 1    # e.g. a truncated gzip stream
            watch = None
            break
        if last is not None:
            yield from _batch_rows(last, names, stats)
        last = batch
    if watch is not None and watch.unterminated:
        last = _unterminated_quote(watch, last, len(reader.schema.names), stats, path)
    if last is not None:
        yield from _batch_rows(last, names, stats)


def _batch_rows(batch, names: list[str], stats: Counter) -> Iterator[tuple]:
    stats["records_read"] += batch.num_rows
    cols = [batch.column(batch.schema.get_field_index(c)).to_pylist() for c in names]
    yield from _rows_from_columns(cols, stats)


def _unterminated_quote(watch: _QuoteWatch, last, num_columns: int, stats: Counter, path: str):
    """The file ended inside a quoted field: count the rows lost and take the row that opened the
    quote out of the last batch (it holds the rest of the file as one value). When that row had
    the wrong number of fields, pyarrow already skipped it as a bad row: counted here instead."""
    if watch.open_col + 1 == num_columns and last is not None and last.num_rows:
        last = last.slice(0, last.num_rows - 1)
    elif stats["skipped.bad_table_row"] > 0:
        stats["skipped.bad_table_row"] -= 1
    stats["skipped.unterminated_quote_rows"] += watch.lost_rows
    log.warning("%s: a quote opened on line %d is never closed; its row and every line after it are lost "
                "(%d rows, counted as skipped.unterminated_quote_rows)", path, watch.open_line, watch.lost_rows)
    return last


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
