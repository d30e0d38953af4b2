"""WARC/WAT framing, extraction from WAT/WARC/tables, and every bad-input case of the collect stage."""
import gzip
import io
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collect_data import gzip_members, make_pages
from wit_builder.core import WitError
from wit_builder.sources import SourceOptions, check_table_columns, detect_format, iter_candidates, resolve_url
from wit_builder.textclean import clean_text
from wit_builder.warcfile import iter_records
from wit_builder.sim.webgen import Image, Page, write_warc, write_wat

OPTS = SourceOptions()


def _record(body: bytes, rtype: str = "metadata", uri: str = "https://x.example/p", gz: bool = True,
            http: str | None = None) -> bytes:
    """One WARC record's bytes, written with warcio."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter
    out = io.BytesIO()
    w = WARCWriter(out, gzip=gz)
    headers = None
    if http is not None:
        status, ctype = http.split("|")
        headers = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
    rec = w.create_warc_record(uri, rtype, payload=io.BytesIO(body), length=len(body), http_headers=headers,
                               warc_content_type="application/json" if rtype == "metadata" else "")
    w.write_record(rec)
    return out.getvalue()


def _read(data: bytes, **kw):
    skips = Counter()
    recs = list(iter_records(io.BytesIO(data), skips, **kw))
    return recs, skips


def _candidates(path, fmt=None, opts=OPTS):
    stats = Counter()
    out = list(iter_candidates(str(path), fmt or detect_format(str(path)), opts, stats))
    return out, stats


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("warc")
    pages = make_pages(12)
    paths = {}
    for name, fn in [("a.warc.gz", write_warc), ("a.warc", write_warc), ("a.warc.wat.gz", write_wat),
                     ("a.wat", write_wat)]:
        fn(pages, str(d / name))
        paths[name] = d / name
    return paths


# -- framing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a.warc.gz", "a.warc", "a.warc.wat.gz", "a.wat"])
def test_valid_files_read_exactly_like_fastwarc_and_warcio(files, name):
    from fastwarc.warc import ArchiveIterator
    from warcio.archiveiterator import ArchiveIterator as WarcioIterator
    data = files[name].read_bytes()
    recs, skips = _read(data)
    assert not skips
    fast = [(r.headers.get("WARC-Type"), r.headers.get("WARC-Target-URI"), r.reader.read())
            for r in ArchiveIterator(io.BytesIO(data), parse_http=False)]
    ours = [(r.headers["warc-type"], r.headers.get("warc-target-uri"), r.body) for r in recs]
    assert ours == fast
    slow = [r.rec_headers.get_header("WARC-Record-ID") for r in WarcioIterator(io.BytesIO(data))]
    assert [r.headers["warc-record-id"] for r in recs] == slow
    assert len(recs) == 1 + 12 * 3           # warcinfo + request/response/metadata per page


def test_whole_file_gzip_is_read(files):
    plain = files["a.warc"].read_bytes()
    recs, skips = _read(gzip.compress(plain))
    assert len(recs) == 37 and not skips


def test_corrupt_gzip_member_is_skipped_and_counted(files):
    data = bytearray(files["a.warc.gz"].read_bytes())
    offs = gzip_members(bytes(data))
    data[offs[5] + 20:offs[5] + 40] = b"\xff" * 20      # damage the deflate stream of record 5
    recs, skips = _read(bytes(data))
    assert skips == Counter(corrupt_gzip=1)
    assert len(recs) == 36


def test_truncated_gzip_keeps_earlier_records(files):
    data = files["a.warc.gz"].read_bytes()
    offs = gzip_members(data)
    recs, skips = _read(data[:offs[30] + 100])
    assert skips == Counter(truncated_gzip=1)
    assert len(recs) == 30


def test_junk_between_gzip_members(files):
    data = files["a.warc.gz"].read_bytes()
    offs = gzip_members(data)
    junk = bytes(range(256)) * 3
    recs, skips = _read(data[:offs[4]] + junk + data[offs[4]:])
    assert skips == Counter(gzip_junk=1) and len(recs) == 37


def test_plain_malformed_headers_and_lengths(files):
    plain = files["a.warc"].read_bytes()
    starts = [i for i in range(len(plain)) if plain.startswith(b"WARC/1.0\r\n", i)]
    # junk between records
    recs, skips = _read(plain[:starts[3]] + b"garbage line\r\n\r\n" + plain[starts[3]:])
    assert skips == Counter(malformed_record=1) and len(recs) == 37
    # a record whose Content-Length is too large: that record is lost, the next ones are read
    rec7 = plain[starts[7]:starts[8]]
    cl = int(rec7.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    bad = rec7.replace(b"Content-Length: %d" % cl, b"Content-Length: %d" % (cl + 50))
    recs, skips = _read(plain[:starts[7]] + bad + plain[starts[8]:])
    assert skips == Counter(malformed_record=1) and len(recs) == 36
    # too small
    bad = rec7.replace(b"Content-Length: %d" % cl, b"Content-Length: %d" % (cl - 10))
    recs, skips = _read(plain[:starts[7]] + bad + plain[starts[8]:])
    assert skips == Counter(malformed_record=1) and len(recs) == 36
    # not a number
    bad = rec7.replace(b"Content-Length: %d" % cl, b"Content-Length: many")
    recs, skips = _read(plain[:starts[7]] + bad + plain[starts[8]:])
    assert skips == Counter(malformed_record=1) and len(recs) == 36
    # truncated in the middle of the last record
    recs, skips = _read(plain[:-200])
    assert skips == Counter(truncated_record=1) and len(recs) == 36


def test_oversized_records_are_skipped_without_buffering(files):
    recs, skips = _read(files["a.warc"].read_bytes(), max_record_bytes=300)
    assert skips["oversized_record"] > 0
    assert all(len(r.body) <= 300 for r in recs)
    assert len(recs) + skips["oversized_record"] == 37


def test_binary_junk_file_never_raises():
    import random
    rng = random.Random(3)
    for n in (0, 1, 100, 5000):
        junk = bytes(rng.randrange(256) for _ in range(n))
        recs, skips = _read(junk)
        assert recs == []
        recs, skips = _read(b"\x1f\x8b\x08" + junk)
        assert recs == [] and (skips["corrupt_gzip"] + skips["truncated_gzip"]) >= 1


# -- WAT --------------------------------------------------------------------------------------------
def test_wat_pairs_resolve_relative_urls_and_keep_page_url(files):
    pairs, stats = _candidates(files["a.warc.wat.gz"])
    assert stats["pairs_extracted"] == 60 and len(pairs) == 60 and stats["pages"] == 12
    url, text, page = pairs[1]
    assert page == "https://site0.example.org/p/0.html"
    assert url == "https://site0.example.org/p/img/0_1.jpg"          # relative src resolved
    assert pairs[0][0] == "https://cdn.example.com/0/0.png"
    assert text.startswith("a photo of the ")
    plain, _ = _candidates(files["a.wat"])
    assert plain == pairs


def test_wat_base_href_title_fallback_and_dropped_urls(tmp_path):
    page = Page("https://ex.org/dir/page.html", base="https://static.ex.org/assets/", images=[
        Image("one.jpg", alt="first"),
        Image("data:image/png;base64,iVBORw0KGgo=", alt="inline"),
        Image("javascript:void(0)", alt="js"),
        Image("  two.jpg\n", alt=None, title="from title"),
        Image("three.jpg", alt="   ", title="blank alt"),
        Image("", alt="no src"),
        Image("//cdn.ex.org/four.jpg", alt="protocol relative"),
    ])
    write_wat([page], str(tmp_path / "p.wat.gz"))
    pairs, stats = _candidates(tmp_path / "p.wat.gz")
    assert pairs == [("https://static.ex.org/assets/one.jpg", "first", "https://ex.org/dir/page.html"),
                     ("https://static.ex.org/assets/two.jpg", "from title", "https://ex.org/dir/page.html"),
                     ("https://static.ex.org/assets/three.jpg", "blank alt", "https://ex.org/dir/page.html"),
                     ("https://cdn.ex.org/four.jpg", "protocol relative", "https://ex.org/dir/page.html")]
    assert stats["dropped.data_url"] == 1 and stats["dropped.non_http_url"] == 1
    assert stats["dropped.empty_url"] == 1 and stats["pairs_extracted"] == 7
    alt_only, stats = _candidates(tmp_path / "p.wat.gz", opts=SourceOptions(title_fallback=False))
    assert [t for _, t, _ in alt_only] == ["first", "protocol relative"]
    assert stats["dropped.empty_text"] == 2


def test_wat_invalid_json_and_unexpected_structure_are_counted(tmp_path):
    good = make_pages(2)
    write_wat(good, str(tmp_path / "g.wat.gz"), all_records=False)
    data = (tmp_path / "g.wat.gz").read_bytes()
    broken = _record(b'{"Envelope": {"Payload-Metadata": "IMG@/src" ,,, }')
    odd = _record(json.dumps({"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {
        "HTML-Metadata": {"Links": {"path": "IMG@/src"}}}}}}).encode())
    not_dict = _record(b'["IMG@/src"]')
    path = tmp_path / "mixed.wat.gz"
    offs = gzip_members(data)
    path.write_bytes(data[:offs[2]] + broken + odd + not_dict + data[offs[2]:])
    pairs, stats = _candidates(path)
    assert len(pairs) == 10
    assert stats["skipped.invalid_json"] == 1 and stats["skipped.unexpected_json"] == 2


def test_megabyte_alt_text_is_extracted_then_dropped_cheaply(tmp_path):
    huge = "cat " * 300_000
    write_wat([Page("https://ex.org/", images=[Image("a.jpg", alt=huge), Image("b.jpg", alt="a cat")])],
              str(tmp_path / "h.wat.gz"))
    pairs, _ = _candidates(tmp_path / "h.wat.gz")
    assert len(pairs) == 2 and len(pairs[0][1]) == 1_200_000
    assert clean_text(pairs[0][1]) == (None, "text_too_long")
    assert clean_text(pairs[1][1]) == ("a cat", None)


# -- WARC -------------------------------------------------------------------------------------------
def test_warc_img_tags_base_href_and_entities(tmp_path):
    html = ('<html><head><base href="/media/"><title>t</title></head><body>'
            '<img src="a.jpg" alt="Fish &amp; chips"><IMG SRC="https://o.org/b.png" TITLE="titled">'
            '<img alt="no src"><img src="data:image/gif;base64,R0lGOD" alt="x">'
            '<picture><img src="c.webp" alt="  spaced   out "></picture></body></html>')
    write_warc([Page("https://ex.org/blog/post.html", html=html)], str(tmp_path / "w.warc.gz"))
    pairs, stats = _candidates(tmp_path / "w.warc.gz")
    assert pairs == [("https://ex.org/media/a.jpg", "Fish & chips", "https://ex.org/blog/post.html"),
                     ("https://o.org/b.png", "titled", "https://ex.org/blog/post.html"),
                     ("https://ex.org/media/c.webp", "  spaced   out ", "https://ex.org/blog/post.html")]
    assert stats["dropped.empty_url"] == 1 and stats["dropped.data_url"] == 1


def test_warc_skips_binary_non_html_errors_and_decodes_bodies(tmp_path):
    import random
    rng = random.Random(0)
    junk = bytes(rng.randrange(256) for _ in range(3000)) + b"\x00" * 10
    chunked = b"18\r\n<html><body><img src='ch\r\n" + b"15\r\nunk.jpg' alt='chunk'>\r\n0\r\n\r\n"
    pages = [
        Page("https://ex.org/binary", html=junk),
        Page("https://ex.org/mixed", html=b"<html><body>\xff\xfe\x80 junk <img src=m.jpg alt='still here'>"),
        Page("https://ex.org/logo.png", html=b"\x89PNG...", content_type="image/png"),
        Page("https://ex.org/missing", html="<img src=x.jpg alt=gone>", status=404),
        Page("https://ex.org/latin", html="<img src=l.jpg alt='caf\xe9'>".encode("latin-1"),
             content_type="text/html; charset=ISO-8859-1"),
        Page("https://ex.org/gz", html=gzip.compress(b"<img src=g.jpg alt='zipped'>"),
             extra_headers={"Content-Encoding": "gzip"}),
        Page("https://ex.org/badgz", html=b"not gzip at all", extra_headers={"Content-Encoding": "gzip"}),
        Page("https://ex.org/chunked", html=chunked, extra_headers={"Transfer-Encoding": "chunked"}),
    ]
    write_warc(pages, str(tmp_path / "b.warc.gz"))
    pairs, stats = _candidates(tmp_path / "b.warc.gz")
    texts = {t for _, t, _ in pairs}
    assert texts == {"still here", "café", "zipped", "chunk"}
    assert ("https://ex.org/chunk.jpg", "chunk", "https://ex.org/chunked") in pairs
    assert stats["skipped.binary_payload"] == 1 and stats["skipped.undecodable_body"] == 1
    assert stats["responses_not_html"] == 1 and stats["responses_not_2xx"] == 1


# -- URLs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("src,base,expected", [
    ("x.jpg", "https://e.com/a/b.html", ("https://e.com/a/x.jpg", None)),
    ("../x.jpg", "https://e.com/a/b/c.html", ("https://e.com/a/x.jpg", None)),
    ("/x.jpg?s=1#f", "http://e.com/a/", ("http://e.com/x.jpg?s=1#f", None)),
    ("//cdn.e.com/y.png", "https://e.com/", ("https://cdn.e.com/y.png", None)),
    (" /a b.jpg\n", "http://e.com/x/", ("http://e.com/a%20b.jpg", None)),
    ("HTTPS://E.COM/A.JPG", None, ("HTTPS://E.COM/A.JPG", None)),
    ("data:image/png;base64,xx", "https://e.com", (None, "data_url")),
    ("DATA:image/png,xx", "https://e.com", (None, "data_url")),
    ("javascript:void(0)", "http://e.com", (None, "non_http_url")),
    ("ftp://e.com/x.jpg", "http://e.com", (None, "non_http_url")),
    ("x.jpg", "ftp://e.com/", (None, "non_http_url")),
    ("x.jpg", None, (None, "relative_url_without_base")),
    ("http:///x.jpg", None, (None, "bad_url")),
    ("http://[::1/x.jpg", None, (None, "bad_url")),
    ("https://e.com/\udcff.jpg", None, (None, "bad_url")),
    ("https://e.com/" + "a" * 3000, None, (None, "url_too_long")),
    ("   ", "http://e.com", (None, "empty_url")),
    (None, "http://e.com", (None, "empty_url")),
])
def test_resolve_url(src, base, expected):
    assert resolve_url(src, base) == expected


# -- tables -----------------------------------------------------------------------------------------
def test_tables_parquet_csv_tsv_jsonl(tmp_path):
    pq.write_table(pa.table({"URL": ["https://a.org/1.jpg", "rel.jpg", None], "TEXT": ["one", "two", "three"],
                             "PAGE": [None, "https://a.org/p/", None]}), str(tmp_path / "t.parquet"))
    opts = SourceOptions(url_col="URL", caption_col="TEXT", page_url_col="PAGE")
    pairs, stats = _candidates(tmp_path / "t.parquet", opts=opts)
    assert pairs == [("https://a.org/1.jpg", "one", None), ("https://a.org/p/rel.jpg", "two", "https://a.org/p/")]
    assert stats["dropped.empty_url"] == 1 and stats["records_read"] == 3

    (tmp_path / "t.csv").write_text('url,caption\nhttps://a.org/1.jpg,"a cat, sitting"\n'
                                    'https://a.org/2.jpg,"multi\nline"\nhttps://a.org/3.jpg,x,extra\n')
    pairs, stats = _candidates(tmp_path / "t.csv")
    assert pairs == [("https://a.org/1.jpg", "a cat, sitting", None), ("https://a.org/2.jpg", "multi\nline", None)]
    assert stats["skipped.bad_table_row"] == 1

    with gzip.open(tmp_path / "cc12m.tsv.gz", "wt") as fh:      # CC12M: no header, url<TAB>caption
        fh.write("https://a.org/1.jpg\tfirst caption\nhttps://a.org/2.jpg\t\"quoted\" caption\n")
    opts = SourceOptions(url_col="0", caption_col="1", table_header=False)
    pairs, _ = _candidates(tmp_path / "cc12m.tsv.gz", opts=opts)
    assert pairs == [("https://a.org/1.jpg", "first caption", None), ("https://a.org/2.jpg", '"quoted" caption', None)]
    check_table_columns(str(tmp_path / "cc12m.tsv.gz"), "tsv", opts)
    assert _candidates(tmp_path / "cc12m.tsv.gz", opts=SourceOptions(url_col="f0", caption_col="f1",
                                                                      table_header=False))[0] == pairs

    (tmp_path / "t.jsonl").write_text('{"url": "https://a.org/1.jpg", "caption": "ok"}\n{not json\n'
                                      '[1, 2]\n{"url": "https://a.org/2.jpg", "caption": 42}\n\n')
    pairs, stats = _candidates(tmp_path / "t.jsonl")
    assert pairs == [("https://a.org/1.jpg", "ok", None), ("https://a.org/2.jpg", "42", None)]
    assert stats["skipped.invalid_json"] == 1 and stats["skipped.bad_table_row"] == 1


def test_table_missing_column_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"URL": ["https://a.org/1.jpg"], "TEXT": ["one"]}), str(tmp_path / "t.parquet"))
    with pytest.raises(WitError, match="no column 'url'"):
        check_table_columns(str(tmp_path / "t.parquet"), "parquet", OPTS)
    (tmp_path / "t.csv").write_text("link,alt\nhttps://a.org/1.jpg,x\n")
    with pytest.raises(WitError, match="no column 'url'"):
        check_table_columns(str(tmp_path / "t.csv"), "csv", OPTS)
    check_table_columns(str(tmp_path / "t.csv"), "csv", SourceOptions(url_col="link", caption_col="alt"))


def test_truncated_gzip_table_is_counted(tmp_path):
    body = "".join(f"https://a.org/{i}.jpg\tcaption number {i}\n" for i in range(20000)).encode()
    data = gzip.compress(body)
    (tmp_path / "cut.tsv.gz").write_bytes(data[: len(data) // 2])
    opts = SourceOptions(url_col="f0", caption_col="f1", table_header=False)
    pairs, stats = _candidates(tmp_path / "cut.tsv.gz", opts=opts)
    assert stats["skipped.unreadable_table"] + stats["skipped.read_error"] == 1
    assert len(pairs) < 20000


def test_detect_format():
    assert detect_format("s3://b/CC-MAIN-x.warc.wat.gz") == "wat"
    assert detect_format("CC-MAIN-x.warc.gz") == "warc"
    assert detect_format("laion/part-0.parquet") == "parquet"
    assert detect_format("cc12m.tsv.gz") == "tsv"
    assert detect_format("x.jsonl") == "jsonl"
    with pytest.raises(WitError, match="input-format"):
        detect_format("mystery.bin")


def test_quick_join_equals_urljoin():
    import random
    from urllib.parse import urljoin
    from wit_builder.candidates import _quick_join
    rng = random.Random(0)
    bases = ["https://e.com", "https://e.com/", "http://e.com/a/b.html", "http://e.com/a/b/",
             "https://u:p@e.com:8080/x/y?q=1#f", "https://e.com?x", "https://e.com#x", "http://e.com/a/./b/c",
             "https://e.com/a/b.html;p?q", "http://e.com/a//b/c.html", "https://E.com/%7Ea/b",
             "http://e.com/a/b/../c", "https://e.com/a?b/c"]
    parts = ["img", "x.jpg", "a b", "..", ".", "", "q?x=1", "#f", ";p", "//", "%2F", "c:d", "日本", "\\", "x#y",
             "a.b", "@x", ":80", "A", "1"]
    fast = 0
    for _ in range(30000):
        base = rng.choice(bases)
        ref = rng.choice(["", "/", "//"]) + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
        got = _quick_join(base, ref) if ref else None
        if got is not None:
            fast += 1
            assert got == urljoin(base, ref), (base, ref)
    assert fast > 8000
