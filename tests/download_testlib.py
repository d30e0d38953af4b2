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


DOWNLOAD_SCHEMA = pa.schema([
    ("uid", pa.string()), ("query_ids", pa.list_(pa.int32())), ("page_url", pa.string()),
    ("caption", pa.string()), ("url", pa.string()), ("key", pa.string()), ("status", pa.string()),
    ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("original_width", pa.int32()), ("original_height", pa.int32()), ("sha256", pa.string()),
    ("error_kind", pa.string()),
])


def fake_download_shard(folder: str, shard: int, statuses: list[str], done: bool = True,
                        order: list[int] | None = None, bodies: dict[int, bytes] | None = None) -> list[dict]:
    """An IMAGES/NNNNN.{tar,parquet,_stats.json} shard in `wit download`'s format (as
    img2dataset writes it: rows in completion order ``order``), without any network. ``bodies``:
    image bytes to store instead of a valid JPEG for some rows (by index)."""
    import json
    import os

    import webdataset as wds
    rows = []
    for i, status in enumerate(statuses):
        url = f"http://img.test/{shard}/{i}.jpg"
        text = f"caption {shard}-{i}"
        ok = status == "success"
        img = image_bytes("JPEG", (32, 32), ((37 * i) % 256, (11 * shard) % 256, 90)) if ok else None
        if ok and bodies and i in bodies:
            img = bodies[i]
        rows.append({
            "uid": uid_of(url, text), "query_ids": [i, i + 7], "page_url": None, "caption": text,
            "url": url, "key": f"{shard:05d}{i:04d}", "status": status,
            "error_message": None if ok else "HTTP Error 404: Not Found",
            "width": 32 if ok else None, "height": 32 if ok else None,
            "original_width": 40 if ok else None, "original_height": 30 if ok else None,
            "sha256": hashlib.sha256(img).hexdigest() if ok else None,
            "error_kind": None if ok else "http_404", "_img": img,
        })
    order = order if order is not None else list(range(len(rows)))
    name = f"{folder}/{shard:05d}"
    with wds.TarWriter(name + ".tar") as tar:
        for i in order:
            r = rows[i]
            if r["_img"] is not None:  # (b"" too: a 0-byte image member)
                meta = {k: v for k, v in r.items() if k != "_img"}
                tar.write({"__key__": r["key"], "jpg": r["_img"], "txt": r["caption"], "json": json.dumps(meta)})
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in rows[i].items() if k != "_img"} for i in order],
                                        schema=DOWNLOAD_SCHEMA), name + ".parquet")
    if done:
        with open(name + "_stats.json", "w") as fh:
            json.dump({"count": len(rows), "successes": sum(s == "success" for s in statuses)}, fh)
    os.makedirs(f"{folder}/_wit", exist_ok=True)
    return rows
