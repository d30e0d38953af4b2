"""The demo report's document model and writers: a :class:`Report` of titled sections
(:class:`Section`), each a list of blocks (paragraphs, notes, tables, PNG figures), written as
Markdown (figures linked from a folder) or as one self-contained HTML page (figures embedded as
base64). Also the matplotlib helpers the sections draw their figures with.
"""
from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field

__all__ = ["Section", "Report", "cell_text", "pyplot", "figure_png"]


@dataclass
class Section:
    """A titled list of blocks: ("p", text), ("table", header, rows), ("figure", name, png, caption),
    ("note", text)."""

    title: str
    anchor: str
    blocks: list = field(default_factory=list)

    def p(self, text: str) -> "Section":
        self.blocks.append(("p", text))
        return self

    def note(self, text: str) -> "Section":
        self.blocks.append(("note", text))
        return self

    def table(self, header: list, rows: list[list]) -> "Section":
        self.blocks.append(("table", [str(h) for h in header], [[cell_text(c) for c in r] for r in rows]))
        return self

    def figure(self, name: str, png: bytes, caption: str) -> "Section":
        self.blocks.append(("figure", name, png, caption))
        return self


def cell_text(value) -> str:
    """How a table cell shows ``value``: floats to 4 significant digits, ints with separators."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def to_markdown(self, files_dir: str) -> str:
        out = [f"# {self.title}", ""]
        out += [f"- [{s.title}](#{s.anchor})" for s in self.sections] + [""]
        for s in self.sections:
            out += [f"<a id=\"{s.anchor}\"></a>", f"## {s.title}", ""]
            for block in s.blocks:
                kind = block[0]
                if kind == "p":
                    out += [block[1], ""]
                elif kind == "note":
                    out += [f"> {block[1]}", ""]
                elif kind == "table":
                    _, header, rows = block
                    esc = lambda c: c.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                    out.append("| " + " | ".join(esc(h) for h in header) + " |")
                    out.append("|" + "---|" * len(header))
                    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
                    out.append("")
                elif kind == "figure":
                    _, name, _, caption = block
                    out += [f"![{caption}]({files_dir}/{name})", "", f"*{caption}*", ""]
        return "\n".join(out) + "\n"

    def to_html(self) -> str:
        e = html.escape
        parts = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
                 f"<title>{e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
                 f"<h1>{e(self.title)}</h1>\n<nav><ul>"]
        parts += [f"<li><a href=\"#{s.anchor}\">{e(s.title)}</a></li>" for s in self.sections]
        parts.append("</ul></nav>\n")
        for s in self.sections:
            parts.append(f"<section id=\"{s.anchor}\">\n<h2>{e(s.title)}</h2>\n")
            for block in s.blocks:
                kind = block[0]
                if kind == "p":
                    parts.append(f"<p>{_inline_html(block[1])}</p>\n")
                elif kind == "note":
                    parts.append(f"<p class=\"note\">{_inline_html(block[1])}</p>\n")
                elif kind == "table":
                    _, header, rows = block
                    parts.append("<table>\n<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                                 + "</tr></thead>\n<tbody>\n")
                    parts += ["<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>\n"
                              for r in rows]
                    parts.append("</tbody>\n</table>\n")
                elif kind == "figure":
                    _, name, png, caption = block
                    data = base64.b64encode(png).decode("ascii")
                    parts.append(f"<figure><img alt=\"{e(caption)}\" src=\"data:image/png;base64,{data}\">"
                                 f"<figcaption>{e(caption)}</figcaption></figure>\n")
            parts.append("</section>\n")
        parts.append("</body>\n</html>\n")
        return "".join(parts)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}"
        "figcaption{color:#555;font-size:.9em}.note{color:#8a5300}code{background:#f3f3f3}")


def _inline_html(text: str) -> str:
    """Escape, then render `code` spans (the only inline Markdown the report uses)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


# --- figures ---------------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (tight layout, 100 dpi); the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    return buf.getvalue()
