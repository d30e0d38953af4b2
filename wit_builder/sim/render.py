"""Procedurally rendered scenes of clear visual concepts: the demo's stand-in for web photos.

A scene is one coloured shape (8 shapes x 8 colours) on a background (plain, gradient, wood,
checkerboard, noise, sky, stripes), with a surface texture (flat, shaded, striped, speckled,
outlined), a size, position and rotation, sometimes a soft drop shadow and sometimes a small grey
distractor shape. Everything is deterministic from an integer seed:

    scene = sample_scene(seed)                  # all parameters drawn from the seed
    scene = sample_scene(seed, shape="star")    # some of them fixed
    image = render(scene)                       # PIL RGB image, 128-256 px a side
    image, alpha = render(scene, with_mask=True)  # plus the main object's coverage in [0, 1]

The concepts (colours, backgrounds, shapes' rotations) and the drawing of a scene's parameters
live in ``scenes.py`` (see its docstring); they are re-exported here, the module to import from.
This one turns a scene into pixels.

Speed: about a millisecond per image (numpy + PIL, 2x supersampled polygons), so thousands of
images take seconds.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from wit_builder.sim.scenes import (BACKGROUNDS, COLOURLESS_STYLES, COLOURS, SHAPES,
                                    STYLE_BACKGROUNDS, STYLE_WEIGHTS, STYLES, TEXTURES, Scene,
                                    colour_box, nearest_colour, sample_scene, scene_seed, size_word)

__all__ = ["SHAPES", "COLOURS", "BACKGROUNDS", "STYLE_BACKGROUNDS", "TEXTURES", "STYLES",
           "STYLE_WEIGHTS", "COLOURLESS_STYLES", "Scene", "sample_scene", "render", "scene_seed",
           "shape_polygon", "nearest_colour", "colour_box", "size_word"]

_SUPERSAMPLE = 2


# --- shapes --------------------------------------------------------------------------------------

def _circle_pts(n: int = 96, cx: float = 0.0, cy: float = 0.0, r: float = 1.0, a0=0.0, a1=2 * math.pi):
    t = np.linspace(a0, a1, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def shape_polygon(shape: str) -> np.ndarray:
    """Vertices (N x 2, y pointing down) of ``shape`` in unit coordinates: centred on the origin,
    fitting inside the unit circle."""
    if shape == "circle":
        return _circle_pts(96)
    if shape == "square":
        return _circle_pts(4, a0=math.pi / 4, a1=math.pi / 4 + 2 * math.pi) * 0.98
    if shape == "triangle":
        return _circle_pts(3, a0=-math.pi / 2, a1=-math.pi / 2 + 2 * math.pi) + [0.0, 0.12]
    if shape == "arrow":  # pointing up: a triangular head on a straight shaft
        pts = [(0.0, -0.98), (0.62, -0.2), (0.22, -0.2), (0.22, 0.95), (-0.22, 0.95), (-0.22, -0.2),
               (-0.62, -0.2)]
        return np.asarray(pts, dtype=np.float64)
    if shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "cross":
        a, b = 0.32, 0.95
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
               (-b, a), (-b, -a), (-a, -a)]
        return np.asarray(pts, dtype=np.float64)
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 120, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], axis=1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        return pts / np.abs(pts).max() * 0.98
    if shape == "crescent":
        # outer circle r=1 at the origin minus an inner circle r=0.82 centred at (0.42, 0)
        d, r2 = 0.42, 0.82
        xi = (1 - r2 ** 2 + d ** 2) / (2 * d)
        a = math.atan2(math.sqrt(1 - xi ** 2), xi)            # intersection angle on the outer circle
        b = math.atan2(math.sqrt(1 - xi ** 2), xi - d)        # ... and on the inner circle
        outer = _circle_pts(72, a0=a, a1=2 * math.pi - a)
        outer = np.vstack([outer, [[math.cos(a), -math.sin(a)]]])
        inner = _circle_pts(60, cx=d, a0=2 * math.pi - b, a1=b, r=r2)  # back the other way
        pts = np.vstack([outer, inner])
        return pts - [-0.2, 0.0]
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def _placed(shape, cx: float, cy: float, r: float, rotation: float, scale: int = 1,
            tilt: tuple[float, float] = (1.0, 0.0)):
    """The shape's vertices (``shape``: a name, or unit-coordinate vertices) turned by
    ``rotation``, tilted (``tilt``: vertical squash, horizontal shear: a flat object seen at an
    angle), scaled to radius ``r`` and moved to (cx, cy); times ``scale`` (supersampling)."""
    pts = shape_polygon(shape) if isinstance(shape, str) else np.asarray(shape, np.float64)
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    rot = np.array([[c, s], [-s, c]])  # counter-clockwise on screen (y points down)
    pts = pts @ rot.T
    if tilt != (1.0, 0.0):
        pts = np.stack([pts[:, 0] + tilt[1] * pts[:, 1], pts[:, 1] * tilt[0]], axis=1)
    pts = pts * r + [cx, cy]
    return [(float(x) * scale, float(y) * scale) for x, y in pts]


def _resampled(pts: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced along the closed polygon ``pts``."""
    closed = np.vstack([pts, pts[:1]])
    seg = np.sqrt((np.diff(closed, axis=0) ** 2).sum(1))
    at = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, at[-1], n, endpoint=False)
    return np.stack([np.interp(t, at, closed[:, 0]), np.interp(t, at, closed[:, 1])], axis=1)


def wobbly_polygon(shape: str, rng: np.random.Generator, amount: float = 0.05) -> np.ndarray:
    """The shape's unit polygon as a hand would draw it: resampled along its contour and pushed
    in and out by a few low-frequency waves (``amount``: their size, a fraction of the radius)."""
    pts = _resampled(shape_polygon(shape), 160)
    t = np.linspace(0.0, 2 * math.pi, len(pts), endpoint=False)
    wave = sum(rng.uniform(0.3, 1.0) * np.sin(k * t + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
    centre = pts.mean(axis=0)
    return centre + (pts - centre) * (1.0 + amount * wave / 1.8)[:, None]


Box = tuple  # (y0, y1, x0, x1): a window of the image, in pixels


def _window(w: int, h: int, cx: float, cy: float, reach: float) -> Box:
    """The pixel window around (cx, cy) that holds everything within ``reach`` pixels."""
    return (max(0, int(cy - reach) - 1), min(h, int(math.ceil(cy + reach)) + 2),
            max(0, int(cx - reach) - 1), min(w, int(math.ceil(cx + reach)) + 2))


def _mask(box: Box, shape, cx, cy, r, rotation, outline: int = 0, *, tilt=(1.0, 0.0),
          fill: bool = True, stroke: float = 0.0) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the placed shape (a name or unit vertices) over the
    window ``box`` (grown by an ``outline`` of that many pixels; with ``fill=False`` only its
    contour, a line ``stroke`` pixels wide), as float32 (y1 - y0) x (x1 - x0)."""
    y0, y1, x0, x1 = box
    k = _SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * k, (y1 - y0) * k), 0)
    pts = _placed(shape, cx - x0, cy - y0, r, rotation, k, tilt)
    draw = ImageDraw.Draw(canvas)
    if fill:
        draw.polygon(pts, fill=255)
    if outline:
        draw.line(pts + pts[:1], fill=255, width=2 * k * outline, joint="curve")
    if stroke:
        draw.line(pts + pts[:1], fill=255, width=max(1, int(round(k * stroke))), joint="curve")
    canvas = canvas.reduce(k)  # box filter: anti-aliasing by supersampling
    return np.asarray(canvas).astype(np.float32) * (1 / 255)


# --- rendering -----------------------------------------------------------------------------------
# All pixel work is float32, channels first (3 x H x W: broadcasting a colour over the last axis
# of an H x W x 3 array is several times slower), on H x W "t" fields mixed into colours once.
# Scalars are Python floats: a numpy float64 scalar would silently promote images to float64.

def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bicubically (H x W float32)."""
    gw, gh = max(2, cells), max(2, int(round(cells * h / w)))
    grid = Image.frombytes("L", (gw, gh), rng.bytes(gw * gh))
    return np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC)).astype(np.float32) * (1 / 255)


def _byte_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform noise in [-0.5, 0.5) as float32, from raw random bytes (cheap)."""
    n = int(np.prod(shape))
    return np.frombuffer(rng.bytes(n), np.uint8).reshape(shape).astype(np.float32) * (1 / 256) - 0.5


def _grid(w: int, h: int):
    """Broadcastable (H x 1, 1 x W) float32 pixel coordinates."""
    return (np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :])


def _col(c) -> np.ndarray:
    """A colour (3 floats, or a scalar grey) as a broadcastable 3 x 1 x 1 float32 array."""
    c = np.asarray(c, np.float32)
    return c.reshape(3, 1, 1) if c.ndim == 1 else c


def _lerp(a, b, t: np.ndarray) -> np.ndarray:
    """``a + (b - a) * t``: colours or 3 x H x W images ``a``/``b``, an H x W field ``t``."""
    a, b = _col(a), _col(b)
    out = (b - a) * t  # then in place: much faster than a + (b - a) * t's temporaries
    out += a
    return out


def _normalise(t: np.ndarray) -> np.ndarray:
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) * (1.0 / max(1e-6, hi - lo))


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    w, h = scene.width, scene.height
    tones = scene.bg_rgb
    yy, xx = _grid(w, h)
    kind = scene.background
    if kind == "plain":
        img = np.empty((3, h, w), np.float32)
        img[:] = _col(tones[0])
    elif kind == "gradient":
        th = rng.uniform(0, 2 * math.pi)
        img = _lerp(tones[0], tones[1], _normalise(xx * (math.cos(th) / w) + yy * (math.sin(th) / h)))
    elif kind == "checkerboard":
        cell = int(rng.integers(12, 33))
        ox, oy = (int(v) for v in rng.integers(0, cell, 2))
        t = (((xx + ox) // cell + (yy + oy) // cell) % 2)
        img = _lerp(tones[0], tones[1], t)
    elif kind == "stripes":
        period = rng.uniform(8, 24)
        th = rng.uniform(0, math.pi)
        t = ((xx * (math.cos(th) / period) + yy * (math.sin(th) / period)) % 1.0 < 0.5)
        img = _lerp(tones[0], tones[1], t.astype(np.float32))
    elif kind == "noise":
        t = _smooth_noise(rng, w, h, 5) * 0.6 + _smooth_noise(rng, w, h, 17) * 0.4
        img = _lerp(tones[0], tones[1], _normalise(t))
    elif kind == "wood":
        warp = _smooth_noise(rng, w, h, 4) * rng.uniform(2.0, 5.0)
        freq = rng.uniform(0.05, 0.11)
        along, across = (yy, xx) if rng.random() < 0.5 else (xx, yy)
        grain = np.sin((across * freq + along * 0.002 + warp) * (2 * math.pi))
        fine = _smooth_noise(rng, w, h, 40)
        plank = rng.uniform(40, 90)
        seam = (np.abs(across % plank - plank / 2) > plank / 2 - 1.2).astype(np.float32)
        shade = grain * 0.10 + fine * 0.08 + (0.96 - 0.30 * seam)
        img = _col(tones[0]) * shade
    elif kind == "sky":
        top = _col(tones[0])
        img = _lerp(top, top * 0.4 + 0.6, np.broadcast_to(yy / h, (h, w)))
        clouds = _smooth_noise(rng, w, h, 4) * 0.6 + _smooth_noise(rng, w, h, 11) * 0.4
        c = np.clip((clouds - 0.55) * 5.0, 0, 1) * (yy / h * 0.45 + 0.55)
        img = _lerp(img, 0.97, c)
    elif kind == "paper":  # white or cream paper with a faint fibre texture, sometimes ruled
        img = _col(tones[0]) * (1.0 - 0.04 * _smooth_noise(rng, w, h, 23))
        if scene.style == "handdrawn" and rng.random() < 0.4:
            gap = rng.uniform(14, 22)
            ruled = (np.abs((yy + rng.uniform(0, gap)) % gap - gap / 2) < 0.6).astype(np.float32)
            img = _lerp(img, (0.62, 0.75, 0.92), np.broadcast_to(ruled * 0.8, (h, w)))
    elif kind == "poster":  # a saturated ground, flat or with a soft radial glow
        base = _col(tones[0])
        r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) * (1.0 / (w * w + h * h))
        img = base * (1.08 - 0.35 * r2) if rng.random() < 0.5 else np.broadcast_to(base, (3, h, w)).copy()
    else:
        raise ValueError(f"unknown background {kind!r}")
    if scene.grain:
        img += _byte_noise(rng, (h, w)) * scene.grain  # sensor-like grain
    return img


def _fill(scene: Scene, rng: np.random.Generator, box: Box) -> np.ndarray:
    """The object's brightness pattern over ``box`` (a factor on the base colour)."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    yy, xx = _grid(w, h)
    yy, xx = yy + y0, xx + x0
    tex = scene.texture
    if tex in ("flat", "outlined"):
        return np.ones((h, w), np.float32)
    if tex == "shaded":
        th = rng.uniform(0, 2 * math.pi)
        k = 1.0 / scene.radius
        t = (xx - scene.cx) * (math.cos(th) * k) + (yy - scene.cy) * (math.sin(th) * k)
        return np.clip(t, -1, 1) * 0.12 + 1.0
    if tex == "striped":
        th = rng.uniform(0, math.pi)
        period = rng.uniform(6, 14)
        t = (xx * (math.cos(th) / period) + yy * (math.sin(th) / period)) % 1.0 < 0.5
        return np.where(t, np.float32(1.0), np.float32(0.82))
    if tex == "speckled":
        return _byte_noise(rng, (h, w)) * 0.16 + 1.0
    raise ValueError(f"unknown texture {tex!r}; choose from {', '.join(TEXTURES)}")


def _paint(img: np.ndarray, box: Box, colour, alpha: np.ndarray) -> None:
    """Blend ``colour`` (a colour or a 3 x h x w field) into ``img`` over ``box`` by ``alpha``."""
    y0, y1, x0, x1 = box
    img[:, y0:y1, x0:x1] = _lerp(img[:, y0:y1, x0:x1], colour, alpha)


def render(scene: Scene, with_mask: bool = False):
    """The scene as a PIL RGB image (and, with ``with_mask``, the main object's visible coverage
    as a float32 H x W array in [0, 1]: for outline styles, the stroke)."""
    rng = np.random.default_rng([scene.seed, 0xD4A3])
    srng = np.random.default_rng([scene.seed, 0x5791E])  # the styles' own draws
    w, h = scene.width, scene.height
    style = scene.style
    img = _background(scene, rng)
    tilt = scene.tilt
    unit = wobbly_polygon(scene.shape, srng, 0.06) if style == "handdrawn" else scene.shape
    outline = max(1, int(round(scene.radius * 0.035))) if scene.texture == "outlined" else 0
    reach = scene.radius * (1.05 + abs(tilt[1])) + outline + scene.stroke + 2
    box = _window(w, h, scene.cx, scene.cy, reach)
    if scene.shadow:  # a soft copy of the shape, offset down-right, darkening the background
        off = 0.06 * scene.radius + 2
        blur = max(1.5, 0.08 * scene.radius)
        sbox = _window(w, h, scene.cx + off, scene.cy + off, reach + 2 * blur)
        sh = _mask(sbox, unit, scene.cx + off, scene.cy + off, scene.radius, scene.rotation, tilt=tilt)
        sh = Image.fromarray((sh * 255).astype(np.uint8), "L").filter(ImageFilter.BoxBlur(blur))
        y0, y1, x0, x1 = sbox
        img[:, y0:y1, x0:x1] *= 1.0 - np.asarray(sh).astype(np.float32) * (0.35 / 255)
    if scene.distractor is not None:
        dshape, dx, dy, dr, drot, grey = scene.distractor
        dbox = _window(w, h, dx, dy, dr * 1.05 + 2)
        _paint(img, dbox, grey, _mask(dbox, dshape, dx, dy, dr, drot))
    if style in ("outline", "lineart"):  # the contour only
        alpha = _mask(box, unit, scene.cx, scene.cy, scene.radius, scene.rotation, fill=False,
                      stroke=scene.stroke)
        ink = _col(scene.rgb) if style == "outline" else _col(float(srng.uniform(0.05, 0.25)))
        _paint(img, box, ink, alpha)
    else:
        if outline:
            grown = _mask(box, unit, scene.cx, scene.cy, scene.radius, scene.rotation, outline, tilt=tilt)
            _paint(img, box, _col(scene.rgb) * 0.5, grown)
        alpha = _mask(box, unit, scene.cx, scene.cy, scene.radius, scene.rotation, tilt=tilt)
        fill = _scribble(scene, srng, box) if style == "handdrawn" else _fill(scene, rng, box)
        _paint(img, box, _col(scene.rgb) * fill, alpha)
        if style == "handdrawn":  # an inked contour drawn separately: a little off the fill
            line = wobbly_polygon(scene.shape, srng, 0.05)
            dx, dy = (float(v) * 0.04 * scene.radius for v in srng.uniform(-1, 1, 2))
            ink = _mask(box, line, scene.cx + dx, scene.cy + dy, scene.radius, scene.rotation,
                        fill=False, stroke=scene.stroke)
            _paint(img, box, float(srng.uniform(0.05, 0.2)), ink)
            alpha = alpha * (1.0 - ink)
    if style == "photo":  # light falling across the surface: brighter on one side, dim corners
        yy, xx = _grid(w, h)
        th = srng.uniform(0, 2 * math.pi)
        side = (xx - w / 2) * (math.cos(th) / w) + (yy - h / 2) * (math.sin(th) / h)
        corner = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) * (1.0 / (w * w + h * h))
        img *= 1.0 + 0.10 * side - 0.25 * corner
    if scene.occluder is not None:  # something in front of the object
        ox0, oy0, ox1, oy1, grey = scene.occluder
        cover = np.zeros((h, w), np.float32)
        cover[max(0, int(oy0)):max(0, int(oy1)), max(0, int(ox0)):max(0, int(ox1))] = 1.0
        img = _lerp(img, float(grey), cover)
    img *= 255.0
    img += 0.5
    np.clip(img, 0, 255, out=img)
    pixels = img.astype(np.uint8)
    out = Image.merge("RGB", [Image.fromarray(channel, "L") for channel in pixels])
    if scene.text:
        _draw_text(out, scene)
    if scene.blur:
        out = out.filter(ImageFilter.GaussianBlur(scene.blur))
    if not with_mask:
        return out
    full = np.zeros((h, w), np.float32)
    y0, y1, x0, x1 = box
    full[y0:y1, x0:x1] = alpha
    if scene.occluder is not None:
        full *= 1.0 - cover
    return out, full


def _scribble(scene: Scene, rng: np.random.Generator, box: Box) -> np.ndarray:
    """A marker fill: parallel strokes of slightly varying pressure (a brightness factor)."""
    y0, y1, x0, x1 = box
    yy, xx = _grid(x1 - x0, y1 - y0)
    th = rng.uniform(math.pi / 6, math.pi / 3) * (1 if rng.random() < 0.5 else -1)
    period = rng.uniform(4, 8)
    t = ((xx + x0) * math.cos(th) + (yy + y0) * math.sin(th)) * (1.0 / period)
    return (np.abs((t % 1.0) - 0.5) * 0.24 + 0.88).astype(np.float32)


def _draw_text(img, scene: Scene) -> None:
    """The logo's brand name beside (or below) the shape, in place."""
    from PIL import ImageFont
    size = max(9, int(round(scene.radius * 0.55)))
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(img)
    colour = tuple(int(round(c * 255)) for c in scene.text_rgb)
    x, y = scene.cx + scene.radius * 1.25, scene.cy - size / 2
    if x + size * 2 > scene.width:  # no room on the right: below the shape, centred
        x = max(2.0, scene.cx - size * len(scene.text) * 0.3)
        y = scene.cy + scene.radius * 1.2
    draw.text((x, y), scene.text, fill=colour, font=font)
