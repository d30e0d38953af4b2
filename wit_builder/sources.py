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
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import IO, Iterator
from urllib.parse import urljoin, urlsplit

from wit_builder.core import WitError, open_read
from wit_builder.warcfile import iter_records, split_http

__all__ = ["SourceOptions", "detect_format", "iter_candidates", "resolve_url", "check_table_columns",
           "TABLE_FORMATS"]

TABLE_FORMATS = ("parquet", "csv", "tsv", "jsonl")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)
_IMG_MARK = b'"IMG@/src"'


@dataclass(frozen=True)
class SourceOptions:
    """How to read inputs. ``fmt``: ``auto`` (by file name), ``wat``, ``warc``, or a table format."""
    fmt: str = "auto"
    url_col: str = "url"
    caption_col: str = "caption"
    page_url_col: str | None = None
    table_header: bool = True
    title_fallback: bool = True
    max_url_chars: int = 2048


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
def resolve_url(src, base: str | None, max_chars: int = 2048) -> tuple[str | None, str | None]:
    """Absolute http(s) URL for ``src`` (relative to ``base``), or ``(None, reason)``.

    Leading/trailing whitespace is stripped and tabs/newlines removed (as browsers do), spaces
    become ``%20``; nothing else is rewritten, so an absolute URL stays as the page wrote it.
    """
    if not isinstance(src, str):
        return None, "empty_url"
    url = src.strip()
    if not url:
        return None, "empty_url"
    if "\t" in url or "\n" in url or "\r" in url:
        url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    head = url[:8].lower()
    if head.startswith("data:"):
        return None, "data_url"
    if not (head.startswith("http://") or head.startswith("https://")):
        m = _SCHEME.match(url)
        if m and m.group(1).lower() not in ("http", "https"):
            return None, "non_http_url"
        if not base:
            return None, "relative_url_without_base"
        joined = _quick_join(base, url)
        if joined is None:
            try:
                joined = urljoin(base, url)
            except ValueError:
                return None, "bad_url"
        url = joined
        head = url[:8].lower()
        if not (head.startswith("http://") or head.startswith("https://")):
            return None, "non_http_url"
    if " " in url:
        url = url.replace(" ", "%20")
    if len(url) > max_chars:
        return None, "url_too_long"
    rest = url[url.index("//") + 2:]
    host_end = len(rest)
    for c in "/?#":
        i = rest.find(c)
        if 0 <= i < host_end:
            host_end = i
    if host_end == 0 or rest[:host_end].startswith(("@", ":")):
        return None, "bad_url"
    if "[" in url or "]" in url:
        try:
            urlsplit(url)                  # rejects malformed IPv6 hosts
        except ValueError:
            return None, "bad_url"
    if not url.isascii():
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:
            return None, "bad_url"       # lone surrogates from a broken JSON escape
    return url, None


def _quick_join(base: str, ref: str) -> str | None:
    """``urljoin(base, ref)`` for the common shapes of relative image URLs (``/path``, ``//host/path``,
    ``dir/file``) when no dot segment or backslash needs RFC 3986 normalisation; None otherwise."""
    if "\\" in ref or "/." in ref or ref.startswith((".", "?", "#", ";")) or "://" not in base:
        return None
    scheme_end = base.index("://")
    if ref.startswith("//"):
        return base[:scheme_end + 1] + ref if ref[2:3].isalnum() and "//" not in ref[2:] else None
    if "//" in ref:
        return None                     # urljoin collapses empty path segments
    host_start = scheme_end + 3
    path_start = len(base)
    for c in "/?#":
        i = base.find(c, host_start)
        if 0 <= i < path_start:
            path_start = i
    if ref.startswith("/"):
        return base[:path_start] + ref if "//" not in ref else None
    if ":" in ref.split("/", 1)[0]:
        return None
    end = len(base)
    for c in "?#":
        i = base.find(c, path_start)
        if 0 <= i < end:
            end = i
    path = base[path_start:end]
    if "//" in path:
        return None
    if "/." in path or not path.startswith("/"):
        return base[:path_start] + "/" + ref if not path else None
    return base[:path_start] + path[:path.rfind("/") + 1] + ref


def _safe_base(url) -> str | None:
    if not isinstance(url, str) or not url:
        return None
    if not url.isascii():
        url = url.encode("utf-8", "replace").decode("utf-8")
    return url


# -- WAT ------------------------------------------------------------------------------------------
def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _wat_candidates(raw: IO[bytes], opts: SourceOptions, stats: Counter) -> Iterator[tuple]:
    skips = Counter()
    try:
        for rec in iter_records(raw, skips):
            stats["records_read"] += 1
            if rec.type != "metadata":
                continue
            body = rec.body
            if _IMG_MARK not in body:
                continue
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                stats["skipped.invalid_json"] += 1
                continue
            links = _get(doc, "Envelope", "Payload-Metadata", "HTTP-Response-Metadata", "HTML-Metadata", "Links")
            if not isinstance(links, list):
                stats["skipped.unexpected_json"] += 1
                continue
            stats["pages"] += 1
            page = _safe_base(rec.headers.get("warc-target-uri")) or \
                _safe_base(_get(doc, "Envelope", "WARC-Header-Metadata", "WARC-Target-URI"))
            base = page
            head_base = _get(doc, "Envelope", "Payload-Metadata", "HTTP-Response-Metadata", "HTML-Metadata",
                             "Head", "Base")
            if isinstance(head_base, str) and head_base.strip():
                resolved, _ = resolve_url(head_base, page, opts.max_url_chars)
                base = resolved or base
            for link in links:
                if not isinstance(link, dict) or link.get("path") != "IMG@/src":
                    continue
                alt = link.get("alt")
                text = alt if isinstance(alt, str) else None
                if opts.title_fallback and (text is None or not text.strip()):
                    title = link.get("title")
                    if isinstance(title, str) and title.strip():
                        text = title
                yield link.get("url"), text, page, base
    finally:
        for k, n in skips.items():
            stats["skipped." + k] += n


# -- WARC -----------------------------------------------------------------------------------------
def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("chunk size line missing")
        size = int(data[pos:eol].split(b";")[0].strip() or b"x", 16)
        if size == 0:
            return bytes(out)
        start = eol + 2
        if start + size > len(data):
            raise ValueError("chunk runs past the end")
        out += data[start:start + size]
        pos = start + size + 2


def _decode_body(payload: bytes, headers: dict) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        payload = _dechunk(payload)
    enc = headers.get("content-encoding", "").lower().strip()
    if enc in ("gzip", "x-gzip"):
        payload = zlib.decompress(payload, 47)
    elif enc == "deflate":
        try:
            payload = zlib.decompress(payload)
        except zlib.error:
            payload = zlib.decompress(payload, -15)
    return payload


def _charset(content_type: str, payload: bytes) -> str:
    m = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_\-:.]+)", content_type, re.I)
    if m:
        return m.group(1)
    m = _META_CHARSET.search(payload[:4096])
    return m.group(1).decode("ascii", "replace") if m else "utf-8"


def _warc_candidates(raw: IO[bytes], opts: SourceOptions, stats: Counter) -> Iterator[tuple]:
    from selectolax.lexbor import LexborHTMLParser
    skips = Counter()
    try:
        for rec in iter_records(raw, skips):
            stats["records_read"] += 1
            if rec.type != "response":
                continue
            status, headers, payload = split_http(rec.body)
            if status is None:
                stats["skipped.bad_http"] += 1
                continue
            if not 200 <= status < 300:
                stats["responses_not_2xx"] += 1
                continue
            ctype = headers.get("content-type", "")
            if ctype and "html" not in ctype.lower():
                stats["responses_not_html"] += 1
                continue
            try:
                payload = _decode_body(payload, headers)
            except (ValueError, zlib.error):
                stats["skipped.undecodable_body"] += 1
                continue
            if b"\x00" in payload[:4096]:
                stats["skipped.binary_payload"] += 1     # an image or other binary file served as HTML
                continue
            charset = _charset(ctype, payload)
            try:
                text = payload.decode(charset, errors="replace")
            except LookupError:
                text = payload.decode("utf-8", errors="replace")
            page = _safe_base(rec.headers.get("warc-target-uri"))
            tree = LexborHTMLParser(text)
            stats["pages"] += 1
            base = page
            base_node = tree.css_first("base[href]")
            if base_node is not None:
                href = base_node.attributes.get("href")
                if href and href.strip():
                    resolved, _ = resolve_url(href, page, opts.max_url_chars)
                    base = resolved or base
            for img in tree.css("img"):
                attrs = img.attributes
                alt = attrs.get("alt")
                txt = alt
                if opts.title_fallback and (txt is None or not txt.strip()):
                    title = attrs.get("title")
                    if title and title.strip():
                        txt = title
                yield attrs.get("src"), txt, page, base
    finally:
        for k, n in skips.items():
            stats["skipped." + k] += n


# -- tables ---------------------------------------------------------------------------------------
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
            it = _wat_candidates(raw, opts, stats)
        elif fmt == "warc":
            it = _warc_candidates(raw, opts, stats)
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
