"""Common Crawl WAT and WARC readers: (image url, alt text, page url) candidates from web archives
(see :mod:`wit_builder.sources` for the rules and the counted skips)."""
from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from typing import IO, Iterator

from wit_builder.candidates import SourceOptions, _get, _safe_base, resolve_url
from wit_builder.warcfile import iter_records, split_http

__all__ = ["wat_candidates", "warc_candidates"]

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.I)
_IMG_MARK = b'"IMG@/src"'


def _records(raw: IO[bytes], stats: Counter, skips: Counter) -> Iterator:
    """The file's WARC records (counted in ``records_read``); a file that holds none and no damage
    either (0 bytes, a compressed file of nothing, blank lines) is counted as ``skipped.empty_file``."""
    n = 0
    for rec in iter_records(raw, skips):
        n += 1
        stats["records_read"] += 1
        yield rec
    if not n and not skips:
        stats["skipped.empty_file"] += 1


def wat_candidates(raw: IO[bytes], opts: SourceOptions, stats: Counter) -> Iterator[tuple]:
    skips = Counter()
    try:
        for rec in _records(raw, stats, skips):
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


def warc_candidates(raw: IO[bytes], opts: SourceOptions, stats: Counter) -> Iterator[tuple]:
    from selectolax.lexbor import LexborHTMLParser
    skips = Counter()
    try:
        for rec in _records(raw, stats, skips):
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
