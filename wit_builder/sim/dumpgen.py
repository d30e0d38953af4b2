"""Write Wikipedia's real file formats from Python data: for tests, benchmarks and the demo.

* :func:`write_dump` writes a MediaWiki ``pages-articles`` XML export (``<mediawiki>`` root with
  ``<siteinfo>`` and its ``<namespaces>``, then one ``<page>`` per article with ``title``, ``ns``,
  ``id``, optional ``<redirect title=...>`` and one ``<revision>`` holding the wikitext), as plain
  ``.xml``, a single-stream ``.bz2``, or a **multistream** ``.bz2`` with its
  ``-index.txt.bz2``: like Wikimedia's, the first bz2 stream holds the header, every further
  stream ``pages_per_stream`` (100) whole pages, the last stream ``</mediawiki>``, and each index
  line reads ``OFFSET:PAGE_ID:TITLE`` with OFFSET the byte offset of the page's stream.
* :func:`write_pageviews` writes hourly ``pageviews-YYYYMMDD-HH0000.gz`` files with lines
  ``domain_code page_title count_views total_response_size``.

Example::

    from wit_builder.sim.dumpgen import Page, write_dump, write_pageviews
    pages = [Page("Paris", "'''Paris''' is the [[capital city|capital]] of [[France]]."),
             Page("Paname", redirect="Paris"), Page("Talk:Paris", "chat", ns=1)]
    dump, index = write_dump(pages, "enwiki-20240101-pages-articles-multistream.xml.bz2",
                             multistream=True)
    write_pageviews({"20240101-00": [("en", "Paris", 120), ("en.m", "Paris", 30)]}, "pageviews/")
"""
from __future__ import annotations

import bz2
import datetime as dt
import gzip
import hashlib
import os
import random
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, Union
from xml.sax.saxutils import escape, quoteattr

from wit_builder.core import atomic_open

__all__ = ["Page", "RawPage", "NAMESPACES", "write_dump", "write_pageviews", "export_header",
           "export_footer", "page_xml", "index_path_for", "pageviews_filename", "synthetic_article"]

EXPORT_VERSION = "0.11"
# English Wikipedia's namespaces (key, name) as listed in its dumps' <siteinfo>.
NAMESPACES: tuple[tuple[int, str], ...] = (
    (-2, "Media"), (-1, "Special"), (0, ""), (1, "Talk"), (2, "User"), (3, "User talk"),
    (4, "Wikipedia"), (5, "Wikipedia talk"), (6, "File"), (7, "File talk"), (8, "MediaWiki"),
    (9, "MediaWiki talk"), (10, "Template"), (11, "Template talk"), (12, "Help"),
    (13, "Help talk"), (14, "Category"), (15, "Category talk"), (100, "Portal"),
    (101, "Portal talk"), (118, "Draft"), (119, "Draft talk"), (710, "TimedText"),
    (711, "TimedText talk"), (828, "Module"), (829, "Module talk"),
)


@dataclass
class Page:
    """One page of the export. ``redirect``: the target title (the page is then a redirect and its
    text defaults to ``#REDIRECT [[target]]``). ``id`` defaults to the page's position + 1."""
    title: str
    text: str = ""
    ns: int = 0
    id: int | None = None
    redirect: str | None = None
    timestamp: str = "2024-01-01T00:00:00Z"
    revision_id: int | None = None


@dataclass
class RawPage:
    """Bytes written verbatim in place of a page (malformed XML, invalid UTF-8, ...); ``title`` and
    ``id`` only feed the multistream index."""
    xml: Union[bytes, str]
    title: str = "Raw"
    id: int = 0


AnyPage = Union[Page, RawPage]


def _sha1_base36(data: bytes) -> str:
    n = int.from_bytes(hashlib.sha1(data).digest(), "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out.rjust(31, "0")


def export_header(sitename: str = "Wikipedia", dbname: str = "enwiki",
                  base: str = "https://en.wikipedia.org/wiki/Main_Page") -> str:
    ns = "\n".join(
        f'      <namespace key="{key}" case="first-letter" />' if not name else
        f'      <namespace key="{key}" case="first-letter">{escape(name)}</namespace>'
        for key, name in NAMESPACES)
    url = f"http://www.mediawiki.org/xml/export-{EXPORT_VERSION}/"
    return (f'<mediawiki xmlns="{url}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xsi:schemaLocation="{url} http://www.mediawiki.org/xml/export-{EXPORT_VERSION}.xsd" '
            f'version="{EXPORT_VERSION}" xml:lang="en">\n'
            f"  <siteinfo>\n    <sitename>{escape(sitename)}</sitename>\n"
            f"    <dbname>{escape(dbname)}</dbname>\n    <base>{escape(base)}</base>\n"
            f"    <generator>MediaWiki 1.42.0-wmf.1</generator>\n    <case>first-letter</case>\n"
            f"    <namespaces>\n{ns}\n    </namespaces>\n  </siteinfo>\n")


def export_footer() -> str:
    return "</mediawiki>\n"


def page_xml(page: Page, page_id: int) -> str:
    text = page.text
    if page.redirect is not None and not text:
        text = f"#REDIRECT [[{page.redirect}]]"
    data = text.encode("utf-8")
    rev_id = page.revision_id if page.revision_id is not None else 1_000_000 + page_id
    redirect = f"    <redirect title={quoteattr(page.redirect)} />\n" if page.redirect is not None else ""
    return (f"  <page>\n    <title>{escape(page.title)}</title>\n    <ns>{page.ns}</ns>\n"
            f"    <id>{page_id}</id>\n{redirect}    <revision>\n      <id>{rev_id}</id>\n"
            f"      <timestamp>{page.timestamp}</timestamp>\n"
            f"      <contributor>\n        <username>Wit</username>\n        <id>1</id>\n"
            f"      </contributor>\n      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(data)}" xml:space="preserve">{escape(text)}</text>\n'
            f"      <sha1>{_sha1_base36(data)}</sha1>\n    </revision>\n  </page>\n")


def _page_bytes(page: AnyPage, position: int) -> tuple[bytes, int, str]:
    if isinstance(page, RawPage):
        raw = page.xml.encode("utf-8") if isinstance(page.xml, str) else page.xml
        return raw, page.id, page.title
    page_id = page.id if page.id is not None else position + 1
    return page_xml(page, page_id).encode("utf-8"), page_id, page.title


def index_path_for(dump_path: str) -> str:
    """Wikimedia's name for a multistream dump's index: ``X-multistream.xml.bz2`` ->
    ``X-multistream-index.txt.bz2``."""
    if not dump_path.endswith(".xml.bz2"):
        raise ValueError(f"a multistream dump's name ends with .xml.bz2: {dump_path}")
    return dump_path[: -len(".xml.bz2")] + "-index.txt.bz2"


def write_dump(pages: Iterable[AnyPage], path: str, *, multistream: bool = False,
               pages_per_stream: int = 100, index_path: str | None = None,
               sitename: str = "Wikipedia", dbname: str = "enwiki") -> tuple[str, str | None]:
    """Write ``pages`` as a MediaWiki XML export at ``path``; returns ``(dump_path, index_path)``.

    Compression follows the name: ``*.bz2`` (also Wikimedia's part names such as
    ``...pages-articles1.xml-p1p41242.bz2``) is bzip2, anything else plain XML. With
    ``multistream=True`` (needs ``*.xml.bz2``) the dump is written as independent bz2 streams and the
    index (default :func:`index_path_for`) is written too; otherwise ``index_path`` is ``None``.
    Files appear atomically (temp name, then rename).
    """
    header = export_header(sitename, dbname).encode("utf-8")
    footer = export_footer().encode("utf-8")
    if multistream:
        index_path = index_path or index_path_for(path)
        index_lines: list[bytes] = []
        with atomic_open(path, "wb") as fh:
            offset = 0

            def stream(data: bytes) -> None:
                nonlocal offset
                comp = bz2.compress(data, 9)
                fh.write(comp)
                offset += len(comp)

            stream(header)
            batch: list[bytes] = []
            for position, page in enumerate(pages):
                raw, page_id, title = _page_bytes(page, position)
                batch.append(raw)
                index_lines.append(f"{offset}:{page_id}:{title}\n".encode("utf-8"))
                if len(batch) == pages_per_stream:
                    stream(b"".join(batch))
                    batch = []
            if batch:
                stream(b"".join(batch))
            stream(footer)
        with atomic_open(index_path, "wb") as fh:
            fh.write(bz2.compress(b"".join(index_lines), 9))
        return path, index_path
    with atomic_open(path, "wb") as raw_fh:
        fh = bz2.BZ2File(raw_fh, "wb") if path.endswith(".bz2") else raw_fh
        fh.write(header)
        for position, page in enumerate(pages):
            fh.write(_page_bytes(page, position)[0])
        fh.write(footer)
        if fh is not raw_fh:
            fh.close()
    return path, None


Hour = Union[str, dt.datetime]
Row = Union[tuple, str, bytes]


def _hour(hour: Hour) -> dt.datetime:
    if isinstance(hour, dt.datetime):
        return hour
    return dt.datetime.strptime(hour, "%Y%m%d-%H")


def pageviews_filename(hour: Hour) -> str:
    """``pageviews-YYYYMMDD-HH0000.gz`` for an hour (a datetime or ``"YYYYMMDD-HH"``)."""
    return f"pageviews-{_hour(hour):%Y%m%d-%H}0000.gz"


def write_pageviews(rows_by_hour: Mapping[Hour, Iterable[Row]], out_dir: str) -> list[str]:
    """Write one gzip'd hourly pageview file per hour; returns the paths, sorted.

    A row is ``(domain_code, title, views)`` or ``(domain_code, title, views, response_bytes)``
    (spaces in titles become underscores, as in Wikimedia's files), or a ``str``/``bytes`` line
    written verbatim (for broken lines in tests).
    """
    paths = []
    for hour, rows in rows_by_hour.items():
        lines = []
        for row in rows:
            if isinstance(row, bytes):
                lines.append(row.rstrip(b"\n") + b"\n")
            elif isinstance(row, str):
                lines.append(row.rstrip("\n").encode("utf-8") + b"\n")
            else:
                domain, title, views, *size = row
                size_v = size[0] if size else 0
                lines.append(f"{domain} {title.replace(' ', '_')} {int(views)} {int(size_v)}\n".encode("utf-8"))
        path = os.path.join(out_dir, pageviews_filename(hour))
        with atomic_open(path, "wb") as raw_fh:
            with gzip.GzipFile(fileobj=raw_fh, mode="wb", mtime=0) as fh:
                fh.write(b"".join(lines))
        paths.append(path)
    return sorted(paths)


def synthetic_article(rng: random.Random, vocabulary: Sequence[str], link_titles: Sequence[str] = (),
                      paragraphs: int = 4, sentences: int = 5, words: int = 12) -> str:
    """Wikitext that looks like an article's: an infobox, headings, sentences with links, bold,
    references, a table, an image with a caption, a list and categories (for benchmarks/demos)."""
    links = list(link_titles) or list(vocabulary[:50])

    def sentence() -> str:
        out = []
        for _ in range(rng.randint(max(3, words // 2), words * 3 // 2)):
            r = rng.random()
            w = rng.choice(vocabulary)
            if r < 0.08:
                out.append(f"[[{rng.choice(links)}|{w}]]")
            elif r < 0.12:
                out.append(f"[[{w}]]")
            elif r < 0.14:
                out.append(f"'''{w}'''")
            else:
                out.append(w)
        s = " ".join(out)
        s = s[0].upper() + s[1:] if s[0].isalpha() else s
        if rng.random() < 0.3:
            s += ".<ref>{{cite web |url=https://example.org/%d |title=%s}}</ref>" % (
                rng.randrange(10**6), rng.choice(vocabulary))
        else:
            s += "."
        return s

    parts = ["{{Infobox thing\n| name = %s\n| image = X.jpg\n| size = %d}}" % (
        rng.choice(vocabulary), rng.randrange(1000))]
    for p in range(paragraphs):
        if p:
            parts.append(f"== {rng.choice(vocabulary).capitalize()} ==")
        parts.append(" ".join(sentence() for _ in range(sentences)))
        if rng.random() < 0.3:
            parts.append("[[File:Example%d.jpg|thumb|%s]]" % (rng.randrange(100), sentence()))
        if rng.random() < 0.2:
            parts.append("{| class=\"wikitable\"\n|-\n! %s !! %s\n|-\n| %d || %d\n|}" % (
                rng.choice(vocabulary), rng.choice(vocabulary), rng.randrange(100), rng.randrange(100)))
        if rng.random() < 0.2:
            parts.append("\n".join(f"* {sentence()}" for _ in range(3)))
    parts.append("== References ==\n{{Reflist}}")
    parts.append("\n".join(f"[[Category:{rng.choice(vocabulary).capitalize()}]]" for _ in range(2)))
    return "\n\n".join(parts) + "\n"
