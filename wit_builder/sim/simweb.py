"""The demo's simulated web: HTML pages with <img> tags, the images behind them, and their problems.

Generated deterministically from a :class:`WebConfig` (a seed and a size knob, ``scenes``):

* **Pages** on three fake hosts -- ``shapes.example`` (galleries), ``clipart.example`` (clip-art
  catalogues) and ``photos.example`` (blog posts) -- whose images live on the same host or on
  ``img.cdn.example``. Image ``src`` attributes are root-relative, document-relative,
  protocol-relative (``//img.cdn.example/...``) or absolute; pages also carry ``data:`` images
  and ordinary ``<a href>`` links (other pages, a PDF, an external site). Alt texts describe the
  rendered scene (:mod:`wit_builder.sim.render`) in many phrasings: "a red triangle on a wooden table",
  "Blue circle clip art", "photo of a small green star", "Yellow arrow icon on a checkered
  background", ... URLs carry the server's port when one is given (``http://shapes.example:PORT``)
  so that a downloader that maps these names to 127.0.0.1 (``NetPolicy.resolve``) reaches the
  loopback server.
* **Problem cases**, every one listed in the manifest so tests can check that each stage filtered
  it: non-English alt texts (fr, de, es, it; same concepts), alt texts that match no query
  (camera file names), empty or missing alt attributes, ``data:`` URIs, near-duplicate groups
  (resized / recompressed / cropped copies of one rendered image under different URLs and alt
  texts), broken links (404), images served with ``X-Robots-Tag: noai`` (opt-out), corrupt files
  (a truncated JPEG, non-image bytes) with an image content type, an ``<img>`` pointing at an HTML
  page, redirects (302 to the CDN: these should download fine), and a **head concept** (by
  default "red heart") far more frequent than the rest so that per-query balancing visibly caps
  it.
* Problem-case alt texts (and the near-duplicates') also name one rare everyday object
  (:data:`wit_builder.sim.simwiki.TAIL_WORDS`, each used at most ``tail_max_uses`` times): with a
  per-query cap >= ``tail_max_uses`` such pairs are kept by balancing with probability 1, so they
  reliably reach the downloader and the deduplicator, which must then filter them.

API::

    web = build_web(WebConfig(seed=0, scenes=3000), port=8123)
    web.pages          # [{"url", "host", "path", "lang", "title", "html", "links": [...]}]
    web.links          # one dict per <img> tag (the manifest's ground truth, see manifest())
    web.images         # one WebImage per image URL (served or deliberately broken)
    web.routes()       # {path: callable} for wit_builder.sim.loopback.LoopbackServer
    web.resolve()      # {"shapes.example": "127.0.0.1", ...} for the downloader's NetPolicy
    web.manifest()     # JSON-able ground truth: counts, cases, per-link expectations
    web.image_bytes(url) -> bytes   # what the server sends for an image URL

    with serve(WebConfig(scenes=300)) as (server, web):   # server on a free 127.0.0.1 port
        ...

A page's ``links`` follow Common Crawl WAT's ``Links`` entries: ``{"path": "IMG@/src", "url": <src
as written>, "alt": ..., "title": ...}`` for images and ``{"path": "A@/href", "url": ...,
"text": ...}`` for anchors, so writing WARC/WAT files from pages is a thin loop.
"""
from __future__ import annotations

import contextlib
import hashlib
import html as htmlmod
import io
import posixpath
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterator
from urllib.parse import urljoin, urlsplit

import numpy as np

from wit_builder.sim.render import COLOURS, SHAPES, Scene, render, sample_scene, scene_seed, size_word
from wit_builder.sim.simwiki import PLURAL, TAIL_WORDS

__all__ = ["WebConfig", "WebImage", "SimWeb", "build_web", "serve", "scene_seed", "HOSTS",
           "PAGE_HOSTS", "CDN_HOST", "CASES", "english_alt", "foreign_alt", "match_words"]

PAGE_HOSTS = ("shapes.example", "clipart.example", "photos.example")
CDN_HOST = "img.cdn.example"
HOSTS = PAGE_HOSTS + (CDN_HOST,)

# Every problem case the manifest counts (see SimWeb.manifest).
CASES = ("english", "head", "non_english", "no_query", "empty_alt", "missing_alt", "data_uri",
         "near_duplicate", "broken_link", "opt_out", "corrupt", "not_image", "redirect",
         "distractor_mentioned")

# Encodings by kind of picture: clean clip art is mostly PNG, noisy "photos" JPEG or WebP.
_FORMATS = {"clean": (("png", 0.6), ("jpeg", 0.25), ("webp", 0.15)),
            "photo": (("jpeg", 0.75), ("webp", 0.25))}
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
_CTYPE = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_GIF_1PX = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


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


# --- alt texts ------------------------------------------------------------------------------------

_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def _a(text: str) -> str:
    return _AN.sub(r"\1n ", text)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _bg_phrase(rng, scene: Scene) -> str:
    kind = scene.background
    if kind == "plain":
        v = max(scene.bg_rgb[0])
        opts = (("on a white background", "on a light background") if v > 0.75 else
                ("on a black background", "on a dark background") if v < 0.3 else
                ("on a grey background", "on a plain background"))
    else:
        opts = {"gradient": ("on a gradient background", "on a soft gradient"),
                "wood": ("on a wooden table", "on a wood background", "on old wooden boards"),
                "checkerboard": ("on a checkered background", "on a checkerboard"),
                "noise": ("on a textured background", "on a mottled background"),
                "sky": ("in the sky", "against a blue sky", "against a cloudy sky"),
                "stripes": ("on a striped background", "on striped wallpaper")}[kind]
    return opts[int(rng.integers(len(opts)))]


_EN_TEMPLATES = (
    "a {c} {s} {bg}",
    "{C} {s} clip art",
    "photo of a {sz}{c} {s}",
    "{C} {s} icon {bg}",
    "drawing of a {c} {s} {bg}",
    "{C} {s} sticker",
    "simple {c} {s} shape {bg}",
    "{c} {s} symbol, vector illustration",
    "close-up of a {c} {s}",
    "A {sz}{c} {s} {bg}.",
    "the {c} {s} we made in art class",
    "{C} {s} {bg}",
    "a {s} painted {c}",
    "{C} {s} cut out of paper",
)
_EN_SHAPE_ONLY = ("a {s} {bg}", "{S} clip art", "photo of a {sz}{s}")
_EN_COLOUR_ONLY = ("a {c} sticker {bg}", "something {c} {bg}")
# The head concept's alt texts are boilerplate (as the most frequent captions on the web are):
# only frequent words, so that every query a head pair matches is capped by balancing.
_EN_HEAD = (
    "{c} {s}",
    "{C} {s} clip art",
    "a {c} {s}",
    "{c} {s} icon",
    "{C} {s} sticker",
    "{c} {s} symbol, vector illustration",
    "{C} {s} clip art, vector illustration",
)
_EN_TAIL = (
    "a {c} {s} sticker on a {t}",
    "{C} {s} pattern on a {t}",
    "a {t} with a {c} {s} on it",
    "{c} {s} painted on an old {t}",
    "{C} {s} logo printed on a {t}",
    "photo of a {t} decorated with a {c} {s}",
)


def english_alt(rng: np.random.Generator, scene: Scene, tail: str | None = None,
                partial: bool = True, head: bool = False) -> tuple[str, set[str]]:
    """An English alt text for ``scene`` and the tags it earned ('distractor_mentioned', ...).
    With ``tail`` the text names that everyday object too. With ``partial`` some texts name only
    the shape or only the colour, as real alt texts often do. ``head``: boilerplate captions of
    frequent words only (the head concept's)."""
    c, s = scene.colour, scene.shape
    sz = size_word(scene)
    tags: set[str] = set()
    if head:
        t = _EN_HEAD[int(rng.integers(len(_EN_HEAD)))]
        return _a(t.format(c=c, C=_cap(c), s=s)), tags
    if tail:
        pool = _EN_TAIL
    else:
        u = rng.random() if partial else 1.0
        pool = _EN_SHAPE_ONLY if u < 0.06 else _EN_COLOUR_ONLY if u < 0.09 else _EN_TEMPLATES
    t = pool[int(rng.integers(len(pool)))]
    if scene.texture == "striped" and rng.random() < 0.4 and "{c} {s}" in t:
        t = t.replace("{c} {s}", "striped {c} {s}", 1)
    text = t.format(c=c, C=_cap(c), s=s, S=_cap(s), bg=_bg_phrase(rng, scene),
                    sz=(sz + " ") if sz and rng.random() < 0.7 else "", t=tail or "")
    if scene.texture == "outlined" and not tail and rng.random() < 0.3 and not text.endswith("."):
        text += " with a dark outline"
    if scene.distractor is not None and rng.random() < 0.3 and not text.endswith("."):
        text += f" next to a small grey {scene.distractor[0]}"
        tags.add("distractor_mentioned")
    if rng.random() < 0.3 and text[:1].islower():
        text = _cap(text)
    return _a(text), tags


_FOREIGN = {
    "fr": ({"circle": "cercle", "square": "carré", "triangle": "triangle", "star": "étoile",
            "arrow": "flèche", "heart": "cœur", "cross": "croix", "crescent": "croissant"},
           {"red": "rouge", "orange": "orange", "yellow": "jaune", "green": "vert", "blue": "bleu",
            "purple": "violet", "pink": "rose", "brown": "marron"},
           ("{s} de couleur {c} sur une table en bois", "Clipart gratuit : {s} de couleur {c}",
            "Icône {s} de couleur {c} sur fond à carreaux", "{S} de couleur {c}, dessiné à la main "
            "pour la classe")),
    "de": ({"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern",
            "arrow": "Pfeil", "heart": "Herz", "cross": "Kreuz", "crescent": "Halbmond"},
           {"red": "Rot", "orange": "Orange", "yellow": "Gelb", "green": "Grün", "blue": "Blau",
            "purple": "Lila", "pink": "Rosa", "brown": "Braun"},
           ("{S} in {c} auf einem Holztisch", "{S} in {c} – kostenlose Clipart-Grafik",
            "Foto: ein {S} in der Farbe {c} vor blauem Himmel", "Symbolbild {S} in {c} auf "
            "kariertem Hintergrund")),
    "es": ({"circle": "círculo", "square": "cuadrado", "triangle": "triángulo", "star": "estrella",
            "arrow": "flecha", "heart": "corazón", "cross": "cruz", "crescent": "media luna"},
           {"red": "rojo", "orange": "naranja", "yellow": "amarillo", "green": "verde",
            "blue": "azul", "purple": "morado", "pink": "rosa", "brown": "marrón"},
           ("{s} de color {c} sobre una mesa de madera", "Imagen prediseñada de {s} de color {c}",
            "Foto de {s} de color {c} con fondo de cuadros", "Icono: {s} de color {c} sobre "
            "fondo liso")),
    "it": ({"circle": "cerchio", "square": "quadrato", "triangle": "triangolo", "star": "stella",
            "arrow": "freccia", "heart": "cuore", "cross": "croce", "crescent": "mezzaluna"},
           {"red": "rosso", "orange": "arancione", "yellow": "giallo", "green": "verde",
            "blue": "blu", "purple": "viola", "pink": "rosa", "brown": "marrone"},
           ("{s} di colore {c} su un tavolo di legno", "Clipart gratuita: {s} di colore {c}",
            "Foto di {s} di colore {c} con sfondo a scacchi", "Icona {s} di colore {c} su "
            "sfondo bianco")),
}
FOREIGN_LANGS = tuple(_FOREIGN)


def foreign_alt(rng: np.random.Generator, scene: Scene, lang: str) -> str:
    """An alt text for ``scene`` in ``lang`` (one of fr, de, es, it)."""
    shapes, colours, templates = _FOREIGN[lang]
    t = templates[int(rng.integers(len(templates)))]
    s = shapes[scene.shape]
    return t.format(s=s, S=_cap(s), c=colours[scene.colour])


def _camera_name(rng: np.random.Generator) -> str:
    n = int(rng.integers(7))
    d = lambda k: "".join(str(int(x)) for x in rng.integers(0, 10, k))  # noqa: E731
    return ("DSC" + d(5), "IMG_" + d(4), "P" + d(7), f"2019{d(4)}_{d(6)}", "DSCF" + d(4),
            "_MG_" + d(4), f"PXL_2021{d(4)}_{d(6)}")[n]


_WORDS = re.compile(r"[ ,.;:?!`]")


def match_words(text: str, query: str) -> bool:
    """MetaCLIP's substring rule: ``query`` occurs in ``text`` as whole space-delimited words
    after spaces are put around , . ; : ? ! ` (case-sensitive)."""
    padded = " " + re.sub(r"([,.;:?!`])", r" \1 ", text.replace("\t", " ").replace("\n", " ")) + " "
    return f" {query} " in padded


# --- the web ------------------------------------------------------------------------------------

@dataclass
class SimWeb:
    config: WebConfig
    port: int | None
    images: list[WebImage]
    links: list[dict]
    pages: list[dict]
    tail_uses: dict = field(default_factory=dict)

    # -- addresses --------------------------------------------------------------------------
    def netloc(self, host: str) -> str:
        return f"{host}:{self.port}" if self.port else host

    def url(self, host: str, path: str) -> str:
        return f"http://{self.netloc(host)}{path}"

    def resolve(self, ip: str = "127.0.0.1") -> dict[str, str]:
        """Host -> IP table for the downloader (``NetPolicy.resolve`` / ``--resolve``)."""
        return {h: ip for h in HOSTS}

    def connect_to(self, port: int, ip: str = "127.0.0.1") -> dict[str, str]:
        """``HOST:80`` -> ``IP:PORT`` for every simulated host (``NetPolicy.resolve`` entries with
        ports, like curl's ``--connect-to``): a web built without a port (URLs
        ``http://shapes.example/...``) served by a loopback server on ``port``."""
        return {f"{h}:80": f"{ip}:{port}" for h in HOSTS}

    # -- serving -----------------------------------------------------------------------------
    def image_by_url(self, url: str) -> WebImage:
        return self._by_url[url]

    @property
    def _by_url(self) -> dict[str, WebImage]:
        cache = self.__dict__.get("_url_index")
        if cache is None:
            cache = {im.url: im for im in self.images}
            self.__dict__["_url_index"] = cache
        return cache

    def render_image(self, image: WebImage):
        """The PIL image behind an image entry (scene plus its near-duplicate edits)."""
        from wit_builder.augment import apply_family
        img = render(image.scene)
        for step in image.variant:
            img = apply_family(img, step["family"], rng=step["seed"], **step["params"])
        return img

    def image_bytes(self, url_or_image) -> bytes:
        """The body the server sends for an image URL (rendered and encoded on each call)."""
        image = url_or_image if isinstance(url_or_image, WebImage) else self.image_by_url(url_or_image)
        if image.kind == "garbage":
            return (b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1><p>upstream error "
                    b"while fetching image</p></body></html>\n")
        if image.kind == "html":
            return b"<!DOCTYPE html><html><head><title>tracking</title></head><body></body></html>\n"
        if image.scene is None:
            return b""
        buf = io.BytesIO()
        img = self.render_image(image)
        if image.format == "jpeg":
            img.save(buf, "JPEG", quality=image.quality)
        elif image.format == "png":
            img.save(buf, "PNG", compress_level=3)
        else:
            img.save(buf, "WEBP", quality=image.quality, method=0)
        data = buf.getvalue()
        if image.kind == "truncated":  # cut inside the entropy-coded data: no decoder accepts it
            data = data[: max(200, int(len(data) * 0.45))]
        return data

    def response(self, image: WebImage) -> dict:
        """The loopback response spec for an image entry."""
        if image.kind == "missing":
            return {"status": 404, "body": b"not found", "headers": {"Content-Type": "text/plain"}}
        if image.kind == "redirect":
            return {"redirect": self.images[image.target].url, "headers": {"Cache-Control": "max-age=60"}}
        ctype = "text/html; charset=utf-8" if image.kind == "html" else (
            "image/jpeg" if image.kind in ("truncated", "garbage") else _CTYPE[image.format])
        headers = {"Content-Type": ctype, "Cache-Control": "public, max-age=86400",
                   **image.headers}
        return {"status": 200, "headers": headers, "body": self.image_bytes(image)}

    def routes(self) -> dict:
        """``{path: handler}`` for LoopbackServer: pages and images. A request whose Host header
        names another simulated host gets a 404 (paths are unique across hosts, so requests by
        IP address are served by path alone)."""
        table: dict = {}
        for page in self.pages:
            body = page["html"].encode("utf-8")
            table[page["path"]] = (page["host"], lambda body=body: {
                "status": 200, "body": body, "headers": {"Content-Type": "text/html; charset=utf-8"}})
        for image in self.images:
            if image.kind != "missing":
                table[image.path] = (image.host, (lambda im=image: self.response(im)))
        not_found = {"status": 404, "body": b"not found", "headers": {"Content-Type": "text/plain"}}

        def handler(host: str, make):
            def serve_one(path: str, headers: dict) -> dict:
                asked = (headers.get("Host") or headers.get("host") or "").rsplit(":", 1)[0].lower()
                if asked in HOSTS and asked != host:
                    return not_found
                return make()
            return serve_one

        return {path: handler(host, make) for path, (host, make) in table.items()}

    # -- ground truth ------------------------------------------------------------------------
    def case_links(self, case: str) -> list[dict]:
        return [link for link in self.links if case in link["cases"]]

    def counts(self) -> dict:
        c = Counter()
        for link in self.links:
            c.update(link["cases"])
        out = {case: c[case] for case in CASES}
        out["pages"] = len(self.pages)
        out["img_tags"] = len(self.links)
        out["a_links"] = sum(1 for p in self.pages for l in p["links"] if l["path"] == "A@/href")
        out["image_urls"] = sum(1 for im in self.images if im.kind != "missing")
        out["near_duplicate_groups"] = len({im.group for im in self.images if im.group is not None})
        out["corrupt_truncated"] = sum(1 for im in self.images if im.kind == "truncated")
        out["corrupt_bytes"] = sum(1 for im in self.images if im.kind == "garbage")
        return out

    def concept_counts(self) -> dict:
        """Per concept query (shape, colour, "colour shape"): how many links expected to survive
        collect's filters contain it (MetaCLIP matching), i.e. the expected counts.parquet rows
        for these queries (if language identification keeps every English text)."""
        texts = [l["alt"] for l in self.links if l["expect"]["collect"] == "keep"]
        queries = list(SHAPES) + list(COLOURS) + [f"{c} {s}" for c in COLOURS for s in SHAPES]
        return {q: sum(1 for t in texts if match_words(t, q)) for q in queries}

    def recommended_cap(self) -> int:
        """A per-query cap for the demo's balancing: small enough that the head concept loses
        most of its pairs (about 60% at 3,000 scenes, measured against the demo corpus's words as
        queries) while other concepts keep most of theirs, and >= ``tail_max_uses`` so that every
        problem-case pair is kept."""
        used = max(self.tail_uses.values(), default=0)
        return max(self.config.tail_max_uses, used, self.config.scenes // 60)

    def manifest(self) -> dict:
        """JSON-able ground truth: config, counts per case, the head concept, near-duplicate
        groups, tail words, expected per-stage outcomes, and every link and image."""
        head_c, head_s = self.config.head
        groups: dict[int, list[str]] = {}
        for im in self.images:
            if im.group is not None:
                groups.setdefault(im.group, []).append(im.url)
        collect = Counter(link["expect"]["collect"] for link in self.links)
        download = Counter(link["expect"]["download"] for link in self.links
                           if link["expect"]["collect"] == "keep")
        return {
            "version": 1,
            "config": self.config.resolved(),
            "port": self.port,
            "hosts": list(HOSTS),
            "concepts": {"shapes": list(SHAPES), "colours": list(COLOURS)},
            "head": {"colour": head_c, "shape": head_s, "query": f"{head_c} {head_s}"},
            "counts": self.counts(),
            "concept_counts": self.concept_counts(),
            "tail_words": dict(sorted(self.tail_uses.items())),
            "tail_max_uses": max(self.tail_uses.values(), default=0),
            "near_duplicate_groups": [{"group": g, "urls": u} for g, u in sorted(groups.items())],
            "expect": {"collect": dict(collect), "download_of_kept": dict(download)},
            "recommended": {"per_query_cap": self.recommended_cap()},
            "links": self.links,
            "images": [im.to_dict() for im in self.images],
        }

    def write_manifest(self, path: str) -> None:
        from wit_builder.core import atomic_write_json
        atomic_write_json(path, self.manifest())


# --- generation -----------------------------------------------------------------------------------

class _Builder:
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
    def scene(self, shape=None, colour=None) -> Scene:
        s = sample_scene(scene_seed("web", self.cfg.seed, self.n_scenes), shape=shape, colour=colour)
        self.n_scenes += 1
        return s

    def fmt(self, scene: Scene) -> str:
        table = _FORMATS["clean" if scene.grain == 0 else "photo"]
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
             collect: str, download: str | None, scene: Scene | None = None, src: str | None = None):
        scene = scene or (image.scene if image else None)
        self.pending.append({"image": image.id if image else None, "alt": alt, "lang": lang,
                             "cases": sorted(cases), "src": src,
                             "shape": scene.shape if scene else None,
                             "colour": scene.colour if scene else None,
                             "expect": {"collect": collect, "download": download}})

    def english(self, image: WebImage, cases=(), tail: str | None = None, download="success"):
        alt, tags = english_alt(self.rng, image.scene, tail=tail, head="head" in cases)
        self.link(image, alt, "en", {"english", *cases, *tags}, "keep", download)

    # the populations
    def build(self) -> tuple[list[WebImage], list[dict]]:
        cfg, o, rng = self.cfg, self.opts, self.rng
        head_c, head_s = cfg.head
        n_head = int(round(cfg.scenes * cfg.head_fraction))
        combos = [(c, s) for c in COLOURS for s in SHAPES]
        for i in range(cfg.scenes):
            c, s = (head_c, head_s) if i < n_head else combos[int(rng.integers(len(combos)))]
            im = self.image("ok", self.scene(shape=s, colour=c))
            self.english(im, cases={"head"} if (c, s) == (head_c, head_s) else set())
        for i in range(int(round(cfg.scenes * cfg.non_english_fraction))):
            im = self.image("ok", self.scene())
            lang = FOREIGN_LANGS[i % len(FOREIGN_LANGS)]
            self.link(im, foreign_alt(rng, im.scene, lang), lang, {"non_english"}, "drop", "success")
        for _ in range(int(round(cfg.scenes * cfg.no_query_fraction))):
            im = self.image("ok", self.scene())
            self.link(im, _camera_name(rng), "und", {"no_query"}, "drop", "success")
        for i in range(int(round(cfg.scenes * cfg.empty_alt_fraction))):
            im = self.image("ok", self.scene())
            self.link(im, "" if i % 2 == 0 else None, "und",
                      {"empty_alt" if i % 2 == 0 else "missing_alt"}, "drop", "success")
        non_head = [x for x in combos if x != (head_c, head_s)]
        for g in range(o["dup_groups"]):
            c, s = non_head[int(rng.integers(len(non_head)))]
            base = self.scene(shape=s, colour=c)
            members = 2 + int(rng.integers(3))
            for m in range(members):
                variant = [] if m == 0 else self.variant()
                fmt = "jpeg" if any(v["family"] == "jpeg" for v in variant) else None
                im = self.image("ok", base, variant=variant, group=g,
                                **({"format": fmt} if fmt else {}))
                self.english(im, cases={"near_duplicate"}, tail=self.tail())
        for _ in range(o["broken"]):
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
        for _ in range(o["redirects"]):
            target = self.image("ok", self.scene())
            hop = self.image("redirect", target.scene, target=target.id, format=target.format)
            self.english(hop, cases={"redirect"}, tail=self.tail())
        return self.images, self.pending

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


def _slug(image: WebImage) -> str:
    if image.scene is None:
        return f"pixel-{image.id}"
    return f"{image.scene.colour}-{image.scene.shape}"


def _place_image(rng, image: WebImage, page_host: str, page_path: str, alt_is_camera: bool) -> None:
    """Give an image its host and path (near the page that shows it)."""
    if image.host:
        return
    ext = _EXT.get(image.format or "jpeg", "jpg")
    slug = _slug(image)
    if image.kind == "html":
        image.host, image.path = page_host, f"/track/pixel-{image.id}.gif"
        return
    if image.kind == "redirect":
        image.host, image.path = page_host, f"/go/{image.id:05d}"
        return
    on_cdn = rng.random() < 0.3
    if on_cdn:
        image.host = CDN_HOST
        image.path = f"/c/{hashlib.sha1(str(image.id).encode()).hexdigest()[:10]}.{ext}"
        return
    image.host = page_host
    name = f"{_camera_name(rng) if alt_is_camera else slug}-{image.id:05d}.{ext}"
    if page_host == "shapes.example":
        image.path = f"/images/{2015 + image.id % 9}/{name}"
    elif page_host == "clipart.example":
        image.path = f"/clips/{image.scene.shape if image.scene else 'misc'}/{name}"
    else:
        image.path = posixpath.join(posixpath.dirname(page_path), "photos", name)


def _src(rng, web: SimWeb, image: WebImage, page_host: str, page_path: str) -> str:
    """How the page's HTML refers to the image: relative, root-relative, protocol-relative or
    absolute (collect must resolve all of them against the page URL)."""
    if image.host != page_host:
        if rng.random() < 0.5:
            return f"//{web.netloc(image.host)}{image.path}"
        return web.url(image.host, image.path)
    u = rng.random()
    if u < 0.4:
        return image.path
    if u < 0.8:
        return posixpath.relpath(image.path, posixpath.dirname(page_path))
    return web.url(image.host, image.path)


_PAGE_TITLES = {
    "shapes.example": "Shape gallery, page {n}",
    "clipart.example": "Free clip art: collection {n}",
    "photos.example": "Weekend craft projects, part {n}",
}


def _page_path(host: str, n: int, lang: str) -> str:
    prefix = "" if lang == "en" else f"/{lang}"
    if host == "shapes.example":
        return f"{prefix}/gallery/{2015 + n % 9}/page-{n}.html"
    if host == "clipart.example":
        return f"{prefix}/category/collection-{n}.html"
    return f"{prefix}/blog/{2015 + n % 9}/post-{n}.html"


def _paginate(rng, cfg: WebConfig, links: list[dict]) -> list[tuple[str, list[dict]]]:
    """Shuffle links into pages; non-English links go to pages of their own language."""
    by_lang: dict[str, list[dict]] = {}
    for i in rng.permutation(len(links)):
        link = links[int(i)]
        key = link["lang"] if link["lang"] in FOREIGN_LANGS else "en"
        by_lang.setdefault(key, []).append(link)
    pages = []
    lo, hi = cfg.images_per_page
    for lang in ["en", *FOREIGN_LANGS]:
        items = by_lang.get(lang, [])
        i = 0
        while i < len(items):
            k = int(rng.integers(lo, hi + 1))
            pages.append((lang, items[i:i + k]))
            i += k
    return pages


def _page_html(title: str, lang: str, host: str, imgs: list[tuple[str, dict]],
               anchors: list[tuple[str, str]]) -> str:
    esc = lambda s: htmlmod.escape(s, quote=True)  # noqa: E731
    parts = [f"<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{esc(title)}</title>\n</head>\n<body>\n<header><nav>"]
    parts += [f"<a href=\"{esc(href)}\">{esc(text)}</a> " for href, text in anchors]
    parts.append(f"</nav></header>\n<main>\n<h1>{esc(title)}</h1>\n<p>Pictures from {host}.</p>\n")
    for src, tag in imgs:
        attrs = [f"src=\"{esc(src)}\""]
        if tag["alt"] is not None:
            attrs.append(f"alt=\"{esc(tag['alt'])}\"")
        if tag.get("title"):
            attrs.append(f"title=\"{esc(tag['title'])}\"")
        img = f"<img {' '.join(attrs)} loading=\"lazy\">"
        if host == "photos.example":
            parts.append(f"<p>{img}</p>\n")
        else:
            caption = esc(tag["alt"] or "")
            parts.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>\n")
    parts.append("</main>\n<footer><p>&copy; 2024 " + esc(host) + "</p></footer>\n</body>\n</html>\n")
    return "".join(parts)


def build_web(config: WebConfig | None = None, port: int | None = None, **overrides) -> SimWeb:
    """Generate the simulated web (see the module docstring). ``port``: the loopback server's port
    (URLs then carry it); ``overrides`` replace WebConfig fields (``build_web(scenes=300)``)."""
    from dataclasses import replace
    cfg = replace(config or WebConfig(), **overrides)
    if cfg.scenes < 1:
        raise ValueError("WebConfig.scenes must be >= 1")
    b = _Builder(cfg, port)
    images, pending = b.build()
    web = SimWeb(cfg, port, images, [], [], tail_uses=dict(b.tail_uses))
    rng = np.random.default_rng([int(cfg.seed), 0x9A6E])
    # redirect targets live on the CDN
    for im in images:
        if im.kind == "redirect":
            t = images[im.target]
            t.host = CDN_HOST
            t.path = f"/c/{hashlib.sha1(str(t.id).encode()).hexdigest()[:10]}.{_EXT[t.format]}"
    counters = Counter()
    for lang, tags in _paginate(rng, cfg, pending):
        host = PAGE_HOSTS[counters["pages"] % len(PAGE_HOSTS)]
        counters["pages"] += 1
        n = counters[host] = counters[host] + 1
        path = _page_path(host, n, lang)
        page_url = web.url(host, path)
        title = _PAGE_TITLES[host].format(n=n) + ("" if lang == "en" else f" ({lang})")
        imgs, wat = [], []
        for tag in tags:
            image = images[tag["image"]]
            _place_image(rng, image, host, path, "no_query" in tag["cases"])
            src = _src(rng, web, image, host, path)
            u = rng.random()
            tag["title"] = (tag["alt"] if u < 0.4 else f"{_slug(image)}.{_EXT.get(image.format or 'jpeg')}"
                            if u < 0.55 else None)
            imgs.append((src, tag))
        if rng.random() < cfg.data_uri_page_fraction:  # an inline image: must not be downloaded
            scene = b.scene()
            alt, _ = english_alt(rng, scene)
            data_tag = {"image": None, "alt": alt, "lang": "en", "cases": ["data_uri", "english"],
                        "src": _GIF_1PX, "shape": scene.shape, "colour": scene.colour, "title": None,
                        "expect": {"collect": "drop", "download": None}}
            imgs.insert(int(rng.integers(len(imgs) + 1)), (_GIF_1PX, data_tag))
        anchors = [("/", "Home"), ("/about.html", "About"),
                   (f"/files/catalogue-{n}.pdf", "Download the catalogue (PDF)"),
                   ("https://www.example.org/", "Our partners")]
        html = _page_html(title, lang, host, imgs, anchors)
        for src, tag in imgs:
            tag["src"] = src
            tag["page_url"] = page_url
            tag["url"] = urljoin(page_url, src) if not src.startswith("data:") else src
            tag["id"] = len(web.links)
            web.links.append(tag)
            wat.append({"path": "IMG@/src", "url": src, "alt": tag["alt"], "title": tag["title"]})
        wat += [{"path": "A@/href", "url": href, "text": text} for href, text in anchors]
        web.pages.append({"url": page_url, "host": host, "path": path, "lang": lang, "title": title,
                          "html": html, "links": wat})
    for im in images:
        if not im.host:  # an image no page shows (cannot happen today; keep it addressable)
            im.host, im.path = CDN_HOST, f"/c/orphan-{im.id}.jpg"
        im.url = web.url(im.host, im.path)
    for link in web.links:
        if link["image"] is not None:
            link["image_url"] = images[link["image"]].url
        # the contract's uid (docs/schemas.md), assuming collect's cleaning leaves these alt
        # texts unchanged (they have no entities, control characters or extra whitespace)
        link["uid"] = (hashlib.sha256(f"{link['url']}\n{link['alt']}".encode()).hexdigest()[:32]
                       if link["alt"] and link["url"].startswith("http") else None)
    return web


@contextlib.contextmanager
def serve(config: WebConfig | None = None, port: int = 0, **overrides) -> Iterator[tuple]:
    """Start a LoopbackServer on 127.0.0.1 (``port`` 0: a free one), build the web for that port
    and serve it; yields ``(server, web)`` and stops the server on exit."""
    from wit_builder.sim.loopback import LoopbackServer
    server = LoopbackServer(port=port).start()
    try:
        web = build_web(config, port=server.port, **overrides)
        for path, handler in web.routes().items():
            server.add_route(path, handler)
        yield server, web
    finally:
        server.stop()
