"""The simulated Wikipedia and web written as the raw files the pipeline's first stages read:
a multistream MediaWiki dump (+ index) and hourly pageview files for ``wit queries``, WARC + WAT
files in Common Crawl's layout for ``wit collect``, and the web's ground truth
(``manifest.json``). ``wit demo``'s generate stage calls these.
"""
from __future__ import annotations

import os

from wit_builder.sim import webgen
from wit_builder.sim.dumpgen import Page, write_dump, write_pageviews

__all__ = ["write_wiki", "write_web"]


def write_wiki(wiki, raw: str) -> list:
    """``raw/wiki``: the simulated Wikipedia as a multistream dump (+ index); ``raw/pageviews``: its
    hourly pageview files. Returns the pageview files."""
    pages = [Page(a["title"], a["text"], ns=a["ns"], id=a["id"], redirect=a["redirect"],
                  timestamp=a["timestamp"]) for a in wiki.articles]
    write_dump(pages, os.path.join(raw, "wiki", "enwiki-20240101-pages-articles-multistream.xml.bz2"),
               multistream=True)
    hours: dict[str, list] = {}
    for row in wiki.pageviews:  # "20240115-000000" -> "20240115-00"
        hours.setdefault(row["hour"][:11], []).append(
            (row["domain"], row["title"], row["views"], row["bytes"]))
    return write_pageviews(hours, os.path.join(raw, "pageviews"))


def write_web(web, raw: str, segments: int) -> None:
    """``raw/web``: the simulated web's pages in ``segments`` WARC + WAT file pairs ("crawl
    segments", every ``segments``-th page in each); ``raw/manifest.json``: its ground truth."""
    for k in range(segments):
        seg = [_webgen_page(webgen, p) for p in web.pages[k::segments]]
        base = f"CC-DEMO-20240115-{k:05d}"
        warc = os.path.join(raw, "web", f"{base}.warc.gz")
        webgen.write_warc(seg, warc)
        webgen.write_wat(seg, os.path.join(raw, "web", f"{base}.warc.wat.gz"),
                         warc_filename=os.path.basename(warc))
    web.write_manifest(os.path.join(raw, "manifest.json"))


def _webgen_page(webgen, page: dict):
    images = [webgen.Image(l["url"], l["alt"], l["title"]) for l in page["links"]
              if l["path"] == "IMG@/src"]
    anchors = [(l["url"], l["text"]) for l in page["links"] if l["path"] == "A@/href"]
    return webgen.Page(page["url"], images=images, links=anchors, title=page["title"],
                       html=page["html"])
