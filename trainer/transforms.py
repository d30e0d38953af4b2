"""CLIP's image transforms with PIL + numpy + torch only (no torchvision).

* Training: CLIP's only augmentation, a random square crop of the resized image. As in
  OpenCLIP, this is a random-resized crop covering 90%-100% of the image area
  (``scale=(0.9, 1.0)``) with aspect ratio in [3/4, 4/3], resized (bicubic) to a square
  ``image_size`` x ``image_size``.
* Evaluation: OpenAI's and OpenCLIP's (``Resize(image_size)`` + ``CenterCrop(image_size)`` on a
  PIL image): bicubic resize of the shorter side to ``image_size`` and of the longer side to
  ``int(image_size * long / short)`` (truncated, not rounded), then a centre crop whose offsets
  are ``int(round((side - image_size) / 2.0))``; both sizes and offsets in
  :func:`eval_resize_size` and :func:`center_crop_box`. On an RGB image the result is pixel
  for pixel theirs (the same PIL bicubic resize of the same size, the same crop).
* Both: RGB, scale to [0, 1], normalise with CLIP's mean/std (from OpenAI's CLIP release).
"""
from __future__ import annotations

import math
import random

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_SCALE = (0.9, 1.0)
TRAIN_RATIO = (3 / 4, 4 / 3)

__all__ = ["image_transform", "ImageTransform", "CLIP_MEAN", "CLIP_STD", "TRAIN_SCALE",
           "eval_resize_size", "center_crop_box"]


def _to_tensor(img):
    import torch
    arr = np.asarray(img, dtype=np.float32) / 255.0  # a division, as ToTensor (not * 1/255)
    arr = (arr - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _rgb(img):
    from PIL import Image
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        img = img.convert("RGB")
    return img


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale=TRAIN_SCALE, ratio=TRAIN_RATIO) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop with area fraction in ``scale`` and aspect ratio in ``ratio``
    (log-uniform); 10 tries, then the largest centred crop with a ratio inside ``ratio``."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * r)))
        h = int(round(math.sqrt(target / r)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def eval_resize_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after the evaluation resize: the shorter side becomes ``size``, the longer
    ``int(size * long / short)`` (truncated, as torchvision's ``Resize`` with an int size)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred ``size`` x ``size`` crop of a ``width`` x
    ``height`` image (both sides >= ``size``); offsets ``int(round((side - size) / 2.0))``."""
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return left, top, left + size, top + size


class ImageTransform:
    """PIL image -> normalised FloatTensor [3, image_size, image_size].

    ``train=True`` applies the random crop; call with ``rng`` (a ``random.Random``) for a
    reproducible crop, otherwise the module-level ``random`` is used.
    """

    def __init__(self, image_size: int, train: bool):
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.train = bool(train)

    def __call__(self, img, rng: random.Random | None = None):
        from PIL import Image
        img = _rgb(img)
        s = self.image_size
        if self.train:
            left, top, w, h = random_resized_crop_box(img.width, img.height, rng or random)
            img = img.resize((s, s), Image.BICUBIC, box=(left, top, left + w, top + h))
        else:
            nw, nh = eval_resize_size(img.width, img.height, s)
            if (nw, nh) != img.size:
                img = img.resize((nw, nh), Image.BICUBIC)
            img = img.crop(center_crop_box(nw, nh, s))
        return _to_tensor(img)

    def __repr__(self) -> str:
        kind = f"train: random-resized crop scale={TRAIN_SCALE}" if self.train else \
            "eval: resize shorter side + centre crop"
        return f"ImageTransform({self.image_size}, {kind}, bicubic, CLIP mean/std)"


def image_transform(image_size: int, train: bool) -> ImageTransform:
    return ImageTransform(image_size, train)
