"""WebDataset training data for the CLIP trainer.

``make_train_loader(urls, tokenizer, LoaderConfig(...))`` returns ``(loader, num_samples)``. ``loader`` is
iterable, one pass = one epoch, yielding ``(images FloatTensor[B, 3, H, W], tokens
LongTensor[B, 77])``; full batches only.

Shards: ``urls`` is a brace pattern (``SHARDS/{00000..00099}.tar``), several sources joined with
``::``. The epoch size comes from ``sizes.json`` next to each source's shards (``{"00000.tar":
n, ...}``, as OpenCLIP reads it) unless ``num_samples`` is given.

Splitting: every epoch the shard list is shuffled with ``(seed, epoch)`` (same on every rank),
split by node (``shards[rank::world_size]``) and by DataLoader worker (``[w::workers]``).
Non-resampled, an epoch ends when the rank's shards are exhausted (a rank needs at least one
shard). ``resampled=True`` draws shards with replacement (seeded per rank/worker/epoch) and
yields exactly ``num_samples // (batch_size * world_size)`` batches per epoch, like OpenCLIP's
``--dataset-resampled``. Each worker keeps a ``shuffle_buffer``-sample shuffle buffer. More
workers than shards is fine: the extra workers yield nothing.

Bad samples (unreadable tar members, truncated tars, images PIL cannot decode, missing image or
caption) are skipped and counted by reason in ``loader.skipped`` (a ``Counter``, summed over the
workers as their batches and end-of-stream reports arrive); they never crash or stall a worker.
A resampled draw ends once it has read every shard whole without one usable sample (rather than
drawing bad shards forever), so such data yields no batch and the trainer says why.

Determinism and resuming: the batch sequence is a pure function of ``(urls, seed, epoch,
rank, world_size, workers, batch_size, shuffle_buffer)``: shard order, the shuffle buffer and
each sample's random crop (seeded by ``(seed, epoch, sample key)``) are seeded, and the
DataLoader takes batches from workers round-robin. To resume, call
``loader.set_epoch(epoch, skip_batches=k)`` (or pass ``epoch=`` and ``skip_batches=`` to
``make_train_loader``): the next pass yields the epoch's batches from index ``k`` on, identical
to those of an uninterrupted pass.  Fast-forwarding decodes the skipped samples' images (to find bad ones, so batch
boundaries match) but does not crop, resize or tokenise them. Exact for any ``k`` before a
worker runs out of data near the end of a non-resampled epoch; always exact with
``workers=0`` or ``resampled=True``.
``loader.state()`` returns ``{"epoch", "batches"}`` for a checkpoint's ``"data"`` entry, counting
the batches yielded in the current pass plus the ones skipped.

Small local data: when every shard is a local file and together they hold at most
``cache_bytes`` (default :data:`CACHE_BYTES`, 256 MiB), the tars are parsed once and their raw
samples replayed from memory every later epoch (the main process reads them before forking the
workers), with each image decoded once while the decoded pixels fit in what the tars leave of
``cache_bytes``; a shard with a read error is read again each epoch. The batches are the same as
without the cache (tested). ``cache_bytes=0`` turns it off.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from wit_builder import records
from wit_builder.core import WitError, expand_shards

from trainer.transforms import image_transform

__all__ = ["make_train_loader", "LoaderConfig", "expand_urls", "checked_shards", "read_num_samples",
           "WebDatasetLoader", "decode_sample", "iter_samples"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
DECODED_KEY = "__decoded__"  # a cached sample's decoded image (SampleCache)
# local shards totalling at most this many bytes are read once and their raw samples replayed from
# memory every epoch (parsing the tars was ~40% of the loader's CPU time on the demo's shards)
CACHE_BYTES = 256 << 20


def expand_urls(urls: str) -> list[str]:
    """``a::b`` sources and brace ranges -> list of shard paths (kept in order, repeats kept:
    the caller checks that local ones exist)."""
    return expand_shards(urls, "--train-data", globs="off", must_exist=False, unique=False)


def read_num_samples(shards: list[str]) -> int:
    """Sum of the shards' sizes from the ``sizes.json`` in each shard's directory."""
    cache: dict[str, dict] = {}
    total = 0
    for shard in shards:
        directory, name = os.path.split(shard)
        if directory not in cache:
            path = os.path.join(directory, "sizes.json")
            try:
                with open(path, encoding="utf-8") as fh:
                    cache[directory] = json.load(fh)
            except FileNotFoundError:
                raise WitError(f"{path} not found: pass num_samples / --train-num-samples") from None
            except (OSError, ValueError) as exc:
                raise WitError(f"{path}: unreadable sizes file ({exc})") from None
        if name not in cache[directory]:
            raise WitError(f"{shard}: not listed in {os.path.join(directory, 'sizes.json')}")
        total += int(cache[directory][name])
    return total


def _seed(*parts) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def decode_sample(sample: dict, transform, rng: random.Random | None = None):
    """(image tensor, caption) from a raw webdataset sample dict; raises ValueError with the
    skip reason for bad samples."""
    from PIL import Image
    img_bytes = next((sample[k] for k in IMAGE_EXTS if k in sample), None)
    if img_bytes is None:
        raise ValueError("missing_image")
    if "txt" not in sample:
        raise ValueError("missing_text")
    try:
        caption = sample["txt"].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("bad_text") from None
    decoded = sample.get(DECODED_KEY)  # decoded once by the sample cache
    if decoded is not None:
        if transform is None:
            return None, caption
        return (transform(decoded, rng) if rng is not None else transform(decoded)), caption
    try:
        with Image.open(io.BytesIO(img_bytes)) as im:
            im.load()
            if transform is None:  # validity check only
                return None, caption
            image = transform(im, rng) if rng is not None else transform(im)
    except Exception:  # PIL raises many types for corrupt data (OSError, SyntaxError, ...)
        raise ValueError("bad_image") from None
    return image, caption


def _decoded(sample: dict):
    """The sample's image decoded by PIL (loaded), or None when it has none or PIL fails."""
    from PIL import Image
    img_bytes = next((sample[k] for k in IMAGE_EXTS if k in sample), None)
    if img_bytes is None:
        return None
    try:
        with Image.open(io.BytesIO(img_bytes)) as im:
            im.load()
            return im.copy()
    except Exception:  # corrupt: decode_sample reports it each time, as without the cache
        return None


def iter_samples(shards: list[str], skipped: Counter,
                 cache: "SampleCache | None" = None) -> Iterator[dict]:
    """Raw samples (dicts of bytes with ``__key__``) from tar shards; read errors are counted.
    ``cache`` (:func:`sample_cache`): shards in it are replayed from memory, and a shard read
    here without an error is kept in it (a shard with errors is read again each time, so its
    errors are counted again, as without a cache)."""
    import webdataset as wds

    def handler(exc: Exception) -> bool:
        skipped["bad_tar"] += 1
        return True  # continue with the next member / shard

    if cache is None:
        yield from wds.tarfile_to_samples(handler=handler)(iter([{"url": s} for s in shards]))
        return
    for shard in shards:
        if shard in cache:
            yield from cache[shard]
            continue
        before, samples = skipped["bad_tar"], []
        for sample in wds.tarfile_to_samples(handler=handler)(iter([{"url": shard}])):
            samples.append(sample)
            yield sample
        if skipped["bad_tar"] == before:
            cache.keep(shard, samples)


class SampleCache(dict):
    """``{shard: [raw samples]}`` of small local shards, kept across epochs. :meth:`keep` also
    stores each sample's decoded image (a loaded PIL image under :data:`DECODED_KEY`) while the
    decoded pixels fit in ``decode_bytes``: opening and decoding the same JPEG every epoch was
    about half of the loader's CPU once the tars were cached (cProfile of 60 demo steps: ~6 of
    ~12.6 s). A decoded image is what PIL returns for the bytes, so batches are the same with or
    without it (tested)."""

    def __init__(self, decode_bytes: int):
        super().__init__()
        self.decode_bytes = max(0, int(decode_bytes))
        self.decoded_bytes = 0

    def keep(self, shard: str, samples: list[dict]) -> None:
        for sample in samples:
            if self.decoded_bytes >= self.decode_bytes:
                break
            image = _decoded(sample)
            if image is None:
                continue
            size = image.width * image.height * len(image.getbands())
            if self.decoded_bytes + size > self.decode_bytes:
                break
            sample[DECODED_KEY] = image
            self.decoded_bytes += size
        self[shard] = samples


def sample_cache(shards: list[str], limit_bytes: int) -> SampleCache | None:
    """An empty :class:`SampleCache` when every shard is a local file and together they hold at
    most ``limit_bytes`` (else None: read from disk every epoch); decoded images may use what
    the raw bytes leave of ``limit_bytes``."""
    if limit_bytes <= 0 or any("://" in s or s.startswith("pipe:") for s in shards):
        return None
    try:
        total = sum(os.path.getsize(s) for s in set(shards))
    except OSError:
        return None
    return SampleCache(limit_bytes - total) if total <= limit_bytes else None


@dataclass(frozen=True)
class LoaderConfig:
    """The loader's settings (everything but the shards and the tokenizer); see the module
    docstring. ``num_samples=None``: from ``sizes.json``. ``epoch`` / ``skip_batches``: where
    the first pass starts (``loader.set_epoch`` moves it)."""
    image_size: int
    batch_size: int
    workers: int
    seed: int
    shuffle_buffer: int = 1000
    resampled: bool = False
    world_size: int = 1
    rank: int = 0
    num_samples: int | None = None
    epoch: int = 0
    skip_batches: int = 0
    cache_bytes: int = CACHE_BYTES

    def __post_init__(self):
        for name in ("image_size", "batch_size", "workers", "seed", "shuffle_buffer",
                     "world_size", "rank", "epoch", "skip_batches", "cache_bytes"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "resampled", bool(self.resampled))
        if self.num_samples is not None:
            object.__setattr__(self, "num_samples", int(self.num_samples))

    @property
    def max_batches(self) -> int | None:
        """Batches per epoch per rank when resampled (None: until the rank's shards run out)."""
        return self.num_samples // (self.batch_size * self.world_size) if self.resampled else None


def _make_dataset_class():
    import torch

    class WdsStream(torch.utils.data.IterableDataset):
        """The dataset the (persistent) DataLoader workers iterate: each ``iter()`` is one
        pass, whose epoch and skip it reads from ``loader.pass_state``, a tensor in shared
        memory that the main process sets before every pass (the workers' copy of the loader
        was made when they were forked, before the first pass)."""

        def __init__(self, loader: "WebDatasetLoader"):
            super().__init__()
            self.shards, self.tokenizer, self.cfg = loader.shards, loader.tokenizer, loader.config
            self.cache, self.pass_state = loader.cache, loader.pass_state

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            physical, workers = (info.id, info.num_workers) if info else (0, 1)
            epoch, skip = (int(v) for v in self.pass_state)
            cfg = dataclasses.replace(self.cfg, epoch=epoch, skip_batches=skip)
            yield from _worker_stream(self.shards, self.tokenizer, cfg, physical, workers,
                                      self.cache)

    return WdsStream


class _AllBadGuard:
    """Ends a resampled (endless) draw when it can never yield anything: every distinct shard
    has been read whole, and every sample read up to then was decoded, none of them usable.
    The draw never changes otherwise (it only stops), so the batch sequence stays the same."""

    def __init__(self, shards):
        self.unread, self.read, self.decoded, self.good = set(shards), 0, 0, False
        self.all_read_at: int | None = None   # samples read when the last shard was done

    def may_draw(self) -> bool:
        if self.good:
            return True
        if not self.unread and self.all_read_at is None:
            self.all_read_at = self.read
        return self.all_read_at is None or self.decoded < self.all_read_at

    def counted(self, shard, samples):
        self.unread.discard(shard)
        for sample in samples:
            self.read += 1
            yield sample


def _raw_samples(shards, cfg: LoaderConfig, logical: int, workers: int, skipped: Counter,
                 guard: _AllBadGuard, cache: "SampleCache | None" = None):
    """This worker's raw samples: its share of the epoch's shuffled shards, or (resampled) an
    endless seeded draw of shards (ended by ``guard`` if none of them has a usable sample)."""
    if cfg.resampled:
        rng_shards = random.Random(_seed("resample", cfg.seed, cfg.epoch, cfg.rank, logical))

        def samples():
            while guard.may_draw():
                shard = rng_shards.choice(shards)
                yield from guard.counted(shard, iter_samples([shard], skipped, cache))
        return samples()
    order = list(shards)
    random.Random(_seed("shards", cfg.seed, cfg.epoch)).shuffle(order)
    mine = order[cfg.rank::cfg.world_size][logical::workers]
    return iter_samples(mine, skipped, cache)


def _shuffled(stream, size: int, rng: random.Random):
    """A ``size``-sample shuffle buffer over ``stream``."""
    buf: list = []
    for s in stream:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(len(buf))
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


def _worker_stream(shards, tokenizer, cfg: LoaderConfig, physical: int, workers: int,
                   cache: "SampleCache | None" = None):
    """The items of one (physical) DataLoader worker of ``workers`` for the pass ``cfg``
    describes: ``{"images", "tokens", "skipped", "worker"}`` batches, then one end-of-stream
    item with ``images=None`` carrying the last skip counts."""
    import torch
    # rotate roles so that a resumed pass (which starts at physical worker 0) continues the
    # round-robin at the logical worker an uninterrupted pass would be on
    skip_batches, max_batches, batch_size = cfg.skip_batches, cfg.max_batches, cfg.batch_size
    logical = (physical + skip_batches) % workers
    my_skip = skip_batches // workers + (1 if logical < skip_batches % workers else 0)
    my_max = None
    if max_batches is not None:
        my_max = max_batches // workers + (1 if logical < max_batches % workers else 0)
    skipped: Counter = Counter()
    transform = image_transform(cfg.image_size, train=True)
    guard = _AllBadGuard(shards)
    raw = _raw_samples(shards, cfg, logical, workers, skipped, guard, cache)

    def crop_rng(sample):
        return random.Random(_seed("crop", cfg.seed, cfg.epoch, sample.get("__key__", "")))

    stream = raw
    if cfg.shuffle_buffer > 1:
        stream = _shuffled(raw, cfg.shuffle_buffer,
                           random.Random(_seed("buffer", cfg.seed, cfg.epoch, cfg.rank, logical)))
    batch_index, count = 0, 0
    images, captions = [], []
    limit = my_max if my_max is not None else float("inf")
    if limit > my_skip:
        for s in stream:
            guard.decoded += 1
            if batch_index < my_skip:
                # fast-forward: decode only (no crop) to know which samples are good, so batch
                # boundaries fall exactly where an uninterrupted pass put them
                try:
                    decode_sample(s, None)
                except ValueError:
                    continue
                guard.good = True
                count += 1
                if count == batch_size:
                    batch_index, count = batch_index + 1, 0
                continue
            try:
                img, cap = decode_sample(s, transform, crop_rng(s))
            except ValueError as exc:
                skipped[str(exc)] += 1
                continue
            guard.good = True
            images.append(img)
            captions.append(cap)
            if len(images) == batch_size:
                yield {"images": torch.stack(images), "tokens": tokenizer(captions),
                       "skipped": dict(skipped), "worker": logical}
                skipped.clear()
                images, captions = [], []
                batch_index += 1
                if batch_index >= limit:
                    break
    yield {"images": None, "tokens": None, "skipped": dict(skipped), "worker": logical}


class WebDatasetLoader:
    """Iterable over one epoch of training batches; see the module docstring. ``config`` must
    have ``num_samples`` set."""

    def __init__(self, shards, tokenizer, config: LoaderConfig):
        self.shards = shards
        self.tokenizer = tokenizer
        self.config = config
        self.epoch = config.epoch
        self.skip_batches = config.skip_batches
        self.skipped: Counter = Counter()
        self._yielded = 0
        self._pass_skip = self.skip_batches
        # small local shards' samples (and decoded images), kept across epochs (see CACHE_BYTES)
        self.cache = sample_cache(shards, config.cache_bytes)
        self._cache_filled = False
        # workers > 0: one DataLoader whose worker processes live for the whole run (the
        # epoch and skip of each pass reach them through ``pass_state``). A worker forked anew
        # every epoch made the training process copy every page it wrote after the fork (the
        # first step of each epoch took ~0.8 s more on the demo's tiny-rn)
        self.pass_state = None
        self._dataloader = None

    # batches per epoch per rank when resampled (the non-resampled count depends on the data)
    @property
    def num_batches(self) -> int:
        return self.config.num_samples // (self.config.batch_size * self.config.world_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip_batches = int(skip_batches)

    def state(self) -> dict:
        return {"epoch": self.epoch, "batches": self._pass_skip + self._yielded}

    def _pass(self) -> LoaderConfig:
        """The settings of the next pass (the current epoch and skip)."""
        return dataclasses.replace(self.config, epoch=self.epoch, skip_batches=self.skip_batches)

    def __iter__(self):
        import torch
        self._yielded = 0
        self._pass_skip = self.skip_batches
        if self.config.workers == 0:
            items = _worker_stream(self.shards, self.tokenizer, self._pass(), 0, 1, self.cache)
        else:
            if self._dataloader is None:
                if self.cache is not None and not self._cache_filled:
                    _fill(self.cache, self.shards)  # once; the workers get it when forked
                    self._cache_filled = True
                self.pass_state = torch.zeros(2, dtype=torch.int64).share_memory_()
                # the DataLoader draws its workers' base seed from ``generator``; a generator
                # of its own keeps it off torch's global RNG, which a resumed run would
                # otherwise see drawn once more than the uninterrupted run did
                generator = torch.Generator()
                generator.manual_seed(_seed("workers", self.config.seed, self.config.rank) >> 1)
                self._dataloader = torch.utils.data.DataLoader(
                    _make_dataset_class()(self), batch_size=None,
                    num_workers=self.config.workers, persistent_workers=True, prefetch_factor=2,
                    generator=generator)
            self.pass_state[0], self.pass_state[1] = self.epoch, self.skip_batches
            items = iter(self._dataloader)
        self.skip_batches = 0  # one-shot: the next pass starts at the beginning of its epoch
        for item in items:
            self.skipped.update(item["skipped"])
            if item["images"] is None:
                continue
            self._yielded += 1
            yield item["images"], item["tokens"]

    def __len__(self) -> int:
        return self.num_batches

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected or
        the process exits); a later pass starts new ones."""
        if self._dataloader is not None:
            iterator = getattr(self._dataloader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            self._dataloader = None


def _fill(cache: SampleCache, shards: list[str]) -> None:
    """Read the shards not yet in ``cache`` (those without read errors stay in it)."""
    for _ in iter_samples([s for s in dict.fromkeys(shards) if s not in cache], Counter(), cache):
        pass


def checked_shards(urls: str, what: str = "--train-data") -> list[str]:
    """``urls`` expanded to shard paths, every local one present and none left by a killed or
    another `wit shards` run (wit_builder/records.py); ``what`` names the option in errors."""
    shards = expand_urls(urls)
    missing = [s for s in shards if "://" not in s and not os.path.exists(s)]
    if missing:
        raise WitError(f"{len(missing)} shard(s) not found, e.g. {missing[0]}")
    records.verify_inputs(sorted({s for s in shards if not s.startswith("pipe:")}), what)
    return shards


def make_train_loader(urls: str, tokenizer, config: LoaderConfig):
    """Build the training loader. Returns ``(loader, num_samples)``; see the module docstring
    for sharding, determinism and resuming (``epoch`` / ``skip_batches`` /
    ``loader.set_epoch``)."""
    shards = checked_shards(urls)
    c = config
    if c.batch_size < 1 or c.workers < 0 or c.world_size < 1 or not 0 <= c.rank < c.world_size:
        raise WitError(f"bad loader settings: batch_size={c.batch_size} workers={c.workers} "
                       f"world_size={c.world_size} rank={c.rank}")
    if not c.resampled and len(shards) < c.world_size:
        raise WitError(f"{len(shards)} shard(s) for {c.world_size} ranks: every rank needs a "
                       "shard; use more shards or resampling")
    if c.num_samples is None:
        config = dataclasses.replace(config, num_samples=read_num_samples(shards))
    return WebDatasetLoader(shards, tokenizer, config), config.num_samples
