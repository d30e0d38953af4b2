"""The simulated Wikipedia's articles: real wikitext built from sentence templates that mention
the demo's concepts (shapes, colours, their bigrams) and tail words, next to general English
filler, with the markup a query builder must strip (bold, links, templates, refs, tables, files,
categories, comments). :func:`wiki_pages` returns every page in page-id order; ``simwiki.py``
turns them into the :class:`~wit_builder.sim.simwiki.Wiki` with pageviews.
"""
from __future__ import annotations

import itertools
import re

import numpy as np

from wit_builder.sim.render import COLOURS, SHAPES

__all__ = ["wiki_pages", "PLURAL"]

PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
          "arrow": "arrows", "heart": "hearts", "cross": "crosses", "crescent": "crescents"}

SHAPE_FACTS = {
    "circle": ("the set of points at the same distance from a centre", "round", 0),
    "square": ("a quadrilateral with four equal sides and four right angles", "four-sided", 4),
    "triangle": ("a polygon with three edges and three vertices", "three-sided", 3),
    "star": ("a figure of points radiating from a centre", "pointed", 5),
    "arrow": ("a graphical symbol that points in a direction", "pointed", 7),
    "heart": ("an ideograph used to express love and affection", "curved", 0),
    "cross": ("a figure of two bars crossing at right angles", "plus-shaped", 4),
    "crescent": ("the shape of the Moon in its first quarter", "curved", 0),
}
COLOUR_FACTS = {
    "red": ("blood, rubies and ripe strawberries", "620 to 750"),
    "orange": ("carrots, pumpkins and oranges", "590 to 620"),
    "yellow": ("lemons, sunflowers and egg yolk", "570 to 590"),
    "green": ("grass, leaves and emeralds", "495 to 570"),
    "blue": ("the clear sky and the deep sea", "450 to 495"),
    "purple": ("lavender, violets and plums", "380 to 450"),
    "pink": ("flamingos, cherry blossoms and candy floss", "mixed"),
    "brown": ("wood, soil and chocolate", "mixed"),
}
TOPICS = ("Traffic sign", "Flag", "Heraldry", "Clip art", "Emoji", "Playing card", "Quilting",
          "Tangram", "Stained glass", "Logo", "Icon (computing)", "Sticker", "Pattern block",
          "Shape sorter", "Colour wheel", "Signal flag")

GENERAL_NOUNS = ("river", "city", "village", "history", "music", "language", "railway", "station",
                 "church", "school", "market", "bridge", "island", "mountain", "forest", "garden",
                 "farm", "harbour", "castle", "library", "museum", "theatre", "newspaper", "road",
                 "king", "queen", "painter", "poet", "engineer", "farmer", "merchant", "soldier",
                 "family", "century", "war", "treaty", "festival", "season", "winter", "summer",
                 "table", "chair", "window", "door", "wall", "roof", "floor", "paper", "glass",
                 "stone", "wood", "metal", "cloth", "paint", "ink", "photograph", "picture",
                 "drawing", "painting", "sign", "symbol", "design", "pattern", "icon", "background",
                 "sky", "cloud", "sun", "moon", "sea", "light", "shadow", "colour", "shape",
                 "line", "point", "edge", "corner", "surface", "artist", "child", "teacher",
                 "student", "book", "game", "card", "board", "toy", "craft", "clip", "art",
                 "photo", "image", "illustration", "vector", "sticker", "logo", "banner")
GENERAL_ADJS = ("old", "new", "small", "large", "ancient", "modern", "famous", "local", "wooden",
                "simple", "bright", "dark", "plain", "popular", "common", "traditional", "northern",
                "southern", "early", "late", "public", "royal", "national", "religious", "rural")
PLACES = ("France", "Germany", "Japan", "Brazil", "Canada", "Egypt", "India", "Italy", "Kenya",
          "Mexico", "Norway", "Peru", "Spain", "Sweden", "Turkey", "Wales", "Scotland", "Ireland",
          "Portugal", "Chile")
SURNAMES = ("Smith", "Heath", "Klein", "Moreau", "Tanaka", "Okafor", "Lindqvist", "Rossi",
            "Novak", "Haddad", "Fischer", "Costa", "Walker", "Dubois", "Yamada")

_SHAPE_SENTENCES = (
    "A '''{s}''' is {fact}.",
    "A {c} {s} is a common sign on roads in [[{place}]].",
    "{Cc} {ss} were painted on the walls of the old [[{noun}]].",
    "The {c} {s} became a popular [[symbol]] in the {cent} century.",
    "In [[heraldry]], a {c} {s} on a {c2} field is a frequent charge.",
    "Children learn to draw a {s} before they learn to write.",
    "A {c} {s} and a {c2} {s2} appear on the flag of a small [[{place}|{place}]] town.",
    "{Cap} are {adj2} in [[design]] because they are easy to recognise.",
    "The {adj} {noun} used a {c} {s} as its emblem.<ref>{cite}</ref>",
    "Many [[clip art]] collections include a {c} {s} and a {c2} {s}.",
    "A {c} {s} drawn on a [[wood|wooden]] board was found near the [[{noun}]].",
    "In the game, the player moves a {c} {s} across a {c2} {s2}.",
    "{Cc} {ss} and {c2} {ss} are used to teach colours and shapes.",
    "{Cc} and {c2} {ss} were found in a {adj} [[{noun}]].",
    "A {adj} {s} icon marks the entrance of the [[{noun}]].<ref name=\"{ref}\" />",
)
_COLOUR_SENTENCES = (
    "'''{Cc}''' is the colour of {cfact}.",
    "{Cc} light has a wavelength of about {wave} nanometres.",
    "A {c} {s} is often used as a [[warning sign]].",
    "{Cc} paint was made from [[pigment]]s found in [[{place}]].<ref>{cite}</ref>",
    "In many cultures {c} is linked with the {noun}.",
    "The {c} {s} on the {noun} was repainted in the {cent} century.",
    "{Cc} {ss} appear on the coats of arms of several {adj} families.",
    "Artists mixed {c} with {c2} to paint the {noun}.",
    "A {c} {s} on a plain background is a common [[icon]].",
    "Road signs with a {c} {s} mark a {adj} [[{noun}]].",
    "The {noun} was decorated with a {c} {s} and a {c} {s2}.",
)
_TOPIC_SENTENCES = (
    "A {c} {s} is one of the most common designs.",
    "{Cc} {ss} are printed on [[paper]], [[cloth]] and [[metal]].",
    "The {adj} version shows a {c} {s} on a {c2} background.",
    "Designers in [[{place}]] prefer a {c} {s} to a {c2} {s2}.",
    "A {c} {s} clip art image is free to use.<ref>{cite}</ref>",
    "The {c} {s} photo became a well-known [[illustration]].",
    "A small {c} {s} in the corner marks the {noun}.",
    "In the {cent} century the {c} {s} replaced the older {c2} {s2}.",
    "Collectors value a {adj} {c} {s} drawn by hand.",
    "{Cap} in {c} and {c2} appear in the {noun} of the museum.",
)
_FILLER_SENTENCES = (
    "The {noun} of the {noun2} was built in {year}.",
    "It is a {adj} {noun} in the north of [[{place}]].",
    "The {noun} has a {adj} [[{noun2}]] and a {adj2} {noun3}.",
    "In {year} the {noun} was sold to a {adj} {noun2}.<ref>{cite}</ref>",
    "Local people call it the {adj} {noun}.",
    "The {noun2} near the {noun} is painted {c}.",
    "A {adj} [[{noun}]] stands next to the {noun2}.",
    "Visitors can see the {noun} from the {noun2}.",
    "The {noun} is known for its {adj} {noun2} and its {noun3}.",
    "During the {cent} century the {noun} grew into a {adj} {noun2}.",
    "A {noun} made of {noun2} was found in {year}.",
)
_TAIL_SENTENCES = (
    "A '''{t}''' is a {adj} household object.",
    "The first {t} was sold in [[{place}]] in {year}.",
    "A {t} can be made of [[{noun}]], [[plastic]] or [[metal]].",
    "Some people decorate a {t} with a {c} {s}.<ref>{cite}</ref>",
    "Museums keep an old {t} from the {cent} century.",
    "The word {t} first appears in a {adj} book from {year}.",
    "A {t} is often given as a present.",
    "Shops in [[{place}]] sell the {t} in many colours.",
)


_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")  # "a orange" -> "an orange"


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


class _Filler:
    """Fills sentence templates; colour/shape pairs come from a shuffled cycle over all 64 so
    every bigram is mentioned about equally often."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        pairs = [(c, s) for c in COLOURS for s in SHAPES]
        self._pairs = itertools.cycle([pairs[i] for i in rng.permutation(len(pairs))])

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def cite(self) -> str:
        r = self.rng
        return (f"{{{{cite book |last={self.pick(SURNAMES)} |title=The {self.pick(GENERAL_ADJS)} "
                f"{self.pick(GENERAL_NOUNS)} |year={int(r.integers(1850, 2021))} "
                f"|page={int(r.integers(1, 400))}}}}}")

    def sentence(self, template: str, shape: str | None = None, colour: str | None = None,
                 tail: str | None = None) -> str:
        c, s = next(self._pairs)
        c = colour or c
        s = shape or s
        c2 = self.pick([x for x in COLOURS if x != c])
        s2 = self.pick([x for x in SHAPES if x != s])
        fact, adj_shape, _ = SHAPE_FACTS[s]
        cfact, wave = COLOUR_FACTS[c]
        text = template.format(
            s=s, ss=PLURAL[s], c=c, Cc=_cap(c), c2=c2, s2=s2, Cap=_cap(PLURAL[s]), fact=fact,
            adj_shape=adj_shape, cfact=cfact, wave=wave, t=tail or "", place=self.pick(PLACES),
            noun=self.pick(GENERAL_NOUNS), noun2=self.pick(GENERAL_NOUNS),
            noun3=self.pick(GENERAL_NOUNS), adj=self.pick(GENERAL_ADJS),
            adj2=self.pick(GENERAL_ADJS), year=int(self.rng.integers(1700, 2021)),
            cent=self.pick(("eighteenth", "nineteenth", "twentieth", "sixteenth")),
            cite=self.cite(), ref=f"r{int(self.rng.integers(1, 4))}")
        return _AN.sub(r"\1n ", text)

    def paragraph(self, templates, n: int, **kw) -> str:
        return " ".join(self.sentence(self.pick(templates), **kw) for _ in range(n))


def _table(f: _Filler, shape: str | None) -> str:
    rows = ["{| class=\"wikitable\"", "|+ Common uses", "! Colour !! Use !! Since"]
    for c in f.rng.permutation(list(COLOURS))[:4]:
        rows += ["|-", f"| {c} || {f.pick(GENERAL_ADJS)} {f.pick(GENERAL_NOUNS)} || "
                       f"{int(f.rng.integers(1800, 2000))}"]
    rows.append("|}")
    return "\n".join(rows)


def _article(f: _Filler, title: str, lead: str, sections: list[tuple[str, str]],
             categories: list[str], infobox: str | None = None, see_also=()) -> str:
    parts = [f"{{{{Short description|{title}}}}}"]
    if infobox:
        parts.append(infobox)
    parts.append(lead)
    for heading, body in sections:
        parts.append(f"\n== {heading} ==\n{body}")
    if see_also:
        parts.append("\n== See also ==\n" + "\n".join(f"* [[{x}]]" for x in see_also))
    parts.append("\n== References ==\n{{Reflist}}\n<!-- generated for the wit demo -->")
    parts.append("\n".join(f"[[Category:{c}]]" for c in categories))
    return "\n".join(parts) + "\n"


def _shape_article(f: _Filler, shape: str) -> tuple[str, str]:
    title = {"heart": "Heart (symbol)", "star": "Star (polygon)", "arrow": "Arrow (symbol)",
             "cross": "Cross (symbol)", "crescent": "Crescent"}.get(shape, _cap(shape))
    fact, adj, sides = SHAPE_FACTS[shape]
    infobox = (f"{{{{Infobox shape\n| name = {_cap(shape)}\n| image = {_cap(f.pick(list(COLOURS)))} "
               f"{shape}.svg\n| caption = A {f.pick(list(COLOURS))} {shape}\n| edges = {sides}\n}}}}")
    lead = (f"A '''{shape}''' is {fact}.<ref name=\"r1\">{f.cite()}</ref> "
            + f.paragraph(_SHAPE_SENTENCES, 5, shape=shape))
    sections = [
        ("Properties", f.paragraph(_SHAPE_SENTENCES, 6, shape=shape) + "\n\n" + _table(f, shape)),
        ("In art and design", f"[[File:{_cap(f.pick(list(COLOURS)))} {shape}.png|thumb|right|A "
                              f"{f.pick(list(COLOURS))} {shape} on a wooden table]]\n"
                              + f.paragraph(_SHAPE_SENTENCES, 8, shape=shape)),
        ("Symbolism", "{{Main|Symbol}}\n" + "\n".join(
            "* " + f.sentence(f.pick(_SHAPE_SENTENCES), shape=shape) for _ in range(5))),
    ]
    others = [s for s in SHAPES if s != shape][:3]
    return title, _article(f, title, lead, sections, [f"{_cap(PLURAL[shape])}", "Shapes"],
                           infobox, see_also=[_cap(s) for s in others])


def _colour_article(f: _Filler, colour: str) -> tuple[str, str]:
    title = _cap(colour)
    cfact, wave = COLOUR_FACTS[colour]
    infobox = (f"{{{{Infobox colour\n| title = {title}\n| hex = #{f.rng.integers(0, 2**24):06X}\n"
               f"| wavelength = {wave} nm\n}}}}")
    lead = (f"'''{title}''' is the colour of {cfact}.<ref>{f.cite()}</ref> "
            + f.paragraph(_COLOUR_SENTENCES, 5, colour=colour))
    sections = [
        ("Science", f.paragraph(_COLOUR_SENTENCES, 6, colour=colour)),
        ("In art", f"[[File:{title} {f.pick(SHAPES)}.jpg|thumb|upright|A {colour} "
                   f"{f.pick(SHAPES)} on a white background]]\n"
                   + f.paragraph(_COLOUR_SENTENCES, 7, colour=colour) + "\n\n" + _table(f, None)),
        ("Symbolism", "\n".join("* " + f.sentence(f.pick(_COLOUR_SENTENCES), colour=colour)
                                for _ in range(5))),
    ]
    return title, _article(f, title, lead, sections, ["Colours"], infobox,
                           see_also=["Colour wheel", "Pigment"])


def _topic_article(f: _Filler, title: str) -> str:
    lead = f"'''{title}''' " + f.paragraph(_TOPIC_SENTENCES, 4)
    sections = [("History", f"[[File:{_cap(f.pick(list(COLOURS)))} {f.pick(SHAPES)} "
                            f"{title.lower()}.png|thumb|left|An example]]\n"
                            + f.paragraph(_TOPIC_SENTENCES, 7)),
                ("Variants", "\n".join("* " + f.sentence(f.pick(_TOPIC_SENTENCES)) for _ in range(8))),
                ("Common designs", f.paragraph(_TOPIC_SENTENCES, 8) + "\n\n" + _table(f, None)),
                ("Gallery", "<gallery>\n" + "\n".join(
                    f"File:{_cap(f.pick(list(COLOURS)))} {f.pick(SHAPES)}.jpg|A "
                    f"{f.pick(list(COLOURS))} {f.pick(SHAPES)}" for _ in range(3)) + "\n</gallery>")]
    return _article(f, title, lead, sections, ["Design", "Visual arts"], see_also=["Clip art"])


def _tail_article(f: _Filler, word: str) -> str:
    lead = f.sentence(_TAIL_SENTENCES[0], tail=word) + " " + " ".join(
        f.sentence(t, tail=word) for t in _TAIL_SENTENCES[1:])
    sections = [("Uses", f.paragraph(_TAIL_SENTENCES[1:], 4, tail=word) + " "
                 + f.paragraph(_FILLER_SENTENCES, 2))]
    return _article(f, _cap(word), lead, sections, ["Household objects"])


def _filler_article(f: _Filler, title: str) -> str:
    lead = f"'''{title}''' " + f.paragraph(_FILLER_SENTENCES, 4)
    sections = [("History", f.paragraph(_FILLER_SENTENCES, 8)),
                ("Geography", f.paragraph(_FILLER_SENTENCES, 6)),
                ("Culture", "\n".join("* " + f.sentence(f.pick(_FILLER_SENTENCES)) for _ in range(4)))]
    return _article(f, title, lead, sections, [f"Places in {f.pick(PLACES)}"],
                    infobox="{{Infobox settlement\n| name = " + title + "\n| population = "
                            + str(int(f.rng.integers(200, 90000))) + "\n}}")


_REDIRECTS = {"Triangles": "Triangle", "Circles": "Circle", "Squares": "Square",
              "Arrows": "Arrow (symbol)", "Heart symbol": "Heart (symbol)", "Color": "Colour wheel",
              "Red (color)": "Red", "Blue (color)": "Blue", "Five-pointed star": "Star (polygon)",
              "Pentagram star": "Star (polygon)", "Clipart": "Clip art", "Colour circle": "Colour wheel",
              "Emojis": "Emoji", "Road sign": "Traffic sign"}
_OTHER_NS = ((1, "Talk:Triangle", "== Sides ==\nHow many sides? --~~~~\n"),
             (4, "Wikipedia:Manual of Style", "'''Style''' guide for articles.\n"),
             (6, "File:Red triangle.svg", "== Summary ==\nA red triangle.\n[[Category:Triangles]]\n"),
             (10, "Template:Infobox shape", "{| class=\"infobox\"\n! {{{name}}}\n|}\n<noinclude>Doc</noinclude>\n"),
             (14, "Category:Shapes", "Articles about [[shape]]s.\n"))


def wiki_pages(rng: np.random.Generator, filler_articles: int,
               tail_words: tuple[str, ...]) -> tuple[list[tuple[int, str, str, str | None]], list[str]]:
    """Every page as ``(ns, title, text, redirect target or None)``, and the concept articles'
    titles: shapes, colours, topics, one article per tail word, filler places, redirects, and a
    few pages in other namespaces."""
    f = _Filler(rng)
    pages: list[tuple[int, str, str, str | None]] = []   # ns, title, text, redirect
    concept_titles = []
    for shape in SHAPES:
        title, text = _shape_article(f, shape)
        pages.append((0, title, text, None))
        concept_titles.append(title)
    for colour in COLOURS:
        title, text = _colour_article(f, colour)
        pages.append((0, title, text, None))
        concept_titles.append(title)
    for topic in TOPICS:
        pages.append((0, topic, _topic_article(f, topic), None))
        concept_titles.append(topic)
    for word in tail_words:
        pages.append((0, _cap(word), _tail_article(f, word), None))
    used = set()
    for i in range(filler_articles):
        title = f"{f.pick(GENERAL_ADJS).capitalize()} {f.pick(GENERAL_NOUNS)} of {f.pick(PLACES)}"
        while title in used:
            title += " (disambiguation)" if "(" not in title else "I"
        used.add(title)
        pages.append((0, title, _filler_article(f, title), None))
    for src, dst in _REDIRECTS.items():
        pages.append((0, src, f"#REDIRECT [[{dst}]]\n{{{{R from plural}}}}\n", dst))
    for ns, title, text in _OTHER_NS:
        pages.append((ns, title, text, None))
    return pages, concept_titles
