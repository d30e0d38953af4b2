"""Synthetic near-duplicate augmentations for the learned duplicate detector.

The CLIP paper (Radford et al. 2021, appendix C) trains its near-duplicate detector on a synthetic
pipeline that "combined random cropping and zooming, aspect ratio distortion, downsizing and
upscaling to different resolutions, minor rotations, jpeg compression, and HSV color jitter" and
"randomly selects from different interpolation algorithms for all relevant steps". This module is
our PIL/numpy implementation of that pipeline, plus padding/borders (a common web re-upload edit).

Every transform is one named *family* (:data:`FAMILIES`). :func:`apply_family` applies exactly one
family (used by the benchmark and the tests); :func:`augment` chains a random subset of families
the way the training pipeline does. Randomness only comes from the ``rng`` argument (an
``np.random.Generator`` or an int seed), so a fixed seed gives byte-identical outputs. Pass a list as
``log`` to receive one ``{"family": ..., **params}`` dict per step that was applied (the chosen
interpolation names included).

Every resize picks its interpolation at random from nearest, bilinear, bicubic, lanczos and box
unless one is given. PIL's rotate only implements nearest, bilinear and bicubic, so rotations draw
from those three.
"""
from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["FAMILIES", "INTERPOLATIONS", "augment", "apply_family", "as_rng", "resize",
           "synthetic_image", "to_rgb"]

INTERPOLATIONS: dict[str, int] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
ROTATE_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # what Image.rotate supports

Rng = "np.random.Generator | int | None"


def as_rng(rng) -> np.random.Generator:
    """An ``np.random.Generator`` from a Generator, an int seed or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL image; transparent pixels are composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _pick_interp(rng: np.random.Generator, interpolation: str | None,
                 choices: tuple[str, ...] = tuple(INTERPOLATIONS)) -> str:
    if interpolation is None:
        return choices[int(rng.integers(len(choices)))]
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {', '.join(INTERPOLATIONS)}")
    return interpolation


def resize(img: Image.Image, size: tuple[int, int], rng=None, interpolation: str | None = None,
           log: list | None = None) -> Image.Image:
    """Resize to ``size`` (w, h) with the named interpolation, or one drawn at random."""
    rng = as_rng(rng)
    name = _pick_interp(rng, interpolation)
    size = (max(1, int(round(size[0]))), max(1, int(round(size[1]))))
    if log is not None:
        log.append({"family": "_resize", "size": size, "interpolation": name})
    return img.resize(size, INTERPOLATIONS[name])


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    kind = rng.integers(3)
    if kind == 0:
        return (0, 0, 0)
    if kind == 1:
        return (255, 255, 255)
    return tuple(int(c) for c in rng.integers(0, 256, 3))


# --- the families -------------------------------------------------------------------------------
# Each takes (img, rng, log, **params); a parameter left as None is drawn from rng. Each returns an
# RGB image and appends exactly one {"family": name, ...} record to log (plus "_resize" records).

def crop(img: Image.Image, rng, log=None, fraction: float | None = None, zoom: bool | None = None,
         interpolation: str | None = None) -> Image.Image:
    """Random crop removing ``fraction`` of the area (default U(0.05, 0.30)); then, with zoom,
    resize back to the original size ("random cropping and zooming")."""
    rng = as_rng(rng)
    w, h = img.size
    if fraction is None:
        fraction = float(rng.uniform(0.05, 0.30))
    if zoom is None:
        zoom = bool(rng.random() < 0.7)
    keep = 1.0 - fraction
    # split the kept area between the two sides with a random aspect jitter that still fits
    r = float(np.exp(rng.uniform(-0.25, 0.25)))
    kw = min(1.0, math.sqrt(keep) * r)
    kh = min(1.0, keep / kw)
    kw = keep / kh
    cw, ch = max(1, int(round(w * kw))), max(1, int(round(h * kh)))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    rec = {"family": "crop", "fraction": fraction, "box": (x0, y0, x0 + cw, y0 + ch), "zoom": zoom}
    if log is not None:
        log.append(rec)
    if zoom:
        out = resize(out, (w, h), rng, interpolation, log)
    return out


def rotate(img: Image.Image, rng, log=None, angle: float | None = None, expand: bool | None = None,
           interpolation: str | None = None) -> Image.Image:
    """Minor rotation, default U(-10, 10) degrees, corners filled with a random flat colour;
    with ``expand`` the canvas grows to hold the whole image, otherwise corners are cut."""
    rng = as_rng(rng)
    if angle is None:
        angle = float(rng.uniform(-10.0, 10.0))
    if expand is None:
        expand = bool(rng.random() < 0.5)
    name = _pick_interp(rng, interpolation if interpolation in ROTATE_INTERPOLATIONS else None,
                        ROTATE_INTERPOLATIONS)
    fill = _random_colour(rng)
    if log is not None:
        log.append({"family": "rotate", "angle": angle, "expand": expand, "interpolation": name,
                    "fill": fill})
    return img.rotate(angle, resample=INTERPOLATIONS[name], expand=expand, fillcolor=fill)


def rescale(img: Image.Image, rng, log=None, scale: float | None = None, restore: bool | None = None,
            interpolation: str | None = None) -> Image.Image:
    """Down- or up-scale to another resolution (default: 75% down by U(0.2, 0.9), 25% up by
    U(1.1, 2.0)); with ``restore`` resize back to the original size (another random interpolation
    unless one is given), which leaves the resampling artefacts of the round trip."""
    rng = as_rng(rng)
    w, h = img.size
    if scale is None:
        scale = float(rng.uniform(0.2, 0.9)) if rng.random() < 0.75 else float(rng.uniform(1.1, 2.0))
    if restore is None:
        restore = bool(rng.random() < 0.5)
    if log is not None:
        log.append({"family": "resize", "scale": scale, "restore": restore})
    out = resize(img, (max(8, w * scale), max(8, h * scale)), rng, interpolation, log)
    if restore:
        out = resize(out, (w, h), rng, interpolation, log)
    return out


def aspect(img: Image.Image, rng, log=None, ratio: float | None = None,
           interpolation: str | None = None) -> Image.Image:
    """Aspect-ratio distortion: width (or height) stretched by ``ratio`` (default
    exp(U(-ln 1.5, ln 1.5)), i.e. between 0.67x and 1.5x)."""
    rng = as_rng(rng)
    w, h = img.size
    if ratio is None:
        ratio = float(np.exp(rng.uniform(-math.log(1.5), math.log(1.5))))
    if log is not None:
        log.append({"family": "aspect", "ratio": ratio})
    if ratio >= 1.0:
        return resize(img, (w * ratio, h), rng, interpolation, log)
    return resize(img, (w, h / ratio), rng, interpolation, log)


def jpeg(img: Image.Image, rng, log=None, quality: int | None = None) -> Image.Image:
    """Re-encode as JPEG at ``quality`` (default uniform integer in [10, 90])."""
    rng = as_rng(rng)
    if quality is None:
        quality = int(rng.integers(10, 91))
    if log is not None:
        log.append({"family": "jpeg", "quality": quality})
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def color(img: Image.Image, rng, log=None, hue: float | None = None, saturation: float | None = None,
          value: float | None = None) -> Image.Image:
    """HSV colour jitter: hue shifted by ``hue`` turns (default U(-0.08, 0.08)), saturation and value
    scaled by ``saturation`` (default U(0.6, 1.4)) and ``value`` (default U(0.7, 1.3))."""
    rng = as_rng(rng)
    if hue is None:
        hue = float(rng.uniform(-0.08, 0.08))
    if saturation is None:
        saturation = float(rng.uniform(0.6, 1.4))
    if value is None:
        value = float(rng.uniform(0.7, 1.3))
    if log is not None:
        log.append({"family": "color", "hue": hue, "saturation": saturation, "value": value})
    hsv = np.asarray(img.convert("HSV"), dtype=np.float32)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue * 256.0, 256.0)
    hsv[..., 1] = hsv[..., 1] * saturation
    hsv[..., 2] = hsv[..., 2] * value
    out = np.clip(np.rint(hsv), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "HSV").convert("RGB")


def pad(img: Image.Image, rng, log=None, borders: tuple[float, float, float, float] | None = None,
        fill: tuple[int, int, int] | None = None) -> Image.Image:
    """Padding / borders: (left, top, right, bottom) as fractions of the width/height (default:
    each U(0, 0.2), at least one side >= 0.03), filled with a random flat colour."""
    rng = as_rng(rng)
    w, h = img.size
    if borders is None:
        uniform = rng.random() < 0.5  # a frame of equal width, or independent sides (letterboxing)
        if uniform:
            b = float(rng.uniform(0.03, 0.2))
            borders = (b, b, b, b)
        else:
            borders = tuple(float(x) for x in rng.uniform(0.0, 0.2, 4))
            if max(borders) < 0.03:
                borders = (borders[0], borders[1], 0.03, borders[3])
    if fill is None:
        fill = _random_colour(rng)
    left, top, right, bottom = (int(round(borders[0] * w)), int(round(borders[1] * h)),
                                int(round(borders[2] * w)), int(round(borders[3] * h)))
    if log is not None:
        log.append({"family": "pad", "borders": tuple(borders), "fill": fill})
    out = Image.new("RGB", (w + left + right, h + top + bottom), fill)
    out.paste(img, (left, top))
    return out


FAMILIES: dict[str, Callable[..., Image.Image]] = {
    "crop": crop,
    "rotate": rotate,
    "resize": rescale,
    "jpeg": jpeg,
    "color": color,
    "pad": pad,
    "aspect": aspect,
}

# The chained training pipeline: (family, probability), applied in this order.
PIPELINE: tuple[tuple[str, float], ...] = (
    ("crop", 0.6),
    ("aspect", 0.35),
    ("rotate", 0.35),
    ("pad", 0.25),
    ("color", 0.5),
    ("resize", 0.6),
    ("jpeg", 0.6),
)


def apply_family(img: Image.Image, family: str, rng=None, log: list | None = None, **params) -> Image.Image:
    """Apply exactly one named family (see :data:`FAMILIES`); ``params`` fix its parameters."""
    if family not in FAMILIES:
        raise ValueError(f"unknown augmentation family {family!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[family](to_rgb(img), as_rng(rng), log, **params)


def augment(img: Image.Image, rng=None, log: list | None = None,
            pipeline: tuple[tuple[str, float], ...] = PIPELINE, min_ops: int = 1) -> Image.Image:
    """The training-time pipeline: each family of ``pipeline`` is applied with its probability, in
    order; if fewer than ``min_ops`` were drawn, random further families are forced on. A fixed
    seed (or Generator state) gives an identical result."""
    rng = as_rng(rng)
    chosen = [rng.random() < p for _, p in pipeline]
    missing = min_ops - sum(chosen)
    if missing > 0:
        off = [i for i, c in enumerate(chosen) if not c]
        for i in rng.choice(off, size=min(missing, len(off)), replace=False):
            chosen[int(i)] = True
    out = to_rgb(img)
    for (family, _), on in zip(pipeline, chosen):
        if on:
            out = FAMILIES[family](out, rng, log)
    return out


# --- synthetic images (tests, benchmark, demo) ----------------------------------------------------

def synthetic_image(rng=None, size: tuple[int, int] | None = None) -> Image.Image:
    """A random "natural-looking" RGB image: gradient background, 4-14 filled shapes, a striped
    texture patch, some noise and blur. Used as generated data where no real photos exist."""
    rng = as_rng(rng)
    if size is None:
        size = (int(rng.integers(128, 321)), int(rng.integers(128, 321)))
    w, h = size
    c0 = rng.integers(0, 256, 3).astype(np.float32)
    c1 = rng.integers(0, 256, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(theta) * xx / w + np.sin(theta) * yy / h)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    arr = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    # a sinusoidal striped texture in a random window
    fx, fy = rng.uniform(-0.4, 0.4, 2)
    stripes = 0.5 + 0.5 * np.sin(fx * xx + fy * yy + rng.uniform(0, 6.28))
    x0, x1 = sorted(rng.integers(0, w, 2))
    y0, y1 = sorted(rng.integers(0, h, 2))
    tc = rng.integers(0, 256, 3).astype(np.float32)
    win = np.zeros((h, w, 1), np.float32)
    win[y0:y1 + 1, x0:x1 + 1] = 1.0
    arr = arr * (1 - win * stripes[..., None] * 0.8) + tc * win * stripes[..., None] * 0.8
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 15))):
        kind = int(rng.integers(4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.04, 0.3) * w, rng.uniform(0.04, 0.3) * h
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        elif kind == 2:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            pts = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]
            draw.polygon(pts, fill=colour)
        else:
            draw.line(box, fill=colour, width=int(rng.integers(1, max(2, min(w, h) // 15))))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, rng.uniform(0, 8), arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    radius = float(rng.uniform(0, 1.2))
    if radius > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    return img
