"""Procedurally rendered scenes of clear visual concepts: the demo's stand-in for web photos.

A scene is one coloured shape (8 shapes x 8 colours) on a background (plain, gradient, wood,
checkerboard, noise, sky, stripes), with a surface texture (flat, shaded, striped, speckled,
outlined), a size, position and rotation, sometimes a soft drop shadow and sometimes a small grey
distractor shape. Everything is deterministic from an integer seed:

    scene = sample_scene(seed)                  # all parameters drawn from the seed
    scene = sample_scene(seed, shape="star")    # some of them fixed
    image = render(scene)                       # PIL RGB image, 128-256 px a side
    image, alpha = render(scene, with_mask=True)  # plus the main object's coverage in [0, 1]

The concepts are meant to be unambiguous to a person:

* colours are drawn from disjoint HSV boxes (:data:`COLOURS`): distinct hues, and where two hues
  are close (orange/brown, red/pink) clearly different value or saturation; textures only scale
  the colour's brightness a little, so the object's mean colour stays inside its own box
  (:func:`nearest_colour` maps an RGB colour back to its name, which the tests use);
* backgrounds are desaturated (wood and sky a little less) and must differ from the object's
  colour by a minimum RGB distance, so the object always stands out;
* shapes whose identity depends on orientation are rotated only a little (a square turned 45
  degrees would be a diamond, a cross an X).

Speed: about a millisecond per image (numpy + PIL, 2x supersampled polygons), so thousands of
images take seconds.
"""
from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["SHAPES", "COLOURS", "BACKGROUNDS", "TEXTURES", "Scene", "sample_scene", "render",
           "scene_seed",
           "shape_polygon", "nearest_colour", "colour_box", "size_word"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "arrow", "heart", "cross",
                           "crescent")

# name -> ((hue lo, hue hi) in degrees, (sat lo, hi), (val lo, hi)). Hue ranges of similar
# colours are kept apart by value/saturation: orange is bright, brown dark; red saturated, pink
# light and pastel. A hue range may wrap around 0 (red: -8..6).
COLOURS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-8.0, 6.0), (0.80, 0.98), (0.78, 0.95)),
    "orange": ((24.0, 34.0), (0.85, 1.00), (0.93, 1.00)),
    "yellow": ((50.0, 58.0), (0.80, 1.00), (0.92, 1.00)),
    "green": ((105.0, 140.0), (0.65, 0.95), (0.50, 0.80)),
    "blue": ((212.0, 232.0), (0.75, 0.95), (0.70, 0.95)),
    "purple": ((268.0, 288.0), (0.55, 0.85), (0.50, 0.75)),
    "pink": ((322.0, 342.0), (0.35, 0.55), (0.95, 1.00)),
    "brown": ((20.0, 32.0), (0.60, 0.80), (0.30, 0.45)),
}

BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "wood", "checkerboard", "noise", "sky",
                                "stripes")
TEXTURES: tuple[str, ...] = ("flat", "shaded", "striped", "speckled", "outlined")

# Rotation allowed per shape (degrees, symmetric): orientation-defined shapes turn only a little.
_MAX_ROTATION = {"square": 20.0, "cross": 20.0, "heart": 25.0, "triangle": 180.0, "star": 180.0,
                 "arrow": 180.0, "circle": 0.0, "crescent": 180.0}
_MIN_CONTRAST = 0.45   # minimum RGB distance (0..1 units, max sqrt(3)) object vs background mean
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Scene:
    """Every parameter of one rendered image (JSON-friendly via :meth:`to_dict`)."""

    seed: int
    shape: str
    colour: str
    background: str
    texture: str
    width: int
    height: int
    cx: float                      # object centre, pixels
    cy: float
    radius: float                  # circumradius, pixels
    rotation: float                # degrees, counter-clockwise
    rgb: tuple[float, float, float]                 # object base colour, 0..1
    bg_rgb: tuple[tuple[float, float, float], ...]  # background tones, 0..1
    shadow: bool = False
    distractor: tuple | None = None  # (shape, cx, cy, radius, rotation, grey value) or None
    grain: float = 0.04              # sensor-like noise amplitude (0: clean, "clip art")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def relative_size(self) -> float:
        return self.radius / min(self.width, self.height)


def size_word(scene: Scene) -> str | None:
    """'small', 'large' or None (medium): how an alt text may describe the object's size."""
    r = scene.relative_size  # radius / shorter side, drawn from 0.25..0.42
    if r < 0.30:
        return "small"
    if r > 0.37:
        return "large"
    return None


# --- colours -----------------------------------------------------------------------------------

def colour_box(name: str):
    return COLOURS[name]


def _hsv_to_rgb(h_deg: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v))


def _sample_colour(rng: np.random.Generator, name: str) -> tuple[float, float, float]:
    (h0, h1), (s0, s1), (v0, v1) = COLOURS[name]
    return _hsv_to_rgb(rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1))


def nearest_colour(rgb) -> str:
    """The colour name whose HSV box centre is nearest to ``rgb`` (0..1 or 0..255 floats).

    Distance: hue difference on the circle (as a fraction of a half turn, weighted by the
    saturation of both, since hue means little for greys) plus saturation and value
    differences."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.max() > 1.0:
        rgb = rgb / 255.0
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    h *= 360.0
    best, best_d = None, math.inf
    for name, ((h0, h1), (s0, s1), (v0, v1)) in COLOURS.items():
        hc, sc, vc = (h0 + h1) / 2 % 360.0, (s0 + s1) / 2, (v0 + v1) / 2
        dh = abs((h - hc + 180.0) % 360.0 - 180.0) / 180.0
        d = (dh * min(s, sc) * 3.0) ** 2 + (s - sc) ** 2 + (v - vc) ** 2
        if d < best_d:
            best, best_d = name, d
    return best


def _neutral(rng: np.random.Generator, v: float | None = None, max_s: float = 0.18):
    return _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, max_s),
                       rng.uniform(0.10, 0.98) if v is None else v)


def _background_tones(rng: np.random.Generator, kind: str) -> tuple[tuple[float, float, float], ...]:
    if kind == "plain":
        return (_neutral(rng),)
    if kind in ("gradient", "checkerboard", "stripes", "noise"):
        a = _neutral(rng)
        va = max(a)
        step = rng.uniform(0.12, 0.30) * (1 if va < 0.6 else -1)
        b = _neutral(rng, v=float(np.clip(va + step, 0.05, 1.0)))
        return (a, b)
    if kind == "wood":
        light = rng.random() < 0.6
        return (_hsv_to_rgb(rng.uniform(25, 38), rng.uniform(0.30, 0.50),
                            rng.uniform(0.62, 0.85) if light else rng.uniform(0.28, 0.40)),)
    if kind == "sky":
        return (_hsv_to_rgb(rng.uniform(195, 215), rng.uniform(0.35, 0.60), rng.uniform(0.80, 0.95)),)
    raise ValueError(f"unknown background {kind!r}; choose from {', '.join(BACKGROUNDS)}")


def _tones_mean(kind: str, tones) -> np.ndarray:
    t = np.asarray(tones, dtype=np.float64)
    if kind == "sky":  # sky fades to a paler colour towards the horizon and has white clouds
        return 0.7 * t[0] + 0.3 * np.ones(3)
    return t.mean(axis=0)


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


def _placed(shape: str, cx: float, cy: float, r: float, rotation: float, scale: int = 1):
    pts = shape_polygon(shape)
    th = math.radians(rotation)
    c, s = math.cos(th), math.sin(th)
    rot = np.array([[c, s], [-s, c]])  # counter-clockwise on screen (y points down)
    pts = pts @ rot.T * r + [cx, cy]
    return [(float(x) * scale, float(y) * scale) for x, y in pts]


Box = tuple  # (y0, y1, x0, x1): a window of the image, in pixels


def _window(w: int, h: int, cx: float, cy: float, reach: float) -> Box:
    """The pixel window around (cx, cy) that holds everything within ``reach`` pixels."""
    return (max(0, int(cy - reach) - 1), min(h, int(math.ceil(cy + reach)) + 2),
            max(0, int(cx - reach) - 1), min(w, int(math.ceil(cx + reach)) + 2))


def _mask(box: Box, shape: str, cx, cy, r, rotation, outline: int = 0) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the placed shape over the window ``box`` (grown by an
    ``outline`` of that many pixels), as float32 (y1 - y0) x (x1 - x0)."""
    y0, y1, x0, x1 = box
    k = _SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * k, (y1 - y0) * k), 0)
    pts = _placed(shape, cx - x0, cy - y0, r, rotation, k)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(pts, fill=255)
    if outline:
        draw.line(pts + pts[:1], fill=255, width=2 * k * outline, joint="curve")
    canvas = canvas.reduce(k)  # box filter: anti-aliasing by supersampling
    return np.asarray(canvas).astype(np.float32) * (1 / 255)


# --- scenes --------------------------------------------------------------------------------------

def scene_seed(stream: str, seed: int, index: int) -> int:
    """A 62-bit scene seed from (stream name, seed, index): the simulated web ('web') and the
    held-out evaluation sets ('eval-shapes', 'eval-colours') draw from different streams, so they
    never share a scene."""
    h = hashlib.blake2b(f"{stream}/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 2


def sample_scene(seed: int, *, shape: str | None = None, colour: str | None = None,
                 background: str | None = None, texture: str | None = None,
                 size: tuple[int, int] | None = None, distractor_prob: float = 0.2,
                 shadow_prob: float = 0.35) -> Scene:
    """Draw every parameter of a scene from ``seed``; any keyword fixes that parameter. Fixing
    ``shape``, ``colour`` or ``texture`` leaves every other draw unchanged."""
    rng = np.random.default_rng([int(seed), 0x5CE4E])
    # always draw the labels, so fixing them does not shift the other parameters' draws:
    # sample_scene(s, shape=x.shape, colour=x.colour) == x for x = sample_scene(s)
    drawn_shape = SHAPES[int(rng.integers(len(SHAPES)))]
    drawn_colour = tuple(COLOURS)[int(rng.integers(len(COLOURS)))]
    drawn_texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    shape, colour = shape or drawn_shape, colour or drawn_colour
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose from {', '.join(COLOURS)}")
    texture = texture or drawn_texture
    if size is None:
        w = int(rng.integers(144, 257))
        aspect = (1.0, 1.0, 0.75, 4 / 3)[int(rng.integers(4))]
        size = (w, max(128, min(256, int(round(w * aspect)))))
    w, h = size
    rgb = _sample_colour(rng, colour)

    # background: the requested (or a random) kind whose tones contrast with the object
    kinds = [background] if background else list(BACKGROUNDS)
    if background and background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; choose from {', '.join(BACKGROUNDS)}")
    chosen = None
    for _ in range(24):
        kind = kinds[int(rng.integers(len(kinds)))]
        tones = _background_tones(rng, kind)
        if np.linalg.norm(_tones_mean(kind, tones) - rgb) >= _MIN_CONTRAST:
            chosen = (kind, tones)
            break
    if chosen is None:  # fall back to a plain grey far from the object's brightness
        kind = background or "plain"
        v = 0.95 if max(rgb) < 0.6 else 0.12
        tones = _background_tones(rng, kind) if kind in ("wood", "sky") else tuple(
            _neutral(rng, v=v, max_s=0.05) for _ in range(1 if kind == "plain" else 2))
        chosen = (kind, tones)
    kind, tones = chosen

    m = min(w, h)
    radius = float(rng.uniform(0.25, 0.42) * m)  # >= 1/4 of the side: a clear shape at 32 px
    margin = radius * 1.02 + 2
    cx = float(rng.uniform(margin, w - margin))
    cy = float(rng.uniform(margin, h - margin))
    lim = _MAX_ROTATION[shape]
    rotation = float(rng.uniform(-lim, lim)) if lim else 0.0

    distractor = None
    if rng.random() < distractor_prob:
        dr = float(rng.uniform(0.06, 0.11) * m)
        for _ in range(12):
            dx, dy = rng.uniform(dr + 2, w - dr - 2), rng.uniform(dr + 2, h - dr - 2)
            if math.hypot(dx - cx, dy - cy) > radius + dr + 0.04 * m:
                others = [s for s in SHAPES if s != shape]
                dshape = others[int(rng.integers(len(others)))]
                bg_v = float(max(_tones_mean(kind, tones)))
                grey = float(rng.uniform(0.15, 0.35) if bg_v > 0.55 else rng.uniform(0.70, 0.90))
                distractor = (dshape, float(dx), float(dy), dr, float(rng.uniform(-20, 20)), grey)
                break
    shadow = bool(rng.random() < shadow_prob)
    grain = 0.0 if rng.random() < 0.35 else float(rng.uniform(0.02, 0.05))
    return Scene(seed=int(seed), shape=shape, colour=colour, background=kind, texture=texture,
                 width=w, height=h, cx=cx, cy=cy, radius=radius, rotation=rotation,
                 rgb=tuple(float(c) for c in rgb), bg_rgb=tuple(tuple(float(c) for c in t) for t in tones),
                 shadow=shadow, distractor=distractor, grain=grain)


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
    """The scene as a PIL RGB image (and, with ``with_mask``, the main object's coverage as a
    float32 H x W array in [0, 1])."""
    rng = np.random.default_rng([scene.seed, 0xD4A3])
    w, h = scene.width, scene.height
    img = _background(scene, rng)
    outline = max(1, int(round(scene.radius * 0.035))) if scene.texture == "outlined" else 0
    box = _window(w, h, scene.cx, scene.cy, scene.radius * 1.05 + outline + 2)
    if scene.shadow:  # a soft copy of the shape, offset down-right, darkening the background
        off = 0.06 * scene.radius + 2
        blur = max(1.5, 0.08 * scene.radius)
        sbox = _window(w, h, scene.cx + off, scene.cy + off, scene.radius * 1.05 + 2 * blur + 2)
        sh = _mask(sbox, scene.shape, scene.cx + off, scene.cy + off, scene.radius, scene.rotation)
        sh = Image.fromarray((sh * 255).astype(np.uint8), "L").filter(ImageFilter.BoxBlur(blur))
        y0, y1, x0, x1 = sbox
        img[:, y0:y1, x0:x1] *= 1.0 - np.asarray(sh).astype(np.float32) * (0.35 / 255)
    if scene.distractor is not None:
        dshape, dx, dy, dr, drot, grey = scene.distractor
        dbox = _window(w, h, dx, dy, dr * 1.05 + 2)
        _paint(img, dbox, grey, _mask(dbox, dshape, dx, dy, dr, drot))
    if outline:
        grown = _mask(box, scene.shape, scene.cx, scene.cy, scene.radius, scene.rotation, outline)
        _paint(img, box, _col(scene.rgb) * 0.5, grown)
    alpha = _mask(box, scene.shape, scene.cx, scene.cy, scene.radius, scene.rotation)
    _paint(img, box, _col(scene.rgb) * _fill(scene, rng, box), alpha)
    img *= 255.0
    img += 0.5
    np.clip(img, 0, 255, out=img)
    pixels = img.astype(np.uint8)
    out = Image.merge("RGB", [Image.fromarray(channel, "L") for channel in pixels])
    if not with_mask:
        return out
    full = np.zeros((h, w), np.float32)
    y0, y1, x0, x1 = box
    full[y0:y1, x0:x1] = alpha
    return out, full
