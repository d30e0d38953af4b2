"""The simulated web's alt texts: English phrasings of a rendered scene, the same concepts in
French, German, Spanish and Italian, camera file names (alt texts that match no query), and
MetaCLIP's whole-word substring rule that decides which queries a text matches.

Every function draws from the ``rng`` it is given, so the web built from them is deterministic.
"""
from __future__ import annotations

import re

import numpy as np

from wit_builder.sim.render import Scene, size_word

__all__ = ["english_alt", "foreign_alt", "camera_name", "match_words", "FOREIGN_LANGS"]

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
                "stripes": ("on a striped background", "on striped wallpaper"),
                "paper": ("on paper", "on a sheet of paper", "on white paper"),
                "poster": ("on a bright background", "on a colourful background")}[kind]
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
# Alt texts often say how the picture was made; used for 70% of a styled scene's texts (the
# others use the generic templates above). Line art shows no colour, so its texts name none.
_EN_STYLE = {
    "outline": ("outline of a {c} {s}", "{C} {s} outline icon", "a {c} {s} drawn as an outline {bg}",
                "{c} line {s} symbol", "{C} {s} outline, vector"),
    "lineart": ("line drawing of a {s}", "{S} outline, black and white", "a simple {s} line icon",
                "coloring page: a {s}", "black and white {s} drawing", "{S} line art {bg}"),
    "handdrawn": ("hand-drawn {c} {s}", "a child's drawing of a {c} {s}", "{C} {s} doodle {bg}",
                  "a {c} {s} drawn with markers {bg}", "sketchy {c} {s} drawn by hand",
                  "my kid drew a {c} {s}"),
    "photo": ("photo of a {c} {s} {bg}", "a {c} paper {s} {bg}", "a {c} {s} cut out of cardboard {bg}",
              "snapshot of a {c} {s} lying {bg}", "a {c} {s} sign, photographed at an angle"),
    "logo": ("{B} logo with a {c} {s}", "{C} {s} logo", "the {B} brand: a {c} {s}",
             "logo of {B}, a {c} {s} {bg}", "{B} company logo, {c} {s}"),
}
_EN_LINEART_TAIL = ("a {s} drawn on a {t}", "{S} line drawing on a {t}", "a {t} with a {s} outline on it")
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
    if head and scene.coloured:
        t = _EN_HEAD[int(rng.integers(len(_EN_HEAD)))]
        return _a(t.format(c=c, C=_cap(c), s=s)), tags
    styled = _EN_STYLE.get(scene.style)
    if not scene.coloured:  # line art: the texts name the shape only
        pool = _EN_LINEART_TAIL if tail else styled if rng.random() < 0.7 else _EN_SHAPE_ONLY
    elif tail:
        pool = _EN_TAIL
    else:
        u = rng.random() if partial else 1.0
        pool = _EN_SHAPE_ONLY if u < 0.06 else _EN_COLOUR_ONLY if u < 0.09 else _EN_TEMPLATES
        if styled and pool is _EN_TEMPLATES and rng.random() < 0.7:
            pool = styled
    t = pool[int(rng.integers(len(pool)))]
    if scene.texture == "striped" and rng.random() < 0.4 and "{c} {s}" in t:
        t = t.replace("{c} {s}", "striped {c} {s}", 1)
    text = t.format(c=c, C=_cap(c), s=s, S=_cap(s), bg=_bg_phrase(rng, scene),
                    sz=(sz + " ") if sz and rng.random() < 0.7 else "", t=tail or "",
                    B=scene.text or "")
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


def camera_name(rng: np.random.Generator) -> str:
    """A camera's file name (DSC01234, IMG_1234, ...): an alt text that matches no query."""
    n = int(rng.integers(7))
    d = lambda k: "".join(str(int(x)) for x in rng.integers(0, 10, k))  # noqa: E731
    return ("DSC" + d(5), "IMG_" + d(4), "P" + d(7), f"2019{d(4)}_{d(6)}", "DSCF" + d(4),
            "_MG_" + d(4), f"PXL_2021{d(4)}_{d(6)}")[n]


def match_words(text: str, query: str) -> bool:
    """MetaCLIP's substring rule: ``query`` occurs in ``text`` as whole space-delimited words
    after spaces are put around , . ; : ? ! ` (case-sensitive)."""
    padded = " " + re.sub(r"([,.;:?!`])", r" \1 ", text.replace("\t", " ").replace("\n", " ")) + " "
    return f" {query} " in padded
