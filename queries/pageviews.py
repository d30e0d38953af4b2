"""Wikimedia hourly pageview files -> views per English Wikipedia title.

A file ``pageviews-YYYYMMDD-HH0000.gz`` (https://dumps.wikimedia.org/other/pageviews/) holds one
hour; each line is ``domain_code page_title count_views total_response_size``. English Wikipedia
is domain ``en`` (desktop) and ``en.m`` (mobile web); other codes (``en.b`` Wikibooks, ``de``, ...)
are ignored. Titles use underscores for spaces and are compared with dump titles after replacing
them by spaces.

Per file (= per hour) the views of a title are summed over the kept domains; the hour counts for
the title only when that sum reaches ``min_hourly`` (MetaCLIP counted a title's hour when it had
>= 50 views, facebookresearch/MetaCLIP metaclip/build_metadata.py, which read ``en`` only).

Counted, not fatal: ``pageviews.line_unparseable`` (not 4 space-separated fields, or a count that is
not an integer), ``pageviews.line_invalid_utf8`` (title bytes that are not UTF-8),
``pageviews.truncated_gzip`` / ``pageviews.corrupt_gzip`` (the lines read before the damage are
kept; a cut last line is dropped).
"""
from __future__ import annotations

import gzip
import zlib
from collections import Counter
from typing import Iterable, Iterator

from wit_builder.core import open_read

__all__ = ["DEFAULT_DOMAINS", "hour_views", "qualifying_views"]

DEFAULT_DOMAINS = ("en", "en.m")


def _lines(path: str, counters: Counter) -> Iterator[bytes]:
    with open_read(path) as raw:
        fh = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        pending = None
        try:
            for line in fh:
                if pending is not None:
                    yield pending
                pending = line
        except EOFError:
            counters["pageviews.truncated_gzip"] += 1
            if pending is not None and pending.endswith(b"\n"):
                yield pending
            return
        except (gzip.BadGzipFile, zlib.error, OSError):
            counters["pageviews.corrupt_gzip"] += 1
            if pending is not None and pending.endswith(b"\n"):
                yield pending
            return
        if pending is not None:
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
        if len(fields) != 4 or not fields[0] or not fields[1] or not fields[2].isdigit():
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
        views[title] = views.get(title, 0) + int(fields[2])
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
