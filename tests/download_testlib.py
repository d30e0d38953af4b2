"""Helpers shared by the download/shards tests: tiny real images, a PNG bomb, balanced parquets."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def image_bytes(fmt: str, size=(24, 16), color=(200, 40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A real PNG stream whose header declares width x height pixels, with only a few KB of
    (all-zero, deflated) data: what a decompression bomb looks like to the downloader."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # 64 rows of zeros
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def uid_of(url: str, text: str) -> str:
    """docs/schemas.md: first 16 bytes of sha256(url + "\\n" + text), hex."""
    return hashlib.sha256((url + "\n" + text).encode()).hexdigest()[:32]


BALANCED_SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()), ("page_url", pa.string()),
    ("source", pa.string()), ("lang", pa.string()), ("lang_prob", pa.float32()),
    ("query_ids", pa.list_(pa.int32())), ("keep_prob", pa.float64()),
])


def write_balanced(path: str, urls: list[str], texts: list[str] | None = None, first_query: int = 0) -> pa.Table:
    """A `wit collect` balanced/part-*.parquet with the contract's columns."""
    texts = texts or [f"a photo number {i}" for i in range(len(urls))]
    n = len(urls)
    table = pa.table({
        "uid": [uid_of(u, t) for u, t in zip(urls, texts)],
        "url": urls,
        "text": texts,
        "page_url": [f"http://pages.test/{i}" if i % 2 else None for i in range(n)],
        "source": ["test.warc.gz"] * n,
        "lang": ["en"] * n,
        "lang_prob": [0.99] * n,
        "query_ids": [sorted({first_query + i, first_query + i + 1}) for i in range(n)],
        "keep_prob": [1.0] * n,
    }, schema=BALANCED_SCHEMA)
    pq.write_table(table, path)
    return table
