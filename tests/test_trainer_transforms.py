"""The evaluation transform equals OpenAI's / OpenCLIP's (torchvision ``Resize(int)`` +
``CenterCrop`` on PIL images): output sizes truncated, crop offsets rounded, PIL bicubic."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.transforms import (CLIP_MEAN, CLIP_STD, center_crop_box, eval_resize_size,
                                image_transform)


def _expected_size(w, h, size):
    """torchvision's rule for an int size: short side -> size, long side int(size * long / short)."""
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    return (size, new_long) if w <= h else (new_long, size)


def _reference(img, size):
    """Resize + centre crop written out here, then ToTensor + Normalize."""
    w, h = _expected_size(img.width, img.height, size)
    img = img.resize((w, h), Image.BICUBIC)
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@pytest.mark.parametrize("size", [1, 7, 32, 224, 288, 336])
def test_resize_sizes_follow_the_truncating_formula(size):
    sides = list(range(size, size + 40)) + [size * 2 + 1, 333, 480, 500, 640, 667, 1000, 4031]
    differs_from_rounding = 0
    for w in sides:
        for h in sides:
            assert eval_resize_size(w, h, size) == _expected_size(w, h, size), (w, h, size)
            scale = size / min(w, h)
            differs_from_rounding += (max(size, round(w * scale)), max(size, round(h * scale))) \
                != _expected_size(w, h, size)
    if size > 1:  # the old rounding rule gives another size for many of these inputs
        assert differs_from_rounding > 0


def test_known_sizes_and_crop_offsets():
    assert eval_resize_size(640, 480, 224) == (298, 224)   # rounding gave 299
    assert eval_resize_size(480, 640, 224) == (224, 298)
    assert eval_resize_size(500, 333, 224) == (336, 224)   # 336.336...
    assert eval_resize_size(224, 224, 224) == (224, 224)
    # offsets: int(round(x / 2.0)), Python's round (half to even)
    assert center_crop_box(224, 224, 224) == (0, 0, 224, 224)
    assert center_crop_box(225, 224, 224) == (0, 0, 224, 224)      # round(0.5) = 0
    assert center_crop_box(227, 224, 224) == (2, 0, 226, 224)      # round(1.5) = 2
    assert center_crop_box(229, 224, 224) == (2, 0, 226, 224)      # round(2.5) = 2
    assert center_crop_box(224, 298, 224) == (0, 37, 224, 261)
    assert center_crop_box(336, 224, 224) == (56, 0, 280, 224)


def test_eval_transform_pixels_equal_the_reference():
    rng = random.Random(0)
    nrng = np.random.default_rng(0)
    shapes = [(640, 480), (480, 640), (33, 32), (32, 33), (100, 45), (45, 100), (32, 32)]
    shapes += [(rng.randint(32, 120), rng.randint(32, 120)) for _ in range(60)]
    for size in (32, 24):
        transform = image_transform(size, train=False)
        for w, h in shapes:
            img = Image.fromarray(nrng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            out = transform(img)
            assert out.shape == (3, size, size)
            assert torch.equal(out, _reference(img, size)), (w, h, size)


def test_eval_transform_of_an_image_already_at_size_is_the_image():
    arr = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = image_transform(32, train=False)(Image.fromarray(arr))
    expected = (arr.astype(np.float32) / 255.0 - np.asarray(CLIP_MEAN, np.float32)) \
        / np.asarray(CLIP_STD, np.float32)
    assert torch.equal(out, torch.from_numpy(np.ascontiguousarray(expected.transpose(2, 0, 1))))
