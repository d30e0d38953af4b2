"""Wikimedia hourly pageview files -> views per English Wikipedia title.

A file ``pageviews-YYYYMMDD-HH0000.gz`` (https://dumps.wikimedia.org/other/pageviews/) holds one
hour; each line is ``domain_code page_title count_views total_response_size``. English Wikipedia
is domain ``en`` (desktop) and ``en.m`` (mobile web); other codes (``en.b`` Wikibooks, ``de``, ...)
are ignored. Titles use underscores for spaces and are compared with dump titles after replacing
them by spaces.

Per file (= per hour) the views of a title are summed over the kept domains; the hour counts for
the title only when that sum reaches ``min_hourly`` (MetaCLIP counted a title's hour when it had
>= 50 views, facebookresearch/MetaCLIP metaclip/build_metadata.py, which read ``en`` only).

Files may be gzipped (``.gz``, Wikimedia's), bzip2-compressed (``.bz2``) or plain.

Counted, not fatal: ``pageviews.line_unparseable`` (not 4 space-separated fields, or a count that is
not a non-negative integer below 2^63), ``pageviews.line_invalid_utf8`` (title bytes that are not
UTF-8), ``pageviews.truncated_gzip`` / ``pageviews.corrupt_gzip``, ``pageviews.truncated_bz2`` /
``pageviews.corrupt_bz2`` and ``pageviews.read_error`` (the lines read before the damage are kept,
a cut last line is dropped; a warning names the file), ``pageviews.empty_file`` (0 bytes, or
compressed data that holds nothing). A title's views saturate at 2^63 - 1 (the parquet column is
int64) instead of overflowing.
"""
from __future__ import annotations

import bz2
import gzip
import logging
import zlib
from collections import Counter
from typing import Iterable, Iterator

from wit_builder.core import open_read

__all__ = ["DEFAULT_DOMAINS", "MAX_VIEWS", "hour_views", "qualifying_views", "parse_count"]

DEFAULT_DOMAINS = ("en", "en.m")
MAX_VIEWS = (1 << 63) - 1  # the largest int64: views are stored as int64 and saturate there
_MAX_DIGITS = len(str(MAX_VIEWS))
log = logging.getLogger(__name__)


def parse_count(field: bytes) -> int | None:
    """A view count field -> its value, or None when it is not ASCII digits or exceeds
    :data:`MAX_VIEWS` (never parses a huge digit string: Python's int() refuses those)."""
    if not field.isdigit():
        return None
    digits = field.lstrip(b"0")
    if len(digits) > _MAX_DIGITS:
        return None
    n = int(digits) if digits else 0
    return n if n <= MAX_VIEWS else None


def _decompressed(path: str, raw):
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), "gzip"
    if path.endswith(".bz2"):
        return bz2.BZ2File(raw), "bz2"
    return raw, None


def _lines(path: str, counters: Counter) -> Iterator[bytes]:
    with open_read(path) as raw:
        if not raw.read(1):
            counters["pageviews.empty_file"] += 1
            return
        raw.seek(0)
        fh, kind = _decompressed(path, raw)
        pending = None
        try:
            for line in fh:
                if pending is not None:
                    yield pending
                pending = line
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            damage = "truncated" if isinstance(exc, EOFError) else "corrupt"
            reason = f"{damage}_{kind}" if kind else "read_error"
            counters[f"pageviews.{reason}"] += 1
            log.warning("%s: %s; the complete lines before it are kept",
                        path, f"{damage} {kind} file" if kind else f"read error ({exc})")
            if pending is not None and pending.endswith(b"\n"):
                yield pending
            return
        if pending is None:
            counters["pageviews.empty_file"] += 1  # compressed data that holds nothing
            return
        yield pending


def hour_views(path: str, domains: Iterable[str] = DEFAULT_DOMAINS,
               counters: Counter | None = None) -> dict[str, int]:
    """``{title (spaces): views}`` of one hourly file, summed over ``domains``."""
    counters = Counter() if counters is None else counters
    wanted = {d.encode("ascii") for d in domains}
    views: dict[str, int] = {}
    for line in _lines(path, counters):
        counters["pageviews.lines"] += 1
        fields = line.rstrip(b"\r\n").split(b" ")
        count = parse_count(fields[2]) if len(fields) == 4 else None
        if count is None or not fields[0] or not fields[1]:
            counters["pageviews.line_unparseable"] += 1
            continue
        if fields[0] not in wanted:
            continue
        try:
            title = fields[1].decode("utf-8").replace("_", " ").strip()
        except UnicodeDecodeError:
            counters["pageviews.line_invalid_utf8"] += 1
            continue
        counters["pageviews.lines_english"] += 1
        views[title] = min(views.get(title, 0) + count, MAX_VIEWS)
    return views


def qualifying_views(path: str, domains: Iterable[str] = DEFAULT_DOMAINS, min_hourly: int = 50,
                     counters: Counter | None = None) -> Iterator[tuple[str, int]]:
    """``(title, views)`` for the titles whose views in this hour reach ``min_hourly``."""
    counters = Counter() if counters is None else counters
    for title, n in hour_views(path, domains, counters).items():
        if n >= min_hourly:
            counters["pageviews.title_hours_kept"] += 1
            yield title, n
        else:
            counters["pageviews.title_hours_below_min"] += 1
