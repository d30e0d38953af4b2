"""What the simulated web holds, before it is laid out on pages: its configuration, one record per
image URL, and the builder that draws the population of images and ``<img>`` links -- the
English scenes (the head concept among them) and every problem case -- from the seed.

Pages, image addresses and HTML are ``webpages.py``'s job; the served web is ``simweb.py``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from wit_builder.sim.alttext import FOREIGN_LANGS, camera_name, english_alt, foreign_alt
from wit_builder.sim.render import (COLOURLESS_STYLES, COLOURS, SHAPES, STYLE_WEIGHTS, Scene,
                                    sample_scene, scene_seed)
from wit_builder.sim.simwiki import TAIL_WORDS

__all__ = ["WebConfig", "WebImage", "Population", "HOSTS", "PAGE_HOSTS", "CDN_HOST", "CASES",
           "EXT", "CTYPE", "netloc", "url"]

PAGE_HOSTS = ("shapes.example", "clipart.example", "photos.example")
CDN_HOST = "img.cdn.example"
HOSTS = PAGE_HOSTS + (CDN_HOST,)

# Every problem case the manifest counts (see SimWeb.manifest).
CASES = ("english", "head", "non_english", "no_query", "empty_alt", "missing_alt", "data_uri",
         "near_duplicate", "broken_link", "opt_out", "corrupt", "not_image", "redirect",
         "distractor_mentioned")

# Encodings by kind of picture: clean clip art is mostly PNG, noisy "photos" JPEG or WebP.
FORMATS = {"clean": (("png", 0.6), ("jpeg", 0.25), ("webp", 0.15)),
           "photo": (("jpeg", 0.75), ("webp", 0.25))}
EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
CTYPE = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def netloc(host: str, port: int | None) -> str:
    """``host:port`` when the web has a port (a loopback server's), else ``host``."""
    return f"{host}:{port}" if port else host


def url(host: str, path: str, port: int | None) -> str:
    return f"http://{netloc(host, port)}{path}"


@dataclass(frozen=True)
class WebConfig:
    """What to generate. ``scenes`` is the size knob (English, query-matching images)."""

    seed: int = 0
    scenes: int = 3000
    head: tuple[str, str] = ("red", "heart")     # (colour, shape) of the head concept
    head_fraction: float = 0.25                  # share of ``scenes`` that show the head concept
    non_english_fraction: float = 0.05           # extra images, alt text in fr/de/es/it
    no_query_fraction: float = 0.03              # extra images, alt = a camera file name
    empty_alt_fraction: float = 0.02             # extra images, alt="" or no alt attribute
    dup_groups: int | None = None                # default scenes // 40 (2-4 copies each)
    broken: int | None = None                    # default max(3, scenes // 300)
    opt_out: int = 2
    corrupt: int = 2                             # alternately a truncated JPEG and non-image bytes
    redirects: int | None = None                 # default max(2, scenes // 300)
    not_image: int = 1
    data_uri_page_fraction: float = 0.3          # pages with a data: <img>
    tail_max_uses: int = 3                       # a tail word appears in at most this many alts
    images_per_page: tuple[int, int] = (6, 14)

    def resolved(self) -> dict:
        d = asdict(self)
        d["dup_groups"] = self.scenes // 40 if self.dup_groups is None else self.dup_groups
        d["broken"] = max(3, self.scenes // 300) if self.broken is None else self.broken
        d["redirects"] = max(2, self.scenes // 300) if self.redirects is None else self.redirects
        return d


@dataclass
class WebImage:
    """One image URL. ``kind``: ok, missing (404), opt_out, truncated, garbage (non-image
    bytes), html (a page, not an image), redirect (302 to ``target``)."""

    id: int
    kind: str
    host: str = ""
    path: str = ""
    format: str | None = None
    scene: Scene | None = None
    variant: list = field(default_factory=list)   # [{"family", "seed", "params"}] near-dup edits
    group: int | None = None                        # near-duplicate group
    quality: int = 90
    target: int | None = None                       # redirect: id of the image it points to
    headers: dict = field(default_factory=dict)
    url: str = ""

    def to_dict(self) -> dict:
        """Manifest form: the scene as its seed and labels (``sample_scene(seed, shape=...,
        colour=...)`` rebuilds it exactly)."""
        d = {k: v for k, v in asdict(self).items() if k != "scene"}
        s = self.scene
        d["scene"] = None if s is None else {"seed": s.seed, "shape": s.shape, "colour": s.colour,
                                             "background": s.background, "texture": s.texture}
        return d


# --- the population ---------------------------------------------------------------------------

class Population:
    """Draws the images and their ``<img>`` links (``pending``: no page yet) from the config's
    seed: :meth:`build` returns ``(images, pending)``; ``tail_uses`` counts the tail words used."""

    def __init__(self, cfg: WebConfig, port: int | None):
        self.cfg = cfg
        self.opts = cfg.resolved()
        self.port = port
        self.rng = np.random.default_rng([int(cfg.seed), 0x3EB])
        self.images: list[WebImage] = []
        self.pending: list[dict] = []     # links before they get a page
        self.n_scenes = 0
        self.tail_uses: Counter = Counter()
        self._tails = iter(())

    # scenes and images
    def scene(self, shape=None, colour=None, coloured: bool = False) -> Scene:
        """The next web scene; ``coloured``: in a style that shows the colour (the texts of the
        head concept and of non-English pairs name it)."""
        styles = {k: v for k, v in STYLE_WEIGHTS.items() if k not in COLOURLESS_STYLES} if coloured else None
        s = sample_scene(scene_seed("web", self.cfg.seed, self.n_scenes), shape=shape, colour=colour,
                         styles=styles)
        self.n_scenes += 1
        return s

    def fmt(self, scene: Scene) -> str:
        table = FORMATS["clean" if scene.grain == 0 else "photo"]
        u, acc = self.rng.random(), 0.0
        for name, p in table:
            acc += p
            if u < acc:
                return name
        return table[-1][0]

    def image(self, kind: str, scene: Scene | None, **kw) -> WebImage:
        im = WebImage(id=len(self.images), kind=kind, scene=scene,
                      format=kw.pop("format", self.fmt(scene) if scene is not None else None),
                      quality=int(self.rng.integers(80, 96)), **kw)
        self.images.append(im)
        return im

    def tail(self) -> str:
        """The next tail word: each used at most ``tail_max_uses`` times (cycling if exhausted)."""
        cap = self.cfg.tail_max_uses
        order = [TAIL_WORDS[i] for i in self.rng.permutation(len(TAIL_WORDS))]
        for word in order:
            if self.tail_uses[word] < cap:
                self.tail_uses[word] += 1
                return word
        word = min(order, key=lambda w: self.tail_uses[w])  # more problem links than slots
        self.tail_uses[word] += 1
        return word

    def link(self, image: WebImage | None, alt: str | None, lang: str, cases: set[str],
             collect: str, download: str | None, scene: Scene | None = None):
        """A pending ``<img>`` link and what each stage is expected to do with it (``collect``:
        keep or drop; ``download``: success, failed or None)."""
        scene = scene or (image.scene if image else None)
        self.pending.append({"image": image.id if image else None, "alt": alt, "lang": lang,
                             "cases": sorted(cases), "src": None,
                             "shape": scene.shape if scene else None,
                             "colour": scene.colour if scene and scene.coloured else None,
                             "expect": {"collect": collect, "download": download}})

    def english(self, image: WebImage, cases=(), tail: str | None = None, download="success"):
        alt, tags = english_alt(self.rng, image.scene, tail=tail, head="head" in cases)
        self.link(image, alt, "en", {"english", *cases, *tags}, "keep", download)

    # the populations, drawn in this order
    def build(self) -> tuple[list[WebImage], list[dict]]:
        non_head = self.english_scenes()
        self.unusable_alts()
        self.near_duplicates(non_head)
        self.failing_downloads()
        for _ in range(self.opts["redirects"]):
            target = self.image("ok", self.scene())
            hop = self.image("redirect", target.scene, target=target.id, format=target.format)
            self.english(hop, cases={"redirect"}, tail=self.tail())
        return self.images, self.pending

    def english_scenes(self) -> list[tuple[str, str]]:
        """``cfg.scenes`` English, query-matching images, the first ``head_fraction`` of them the
        head concept; returns the other (colour, shape) concepts."""
        cfg, rng = self.cfg, self.rng
        head_c, head_s = cfg.head
        n_head = int(round(cfg.scenes * cfg.head_fraction))
        combos = [(c, s) for c in COLOURS for s in SHAPES]
        for i in range(cfg.scenes):
            c, s = (head_c, head_s) if i < n_head else combos[int(rng.integers(len(combos)))]
            im = self.image("ok", self.scene(shape=s, colour=c, coloured=(c, s) == (head_c, head_s)))
            self.english(im, cases={"head"} if (c, s) == (head_c, head_s) else set())
        return [x for x in combos if x != (head_c, head_s)]

    def unusable_alts(self) -> None:
        """Images whose alt text collect must drop: other languages, camera file names, blank."""
        cfg, rng = self.cfg, self.rng
        for i in range(int(round(cfg.scenes * cfg.non_english_fraction))):
            im = self.image("ok", self.scene(coloured=True))
            lang = FOREIGN_LANGS[i % len(FOREIGN_LANGS)]
            self.link(im, foreign_alt(rng, im.scene, lang), lang, {"non_english"}, "drop", "success")
        for _ in range(int(round(cfg.scenes * cfg.no_query_fraction))):
            im = self.image("ok", self.scene())
            self.link(im, camera_name(rng), "und", {"no_query"}, "drop", "success")
        for i in range(int(round(cfg.scenes * cfg.empty_alt_fraction))):
            im = self.image("ok", self.scene())
            self.link(im, "" if i % 2 == 0 else None, "und",
                      {"empty_alt" if i % 2 == 0 else "missing_alt"}, "drop", "success")

    def near_duplicates(self, concepts: list[tuple[str, str]]) -> None:
        """Groups of 2-4 copies of one scene (the first unedited) under different URLs."""
        rng = self.rng
        for g in range(self.opts["dup_groups"]):
            c, s = concepts[int(rng.integers(len(concepts)))]
            base = self.scene(shape=s, colour=c)
            members = 2 + int(rng.integers(3))
            for m in range(members):
                variant = [] if m == 0 else self.variant()
                fmt = "jpeg" if any(v["family"] == "jpeg" for v in variant) else None
                im = self.image("ok", base, variant=variant, group=g,
                                **({"format": fmt} if fmt else {}))
                self.english(im, cases={"near_duplicate"}, tail=self.tail())

    def failing_downloads(self) -> None:
        """Links the downloader must fail: 404s, opt-outs, corrupt files, an HTML page."""
        cfg, rng = self.cfg, self.rng
        for _ in range(self.opts["broken"]):
            im = self.image("missing", self.scene(), format="jpeg")
            self.english(im, cases={"broken_link"}, tail=self.tail(), download="failed")
        for i in range(cfg.opt_out):
            im = self.image("ok", self.scene(),
                            headers={"X-Robots-Tag": ("noai", "noimageai")[i % 2]})
            self.english(im, cases={"opt_out"}, tail=self.tail(), download="failed")
        for i in range(cfg.corrupt):
            im = self.image(("truncated", "garbage")[i % 2], self.scene(), format="jpeg")
            self.english(im, cases={"corrupt"}, tail=self.tail(), download="failed")
        for _ in range(cfg.not_image):
            im = self.image("html", None)
            described = self.scene()
            alt, _ = english_alt(rng, described, tail=self.tail())
            self.link(im, alt, "en", {"english", "not_image"}, "keep", "failed", scene=described)

    def variant(self) -> list[dict]:
        """1-2 near-duplicate edits: downscale, JPEG recompression, crop (no colour change: the
        copy must keep its colour label)."""
        rng = self.rng
        fams = [("resize", "jpeg", "crop")[i] for i in sorted(rng.choice(3, 1 + int(rng.integers(2)),
                                                                         replace=False))]
        steps = []
        for fam in fams:
            seed = int(rng.integers(2**31))
            if fam == "resize":
                params = {"scale": float(rng.uniform(0.45, 0.8)), "restore": False,
                          "interpolation": ("bilinear", "bicubic", "lanczos", "box")[int(rng.integers(4))]}
            elif fam == "jpeg":
                params = {"quality": int(rng.integers(15, 41))}
            else:
                params = {"fraction": float(rng.uniform(0.06, 0.16)), "zoom": bool(rng.random() < 0.5),
                          "interpolation": "bicubic"}
            steps.append({"family": fam, "seed": seed, "params": params})
        return steps
