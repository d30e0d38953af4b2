"""Write real WARC and WAT files, laid out like Common Crawl's, from plain Python data.

Used by the tests and by the end-to-end demo to build a simulated web. Records are written with
warcio (``WARCWriter``); a path ending in ``.gz`` gets one gzip member per record, as Common
Crawl's files have. Everything is deterministic: record ids are UUIDs derived from the page URL and
dates come from :attr:`Page.date`, so the same pages give byte-identical files.

Example::

    from wit_builder.sim.webgen import Image, Page, write_warc, write_wat
    pages = [Page("https://example.com/cats/", title="Cats",
                  images=[Image("img/tabby.jpg", alt="A tabby cat on a sofa"),
                          Image("https://cdn.example.com/x.png", alt="Siamese cat", title="Siamese")])]
    write_warc(pages, "crawl/example.warc.gz")   # request + response (+ metadata) per page
    write_wat(pages, "crawl/example.warc.wat.gz")  # one JSON metadata record per WARC record

The WAT JSON follows Common Crawl's layout (``Container`` / ``Envelope`` / ``WARC-Header-Metadata``
/ ``Payload-Metadata`` / ``HTTP-Response-Metadata`` / ``HTML-Metadata`` / ``Head`` / ``Links``);
image links are ``{"path": "IMG@/src", "url": ..., "alt": ...}`` with the ``src`` attribute as
written in the page (relative URLs stay relative, as in real WATs).
"""
from __future__ import annotations

import hashlib
import html as htmllib
import io
import json
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Sequence
from urllib.parse import urlsplit

__all__ = ["Image", "Page", "render_html", "wat_response_json", "write_warc", "write_wat"]

_NS = uuid.UUID("6f1e3c1a-1b7e-4d5e-9a31-6a0c7b4e2d10")   # namespace for deterministic record ids


@dataclass(frozen=True)
class Image:
    """One ``<img>``: ``src`` as written in the page (relative or absolute), optional alt/title."""
    src: str
    alt: str | None = None
    title: str | None = None


@dataclass
class Page:
    """One crawled page.

    ``images`` and ``links`` (``(href, anchor text)``) feed both the rendered HTML and the WAT's
    ``Links``. ``html`` (str or bytes), when given, is written to the WARC verbatim instead of the
    rendered page (the WAT still lists ``images``/``links``: the WAT writer does not parse HTML).
    ``content_type`` other than HTML gives a response without ``HTML-Metadata`` in the WAT.
    """
    url: str
    images: Sequence[Image] = ()
    links: Sequence[tuple[str, str]] = ()
    title: str = ""
    base: str | None = None
    html: str | bytes | None = None
    status: int = 200
    content_type: str = "text/html; charset=UTF-8"
    date: str = "2023-06-01T12:00:00Z"
    extra_headers: dict = field(default_factory=dict)


def _attr(name: str, value: str | None) -> str:
    return "" if value is None else f' {name}="{htmllib.escape(value, quote=True)}"'


def render_html(page: Page) -> str:
    """A small but ordinary HTML document holding the page's title, base, links and images."""
    head = [f"<title>{htmllib.escape(page.title)}</title>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width">']
    if page.base is not None:
        head.append(f'<base{_attr("href", page.base)}>')
    body = [f"<h1>{htmllib.escape(page.title)}</h1>"]
    for href, text in page.links:
        body.append(f'<p><a{_attr("href", href)}>{htmllib.escape(text)}</a></p>')
    for img in page.images:
        body.append(f'<figure><img{_attr("src", img.src)}{_attr("alt", img.alt)}{_attr("title", img.title)}'
                    f' loading="lazy"></figure>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n" + "\n".join(head) + "\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _payload(page: Page) -> bytes:
    if page.html is None:
        return render_html(page).encode("utf-8")
    return page.html if isinstance(page.html, bytes) else page.html.encode("utf-8")


def _is_html(page: Page) -> bool:
    ct = page.content_type.lower()
    return "html" in ct


def _record_id(page_url: str, kind: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(_NS, kind + ' ' + page_url)}>"


def _sha1(data: bytes) -> str:
    import base64
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def _reason(status: int) -> str:
    from http import HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _http_headers(page: Page, payload: bytes) -> list[tuple[str, str]]:
    headers = [("Date", "Thu, 01 Jun 2023 12:00:00 GMT"), ("Server", "nginx"),
               ("Content-Type", page.content_type), ("Content-Length", str(len(payload)))]
    headers += list(page.extra_headers.items())
    return headers


def _write_warcinfo(w, path: str, file_format: str, kind: str) -> None:
    """The ``warcinfo`` record a WARC or WAT file starts with."""
    name = path.rsplit("/", 1)[-1]
    w.write_record(w.create_warc_record(
        "", "warcinfo", payload=io.BytesIO(f"software: wit-webgen\r\nformat: {file_format}\r\n".encode()),
        length=None, warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": _record_id(name, kind), "WARC-Date": "2023-06-01T12:00:00Z",
                           "WARC-Filename": name}))


def write_warc(pages: Iterable[Page], path: str, *, gzip: bool | None = None,
               metadata_records: bool = True) -> int:
    """Write ``pages`` as a WARC file: a ``warcinfo`` record, then per page a ``request``, a
    ``response`` (HTTP headers + HTML) and, like Common Crawl, a ``metadata`` record.
    ``gzip`` defaults to ``path.endswith('.gz')`` (one gzip member per record). Written atomically.
    Returns the number of records."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter
    from wit_builder.core import atomic_open
    gz = path.endswith(".gz") if gzip is None else gzip
    n = 0
    with atomic_open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=gz, warc_version="1.0")
        _write_warcinfo(w, path, "WARC File Format 1.0", "warcinfo")
        n += 1
        for page in pages:
            split = urlsplit(page.url)
            target = (split.path or "/") + (f"?{split.query}" if split.query else "")
            req_headers = StatusAndHeaders(f"GET {target} HTTP/1.1", [
                ("Host", split.netloc), ("User-Agent", "CCBot/2.0 (https://commoncrawl.org/faq/)"),
                ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")], is_http_request=True)
            req = w.create_warc_record(page.url, "request", payload=io.BytesIO(b""), length=0,
                                       http_headers=req_headers,
                                       warc_headers_dict={"WARC-Record-ID": _record_id(page.url, "request"),
                                                          "WARC-Date": page.date})
            payload = _payload(page)
            resp_headers = StatusAndHeaders(f"{page.status} {_reason(page.status)}",
                                            _http_headers(page, payload), protocol="HTTP/1.1")
            resp = w.create_warc_record(page.url, "response", payload=io.BytesIO(payload),
                                        length=len(payload), http_headers=resp_headers,
                                        warc_headers_dict={"WARC-Record-ID": _record_id(page.url, "response"),
                                                           "WARC-Date": page.date,
                                                           "WARC-IP-Address": "192.0.2.1"})
            w.write_record(req)
            w.write_record(resp)
            n += 2
            if metadata_records:
                meta = w.create_warc_record(page.url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 87\r\n"),
                                            length=17, warc_content_type="application/warc-fields",
                                            warc_headers_dict={"WARC-Record-ID": _record_id(page.url, "metadata"),
                                                               "WARC-Date": page.date,
                                                               "WARC-Concurrent-To": _record_id(page.url, "response")})
                w.write_record(meta)
                n += 1
    return n


def _links_json(page: Page) -> list[dict]:
    links = []
    for href, text in page.links:
        links.append({"path": "A@/href", "url": href, "text": text})
    for img in page.images:
        entry = {"path": "IMG@/src", "url": img.src}
        if img.alt is not None:
            entry["alt"] = img.alt
        if img.title is not None:
            entry["title"] = img.title
        links.append(entry)
    return links


def wat_response_json(page: Page, warc_filename: str = "example.warc.gz", offset: int = 0) -> dict:
    """The JSON object of the WAT ``metadata`` record describing the page's WARC ``response``."""
    payload = _payload(page)
    headers = dict(_http_headers(page, payload))
    http_meta: dict = {
        "Response-Message": {"Version": "HTTP/1.1", "Status": str(page.status), "Reason": _reason(page.status)},
        "Headers": headers,
        "Headers-Length": str(sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2),
        "Entity-Length": str(len(payload)),
        "Entity-Trailing-Slop-Length": "0",
        "Entity-Digest": _sha1(payload),
    }
    if _is_html(page):
        head: dict = {"Title": page.title,
                      "Metas": [{"name": "viewport", "content": "width=device-width"}]}
        if page.base is not None:
            head["Base"] = page.base
        http_meta["HTML-Metadata"] = {"Head": head, "Links": _links_json(page)}
    return {
        "Container": {"Filename": warc_filename, "Compressed": True, "Offset": str(offset),
                      "Gzip-Metadata": {"Deflate-Length": "0", "Header-Length": "10", "Footer-Length": "8",
                                        "Inflated-CRC": "0", "Inflated-Length": str(len(payload))}},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Length": "600",
            "Actual-Content-Length": str(len(payload)),
            "Block-Digest": _sha1(payload),
            "WARC-Header-Metadata": {
                "WARC-Type": "response", "WARC-Date": page.date,
                "WARC-Record-ID": _record_id(page.url, "response"),
                "Content-Length": str(len(payload)), "Content-Type": "application/http; msgtype=response",
                "WARC-IP-Address": "192.0.2.1", "WARC-Target-URI": page.url,
                "WARC-Payload-Digest": _sha1(payload),
                "WARC-Identified-Payload-Type": page.content_type.split(";")[0].strip()},
            "Payload-Metadata": {"Actual-Content-Type": "application/http; msgtype=response",
                                 "HTTP-Response-Metadata": http_meta},
        },
    }


def _wat_request_json(page: Page, warc_filename: str) -> dict:
    split = urlsplit(page.url)
    return {
        "Container": {"Filename": warc_filename, "Compressed": True, "Offset": "0"},
        "Envelope": {
            "Format": "WARC", "WARC-Header-Length": "300", "Actual-Content-Length": "0",
            "WARC-Header-Metadata": {"WARC-Type": "request", "WARC-Date": page.date,
                                     "WARC-Record-ID": _record_id(page.url, "request"),
                                     "Content-Length": "0", "WARC-Target-URI": page.url},
            "Payload-Metadata": {"Actual-Content-Type": "application/http; msgtype=request",
                                 "HTTP-Request-Metadata": {
                                     "Request-Message": {"Method": "GET", "Path": split.path or "/",
                                                         "Version": "HTTP/1.1"},
                                     "Headers": {"Host": split.netloc, "User-Agent": "CCBot/2.0"},
                                     "Headers-Length": "120", "Entity-Length": "0"}},
        },
    }


def _wat_metadata_json(page: Page, warc_filename: str) -> dict:
    return {
        "Container": {"Filename": warc_filename, "Compressed": True, "Offset": "0"},
        "Envelope": {
            "Format": "WARC", "WARC-Header-Length": "300", "Actual-Content-Length": "17",
            "WARC-Header-Metadata": {"WARC-Type": "metadata", "WARC-Date": page.date,
                                     "WARC-Record-ID": _record_id(page.url, "metadata"),
                                     "Content-Length": "17", "WARC-Target-URI": page.url},
            "Payload-Metadata": {"Actual-Content-Type": "application/warc-fields",
                                 "WARC-Metadata-Metadata": {"Metadata-Records": [
                                     {"Name": "fetchTimeMs", "Value": "87"}]}},
        },
    }


def write_wat(pages: Iterable[Page], path: str, *, gzip: bool | None = None,
              warc_filename: str = "example.warc.gz", all_records: bool = True) -> int:
    """Write ``pages`` as a WAT file: a ``warcinfo`` record, then for each page the JSON
    ``metadata`` records Common Crawl writes for its request, response and metadata WARC records
    (``all_records=False``: only the response's). ``gzip`` defaults to ``path.endswith('.gz')``.
    Written atomically. Returns the number of records."""
    from warcio.warcwriter import WARCWriter
    from wit_builder.core import atomic_open
    gz = path.endswith(".gz") if gzip is None else gzip
    n = 0
    with atomic_open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=gz, warc_version="1.0")
        _write_warcinfo(w, path, "WAT File Format", "watinfo")
        n += 1
        offset = 0
        for page in pages:
            docs = [("response", wat_response_json(page, warc_filename, offset))]
            if all_records:
                docs = [("request", _wat_request_json(page, warc_filename))] + docs + \
                       [("metadata", _wat_metadata_json(page, warc_filename))]
            for kind, doc in docs:
                body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                rec = w.create_warc_record(page.url, "metadata", payload=io.BytesIO(body), length=len(body),
                                           warc_content_type="application/json",
                                           warc_headers_dict={"WARC-Record-ID": _record_id(page.url, "wat-" + kind),
                                                              "WARC-Date": page.date,
                                                              "WARC-Refers-To": _record_id(page.url, kind)})
                w.write_record(rec)
                n += 1
            offset += 1000
    return n
