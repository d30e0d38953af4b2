"""Wikitext -> plain article text -> words, unigram and bigram counts.

**Markup** is parsed with mwparserfromhell (a maintained MediaWiki parser with a C tokenizer) and
rendered to the text a reader sees, minus what is not running prose:

* removed with their content: templates (``{{...}}``, infoboxes, citations, ``{{lang}}`` ...),
  template arguments, ``<ref>`` and other invisible or non-prose tags (math, gallery, code, pre,
  timeline, ...), tables (wiki ``{| |}`` and HTML), file/image/media links with their captions,
  category links, interlanguage links, comments, bare URLs, behaviour switches (``__NOTOC__``);
* kept: link anchor text (``[[target|anchor]]`` -> ``anchor``; ``[[target]]`` -> ``target``; link
  trails: ``[[bus]]es`` -> ``buses``), external link titles, bold/italic and other formatting
  tags' content, list items, definition lists, headings (as their own line), HTML entities
  (decoded).

A removed element becomes a line break, so words on its two sides are never adjacent (``is
{{convert|5|km}} long`` has no bigram ``is long``); comments vanish without a trace.

**Tokenization** (documented in docs/queries.md): a *word* is a maximal run of Unicode letters
and digits, where single internal apostrophes (``'`` or ``’``) and hyphens join parts (``don't``,
``O'Brien``, ``T-shirt``, ``1990s``). Everything else separates words; case is kept. Two words
form a *bigram* only when they are separated by spaces alone: no punctuation and no line break
between them. Bigrams therefore never cross a sentence end (``. ! ?``), a paragraph or line break,
or any other punctuation (commas, brackets, quotes, dashes, colons).

**Possessives.** A word ending in ``'s`` or ``’s`` (either case of ``s``) counts as the word
without that ending (``Obama's`` -> ``Obama``, ``O'Brien's`` -> ``O'Brien``, ``dog's`` -> ``dog``),
and the ending is punctuation: it ends the run, so ``Hong Kong's economy`` gives the bigram
``Hong Kong`` and no bigram ``Kong economy``. Hyphenated words stay whole (``T-shirt``). The
reasons (substring matching of alt texts) are in docs/queries.md.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterator

import mwparserfromhell
from mwparserfromhell import nodes as mwnodes

__all__ = ["clean_wikitext", "word_runs", "count_terms", "possessive_base", "WORD_PATTERN", "WikitextError"]

WORD_PATTERN = r"[^\W_]+(?:['\u2019\-][^\W_]+)*"
# separators allowed inside a run of adjacent words: whitespace that is not a line boundary
_GAP = r"[^\S\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+"
_RUN = re.compile(rf"{WORD_PATTERN}(?:{_GAP}{WORD_PATTERN})*")
_SWITCH = re.compile(r"__[A-Z]+__")

# tags removed with their content
DROP_TAGS = frozenset({
    "ref", "references", "table", "math", "chem", "ce", "gallery", "imagemap", "timeline", "score",
    "syntaxhighlight", "source", "code", "pre", "templatedata", "templatestyles", "graph",
    "mapframe", "maplink", "inputbox", "categorytree", "hiero", "charinsert", "indicator",
    "section", "noinclude", "style", "script",
})
BREAK_TAGS = frozenset({"br", "hr", "p", "li", "dt", "dd", "div", "blockquote", "tr", "td", "th"})
DROP_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
_INTERLANGUAGE = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]+)*$")


class WikitextError(ValueError):
    """mwparserfromhell could not parse a page."""


def _render(code, out: list[str]) -> None:
    for node in code.nodes:
        if isinstance(node, mwnodes.Text):
            out.append(node.value)
        elif isinstance(node, mwnodes.Wikilink):
            _render_link(node, out)
        elif isinstance(node, mwnodes.Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROP_TAGS:
                out.append("\n")
                continue
            if tag in BREAK_TAGS:
                out.append("\n")
            if node.contents is not None and not node.self_closing:
                _render(node.contents, out)
                if tag in BREAK_TAGS:
                    out.append("\n")
        elif isinstance(node, mwnodes.HTMLEntity):
            try:
                out.append(node.normalize())
            except ValueError:  # an entity that names no character
                out.append(" ")
        elif isinstance(node, mwnodes.Heading):
            out.append("\n")
            _render(node.title, out)
            out.append("\n")
        elif isinstance(node, mwnodes.ExternalLink):
            if node.title is not None and node.brackets:
                _render(node.title, out)
            else:
                out.append("\n")
        elif isinstance(node, mwnodes.Comment):
            continue
        else:  # Template, Argument and anything unknown: not prose
            out.append("\n")


def _render_link(node, out: list[str]) -> None:
    title = str(node.title).strip()
    visible_colon = title.startswith(":")  # [[:Category:X]] is an ordinary, visible link
    if visible_colon:
        title = title[1:].strip()
    prefix = title.split(":", 1)[0].strip().lower() if ":" in title else ""
    if not visible_colon and prefix:
        if prefix in DROP_LINK_NAMESPACES:
            out.append("\n")
            return
        if node.text is None and _INTERLANGUAGE.match(prefix):
            out.append("\n")  # [[fr:Paris]]: shown in the sidebar, not in the text
            return
    if node.text is not None:
        _render(node.text, out)
    else:
        out.append(title)


def clean_wikitext(text: str) -> str:
    """Plain text of an article's wikitext (see the module docstring for what is kept)."""
    try:
        code = mwparserfromhell.parse(text, skip_style_tags=False)
    except (mwparserfromhell.parser.ParserError, RecursionError) as exc:
        raise WikitextError(str(exc)) from None
    out: list[str] = []
    _render(code, out)
    return _SWITCH.sub(" ", "".join(out))


def possessive_base(word: str) -> str | None:
    """``word`` without its possessive ending ``'s``/``’s`` (``s`` or ``S``), or None when it has
    none (a bare ``'s`` is not a word: the pattern needs letters before the apostrophe)."""
    if len(word) > 2 and word[-1] in "sS" and word[-2] in "'\u2019":
        return word[:-2]
    return None


def word_runs(clean: str) -> Iterator[list[str]]:
    """Runs of adjacent words (words separated by spaces only) in cleaned text; a possessive ends
    its run and loses its ``'s`` (see the module docstring)."""
    for run in _RUN.findall(clean):
        words: list[str] = []
        for word in run.split():
            base = possessive_base(word)
            if base is None:
                words.append(word)
            else:
                words.append(base)
                yield words
                words = []
        if words:
            yield words


def count_terms(clean: str, unigrams: Counter, bigrams: Counter | None) -> int:
    """Add the words and bigrams (``"w1 w2"``) of ``clean`` to the counters (bigrams not counted
    when ``bigrams`` is None); returns the number of words. A bigram key is the two words joined by
    one space (words never contain spaces)."""
    n = 0
    for words in word_runs(clean):
        n += len(words)
        unigrams.update(words)
        if bigrams is not None and len(words) > 1:
            bigrams.update(a + " " + b for a, b in zip(words, words[1:]))
    return n


def words(clean: str) -> list[str]:
    """The words of cleaned text (possessives without their ``'s``)."""
    return [w for run in word_runs(clean) for w in run]
