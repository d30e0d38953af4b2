"""Training data: webdataset loader (workers > shards, corrupt samples, resume) and transforms."""
import io
import json
import os
import random
import tarfile

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")
import torch
import PIL.Image
from PIL import Image

from trainer import data
from trainer.data import LoaderConfig, expand_urls, read_num_samples
from trainer.transforms import CLIP_MEAN, CLIP_STD, image_transform, random_resized_crop_box
from wit_builder.core import WitError


def make_train_loader(urls, tokenizer, *settings, **named):
    return data.make_train_loader(urls, tokenizer, LoaderConfig(*settings, **named))


class NumberTokenizer:
    """Stand-in tokenizer: caption "N" -> [[N]] so tests can tell which samples came out."""

    def __call__(self, captions):
        return torch.tensor([[int(c)] for c in captions])


def _jpeg(color, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _shards(tmp_path, n_shards, per_shard, corrupt=(), truncate=None):
    sizes, ids = {}, []
    for s in range(n_shards):
        name = f"{s:05d}.tar"
        with tarfile.open(tmp_path / name, "w") as tf:
            for i in range(per_shard):
                sid = s * 1000 + i
                key = f"{sid:09d}"
                img = b"\xff\xd8garbage" if sid in corrupt else _jpeg((sid % 256, 10, 20))
                _add(tf, key + ".jpg", img)
                _add(tf, key + ".txt", str(sid).encode())
                _add(tf, key + ".json", json.dumps({"key": key}).encode())
                if sid not in corrupt:
                    ids.append(sid)
        sizes[name] = per_shard
        if truncate == s:
            data = (tmp_path / name).read_bytes()
            (tmp_path / name).write_bytes(data[:4400])  # cut inside the 2nd jpg
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    return f"{tmp_path}/{{00000..{n_shards - 1:05d}}}.tar", ids


def _ids(loader):
    out = []
    for images, tokens in loader:
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        out.append(tokens[:, 0].tolist())
    return out


def test_more_workers_than_shards_and_corrupt_sample(tmp_path):
    urls, good = _shards(tmp_path, 2, 9, corrupt={3})
    loader, n = make_train_loader(urls, NumberTokenizer(), 32, 4, workers=3, seed=0,
                                  shuffle_buffer=5)
    assert n == 18
    batches = _ids(loader)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(good)
    assert len(batches) == 4          # 8 good in shard 0 -> 2 batches, 9 in shard 1 -> 2 batches
    assert 3 not in flat and loader.skipped["bad_image"] == 1
    # the next epoch reshuffles but still covers the same samples
    loader.set_epoch(1)
    again = [i for b in _ids(loader) for i in b]
    assert again != flat and set(again) <= set(good) and len(again) == 16
    assert loader.skipped["bad_image"] == 2


def test_truncated_tar_is_skipped_and_counted(tmp_path):
    urls, _ = _shards(tmp_path, 3, 6, truncate=1)
    loader, _ = make_train_loader(urls, NumberTokenizer(), 32, 4, workers=2, seed=1,
                                  shuffle_buffer=1)
    flat = [i for b in _ids(loader) for i in b]
    assert len(flat) == len(set(flat)) and len(flat) >= 8
    assert sum(loader.skipped.values()) >= 1


def test_deterministic_and_resume_with_skip(tmp_path):
    urls, _ = _shards(tmp_path, 4, 10, corrupt={1002, 2005})
    kw = dict(tokenizer=NumberTokenizer(), image_size=32, batch_size=4, workers=2, seed=7,
              shuffle_buffer=6)
    full, _ = make_train_loader(urls, **kw)
    a = [(im.clone(), tok.clone()) for im, tok in full]
    b = [(im, tok) for im, tok in make_train_loader(urls, **kw)[0]]
    assert len(a) == len(b) >= 6
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    for k in (1, 3):
        resumed, _ = make_train_loader(urls, skip_batches=k, **kw)
        rest = list(resumed)
        assert resumed.state()["batches"] == len(a)
        assert len(rest) == len(a) - k
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a[k:], rest))
    # a different epoch gives a different order
    other, _ = make_train_loader(urls, epoch=1, **kw)
    assert [t.tolist() for _, t in other] != [t.tolist() for _, t in a]


def test_resampled_and_multi_node_split(tmp_path):
    urls, _ = _shards(tmp_path, 2, 8)
    kw = dict(tokenizer=NumberTokenizer(), image_size=32, batch_size=4, workers=0, seed=3)
    loader, n = make_train_loader(urls, resampled=True, world_size=2, rank=1, **kw)
    assert n == 16 and len(list(loader)) == loader.num_batches == 2
    ranks = [[i for _, t in make_train_loader(urls, world_size=2, rank=r, **kw)[0]
              for i in t[:, 0].tolist()] for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) == 8
    both = f"{tmp_path}/00000.tar::{tmp_path}/00001.tar"
    assert expand_urls(both) == [f"{tmp_path}/00000.tar", f"{tmp_path}/00001.tar"]
    assert read_num_samples(expand_urls(both)) == 16
    with pytest.raises(WitError, match="not found"):
        make_train_loader(f"{tmp_path}/{{00000..00005}}.tar", **kw)
    with pytest.raises(WitError, match="every rank"):
        make_train_loader(f"{tmp_path}/00000.tar", world_size=2, **kw)


def test_transforms_shapes_values_and_crop_scale():
    img = Image.new("RGB", (90, 60), (255, 128, 0))
    for train in (False, True):
        x = image_transform(48, train)(img, random.Random(0))
        assert x.shape == (3, 48, 48) and x.dtype == torch.float32
        expect = (np.array([255, 128, 0]) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
        assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expect, dtype=torch.float32), atol=2e-2)
    # eval: bicubic resize of the shorter side then centre crop -> left/right bands cut off
    grad = Image.fromarray(np.tile(np.arange(90, dtype=np.uint8)[None, :, None] * 2, (60, 1, 3)))
    x = image_transform(30, False)(grad)
    assert x.shape == (3, 30, 30)
    left = x[0, :, 0].mean() * CLIP_STD[0] + CLIP_MEAN[0]
    # 90x60 -> 45x30; crop starts at column 8 of 45 = source x (8 + 0.5) * 2 - 0.5 = 16.5 -> 33
    assert abs(float(left) * 255 - 33) < 2
    # RGBA / grayscale inputs become RGB
    assert image_transform(16, False)(Image.new("LA", (20, 20))).shape == (3, 16, 16)
    rng = random.Random(1)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(120, 100, rng)
        assert 0.9 * 120 * 100 * 0.98 <= w * h <= 120 * 100 and 0 <= left <= 120 - w
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02 and 0 <= top <= 100 - h
    # 2:1 image: no crop of >= 90% area has a ratio in [3/4, 4/3] -> centred 4:3 crop
    assert random_resized_crop_box(200, 100, rng) == (33, 0, 133, 100)


def test_training_urls_are_not_globbed_and_repeats_are_kept(tmp_path):
    """--train-data may hold signed URLs (``?``) or repeat a source: taken as written, in order."""
    signed = "https://storage.example/shards/00000.tar?sig=a&exp=1"
    assert expand_urls(f"{signed}::{signed}") == [signed, signed]
    assert expand_urls(f"{tmp_path}/{{00000..00001}}.tar") == [f"{tmp_path}/00000.tar", f"{tmp_path}/00001.tar"]


@pytest.mark.parametrize("workers", [0, 1])
def test_small_local_shards_are_read_once_and_replayed(tmp_path, monkeypatch, workers):
    """Small local shards are parsed once; later epochs replay the raw samples from memory and
    yield exactly the batches a loader without the cache yields (crops, order, skips)."""
    import webdataset as wds
    urls, _ = _shards(tmp_path, 3, 9, corrupt={1004})
    kw = dict(tokenizer=NumberTokenizer(), image_size=32, batch_size=4, workers=workers, seed=3,
              shuffle_buffer=5)
    plain, _ = make_train_loader(urls, cache_bytes=0, **kw)
    assert plain.cache is None
    expected = []
    for epoch in range(3):
        plain.set_epoch(epoch)
        expected.append([(im.clone(), t.clone()) for im, t in plain])
    cached, _ = make_train_loader(urls, **kw)
    assert cached.cache == {}
    first = [(im.clone(), t.clone()) for im, t in cached]
    assert len(cached.cache) == 3

    def no_more_reads(*args, **kwargs):  # also in a forked loader worker
        raise AssertionError("a tar was read again")
    monkeypatch.setattr(wds, "tarfile_to_samples", no_more_reads)
    # good images are decoded once, when cached: later epochs open none (the corrupt ones are
    # tried each epoch and counted, as without the cache; a raising open counts them the same)
    monkeypatch.setattr(PIL.Image, "open", no_more_reads)
    got = [first]
    for epoch in (1, 2):
        cached.set_epoch(epoch)
        got.append([(im.clone(), t.clone()) for im, t in cached])
    for e, g in zip(expected, got):
        assert len(e) == len(g) >= 5
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(e, g))
    assert cached.skipped["bad_image"] == plain.skipped["bad_image"] == 3


def test_sample_cache_decodes_images_within_its_budget(tmp_path):
    """Decoded images use at most what the raw bytes leave of the limit; samples past the budget
    keep only their bytes, and batches are the same either way."""
    urls, _ = _shards(tmp_path, 2, 8, corrupt={1003})
    shards = data.expand_urls(urls)
    raw = sum(os.path.getsize(s) for s in shards)
    one = 40 * 30 * 3  # _shards writes 40 x 30 RGB images
    cache = data.sample_cache(shards, raw + 5 * one + 10)
    assert cache.decode_bytes == 5 * one + 10
    from collections import Counter
    samples = list(data.iter_samples(shards, Counter(), cache))
    decoded = [s for s in samples if data.DECODED_KEY in s]
    assert len(decoded) == 5 and cache.decoded_bytes == 5 * one
    assert all(s[data.DECODED_KEY].size == (40, 30) for s in decoded)
    kw = dict(tokenizer=NumberTokenizer(), image_size=16, batch_size=3, workers=0, seed=1,
              shuffle_buffer=4)
    loaders = [make_train_loader(urls, cache_bytes=c, **kw)[0]
               for c in (0, raw + 5 * one + 10, raw + 100 * one)]
    batches = []
    for loader in loaders:
        batches.append([])
        for epoch in range(2):
            loader.set_epoch(epoch)
            batches[-1] += [(im.clone(), t.clone()) for im, t in loader]
    for other in batches[1:]:
        assert len(other) == len(batches[0]) >= 8
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
                   for x, y in zip(batches[0], other))
    assert loaders[2].cache.decoded_bytes == 15 * one  # 16 images, one corrupt


def test_sample_cache_limits_and_a_shard_with_read_errors_is_read_each_time(tmp_path):
    from collections import Counter
    urls, _ = _shards(tmp_path, 3, 6, truncate=1)
    shards = data.expand_urls(urls)
    assert data.sample_cache(shards, 0) is None
    assert data.sample_cache(shards, 10) is None            # over the limit
    assert data.sample_cache(["pipe:cat a.tar"], 1 << 30) is None
    cache = data.sample_cache(shards, 1 << 30)
    assert cache == {}
    counts = []
    for _ in range(2):
        skipped = Counter()
        n = sum(1 for _ in data.iter_samples(shards, skipped, cache))
        counts.append((n, skipped["bad_tar"]))
    assert counts[0] == counts[1] and counts[0][1] >= 1     # errors counted again the 2nd time
    assert set(cache) == {shards[0], shards[2]}


def test_workers_live_for_the_run_and_each_pass_gets_its_epoch_and_skip(tmp_path):
    """One set of worker processes for all epochs (a worker forked anew each epoch made the
    trainer copy every page it wrote after the fork), with the same batches as fresh loaders
    for each epoch and each resume point."""
    import multiprocessing
    urls, _ = _shards(tmp_path, 4, 10, corrupt={1002})
    kw = dict(tokenizer=NumberTokenizer(), image_size=32, batch_size=4, workers=2, seed=3,
              shuffle_buffer=6)
    loader, _ = make_train_loader(urls, **kw)
    before = {p.pid for p in multiprocessing.active_children()}
    pids = []
    for epoch, skip in ((0, 0), (1, 0), (2, 2), (1, 1)):
        loader.set_epoch(epoch, skip_batches=skip)
        got = [t.tolist() for _, t in loader]
        pids.append({p.pid for p in multiprocessing.active_children()} - before)
        fresh, _ = make_train_loader(urls, epoch=epoch, skip_batches=skip, **kw)
        assert got == [t.tolist() for _, t in fresh], (epoch, skip)
        fresh.close()
        assert loader.state() == {"epoch": epoch, "batches": skip + len(got)}
    assert len(pids[0]) == 2 and all(p == pids[0] for p in pids)
    loader.close()
    for p in multiprocessing.active_children():
        if p.pid in pids[0]:
            p.join(timeout=10)
    assert not pids[0] & {p.pid for p in multiprocessing.active_children()}


def test_one_worker_yields_the_batches_of_the_inline_loader(tmp_path):
    """The demo loads inline or in one worker process depending on the cores
    (pipelines.demo_helpers.loader_workers): either way the same batches, epoch after epoch."""
    urls, _ = _shards(tmp_path, 3, 9, corrupt={1004})
    kw = dict(tokenizer=NumberTokenizer(), image_size=32, batch_size=4, seed=5, shuffle_buffer=5)
    passes = {}
    for workers in (0, 1):
        loader, _ = make_train_loader(urls, workers=workers, **kw)
        passes[workers] = []
        for epoch in range(3):
            loader.set_epoch(epoch)
            passes[workers].append([(im.clone(), t.clone()) for im, t in loader])
        loader.close()
    for inline, worker in zip(passes[0], passes[1]):
        assert len(inline) == len(worker) >= 5
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                   for a, b in zip(inline, worker))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(passes[0][0], passes[0][1]))

