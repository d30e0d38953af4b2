"""Read MediaWiki XML exports (Wikipedia ``pages-articles`` dumps) in parallel-friendly work units.

Inputs, by name:

* ``*.xml`` — plain XML: one work unit per file;
* ``*.bz2`` — bzip2, single or multiple streams; Wikimedia's ``pagesN`` part files
  (``enwiki-...-pages-articles1.xml-p1p41242.bz2``) are one work unit each;
* ``*-multistream.xml.bz2`` with its ``*-multistream-index.txt.bz2`` (lines ``OFFSET:ID:TITLE``;
  found next to the dump, or given): the dump is cut at the bz2 stream offsets of the index into
  work units of about ``unit_bytes`` compressed bytes, so a 22 GB dump spreads over many workers.

Each work unit yields its pages. Pages are cut out of the decompressed bytes at ``<page>`` /
``</page>`` (XML text cannot contain a literal ``<``, so these only occur as tags) and parsed one at
a time, so one bad page costs only itself. Problems are counted, never fatal:

* ``stream.corrupt_bz2`` (bytes that are not bzip2: the rest of that stream is lost; the next
  stream of a multistream unit is read normally), ``stream.truncated_bz2`` (input ends inside a
  stream: the pages decoded before the cut are kept); each also logged as a warning naming the file;
* ``page.malformed_xml``, ``page.incomplete`` (a ``<page>`` without ``</page>``),
  ``page.missing_fields`` (no title or ns), ``page.redirect``, ``page.namespace`` (not ns 0);
* ``repaired.invalid_utf8``: a page with bytes that are not UTF-8 is decoded with U+FFFD in their
  place and kept.
"""
from __future__ import annotations

import bz2
import logging
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from typing import IO, Iterator

from wit_builder.core import WitError, exists, file_info, open_read

__all__ = ["WorkUnit", "PageRecord", "plan_units", "read_index_offsets", "index_path_for",
           "read_unit", "iter_articles", "parse_page", "PageSplitter", "file_size", "check_dump"]

CHUNK = 1 << 20
log = logging.getLogger(__name__)
_REDIRECT_TEXT = re.compile(r"\s*#redirect\b", re.IGNORECASE)


@dataclass(frozen=True)
class WorkUnit:
    """A slice of one dump file. ``offsets``: the bz2 stream starts of a multistream slice (empty
    means the whole file); ``end``: where the slice's last stream ends (None: end of file)."""
    path: str
    offsets: tuple[int, ...] = ()
    end: int | None = None

    @property
    def compressed(self) -> bool:
        return self.path.endswith(".bz2")


@dataclass(frozen=True)
class PageRecord:
    title: str
    ns: int
    id: int | None
    redirect: bool
    text: str


def file_size(path: str) -> int:
    return file_info(path)[0]


def index_path_for(dump_path: str) -> str | None:
    """The multistream index that sits next to ``X-multistream.xml.bz2``, if it exists."""
    if not dump_path.endswith("multistream.xml.bz2"):
        return None
    candidate = dump_path[: -len(".xml.bz2")] + "-index.txt.bz2"
    return candidate if exists(candidate) else None


def read_index_offsets(index_path: str) -> list[int]:
    """Sorted distinct stream offsets of a multistream index (``OFFSET:ID:TITLE`` lines)."""
    offsets: set[int] = set()
    with open_read(index_path) as raw:
        fh = bz2.BZ2File(raw) if index_path.endswith(".bz2") else raw
        try:
            for n, line in enumerate(fh, 1):
                head = line.split(b":", 1)[0].strip()
                if not head:
                    continue
                if not head.isdigit():
                    raise WitError(f"{index_path}: line {n} is not OFFSET:PAGE_ID:TITLE: {line[:80]!r}")
                offsets.add(int(head))
        except (OSError, EOFError) as exc:
            raise WitError(f"{index_path}: cannot read the multistream index ({exc})") from None
    return sorted(offsets)


def plan_units(dump_path: str, index_path: str | None = None, unit_bytes: int = 16 << 20,
               size: int | None = None) -> list[WorkUnit]:
    """Work units of one dump file: the whole file, or slices of about ``unit_bytes`` compressed
    bytes cut at the stream offsets of its multistream index (the header stream before the first
    page stream is skipped; it holds only ``<siteinfo>``)."""
    if index_path is None:
        return [WorkUnit(dump_path)]
    offsets = read_index_offsets(index_path)
    if not offsets:
        return []
    size = file_size(dump_path) if size is None else size
    bounds = [o for o in offsets if o < size] + [size]
    units, group = [], [bounds[0]]
    for start, nxt in zip(bounds[:-1], bounds[1:]):
        if start != group[0] and nxt - group[0] > unit_bytes:
            units.append(WorkUnit(dump_path, tuple(group), start))
            group = [start]
        elif start != group[0]:
            group.append(start)
    units.append(WorkUnit(dump_path, tuple(group), None))
    return units


class PageSplitter:
    """Cuts ``<page>...</page>`` byte strings out of a stream of decompressed chunks."""

    def __init__(self, counters: Counter):
        self.buf = b""
        self.counters = counters

    def feed(self, data: bytes) -> Iterator[bytes]:
        buf = self.buf + data if self.buf else data
        pos = 0
        while True:
            start = buf.find(b"<page>", pos)
            if start < 0:
                # keep a tail that may hold the start of a split "<page>" tag
                self.buf = buf[max(pos, len(buf) - 5):]
                return
            end = buf.find(b"</page>", start)
            if end < 0:
                self.buf = buf[start:]
                return
            again = buf.rfind(b"<page>", start + 6, end)
            if again >= 0:  # pages opened and never closed before the next one
                self.counters["page.incomplete"] += buf.count(b"<page>", start, again)
                start = again
            yield buf[start:end + 7]
            pos = end + 7

    def close(self) -> None:
        if b"<page>" in self.buf:
            self.counters["page.incomplete"] += 1
        self.buf = b""


def parse_page(blob: bytes, counters: Counter) -> PageRecord | None:
    """One ``<page>`` element -> PageRecord (None, counted, when unusable)."""
    try:
        el = ET.fromstring(blob)
    except ET.ParseError:
        try:
            blob.decode("utf-8")
        except UnicodeDecodeError:
            counters["repaired.invalid_utf8"] += 1
            try:
                el = ET.fromstring(blob.decode("utf-8", "replace"))
            except ET.ParseError:
                counters["page.malformed_xml"] += 1
                return None
        else:
            counters["page.malformed_xml"] += 1
            return None
    title, ns = el.findtext("title"), el.findtext("ns")
    if title is None or ns is None or not re.fullmatch(r"\s*-?\d+\s*", ns):
        counters["page.missing_fields"] += 1
        return None
    revisions = el.findall("revision")
    text = (revisions[-1].findtext("text") or "") if revisions else ""
    page_id = el.findtext("id")
    redirect = el.find("redirect") is not None or bool(_REDIRECT_TEXT.match(text))
    return PageRecord(title.strip(), int(ns), int(page_id) if page_id and page_id.strip().isdigit() else None,
                      redirect, text)


def _decompress(fh: IO[bytes], counters: Counter, limit: int | None = None, path: str = "") -> Iterator[bytes]:
    """Decompress consecutive bz2 streams from ``fh`` (at most ``limit`` compressed bytes); damage is
    counted, and logged as a warning naming ``path`` when given."""
    dec, fed = bz2.BZ2Decompressor(), False
    remaining = limit
    while remaining is None or remaining > 0:
        data = fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not data:
            break
        if remaining is not None:
            remaining -= len(data)
        while data:
            if dec.eof:
                dec, fed = bz2.BZ2Decompressor(), False
            fed = True
            try:
                out = dec.decompress(data)
            except OSError:
                counters["stream.corrupt_bz2"] += 1
                if path:
                    log.warning("%s: corrupt bz2 data before byte %d; the rest of that bz2 stream is skipped",
                                path, fh.tell())
                return
            if out:
                yield out
            data = dec.unused_data if dec.eof else b""
    if fed and not dec.eof:
        counters["stream.truncated_bz2"] += 1
        if path:
            log.warning("%s: truncated: the data ends inside a bz2 stream (at byte %d); the pages decoded "
                        "before the cut are kept", path, fh.tell())


def _raw_chunks(fh: IO[bytes]) -> Iterator[bytes]:
    while True:
        data = fh.read(CHUNK)
        if not data:
            return
        yield data


def read_unit(unit: WorkUnit, counters: Counter) -> Iterator[PageRecord]:
    """Every parsable page of a work unit (all namespaces, redirects included)."""
    with open_read(unit.path) as fh:
        if unit.offsets:
            bounds = list(unit.offsets) + [unit.end]
            for start, end in zip(bounds[:-1], bounds[1:]):
                fh.seek(start)
                splitter = PageSplitter(counters)  # streams hold whole pages
                for chunk in _decompress(fh, counters, None if end is None else end - start, unit.path):
                    for blob in splitter.feed(chunk):
                        yield from _parsed(blob, counters)
                splitter.close()
            return
        chunks = _decompress(fh, counters, path=unit.path) if unit.compressed else _raw_chunks(fh)
        splitter = PageSplitter(counters)
        for chunk in chunks:
            for blob in splitter.feed(chunk):
                yield from _parsed(blob, counters)
        splitter.close()


def _parsed(blob: bytes, counters: Counter) -> Iterator[PageRecord]:
    counters["page.read"] += 1
    page = parse_page(blob, counters)
    if page is not None:
        yield page


def iter_articles(unit: WorkUnit, counters: Counter) -> Iterator[PageRecord]:
    """Articles of a work unit: namespace 0, not redirects (others counted by reason)."""
    for page in read_unit(unit, counters):
        if page.ns != 0:
            counters["page.namespace"] += 1
        elif page.redirect:
            counters["page.redirect"] += 1
        else:
            counters["page.article"] += 1
            yield page


def check_dump(path: str, scan_limit: int = 64 << 20) -> None:
    """Fail early, with a clear error, on a dump that is empty, cut short before its first page
    (a truncated bz2 file), not a MediaWiki export, or holds no page. Reads only the start of the
    file: up to its first ``<page>`` (a few KB into a real dump) or ``scan_limit`` decompressed
    bytes."""
    if file_size(path) == 0:
        raise WitError(f"dump {path} is empty (0 bytes)")
    counters: Counter = Counter()
    seen, head = 0, b""
    with open_read(path) as fh:
        if path.endswith(".bz2"):
            if fh.read(3) != b"BZh":
                raise WitError(f"dump {path} is not bzip2 data (its name ends with .bz2)")
            fh.seek(0)
            chunks = _decompress(fh, counters)
        else:
            chunks = _raw_chunks(fh)
        tail = b""
        for chunk in chunks:
            if len(head) < 4096:
                head += chunk[: 4096 - len(head)]
                if len(head) >= 64 and b"<mediawiki" not in head and b"<page>" not in head:
                    raise WitError(f"dump {path} does not start like a MediaWiki XML export "
                                   f"(no <mediawiki> element)")
            if b"<page>" in tail + chunk[:16] or b"<page>" in chunk:
                return
            tail = chunk[-8:]
            seen += len(chunk)
            if seen >= scan_limit:
                return
    if counters["stream.corrupt_bz2"]:
        raise WitError(f"dump {path}: its first bz2 stream cannot be decompressed")
    if counters["stream.truncated_bz2"]:
        what = "its first bz2 block is complete" if not head else "its first <page>"
        raise WitError(f"dump {path} is truncated: the file ({file_size(path):,} bytes) ends before {what} "
                       f"(an interrupted download? fetch it again)")
    if not head:
        raise WitError(f"dump {path} holds no data after decompression")
    raise WitError(f"dump {path} holds no pages (a MediaWiki export with no <page> element)")
