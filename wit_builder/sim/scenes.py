"""The demo's scenes: their concepts (8 shapes x 8 colours, backgrounds, textures) and every
parameter of one image, drawn deterministically from an integer seed (:func:`sample_scene`).
Pixels are ``render.py``'s job; import the names from there (it re-exports these).

The concepts are meant to be unambiguous to a person:

* colours are drawn from disjoint HSV boxes (:data:`COLOURS`): distinct hues, and where two hues
  are close (orange/brown, red/pink) clearly different value or saturation; textures only scale
  the colour's brightness a little, so the object's mean colour stays inside its own box
  (:func:`nearest_colour` maps an RGB colour back to its name, which the tests use);
* backgrounds are desaturated (wood and sky a little less) and must differ from the object's
  colour by a minimum RGB distance, so the object always stands out;
* shapes whose identity depends on orientation are rotated only a little (a square turned 45
  degrees would be a diamond, a cross an X).
"""
from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = ["SHAPES", "COLOURS", "BACKGROUNDS", "STYLE_BACKGROUNDS", "TEXTURES", "STYLES",
           "STYLE_WEIGHTS", "COLOURLESS_STYLES", "Scene",
           "sample_scene", "scene_seed", "nearest_colour", "colour_box", "size_word"]

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
# grounds only some styles use: plain paper (drawings) and a saturated poster colour (logos)
STYLE_BACKGROUNDS: tuple[str, ...] = ("paper", "poster")
TEXTURES: tuple[str, ...] = ("flat", "shaded", "striped", "speckled", "outlined")

# How the image was made (the web varies the way the web does; ``render.py`` draws each):
#   render     the shape filled with a texture on one of BACKGROUNDS (clip art and renders)
#   outline    the shape's contour only, a thick stroke in the object's colour
#   lineart    the contour in dark ink, no colour at all (its alt texts name no colour)
#   handdrawn  a wobbly contour, filled with marker scribbles, an inked outline, on paper
#   photo      a cut-out on a lit surface, seen at a tilt, with a shadow, blur and sensor noise
#   logo       a smaller shape beside a brand name, on a saturated or white ground
# Every style may also crop the object at the frame's edge or hide part of it behind an
# occluder. Weights: the share of web and held-out scenes drawn in each style.
STYLES: tuple[str, ...] = ("render", "outline", "lineart", "handdrawn", "photo", "logo")
STYLE_WEIGHTS: dict[str, float] = {"render": 0.40, "outline": 0.12, "lineart": 0.08,
                                   "handdrawn": 0.15, "photo": 0.15, "logo": 0.10}
COLOURLESS_STYLES: tuple[str, ...] = ("lineart",)

# Rotation allowed per shape (degrees, symmetric): orientation-defined shapes turn only a little.
_MAX_ROTATION = {"square": 20.0, "cross": 20.0, "heart": 25.0, "triangle": 180.0, "star": 180.0,
                 "arrow": 180.0, "circle": 0.0, "crescent": 180.0}
_MIN_CONTRAST = 0.45   # minimum RGB distance (0..1 units, max sqrt(3)) object vs background mean


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
    style: str = "render"            # one of STYLES
    stroke: float = 0.0              # outline / lineart / handdrawn: stroke width, pixels
    tilt: tuple[float, float] = (1.0, 0.0)  # photo: (vertical squash, horizontal shear)
    blur: float = 0.0                # photo: Gaussian blur radius, pixels
    occluder: tuple | None = None    # (x0, y0, x1, y1, grey): a rectangle over part of the object
    text: str | None = None          # logo: the brand name drawn beside the shape
    text_rgb: tuple[float, float, float] = (0.1, 0.1, 0.1)

    @property
    def coloured(self) -> bool:
        """Whether the image shows the object's colour (line art does not)."""
        return self.style not in COLOURLESS_STYLES

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
                 shadow_prob: float = 0.35, style: str | None = None,
                 styles: dict[str, float] | None = None, edits: bool = True) -> Scene:
    """Draw every parameter of a scene from ``seed``; any keyword fixes that parameter. Fixing
    ``shape``, ``colour``, ``texture`` or ``style`` leaves every other draw unchanged.

    ``style`` fixes the style; otherwise it is drawn with ``styles`` (name -> weight, default
    :data:`STYLE_WEIGHTS`). ``edits=False`` turns off the crops and occluders every style may
    get (for tests that need the whole object visible)."""
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
    kind, tones = _choose_background(rng, background, rgb)

    m = min(w, h)
    radius = float(rng.uniform(0.25, 0.42) * m)  # >= 1/4 of the side: a clear shape at 32 px
    margin = radius * 1.02 + 2
    cx = float(rng.uniform(margin, w - margin))
    cy = float(rng.uniform(margin, h - margin))
    lim = _MAX_ROTATION[shape]
    rotation = float(rng.uniform(-lim, lim)) if lim else 0.0

    distractor = None
    if rng.random() < distractor_prob:
        distractor = _place_distractor(rng, shape, (w, h), (cx, cy, radius), (kind, tones))
    shadow = bool(rng.random() < shadow_prob)
    grain = 0.0 if rng.random() < 0.35 else float(rng.uniform(0.02, 0.05))
    base = Scene(seed=int(seed), shape=shape, colour=colour, background=kind, texture=texture,
                 width=w, height=h, cx=cx, cy=cy, radius=radius, rotation=rotation,
                 rgb=tuple(float(c) for c in rgb), bg_rgb=tuple(tuple(float(c) for c in t) for t in tones),
                 shadow=shadow, distractor=distractor, grain=grain)
    # the style's draws come from their own stream, after (and independent of) the ones above
    srng = np.random.default_rng([int(seed), 0x57E1E])
    weights = STYLE_WEIGHTS if styles is None else styles
    names = list(weights)
    p = np.asarray([weights[n] for n in names], np.float64)
    drawn_style = names[int(srng.choice(len(names), p=p / p.sum()))]
    style = style or drawn_style
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    return _styled(base, style, srng, edits, keep_background=background is not None,
                   keep_texture=texture is not None)


_BRAND_SYLLABLES = ("zor", "vek", "tal", "mi", "quo", "rin", "dex", "lu", "nov", "pax", "tri",
                    "ka", "sol", "vy", "ben", "xa", "mo", "ru", "fen", "ix")


def _brand(rng: np.random.Generator) -> str:
    """A made-up brand name (two or three syllables), upper-case or capitalised."""
    name = "".join(_BRAND_SYLLABLES[int(i)] for i in rng.integers(len(_BRAND_SYLLABLES),
                                                                  size=int(rng.integers(2, 4))))
    return name.upper() if rng.random() < 0.5 else name.capitalize()


def _vivid_far_from(rng: np.random.Generator, rgb) -> tuple[float, float, float]:
    """A saturated ground colour whose hue is >= 100 degrees from ``rgb``'s and whose RGB
    distance to it is at least the minimum contrast."""
    h0 = colorsys.rgb_to_hsv(*rgb)[0] * 360.0
    for _ in range(24):
        c = _hsv_to_rgb(h0 + rng.uniform(100, 260), rng.uniform(0.55, 0.9), rng.uniform(0.45, 0.9))
        if np.linalg.norm(np.asarray(c) - rgb) >= _MIN_CONTRAST:
            return c
    return (0.97, 0.97, 0.97)


def _styled(base: Scene, style: str, rng: np.random.Generator, edits: bool,
            keep_background: bool = False, keep_texture: bool = False) -> Scene:
    """``base`` (a 'render' scene) with the parameters of ``style`` and the optional edits
    (a background or texture the caller fixed is kept)."""
    w, h, m = base.width, base.height, min(base.width, base.height)
    rgb = np.asarray(base.rgb)
    ch: dict = {"style": style}
    if style in ("outline", "lineart", "handdrawn"):
        paper = rng.random() < 0.7  # mostly on paper (white / cream), else the drawn background
        if paper or style == "lineart":
            v = float(rng.uniform(0.90, 1.0))
            ch.update(background="paper", bg_rgb=(_hsv_to_rgb(rng.uniform(35, 55), rng.uniform(0, 0.10), v),),
                      grain=0.0 if rng.random() < 0.6 else 0.02, shadow=False)
        # strokes stay visible when the image is shrunk to the model's 32 px (a radius of ~8 px)
        wide = (0.06, 0.10) if style == "handdrawn" else (0.12, 0.18) if style == "lineart" else (0.14, 0.22)
        ch["stroke"] = float(rng.uniform(*wide) * base.radius)
        if style == "lineart":
            ch["distractor"] = None
    elif style == "photo":
        surface = ("wood", "noise", "checkerboard", "plain")[int(rng.integers(4))]
        kind, tones = _choose_background(rng, surface, rgb)
        ch.update(background=kind, bg_rgb=tuple(tuple(float(c) for c in t) for t in tones),
                  tilt=(float(rng.uniform(0.65, 1.0)), float(rng.uniform(-0.3, 0.3))),
                  blur=float(rng.uniform(0.4, 1.1)), shadow=True, grain=float(rng.uniform(0.03, 0.06)),
                  texture=("flat", "shaded", "speckled")[int(rng.integers(3))])
    elif style == "logo":
        radius = float(rng.uniform(0.24, 0.32) * m)
        vivid = rng.random() < 0.6
        ground = _vivid_far_from(rng, rgb) if vivid else _hsv_to_rgb(0, 0, float(rng.uniform(0.93, 1.0)))
        side = rng.random() < 0.5 and w >= h  # text right of the shape, else below it
        cx = float(rng.uniform(radius + 4, 0.42 * w)) if side else float(rng.uniform(radius + 4, w - radius - 4))
        cy = float(rng.uniform(radius + 4, h - radius - 4)) if side else float(rng.uniform(radius + 4, 0.55 * h))
        light = max(ground) < 0.6
        ch.update(background="poster" if vivid else "plain", bg_rgb=(ground,), radius=radius,
                  cx=cx, cy=cy, text=_brand(rng), grain=0.0, shadow=False, distractor=None,
                  texture=("flat", "flat", "outlined")[int(rng.integers(3))],
                  text_rgb=(0.97, 0.97, 0.97) if light else (0.08, 0.08, 0.1))
    elif style == "render" and rng.random() < 0.15:  # a poster: the object on a saturated ground
        ch.update(background="poster", bg_rgb=(_vivid_far_from(rng, rgb),))
    cx, cy, r = ch.get("cx", base.cx), ch.get("cy", base.cy), ch.get("radius", base.radius)
    if edits and style != "logo" and rng.random() < 0.12:  # cropped: up to a fifth of the radius out of frame
        over = float(rng.uniform(0.05, 0.2) * r)
        side = int(rng.integers(4))
        if side == 0:
            cx = r - over
        elif side == 1:
            cx = w - r + over
        elif side == 2:
            cy = r - over
        else:
            cy = h - r + over
        ch.update(cx=float(cx), cy=float(cy))
    if edits and rng.random() < 0.10:  # a grey rectangle over about 5-15% of the object's box
        fw, fh = float(rng.uniform(0.4, 0.8) * r), float(rng.uniform(0.35, 0.5) * r)
        ox = float(cx + rng.choice([-1, 1]) * rng.uniform(0.4, 0.75) * r)
        oy = float(cy + rng.uniform(-0.6, 0.6) * r)
        grey = float(rng.uniform(0.2, 0.35) if max(rgb) > 0.6 else rng.uniform(0.75, 0.9))
        ch["occluder"] = (ox - fw / 2, oy - fh / 2, ox + fw / 2, oy + fh / 2, grey)
    if keep_background:
        for k in ("background", "bg_rgb"):
            ch.pop(k, None)
    if keep_texture:
        ch.pop("texture", None)
    return replace(base, **ch)


def _choose_background(rng: np.random.Generator, background: str | None, rgb) -> tuple[str, tuple]:
    """The requested (or a random) background kind whose tones contrast with the object."""
    kinds = [background] if background else list(BACKGROUNDS)
    if background and background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; choose from {', '.join(BACKGROUNDS)}")
    for _ in range(24):
        kind = kinds[int(rng.integers(len(kinds)))]
        tones = _background_tones(rng, kind)
        if np.linalg.norm(_tones_mean(kind, tones) - rgb) >= _MIN_CONTRAST:
            return kind, tones
    # fall back to a plain grey far from the object's brightness
    kind = background or "plain"
    v = 0.95 if max(rgb) < 0.6 else 0.12
    tones = _background_tones(rng, kind) if kind in ("wood", "sky") else tuple(
        _neutral(rng, v=v, max_s=0.05) for _ in range(1 if kind == "plain" else 2))
    return kind, tones


def _place_distractor(rng: np.random.Generator, shape: str, size: tuple[int, int],
                      main: tuple[float, float, float], background: tuple) -> tuple | None:
    """A small grey shape (not ``shape``) clear of the main object (``main``: cx, cy, radius),
    contrasting with the ``background`` (kind, tones); None when no free spot is found."""
    (w, h), (cx, cy, radius), (kind, tones) = size, main, background
    m = min(w, h)
    dr = float(rng.uniform(0.06, 0.11) * m)
    for _ in range(12):
        dx, dy = rng.uniform(dr + 2, w - dr - 2), rng.uniform(dr + 2, h - dr - 2)
        if math.hypot(dx - cx, dy - cy) > radius + dr + 0.04 * m:
            others = [s for s in SHAPES if s != shape]
            dshape = others[int(rng.integers(len(others)))]
            bg_v = float(max(_tones_mean(kind, tones)))
            grey = float(rng.uniform(0.15, 0.35) if bg_v > 0.55 else rng.uniform(0.70, 0.90))
            return (dshape, float(dx), float(dy), dr, float(rng.uniform(-20, 20)), grey)
    return None
