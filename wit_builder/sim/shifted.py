"""The demo's shifted evaluation set: the 8 shapes drawn in styles the training web never uses.

The simulated web (``render.py``) draws every shape from its own polygons in its own styles
(textured renders, outlines, line art, hand-drawn, photos, logos). A CLIP model trained on it can
be tested for robustness to distribution shift the way
ImageNet-Sketch and ImageNet-Rendition test real CLIP models: same classes, different depiction.
To make the shift real, nothing here comes from the web's renderer: the geometry is this module's
own (signed-distance functions evaluated per pixel, with analytic anti-aliasing, and randomly
drawn proportions: elliptical circles, rounded squares, isosceles triangles, fat or thin stars,
arrows, hearts made of two discs and a triangle, crosses, crescents of any thickness), and so are
the backgrounds, colours and clutter. Only the class names (``SHAPES``) are shared.

Styles (:data:`SHIFTED_STYLES`)::

    sketch      pencil outline: 2-3 wobbly, slightly offset dark-grey strokes on cream paper,
                sometimes light diagonal hatching inside; no colour
    silhouette  the shape filled near-black on a vivid background (flat or a two-hue gradient)
    render2     a poster/cartoon renderer: a saturated fill of any hue, often a thick dark outline,
                a saturated background of a far-away hue, 2-5 stray straight or curved lines,
                then a Gaussian blur

All styles sometimes (30%) add a small clutter element that is not one of the shapes (a cluster
of dots or a short squiggle), away from the object. Images are 128-224 px a side (square, 4:3 or
3:4); the object's radius is 0.22-0.42 of the shorter side and it lies fully inside the frame.
The set is evaluated after shrinking to 32 x 32 px, so strokes are at least ~1/12 of the object's
radius thick and shapes have no fine details.

    image = draw_shifted("sketch", "star", seed=7)                    # PIL RGB image
    image, mask = draw_shifted("render2", "heart", 7, with_mask=True)  # + object coverage
    n = write_shifted_set("out/shifted-sketch", "sketch", per_class=50, seed=0)

Everything is deterministic from (style, shape, seed). :func:`write_shifted_set` draws scene
``i`` of shape ``k`` from its own seed stream (``"shifted-<style>"``), never the web's.
"""
from __future__ import annotations

import colorsys
import hashlib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from wit_builder.sim.scenes import SHAPES

__all__ = ["SHIFTED_STYLES", "draw_shifted", "write_shifted_set", "shifted_seed", "sample_params",
           "CANONICAL_PARAMS", "shape_coverage"]

SHIFTED_STYLES: tuple[str, ...] = ("sketch", "silhouette", "render2")

# Rotation allowed per shape (degrees, symmetric): a person must still name the shape.
_MAX_TURN = {"circle": 180.0, "square": 20.0, "cross": 20.0, "heart": 25.0, "triangle": 180.0,
             "star": 180.0, "arrow": 180.0, "crescent": 180.0}
_STYLE_TAG = {"sketch": 0x5E7C, "silhouette": 0x5115, "render2": 0x2E2D}
_CLUTTER_PROB = 0.3

Sdf = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, y) design coordinates -> distance


def _check(style: str | None, shape: str | None) -> None:
    if style is not None and style not in SHIFTED_STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(SHIFTED_STYLES)}")
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


# --- geometry: signed-distance functions (negative inside), y pointing down ----------------------

def _sd_disc(x, y, cx: float, cy: float, r: float) -> np.ndarray:
    return np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def _sd_ellipse(x, y, a: float, b: float) -> np.ndarray:
    """Approximate distance to an axis-aligned ellipse (semi-axes a, b): exact on the boundary,
    first-order near it, which is all one pixel of anti-aliasing needs."""
    k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _sd_box(x, y, hx: float, hy: float, corner: float = 0.0) -> np.ndarray:
    """A centred box of half-sizes (hx, hy) with corners rounded by ``corner``."""
    qx = np.abs(x) - (hx - corner)
    qy = np.abs(y) - (hy - corner)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - corner


def _sd_polygon(x, y, verts: np.ndarray) -> np.ndarray:
    """Distance to a simple polygon (any winding): nearest edge distance, sign by even-odd rule."""
    x, y = np.broadcast_arrays(x, y)
    d2 = np.full(x.shape, np.inf, np.float32)
    inside = np.zeros(x.shape, bool)
    for i in range(len(verts)):
        (ax, ay), (bx, by) = verts[i], verts[i - 1]
        ex, ey = float(bx - ax), float(by - ay)
        wx, wy = x - float(ax), y - float(ay)
        t = np.clip((wx * ex + wy * ey) * (1.0 / (ex * ex + ey * ey)), 0.0, 1.0)
        np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2, out=d2)
        crosses = (y >= ay) != (y >= by)  # the edge spans this row ...
        left = (ex * wy - ey * wx) * (1.0 if ey > 0 else -1.0) > 0  # ... right of the point
        inside ^= crosses & left
    return np.where(inside, -1.0, 1.0).astype(np.float32) * np.sqrt(d2)


def _star_vertices(inner: float) -> np.ndarray:
    t = -math.pi / 2 + np.arange(10) * (math.pi / 5)
    rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)


def sample_params(shape: str, rng: np.random.Generator) -> dict[str, float]:
    """The random proportions of one drawn ``shape`` (see :data:`CANONICAL_PARAMS` for ranges'
    midpoints)."""
    _check(None, shape)
    u = rng.uniform
    if shape == "circle":
        return {"ratio": u(0.85, 1.0)}                       # minor / major axis
    if shape == "square":
        return {"corner": u(0.10, 0.40)}                     # corner radius / half-side
    if shape == "triangle":
        return {"apex": u(50.0, 75.0)}                       # apex angle, degrees
    if shape == "star":
        return {"inner": u(0.45, 0.60)}                      # inner / outer radius
    if shape == "arrow":                                     # fractions of the length (2)
        return {"head_len": u(0.55, 0.85), "head_half": u(0.55, 0.75), "shaft_half": u(0.15, 0.24)}
    if shape == "heart":                                     # lobes: discs of radius 0.5
        return {"spread": u(0.30, 0.42), "tip": u(1.05, 1.30)}
    if shape == "cross":
        return {"arm": u(0.25, 0.42)}                        # arm width / span
    return {"offset": u(0.38, 0.60), "cut": u(0.72, 0.88)}   # crescent: the cutting disc


CANONICAL_PARAMS: dict[str, dict[str, float]] = {
    "circle": {"ratio": 0.9}, "square": {"corner": 0.25}, "triangle": {"apex": 55.0},
    "star": {"inner": 0.52}, "arrow": {"head_len": 0.7, "head_half": 0.65, "shaft_half": 0.2},
    "heart": {"spread": 0.36, "tip": 1.15}, "cross": {"arm": 0.33},
    "crescent": {"offset": 0.5, "cut": 0.8},
}


def _design(shape: str, p: dict[str, float]) -> tuple[Sdf, float, float, float]:
    """``(sdf, ox, oy, reach)``: the shape's distance function in its design coordinates, and
    the design point (ox, oy) and scale ``reach`` that map it into the unit disc (unit point u
    is design point (ox, oy) + u * reach)."""
    if shape == "circle":
        return (lambda x, y: _sd_ellipse(x, y, 1.0, p["ratio"])), 0.0, 0.0, 1.0
    if shape == "square":
        c = p["corner"]
        return (lambda x, y: _sd_box(x, y, 1.0, 1.0, c)), 0.0, 0.0, math.sqrt(2) * (1 - c) + c
    if shape == "triangle":  # apex up, all three corners on the unit circle
        a = math.radians(p["apex"])  # inscribed angle: the base spans 2a of the circle
        verts = np.array([[0.0, -1.0], [math.sin(a), math.cos(a)], [-math.sin(a), math.cos(a)]])
        return (lambda x, y: _sd_polygon(x, y, verts)), 0.0, 0.0, 1.0
    if shape == "star":
        verts = _star_vertices(p["inner"])
        return (lambda x, y: _sd_polygon(x, y, verts)), 0.0, 0.0, 1.0
    if shape == "arrow":  # pointing up, tip at y = -1, tail at y = +1
        hl, hh, sh = p["head_len"], p["head_half"], p["shaft_half"]
        base = -1.0 + hl
        verts = np.array([[0, -1], [hh, base], [sh, base], [sh, 1], [-sh, 1], [-sh, base],
                          [-hh, base]], dtype=np.float64)
        reach = max(1.0, math.hypot(hh, base), math.hypot(sh, 1.0))
        return (lambda x, y: _sd_polygon(x, y, verts)), 0.0, 0.0, reach
    if shape == "heart":  # two lobes (discs) and a triangle pointing down, tangent to them
        s, r, tip = p["spread"], 0.5, p["tip"]
        dist = math.hypot(s, tip)
        phi = math.atan2(tip, -s) + math.acos(r / dist)  # tip seen from the right lobe, turned out
        tx, ty = s + r * math.cos(phi), r * math.sin(phi)
        if tx < s:  # the other tangent: the one further out
            phi = math.atan2(tip, -s) - math.acos(r / dist)
            tx, ty = s + r * math.cos(phi), r * math.sin(phi)
        kite = np.array([[-tx, ty], [0.0, 0.0], [tx, ty], [0.0, tip]])  # (0, 0) closes the cleft

        def heart(x, y):
            lobes = np.minimum(_sd_disc(x, y, -s, 0.0, r), _sd_disc(x, y, s, 0.0, r))
            return np.minimum(lobes, _sd_polygon(x, y, kite))
        oy = (tip - r) / 2  # the middle of its height
        reach = max(math.hypot(s, oy) + r, tip - oy)
        return heart, 0.0, oy, reach
    if shape == "cross":
        w = p["arm"]
        return (lambda x, y: np.minimum(_sd_box(x, y, 1.0, w), _sd_box(x, y, w, 1.0))), 0.0, 0.0, \
            math.hypot(1.0, w)
    # crescent: the unit disc minus a disc of radius ``cut`` offset to the right
    d, rc = p["offset"], p["cut"]
    xi = (1 - rc * rc + d * d) / (2 * d)  # where the two circles meet
    right = xi if xi > 0 else 0.0
    ox = (-1.0 + right) / 2
    return (lambda x, y: np.maximum(_sd_disc(x, y, 0.0, 0.0, 1.0), -_sd_disc(x, y, d, 0.0, rc))), \
        ox, 0.0, 1.0 - ox


@dataclass(frozen=True)
class Layout:
    """Where and how the object sits in one image."""

    shape: str
    width: int
    height: int
    cx: float                 # centre, pixels
    cy: float
    radius: float             # the shape fits in a disc of this radius (pixels)
    rotation: float           # degrees
    params: dict = field(default_factory=dict)


def _layout(shape: str, rng: np.random.Generator) -> Layout:
    if rng.random() < 0.5:
        w = h = int(rng.integers(128, 225))
    else:  # 4:3 or 3:4, both sides within 128..224
        m = int(rng.integers(128, 169))
        w, h = (m, round(m * 4 / 3)) if rng.random() < 0.5 else (round(m * 4 / 3), m)
    radius = float(rng.uniform(0.22, 0.42) * min(w, h))
    margin = radius * 1.06 + 3  # sketch strokes wobble a little past the outline
    cx, cy = float(rng.uniform(margin, w - margin)), float(rng.uniform(margin, h - margin))
    lim = _MAX_TURN[shape]
    return Layout(shape, w, h, cx, cy, radius, float(rng.uniform(-lim, lim)),
                  sample_params(shape, rng))


Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) pixel window


def _box(lay: Layout, pad: float) -> Box:
    reach = lay.radius + pad
    return (max(0, int(lay.cy - reach)), min(lay.height, int(math.ceil(lay.cy + reach)) + 1),
            max(0, int(lay.cx - reach)), min(lay.width, int(math.ceil(lay.cx + reach)) + 1))


def _object_sdf(lay: Layout, box: Box, shift: tuple[float, float] = (0.0, 0.0),
                turn: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Signed distance in pixels to the placed shape over ``box`` (float32); ``shift``/``turn``/
    ``scale`` displace the shape a little (for the sketch's extra strokes)."""
    y0, y1, x0, x1 = box
    sdf, ox, oy, reach = _design(lay.shape, lay.params)
    r = lay.radius * scale
    th = math.radians(lay.rotation + turn)
    c, s = math.cos(th), math.sin(th)
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + (0.5 - lay.cx - shift[0])
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + (0.5 - lay.cy - shift[1])
    k = reach / r  # pixels -> design units
    u = (px * c - py * s) * k + ox  # undo the rotation
    v = (px * s + py * c) * k + oy
    return sdf(u, v).astype(np.float32) * (1.0 / k)


def _coverage(sdf_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a pixel-unit signed distance."""
    return np.clip(0.5 - sdf_px, 0.0, 1.0)


def shape_coverage(shape: str, width: int, height: int, cx: float, cy: float, radius: float,
                   rotation: float = 0.0, params: dict | None = None) -> np.ndarray:
    """Coverage (float32 H x W in [0, 1]) of ``shape`` placed at (cx, cy) with ``radius``;
    ``params`` default to :data:`CANONICAL_PARAMS` (for comparing geometries)."""
    _check(None, shape)
    lay = Layout(shape, width, height, cx, cy, radius, rotation,
                 dict(CANONICAL_PARAMS[shape] if params is None else params))
    return _coverage(_object_sdf(lay, (0, height, 0, width)))


# --- pixel helpers -------------------------------------------------------------------------------

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One colour (hue in degrees) as a float32 RGB triple."""
    return np.array(colorsys.hsv_to_rgb((h % 360.0) / 360.0, s, v), np.float32)


def _hsv_ramp(t: np.ndarray, start: tuple[float, float, float],
              end: tuple[float, float, float]) -> np.ndarray:
    """An H x W x 3 float32 image from a field ``t`` in [0, 1]: the colours from HSV ``start`` to
    ``end`` (hue in degrees, interpolated as given, so a ramp between two vivid hues stays vivid;
    RGB interpolation would pass through grey). A 256-entry lookup table: fast."""
    k = np.linspace(0.0, 1.0, 256)
    lut = np.array([_hsv(*(a + (b - a) * x for a, b in zip(start, end))) for x in k], np.float32)
    return lut[(np.clip(t, 0.0, 1.0) * 255.0 + 0.5).astype(np.intp)]


def _coords(w: int, h: int, box: Box | None = None):
    y0, y1, x0, x1 = box if box else (0, h, 0, w)
    return (np.arange(y0, y1, dtype=np.float32)[:, None],
            np.arange(x0, x1, dtype=np.float32)[None, :])


def _waves(rng: np.random.Generator, yy, xx, n: int, wavelength: tuple[float, float]) -> np.ndarray:
    """A smooth random field in about [-1, 1]: the sum of ``n`` plane waves of random direction,
    phase and wavelength (pixels)."""
    out = np.zeros(np.broadcast_shapes(np.shape(yy), np.shape(xx)), np.float32)
    for _ in range(n):  # sin(ax + by) = sin(ax) cos(by) + cos(ax) sin(by): trig on 1-D axes only
        a = rng.uniform(0, 2 * math.pi)
        k = 2 * math.pi / rng.uniform(*wavelength)
        ax, by = xx * (k * math.cos(a)), yy * (k * math.sin(a)) + rng.uniform(0, 6.3)
        out += np.sin(ax) * np.cos(by)
        out += np.cos(ax) * np.sin(by)
    return out * (1.0 / math.sqrt(n))


def _blend(img: np.ndarray, box: Box, colour, alpha: np.ndarray) -> None:
    """``img[box] += (colour - img[box]) * alpha`` (colour: an RGB triple or an h x w x 3 field)."""
    y0, y1, x0, x1 = box
    win = img[y0:y1, x0:x1]
    win += (np.asarray(colour, np.float32) - win) * alpha[..., None]


def _to_image(img: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")


def _far_hue(rng: np.random.Generator, hue: float, min_gap: float) -> float:
    """A random hue at least ``min_gap`` degrees (on the circle) from ``hue``."""
    return (hue + rng.uniform(min_gap, 360.0 - min_gap)) % 360.0


# --- clutter: a small thing that is not one of the shapes ----------------------------------------

def _clutter(rng: np.random.Generator, lay: Layout) -> tuple[Box, np.ndarray] | None:
    """A dot cluster or a short squiggle clear of the object: its window and coverage, or None
    when no free spot is found."""
    w, h, m = lay.width, lay.height, min(lay.width, lay.height)
    size = float(rng.uniform(0.06, 0.10) * m)  # its own radius
    for _ in range(16):
        x = float(rng.uniform(size + 2, w - size - 2))
        y = float(rng.uniform(size + 2, h - size - 2))
        if math.hypot(x - lay.cx, y - lay.cy) > lay.radius * 1.1 + size + 0.03 * m:
            break
    else:
        return None
    box = (int(y - size) - 1, int(y + size) + 2, int(x - size) - 1, int(x + size) + 2)
    box = (max(0, box[0]), min(h, box[1]), max(0, box[2]), min(w, box[3]))
    yy, xx = _coords(w, h, box)
    yy, xx = yy + (0.5 - y), xx + (0.5 - x)
    if rng.random() < 0.5:  # dots
        d = np.full(np.broadcast_shapes(yy.shape, xx.shape), np.inf, np.float32)
        for _ in range(int(rng.integers(3, 7))):
            dr = float(rng.uniform(0.12, 0.25) * size)
            a, rad = rng.uniform(0, 2 * math.pi), rng.uniform(0, size - dr)
            d = np.minimum(d, _sd_disc(xx, yy, rad * math.cos(a), rad * math.sin(a), max(1.5, dr)))
        return box, _coverage(d)
    a = rng.uniform(0, math.pi)  # squiggle: a short sine wave along direction a
    s = xx * math.cos(a) + yy * math.sin(a)
    t = -xx * math.sin(a) + yy * math.cos(a)
    amp, k = size * rng.uniform(0.2, 0.35), rng.uniform(2.0, 3.5) * math.pi / size
    dist = np.abs(t - amp * np.sin(s * k)) / math.sqrt(1 + (amp * k) ** 2 * 0.5)
    half = max(1.0, 0.06 * size)
    ends = np.clip(size * 0.9 - np.abs(s), 0.0, 1.0)
    return box, np.clip(half + 0.5 - dist, 0.0, 1.0) * ends


# --- styles: each draws a PIL RGB image and returns it with the object's coverage ---------------

def _sketch(rng: np.random.Generator, lay: Layout) -> tuple[Image.Image, np.ndarray]:
    w, h, r = lay.width, lay.height, lay.radius
    yy, xx = _coords(w, h)
    paper = _hsv(rng.uniform(35, 50), rng.uniform(0.03, 0.09), rng.uniform(0.88, 0.97))
    tex = _waves(rng, yy, xx, 3, (40, 120)) * 0.015 + (rng.random((h, w), np.float32) - 0.5) * 0.04
    img = paper[None, None, :] * (1.0 + tex[..., None])
    graphite = float(rng.uniform(0.12, 0.32))
    width = max(2.0, r * float(rng.uniform(0.085, 0.12)))  # stroke width, >= r / 12
    box = _box(lay, 0.12 * r + width + 3)
    by, bx = _coords(w, h, box)
    base = _object_sdf(lay, box)
    clear = np.ones(base.shape, np.float32)  # how much paper shows through all the graphite
    if rng.random() < 0.5:  # light diagonal hatching inside
        a = math.radians(rng.choice([rng.uniform(30, 60), rng.uniform(120, 150)]))
        period = float(rng.uniform(5.0, 9.0))
        phase = (bx * math.cos(a) + by * math.sin(a)) * (1.0 / period) % 1.0
        line = np.clip(0.75 + 0.5 - np.abs(phase - 0.5) * period, 0.0, 1.0)
        inside = np.clip(-base - width, 0.0, 1.0)
        clear *= 1.0 - line * inside * float(rng.uniform(0.25, 0.4))
    for k in range(int(rng.integers(2, 4))):
        if k == 0:
            d = base
        else:  # another pass: slightly shifted, turned and scaled
            a, off = rng.uniform(0, 2 * math.pi), rng.uniform(0.4, 1.0) * width
            d = _object_sdf(lay, box, (off * math.cos(a), off * math.sin(a)),
                            float(rng.uniform(-2.5, 2.5)), float(rng.uniform(0.97, 1.03)))
        jitter = _waves(rng, by, bx, 3, (0.6 * r, 1.6 * r)) * (r * float(rng.uniform(0.015, 0.03)))
        ink = np.clip(width / 2 + 0.5 - np.abs(d + jitter), 0.0, 1.0)
        pressure = 0.75 + 0.2 * _waves(rng, by, bx, 2, (0.5 * r, 1.2 * r))
        grain = rng.random(ink.shape, np.float32) * 0.25 + 0.75
        clear *= 1.0 - ink * pressure * grain * float(rng.uniform(0.6, 0.85))
    _blend(img, box, np.full(3, graphite, np.float32), 1.0 - clear)
    _add_clutter(rng, lay, img, np.full(3, graphite, np.float32), 0.7)
    return _to_image(img), _paste(lay, box, _coverage(base))


def _silhouette(rng: np.random.Generator, lay: Layout) -> tuple[Image.Image, np.ndarray]:
    w, h = lay.width, lay.height
    hue, s, v = rng.uniform(0, 360), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)
    if rng.random() < 0.4:
        img = np.empty((h, w, 3), np.float32)
        img[:] = _hsv(hue, s, v)
    else:  # a gradient between two vivid colours, interpolated in HSV (stays saturated)
        yy, xx = _coords(w, h)
        a = rng.uniform(0, 2 * math.pi)
        t = xx * (math.cos(a) / w) + yy * (math.sin(a) / h)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        dh = rng.uniform(30, 120) * rng.choice([-1.0, 1.0])
        s2, v2 = rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)
        img = _hsv_ramp(t, (hue, s, v), (hue + dh, s2, v2))
    dark = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.6), rng.uniform(0.02, 0.13))
    box = _box(lay, 3)
    alpha = _coverage(_object_sdf(lay, box))
    _blend(img, box, dark, alpha)
    clutter = dark if rng.random() < 0.5 else np.full(3, rng.uniform(0.9, 1.0), np.float32)
    _add_clutter(rng, lay, img, clutter, 1.0)
    return _to_image(img), _paste(lay, box, alpha)


def _render2(rng: np.random.Generator, lay: Layout) -> tuple[Image.Image, np.ndarray]:
    w, h, r = lay.width, lay.height, lay.radius
    bg_hue = rng.uniform(0, 360)
    bg_s, bg_v = rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95)
    if rng.random() < 0.5:  # flat
        img = np.empty((h, w, 3), np.float32)
        img[:] = _hsv(bg_hue, bg_s, bg_v)
    else:  # a soft radial vignette in value only
        yy, xx = _coords(w, h)
        d = np.sqrt(((xx - rng.uniform(0, w)) / w) ** 2 + ((yy - rng.uniform(0, h)) / h) ** 2)
        img = _hsv_ramp(d, (bg_hue, bg_s, bg_v), (bg_hue, bg_s, bg_v * 0.85))
    hue = _far_hue(rng, bg_hue, 100.0)
    fill = _hsv(hue, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))
    outline = rng.random() < 0.6
    thick = r * float(rng.uniform(0.07, 0.11)) if outline else 0.0
    box = _box(lay, thick + 3)
    d = _object_sdf(lay, box)
    if outline:  # a dark band just outside the fill
        _blend(img, box, _hsv(hue, rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.2)),
               _coverage(d - thick))
    alpha = _coverage(d)
    colour = np.broadcast_to(fill, alpha.shape + (3,))
    if rng.random() < 0.4:  # cel shading: one flat darker side
        by, bx = _coords(w, h, box)
        a = rng.uniform(0, 2 * math.pi)
        side = (bx - lay.cx) * math.cos(a) + (by - lay.cy) * math.sin(a) > 0.25 * r
        colour = np.where(side[..., None], fill * 0.85, fill)
    _blend(img, box, colour, alpha)
    _add_clutter(rng, lay, img, _hsv(_far_hue(rng, bg_hue, 60.0), rng.uniform(0.4, 1.0),
                                     rng.uniform(0.2, 1.0)), 1.0)
    out = _to_image(img)
    _stray_lines(rng, out, _hsv(bg_hue, bg_s, bg_v), fill)
    out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return out, _paste(lay, box, alpha)


_STYLES = {"sketch": _sketch, "silhouette": _silhouette, "render2": _render2}


def _add_clutter(rng: np.random.Generator, lay: Layout, img: np.ndarray, colour, strength: float):
    if rng.random() < _CLUTTER_PROB:
        found = _clutter(rng, lay)
        if found is not None:
            _blend(img, found[0], colour, found[1] * strength)


def _paste(lay: Layout, box: Box, alpha: np.ndarray) -> np.ndarray:
    full = np.zeros((lay.height, lay.width), np.float32)
    y0, y1, x0, x1 = box
    full[y0:y1, x0:x1] = alpha
    return full


def _border_point(rng: np.random.Generator, w: int, h: int, side: int) -> np.ndarray:
    """A random point on one side of the frame (0 top, 1 right, 2 bottom, 3 left)."""
    t = rng.uniform(0.05, 0.95)
    return np.array([(t * w, 0.0), (w - 1.0, t * h), (t * w, h - 1.0), (0.0, t * h)][side])


def _stray_lines(rng: np.random.Generator, image: Image.Image, bg_rgb: np.ndarray,
                 fill_rgb: np.ndarray) -> None:
    """2-5 straight or curved lines from one side of the frame to another, 1-3 px, each in a
    colour that stands out from the background's (RGB L1 distance > 0.9) and is not the
    object's (> 0.6), so that no line passes for part of the object."""
    w, h = image.size
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        c = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 1.0), rng.uniform(0.05, 1.0))
        for _ in range(12):
            if np.abs(c - bg_rgb).sum() > 0.9 and np.abs(c - fill_rgb).sum() > 0.6:
                break
            c = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 1.0), rng.uniform(0.05, 1.0))
        else:  # black or white, whichever is further
            c = np.zeros(3, np.float32) if bg_rgb.sum() > 1.5 else np.ones(3, np.float32)
        s0 = int(rng.integers(4))
        s1 = (s0 + int(rng.integers(1, 4))) % 4  # another side
        a, b = _border_point(rng, w, h, s0), _border_point(rng, w, h, s1)
        if rng.random() < 0.5:  # straight
            xy = np.stack([a, b])
        else:  # a quadratic Bezier curve bent through a random control point
            ctrl = rng.uniform(0.1, 0.9, 2) * [w, h]
            t = np.linspace(0, 1, 24)[:, None]
            xy = (1 - t) ** 2 * a + 2 * t * (1 - t) * ctrl + t ** 2 * b
        draw.line([tuple(p) for p in xy.tolist()], fill=tuple(int(v * 255 + 0.5) for v in c),
                  width=int(rng.integers(1, 4)), joint="curve")


# --- public API ----------------------------------------------------------------------------------

def draw_shifted(style: str, shape: str, seed: int,
                 with_mask: bool = False) -> Image.Image | tuple[Image.Image, np.ndarray]:
    """One image of ``shape`` in ``style`` (PIL RGB), deterministic from (style, shape, seed);
    with ``with_mask`` also the object's filled coverage (float32 H x W in [0, 1]): for the
    sketch the region its first stroke encloses, for render2 the fill without its outline."""
    _check(style, shape)
    rng = np.random.default_rng([int(seed) % 2 ** 64, _STYLE_TAG[style], SHAPES.index(shape)])
    lay = _layout(shape, rng)
    out, mask = _STYLES[style](rng, lay)
    return (out, mask) if with_mask else out


def shifted_seed(style: str, seed: int, index: int) -> int:
    """A 62-bit seed for scene ``index`` of the ``style`` set: its own stream, ``shifted-<style>``
    (never the web's ``web``)."""
    h = hashlib.blake2b(f"shifted-{style}/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 2


def write_shifted_set(folder: str, style: str, per_class: int, seed: int, quality: int = 90,
                      progress: bool = False) -> int:
    """Write ``folder/<shape>/<shape>-NNNN.jpg``, ``per_class`` images of each of the 8 shapes in
    ``style`` (the image-folder layout ``wit eval --zeroshot-dir`` reads); returns the count."""
    _check(style, None)
    if per_class < 1:
        raise ValueError(f"shifted set: per_class must be >= 1, got {per_class}")
    count = 0
    for k, shape in enumerate(SHAPES):
        sub = os.path.join(folder, shape)
        os.makedirs(sub, exist_ok=True)
        for i in range(per_class):
            img = draw_shifted(style, shape, shifted_seed(style, seed, k * per_class + i))
            img.save(os.path.join(sub, f"{shape}-{i:04d}.jpg"), "JPEG", quality=quality)
            count += 1
        if progress:
            print(f"shifted {style}: {count}/{per_class * len(SHAPES)} images", file=sys.stderr,
                  flush=True)
    return count
