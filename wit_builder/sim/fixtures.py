"""Fixture writers for tests, benchmarks and the demo: files in the formats the stages read."""
from __future__ import annotations

import hashlib
import json
from typing import Sequence


def write_shard(path: str, items: Sequence[dict]) -> None:
    """Write a webdataset tar in img2dataset's layout: per item {key}.jpg, {key}.txt, {key}.json.
    ``items``: dicts with "key", "image" (PIL image or raw bytes), optional "caption", "uid",
    "url" and "quality"."""
    import io
    import tarfile as _tar

    from wit_builder.core import atomic_open

    with atomic_open(path, "wb") as fh, _tar.open(fileobj=fh, mode="w") as tf:
        for it in items:
            img = it["image"]
            if isinstance(img, (bytes, bytearray)):
                data, (w, h) = bytes(img), (it.get("width"), it.get("height"))
            else:
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="JPEG", quality=int(it.get("quality", 90)))
                data, (w, h) = buf.getvalue(), img.size
            key = it["key"]
            meta = {"key": key, "status": "success", "url": it.get("url", f"http://127.0.0.1/{key}.jpg"),
                    "caption": it.get("caption", ""), "width": w, "height": h, "original_width": w,
                    "original_height": h, "sha256": hashlib.sha256(data).hexdigest(), "error_message": None,
                    "uid": it.get("uid", hashlib.blake2b(key.encode(), digest_size=16).hexdigest())}
            for ext, payload in (("jpg", data), ("txt", meta["caption"].encode()),
                                 ("json", json.dumps(meta).encode())):
                info = _tar.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                info.mtime = 0
                tf.addfile(info, io.BytesIO(payload))
