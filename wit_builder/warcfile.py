"""A WARC record reader that survives damaged files and counts what it skipped.

Why not warcio/fastwarc for reading: both stop at the first damaged spot. FastWARC 2.0.1 raises
``OSError`` ("Gzip decompression error", "Invalid WARC header") and ends the iteration there, and
silently drops a truncated last gzip member; warcio raises ``ArchiveLoadFailed``. The collect
stage must keep going after a bad record and say what it skipped, so records are framed here:

* gzip layer: Common Crawl files are a series of gzip members, one record each. Members are
  decompressed one at a time with :mod:`zlib`; a corrupt member is counted (``corrupt_gzip``) and
  reading resumes at the next gzip header; an unfinished last member is ``truncated_gzip``; bytes
  between members that are not a gzip header are ``gzip_junk``. A file that is one gzip stream
  (``gzip file.warc``) also works (records then span chunks of the one member).
* WARC layer: ``WARC/1.x`` version line, ``Name: value`` header lines, ``Content-Length`` bytes of
  block, then ``CRLF CRLF``. A bad version line, a missing or unparseable ``Content-Length``, or a
  block not followed by ``CRLF CRLF`` (wrong length) is ``malformed_record``; reading resumes at
  the next ``CRLF CRLF WARC/1.`` after the damaged record's header. A block cut by the end of the
  file is ``truncated_record``; blocks larger than ``max_record_bytes`` are skipped without being
  buffered (``oversized_record``).

Valid files give exactly the records fastwarc/warcio give (tested). Record bodies are returned as
``bytes``; HTTP parsing of ``response`` blocks is in :func:`split_http`.
"""
from __future__ import annotations

import zlib
from collections import Counter
from typing import IO, Iterator

__all__ = ["WarcRecord", "iter_records", "split_http", "GZIP_MAGIC"]

GZIP_MAGIC = b"\x1f\x8b\x08"
_READ = 1 << 20          # bytes read from the file at a time
_PIECE = 1 << 15         # compressed bytes fed to zlib at a time (bounds the unused_data copy)
_MAX_HEADER = 1 << 16    # a WARC header block longer than this is malformed
_GAP = None              # marker in the chunk stream: data was lost here
_RESYNC = b"\r\n\r\nWARC/1."


class WarcRecord:
    """One record: ``type`` (WARC-Type, lower case), ``body`` (the block, Content-Length bytes) and
    ``headers`` ({lower-case name: value}, parsed on first use: most records are skipped unread)."""
    __slots__ = ("type", "body", "_raw", "_headers")

    def __init__(self, rtype: str, raw_header: bytes, body: bytes):
        self.type, self._raw, self.body, self._headers = rtype, raw_header, body, None

    @property
    def headers(self) -> dict:
        if self._headers is None:
            self._headers = _parse_header(self._raw) or {}
        return self._headers

    def __repr__(self) -> str:
        return f"WarcRecord({self.type!r}, {len(self.body)} bytes)"


def _gzip_chunks(raw: IO[bytes], first: bytes, skips: Counter) -> Iterator[bytes | None]:
    """Decompress a series of gzip members; yield decompressed chunks and _GAP where data was lost."""
    data = first
    pos = 0                    # next unread compressed byte in `data`
    at_eof = False
    d = None                   # current member's decompressor (None between members)
    member_start = 0           # offset in `data` where the current member began (-1: in an earlier chunk)

    def refill() -> bool:
        nonlocal data, pos, at_eof, member_start
        more = raw.read(_READ)
        if not more:
            at_eof = True
            return False
        data = data[pos:] + more
        member_start = member_start - pos if member_start >= pos else -1
        pos = 0
        return True

    while True:
        if pos >= len(data) and (at_eof or not refill()):
            if d is not None:           # the file ended inside a member
                skips["truncated_gzip"] += 1
                yield _GAP
            return
        if d is None:                    # expecting a member header here
            if len(data) - pos < 3 and not at_eof and refill():
                continue
            if data.startswith(GZIP_MAGIC, pos):
                d = zlib.decompressobj(31)
                member_start = pos
            else:
                nxt = data.find(GZIP_MAGIC, pos)
                while nxt < 0 and not at_eof:
                    pos = max(pos, len(data) - 2)   # keep a possible split magic
                    if not refill():
                        break
                    nxt = data.find(GZIP_MAGIC, pos)
                skips["gzip_junk"] += 1
                yield _GAP
                if nxt < 0:
                    return
                pos = nxt
                continue
        piece = memoryview(data)[pos:pos + _PIECE]
        try:
            out = d.decompress(piece)
        except zlib.error:
            skips["corrupt_gzip"] += 1
            yield _GAP
            d = None
            # resume at the next member header after the start of the broken one
            pos = member_start + 1 if member_start >= 0 else pos + 1
            nxt = data.find(GZIP_MAGIC, pos)
            while nxt < 0 and not at_eof:
                pos = max(pos, len(data) - 2)
                if not refill():
                    break
                nxt = data.find(GZIP_MAGIC, pos)
            pos = nxt if nxt >= 0 else len(data)
            continue
        if out:
            yield out
        if d.eof:
            pos += len(piece) - len(d.unused_data)
            d = None
        else:
            pos += len(piece)


def _plain_chunks(raw: IO[bytes], first: bytes) -> Iterator[bytes]:
    chunk = first
    while chunk:
        yield chunk
        chunk = raw.read(_READ)


def _parse_header(block: bytes) -> dict | None:
    """WARC header block (without the final blank line) -> {lower-case name: value}, or None."""
    if not block.startswith(b"WARC/"):
        return None
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("latin-1")
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    headers: dict = {}
    last = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last is not None:      # folded continuation line
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:                                               # lines without a colon are ignored,
            last = name.strip().lower()                       # as fastwarc does
            headers[last] = value.strip()
    return headers


def _type_and_length(block: bytes) -> tuple[str, int] | None:
    """(WARC-Type lower case, Content-Length) of a header block, or None if it is not valid."""
    if not block.startswith(b"WARC/"):
        return None
    i = block.find(b"\nContent-Length:")
    t = block.find(b"\nWARC-Type:")
    if i < 0 or t < 0:                     # other spellings: parse everything
        headers = _parse_header(block)
        try:
            return headers.get("warc-type", "").lower(), int(headers.get("content-length", ""))
        except ValueError:
            return None
    end = block.find(b"\n", i + 1)
    try:
        length = int(block[i + 16:end if end >= 0 else len(block)])
    except ValueError:
        return None
    end = block.find(b"\n", t + 1)
    rtype = block[t + 11:end if end >= 0 else len(block)].strip().decode("latin-1").lower()
    return rtype, length


def _whole_record(chunk: bytes, max_record_bytes: int) -> WarcRecord | None:
    """The record if ``chunk`` is exactly one well-formed record (plus CR/LF), else None."""
    if not chunk.startswith(b"WARC/"):
        return None
    end = chunk.find(b"\r\n\r\n", 0, _MAX_HEADER + 4)
    if end < 0:
        return None
    raw = chunk[:end]
    tl = _type_and_length(raw)
    if tl is None:
        return None
    rtype, length = tl
    stop = end + 4 + length
    if length < 0 or length > max_record_bytes or chunk[stop:stop + 4] != b"\r\n\r\n" \
            or chunk[stop + 4:].strip(b"\r\n"):
        return None
    return WarcRecord(rtype, raw, chunk[end + 4:stop])


def iter_records(raw: IO[bytes], skips: Counter | None = None,
                 max_record_bytes: int = 64 << 20) -> Iterator[WarcRecord]:
    """Yield every readable record of a WARC/WAT/WET file (gzipped per record, gzipped whole, or
    plain). Damage is counted in ``skips`` by reason and reading goes on (see module docstring)."""
    skips = Counter() if skips is None else skips
    first = raw.read(_READ)
    chunks = _gzip_chunks(raw, first, skips) if first.startswith(b"\x1f\x8b") else _plain_chunks(raw, first)
    buf = bytearray()
    resync = False          # True: looking for the next record start after damage
    skip_body = 0           # bytes of an oversized block still to be discarded
    for chunk in chunks:
        if chunk is _GAP:
            # the gzip layer counted the cause; a record in progress is lost with it
            buf.clear()
            skip_body = 0
            resync = True
            continue
        if skip_body:
            if len(chunk) <= skip_body:
                skip_body -= len(chunk)
                continue
            chunk = chunk[skip_body:]
            skip_body = 0
        if not buf and not resync:
            rec = _whole_record(chunk, max_record_bytes)
            if rec is not None:          # the common case: one gzip member = one whole record
                yield rec
                continue
        buf += chunk
        while True:
            if resync:
                # after a gap a new gzip member starts a record; otherwise find the next record
                start = 0
                while start < len(buf) and buf[start] in (13, 10):
                    start += 1
                if buf.startswith(b"WARC/", start):
                    del buf[:start]
                    resync = False
                else:
                    i = buf.find(_RESYNC)
                    if i < 0:
                        keep = len(_RESYNC) - 1
                        if len(buf) > keep:
                            del buf[:len(buf) - keep]
                        break
                    del buf[:i + 4]
                    resync = False
            start = 0
            while start < len(buf) and buf[start] in (13, 10):
                start += 1
            if start:
                del buf[:start]
            if not buf:
                break
            end = buf.find(b"\r\n\r\n", 0, _MAX_HEADER + 4)
            if end < 0:
                if len(buf) >= _MAX_HEADER or not buf.startswith(b"WARC/"[:len(buf)]):
                    skips["malformed_record"] += 1
                    del buf[:1]
                    resync = True
                    continue
                break                                   # need more data
            raw = bytes(buf[:end])
            tl = _type_and_length(raw)
            rtype, length = tl if tl is not None else ("", -1)
            if length < 0:
                skips["malformed_record"] += 1
                del buf[:1]
                resync = True
                continue
            body_start = end + 4
            if length > max_record_bytes:
                skips["oversized_record"] += 1
                have = len(buf) - body_start
                if have >= length:
                    del buf[:body_start + length]
                else:
                    skip_body = length - have
                    buf.clear()
                    break
                continue
            if len(buf) < body_start + length + 4:
                # the block (and its CRLF CRLF) is not all here yet; a record ending exactly at the
                # end of its gzip member with a short trailer is handled at end of stream below
                break
            if buf[body_start + length:body_start + length + 4] != b"\r\n\r\n":
                skips["malformed_record"] += 1          # Content-Length does not fit the block
                del buf[:body_start]
                resync = True
                continue
            body = bytes(buf[body_start:body_start + length])
            del buf[:body_start + length + 4]
            yield WarcRecord(rtype, raw, body)
    # end of stream: a complete block followed by a short or missing trailer is still a record
    if resync or skip_body:
        if skip_body:
            skips["truncated_record"] += 1
        return
    start = 0
    while start < len(buf) and buf[start] in (13, 10):
        start += 1
    if start >= len(buf):
        return
    end = buf.find(b"\r\n\r\n", start)
    raw = bytes(buf[start:end]) if end >= 0 else b""
    tl = _type_and_length(raw) if end >= 0 else None
    if tl is None or tl[1] < 0:
        skips["malformed_record" if end >= 0 else "truncated_record"] += 1
        return
    rtype, length = tl
    body = bytes(buf[end + 4:end + 4 + length])
    if len(body) < length:
        skips["truncated_record"] += 1
        return
    yield WarcRecord(rtype, raw, body)


def split_http(block: bytes) -> tuple[int | None, dict, bytes]:
    """Split a ``response`` block into (status code or None, {lower-case header: value}, payload)."""
    end = block.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end = block.find(b"\n\n")
        sep = 2
    if end < 0:
        return None, {}, b""
    head = block[:end].decode("latin-1").splitlines()
    status = None
    if head and head[0].startswith("HTTP/"):
        parts = head[0].split(None, 2)
        if len(parts) >= 2 and parts[1].isdigit():
            status = int(parts[1])
    headers = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return status, headers, block[end + sep:]
