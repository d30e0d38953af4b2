"""Dump and pageview formats: the generator writes the real formats, the reader reads them back,
bad input is counted, not fatal."""
import bz2
import gzip
import hashlib
import os
import random
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from wit_builder.sim import dumpgen
from queries import pageviews, wikidump
from wit_builder.sim.dumpgen import Page, RawPage
from wit_builder.core import WitError

NS = "{http://www.mediawiki.org/xml/export-0.11/}"


def _pages(n=250):
    pages = [Page(f"Title {i}", f"Text of page {i} with '''bold''' & <stuff> é", id=1000 + i) for i in range(n)]
    pages[5] = Page("Old name", redirect="Title 1", id=1005)
    pages[7] = Page("Talk:Title 1", "a talk page", ns=1, id=1007)
    return pages


def test_plain_export_is_a_valid_mediawiki_document(tmp_path):
    pages = _pages(8)
    path, index = dumpgen.write_dump(pages, str(tmp_path / "enwiki-pages-articles.xml"))
    assert index is None
    root = ET.parse(path).getroot()
    assert root.tag == NS + "mediawiki" and root.get("version") == "0.11"
    namespaces = {int(n.get("key")): (n.text or "") for n in root.iter(NS + "namespace")}
    assert namespaces[0] == "" and namespaces[1] == "Talk" and namespaces[14] == "Category"
    assert root.find(f"{NS}siteinfo/{NS}dbname").text == "enwiki"
    got = root.findall(NS + "page")
    assert [p.find(NS + "title").text for p in got] == [p.title for p in pages]
    assert got[5].find(NS + "redirect").get("title") == "Title 1"
    text = got[0].find(f"{NS}revision/{NS}text")
    assert text.text == pages[0].text
    assert int(text.get("bytes")) == len(pages[0].text.encode("utf-8"))
    sha1 = got[0].find(f"{NS}revision/{NS}sha1").text
    assert int(sha1, 36) == int(hashlib.sha1(pages[0].text.encode()).hexdigest(), 16)


def test_multistream_layout_and_index(tmp_path):
    pages = _pages(250)
    plain, _ = dumpgen.write_dump(pages, str(tmp_path / "plain.xml"))
    single, _ = dumpgen.write_dump(pages, str(tmp_path / "single.xml.bz2"))
    dump, index = dumpgen.write_dump(pages, str(tmp_path / "enwiki-20240101-pages-articles-multistream.xml.bz2"),
                                     multistream=True)
    assert index.endswith("enwiki-20240101-pages-articles-multistream-index.txt.bz2")
    xml = open(plain, "rb").read()
    assert bz2.decompress(open(single, "rb").read()) == xml
    data = open(dump, "rb").read()
    assert bz2.decompress(data) == xml  # concatenated streams decompress to the same document
    lines = bz2.decompress(open(index, "rb").read()).decode().splitlines()
    assert len(lines) == 250
    by_offset: dict[int, list] = {}
    for line in lines:
        offset, page_id, title = line.split(":", 2)
        by_offset.setdefault(int(offset), []).append((int(page_id), title))
    assert [len(v) for v in by_offset.values()] == [100, 100, 50]
    assert min(by_offset) > 0  # the header has its own stream
    head = bz2.BZ2Decompressor().decompress(data)
    assert b"<siteinfo>" in head and b"<page>" not in head
    for offset, entries in by_offset.items():
        dec = bz2.BZ2Decompressor()
        stream = dec.decompress(data[offset:])
        assert dec.eof and stream.lstrip().startswith(b"<page>")
        assert stream.count(b"<page>") == len(entries)
        for page_id, title in entries:
            assert f"<id>{page_id}</id>".encode() in stream and f"<title>{title}</title>".encode() in stream


def _read_all(path, index=None, unit_bytes=16 << 20):
    counters = Counter()
    units = wikidump.plan_units(path, index, unit_bytes)
    pages = [p for u in units for p in wikidump.read_unit(u, counters)]
    return pages, counters, units


@pytest.mark.parametrize("kind", ["xml", "bz2", "parts", "multistream"])
def test_reader_reads_every_format(tmp_path, kind):
    pages = _pages(250)
    if kind == "xml":
        paths = [(dumpgen.write_dump(pages, str(tmp_path / "a.xml"))[0], None)]
    elif kind == "bz2":
        paths = [(dumpgen.write_dump(pages, str(tmp_path / "a.xml.bz2"))[0], None)]
    elif kind == "parts":  # Wikimedia's pagesN part files
        paths = [(dumpgen.write_dump(pages[:120], str(tmp_path / "enwiki-x-pages-articles1.xml-p1000p1119.bz2"))[0], None),
                 (dumpgen.write_dump(pages[120:], str(tmp_path / "enwiki-x-pages-articles2.xml-p1120p1249.bz2"))[0], None)]
    else:
        paths = [dumpgen.write_dump(pages, str(tmp_path / "e-multistream.xml.bz2"), multistream=True)]
        assert wikidump.index_path_for(paths[0][0]) == paths[0][1]
    got, counters, units = [], Counter(), []
    for path, index in paths:
        g, c, u = _read_all(path, index, unit_bytes=1)  # tiny units: one per stream
        got += g
        counters += c
        units += u
    assert len(units) == (3 if kind == "multistream" else len(paths))
    assert [(p.title, p.ns, p.id, p.redirect) for p in got] == [
        (p.title, p.ns, p.id, p.redirect is not None) for p in pages]
    assert got[0].text == pages[0].text
    assert counters["page.read"] == 250 and not any(k.startswith(("stream.", "repaired.")) for k in counters)
    articles = [p for path, index in paths for u in wikidump.plan_units(path, index)
                for p in wikidump.iter_articles(u, Counter())]
    assert len(articles) == 248


def test_multistream_units_cover_each_stream_once(tmp_path):
    pages = [Page(f"P{i}", f"word{i} " * 50) for i in range(1000)]
    dump, index = dumpgen.write_dump(pages, str(tmp_path / "e-multistream.xml.bz2"), multistream=True)
    offsets = wikidump.read_index_offsets(index)
    assert len(offsets) == 10
    for unit_bytes in (1, 1500, 5000, 1 << 30):
        units = wikidump.plan_units(dump, index, unit_bytes)
        assert [o for u in units for o in u.offsets] == offsets
        assert units[-1].end is None and all(u.end == n.offsets[0] for u, n in zip(units, units[1:]))
        titles = [p.title for u in units for p in wikidump.read_unit(u, Counter())]
        assert titles == [p.title for p in pages]
    assert len(wikidump.plan_units(dump, index, 1)) == 10
    assert len(wikidump.plan_units(dump, index, 1 << 30)) == 1


def test_splitter_handles_every_chunk_boundary():
    doc = dumpgen.export_header().encode() + b"".join(
        dumpgen.page_xml(Page(f"T{i}", "x < y"), i).encode() for i in range(3)) + b"</mediawiki>\n"
    for size in (1, 2, 3, 5, 7, 64):
        counters = Counter()
        splitter = wikidump.PageSplitter(counters)
        blobs = [b for i in range(0, len(doc), size) for b in splitter.feed(doc[i:i + size])]
        splitter.close()
        assert [wikidump.parse_page(b, counters).title for b in blobs] == ["T0", "T1", "T2"]
        assert not counters


def test_bad_pages_are_counted_and_skipped(tmp_path):
    good = dumpgen.page_xml(Page("Good", "fine text"), 1)
    pages = [
        RawPage("  <page>\n    <title>Broken</title><ns>0</ns><revision><text>x</text></revisio>\n  </page>\n"),
        RawPage("  <page>\n    <ns>0</ns><id>3</id>\n  </page>\n"),  # no title
        RawPage(good.encode().replace(b"fine text", b"caf\xff text")),
        RawPage("  <page>\n    <title>Unclosed</title>\n"),  # never closed before the next page
        Page("After", "after text"),
    ]
    path, _ = dumpgen.write_dump(pages, str(tmp_path / "bad.xml"))
    counters = Counter()
    got = [p for u in wikidump.plan_units(path) for p in wikidump.read_unit(u, counters)]
    assert [p.title for p in got] == ["Good", "After"]
    assert got[0].text == "caf\ufffd text"
    assert counters["page.malformed_xml"] == 1
    assert counters["page.missing_fields"] == 1
    assert counters["repaired.invalid_utf8"] == 1
    assert counters["page.incomplete"] == 1


def test_corrupt_and_truncated_bz2_streams(tmp_path):
    pages = [Page(f"P{i}", f"text {i} " + "filler " * 30) for i in range(300)]
    dump, index = dumpgen.write_dump(pages, str(tmp_path / "e-multistream.xml.bz2"), multistream=True)
    offsets = wikidump.read_index_offsets(index)
    data = bytearray(open(dump, "rb").read())
    mid = (offsets[1] + offsets[2]) // 2
    data[mid:mid + 64] = b"\x00" * 64  # damage the second page stream
    open(dump, "wb").write(bytes(data))
    counters = Counter()
    titles = {p.title for u in wikidump.plan_units(dump, index, 1) for p in wikidump.read_unit(u, counters)}
    assert counters["stream.corrupt_bz2"] == 1
    assert {f"P{i}" for i in range(100)} | {f"P{i}" for i in range(200, 300)} <= titles
    assert len(titles) < 300

    # bzip2 emits whole 900 kB blocks: a cut file keeps the blocks before the cut
    rng = random.Random(0)
    pages = [Page(f"P{i}", " ".join(f"{rng.getrandbits(32):x}" for _ in range(1000))) for i in range(300)]
    # bzip2 emits whole 900 kB blocks: a cut file keeps the blocks before the cut
    rng = random.Random(0)
    pages = [Page(f"P{i}", " ".join(f"{rng.getrandbits(32):x}" for _ in range(1000))) for i in range(300)]
    single, _ = dumpgen.write_dump(pages, str(tmp_path / "single.xml.bz2"))
    blob = open(single, "rb").read()
    open(single, "wb").write(blob[: len(blob) * 2 // 3])
    counters = Counter()
    got = [p.title for u in wikidump.plan_units(single) for p in wikidump.read_unit(u, counters)]
    assert counters["stream.truncated_bz2"] == 1
    assert 0 < len(got) < 300 and got == [f"P{i}" for i in range(len(got))]


def test_check_dump_errors(tmp_path):
    empty = tmp_path / "empty.xml.bz2"
    empty.write_bytes(b"")
    with pytest.raises(WitError, match="empty"):
        wikidump.check_dump(str(empty))
    notbz2 = tmp_path / "x.xml.bz2"
    notbz2.write_bytes(b"<mediawiki>")
    with pytest.raises(WitError, match="not bzip2"):
        wikidump.check_dump(str(notbz2))
    html = tmp_path / "page.xml"
    html.write_text("<html><body>" + "not a dump " * 20 + "</body></html>")
    with pytest.raises(WitError, match="MediaWiki"):
        wikidump.check_dump(str(html))
    header_only, _ = dumpgen.write_dump([], str(tmp_path / "none-multistream.xml.bz2"), multistream=True)
    with pytest.raises(WitError, match="no pages"):
        wikidump.check_dump(header_only)
    ok, _ = dumpgen.write_dump([Page("A", "b")], str(tmp_path / "ok.xml.bz2"))
    wikidump.check_dump(ok)


def test_pageviews_format_and_hourly_sums(tmp_path):
    rows = {"20240101-00": [("en", "Main Page", 100, 0), ("en.m", "Main Page", 30), ("de", "Main Page", 999),
                            ("en", "Foo_bar", 49), ("en.b", "Book", 70)],
            "20240101-01": [("en", "Main Page", 10)]}
    paths = dumpgen.write_pageviews(rows, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["pageviews-20240101-000000.gz", "pageviews-20240101-010000.gz"]
    lines = gzip.decompress(open(paths[0], "rb").read()).decode().splitlines()
    assert lines[0] == "en Main_Page 100 0" and lines[1] == "en.m Main_Page 30 0"
    counters = Counter()
    assert pageviews.hour_views(paths[0], counters=counters) == {"Main Page": 130, "Foo bar": 49}
    assert dict(pageviews.qualifying_views(paths[0], min_hourly=50)) == {"Main Page": 130}
    assert dict(pageviews.qualifying_views(paths[0], ("en",), min_hourly=49)) == {"Main Page": 100, "Foo bar": 49}


def test_bad_pageview_lines_are_counted(tmp_path):
    rows = {"20240101-00": [("en", "Good", 60), "en Bad_count many 0", "garbage", "en  5 0",
                            b"en Bad\xff_title 80 0", ("en.m", "Good", 5)]}
    path = dumpgen.write_pageviews(rows, str(tmp_path))[0]
    counters = Counter()
    assert pageviews.hour_views(path, counters=counters) == {"Good": 65}
    assert counters["pageviews.line_unparseable"] == 3
    assert counters["pageviews.line_invalid_utf8"] == 1
    # a truncated file: the complete lines before the cut count, the cut line does not
    many = {"20240101-01": [("en", f"T{i}", 100 + i) for i in range(3000)]}
    full = dumpgen.write_pageviews(many, str(tmp_path))[0]
    blob = open(full, "rb").read()
    open(full, "wb").write(blob[: len(blob) // 2])
    counters = Counter()
    views = pageviews.hour_views(full, counters=counters)
    assert counters["pageviews.truncated_gzip"] == 1
    assert 0 < len(views) < 3000
    assert all(views[f"T{i}"] == 100 + i for i in range(len(views)))
