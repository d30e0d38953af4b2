"""Images inside webdataset shards: the key rule, a header-only index of a tar, random access to
its images (:class:`ImageSource`) and decoding to RGB. Shared by the detector (training,
calibration) and the dedup stage."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from wit_builder.augment import to_rgb
from wit_builder.core import expand_shards, open_read

__all__ = ["IMAGE_EXTS", "split_name", "ImageRef", "index_shard", "is_holdout", "ImageSource", "BadImage",
           "decode_image"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


class BadImage(Exception):
    """An image that cannot be decoded."""


def decode_image(data: bytes, min_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes to RGB; returns (image, original (width, height)). With ``min_size`` a
    JPEG is decoded with DCT scaling (``Image.draft``) to the smallest power-of-2 reduction that
    still has both sides >= ``min_size`` (a large speed-up on big photos). Raises BadImage."""
    try:
        img = Image.open(io.BytesIO(data))
        size = img.size
        if min_size and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        img.load()
        img = to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise BadImage(f"{type(exc).__name__}: {exc}") from None
    if img.size[0] < 1 or img.size[1] < 1:
        raise BadImage("empty image")
    return img, size


def split_name(name: str) -> tuple[str, str]:
    """WebDataset convention: key = member path up to the first dot of its basename."""
    d, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


@dataclass
class ImageRef:
    shard: str
    key: str
    offset: int
    size: int
    ext: str = ""


def index_shard(path: str) -> tuple[list[ImageRef], int]:
    """Image members of one tar with their data offsets (headers only; no decoding). Returns
    (refs, 1 if the tar is truncated/unreadable past some point else 0). A tar cut short gives
    the members whose data lie wholly before the cut (tarfile itself ends quietly at a cut that
    falls inside the last member's data)."""
    refs: list[ImageRef] = []
    broken = 0
    with open_read(path) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = split_name(m.name)
                    if ext in IMAGE_EXTS:
                        refs.append(ImageRef(path, key, m.offset_data, m.size, ext))
        except (tarfile.TarError, OSError, EOFError):
            broken = 1
        end = fh.seek(0, os.SEEK_END)
    whole = [r for r in refs if r.offset + r.size <= end]
    return whole, 1 if broken or len(whole) < len(refs) else 0


def is_holdout(key: str, fraction: float) -> bool:
    """Deterministic train/held-out split by key hash (the held-out part is used for calibration)."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return h / 2.0 ** 64 < fraction


class ImageSource:
    """Random access to the images of some shards (or an in-memory list of PIL images / bytes),
    restricted to a split: "train" (not held out), "holdout" or "all"."""

    def __init__(self, shards: Sequence[str] | None = None, images: Sequence | None = None,
                 split: str = "all", holdout: float = 0.1):
        if (shards is None) == (images is None):
            raise ValueError("give shards or images")
        self.images = None
        self.broken_shards = 0
        keep = {"train": lambda k: not is_holdout(k, holdout), "holdout": lambda k: is_holdout(k, holdout),
                "all": lambda k: True}[split]
        if images is not None:
            self.images = [im for i, im in enumerate(images) if keep(f"{i:09d}")]
            self.refs = None
        else:
            refs: list[ImageRef] = []
            for p in expand_shards(shards):
                r, broken = index_shard(p)
                refs.extend(r)
                self.broken_shards += broken
            # in key order, not file order: img2dataset writes a shard's members in the order its
            # threads finished, so two downloads of the same pairs order them differently, and the
            # detector's batches (drawn by index) would differ with them
            self.refs = sorted((r for r in refs if keep(r.key)), key=lambda r: (r.key, r.shard, r.offset))
        self._handles: dict[str, object] = {}
        self.bad: set[int] = set()  # indices found undecodable by load()

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.refs)

    def read_bytes(self, i: int) -> bytes:
        ref = self.refs[i]
        fh = self._handles.get(ref.shard)
        if fh is None:
            fh = self._handles[ref.shard] = open_read(ref.shard)
        fh.seek(ref.offset)
        return fh.read(ref.size)

    def load(self, i: int, min_size: int | None = None):
        """The i-th image as RGB PIL, or None (and i added to ``bad``) if it cannot be decoded."""
        if self.images is not None and not isinstance(self.images[i], (bytes, bytearray)):
            return to_rgb(self.images[i])
        data = bytes(self.images[i]) if self.images is not None else self.read_bytes(i)
        try:
            return decode_image(data, min_size)[0]
        except BadImage:
            self.bad.add(i)
            return None

    def close(self) -> None:
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()


