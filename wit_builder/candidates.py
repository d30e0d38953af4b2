"""What every reader of raw web data produces, and how a candidate's image URL is checked:
:class:`SourceOptions` and :func:`resolve_url` (shared by the web-archive and table readers)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

__all__ = ["SourceOptions", "resolve_url"]

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")


@dataclass(frozen=True)
class SourceOptions:
    """How to read inputs. ``fmt``: ``auto`` (by file name), ``wat``, ``warc``, or a table format."""
    fmt: str = "auto"
    url_col: str = "url"
    caption_col: str = "caption"
    page_url_col: str | None = None
    table_header: bool = True
    title_fallback: bool = True
    max_url_chars: int = 2048


def resolve_url(src, base: str | None, max_chars: int = 2048) -> tuple[str | None, str | None]:
    """Absolute http(s) URL for ``src`` (relative to ``base``), or ``(None, reason)``.

    Leading/trailing whitespace is stripped and tabs/newlines removed (as browsers do), spaces
    become ``%20``; nothing else is rewritten, so an absolute URL stays as the page wrote it.
    """
    if not isinstance(src, str):
        return None, "empty_url"
    url = src.strip()
    if not url:
        return None, "empty_url"
    if "\t" in url or "\n" in url or "\r" in url:
        url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    head = url[:8].lower()
    if head.startswith("data:"):
        return None, "data_url"
    if not (head.startswith("http://") or head.startswith("https://")):
        m = _SCHEME.match(url)
        if m and m.group(1).lower() not in ("http", "https"):
            return None, "non_http_url"
        if not base:
            return None, "relative_url_without_base"
        joined = _quick_join(base, url)
        if joined is None:
            try:
                joined = urljoin(base, url)
            except ValueError:
                return None, "bad_url"
        url = joined
        head = url[:8].lower()
        if not (head.startswith("http://") or head.startswith("https://")):
            return None, "non_http_url"
    if " " in url:
        url = url.replace(" ", "%20")
    if len(url) > max_chars:
        return None, "url_too_long"
    rest = url[url.index("//") + 2:]
    host_end = len(rest)
    for c in "/?#":
        i = rest.find(c)
        if 0 <= i < host_end:
            host_end = i
    if host_end == 0 or rest[:host_end].startswith(("@", ":")):
        return None, "bad_url"
    if "[" in url or "]" in url:
        try:
            urlsplit(url)                  # rejects malformed IPv6 hosts
        except ValueError:
            return None, "bad_url"
    if not url.isascii():
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:
            return None, "bad_url"       # lone surrogates from a broken JSON escape
    return url, None


def _quick_join(base: str, ref: str) -> str | None:
    """``urljoin(base, ref)`` for the common shapes of relative image URLs (``/path``, ``//host/path``,
    ``dir/file``) when no dot segment or backslash needs RFC 3986 normalisation; None otherwise."""
    if "\\" in ref or "/." in ref or ref.startswith((".", "?", "#", ";")) or "://" not in base:
        return None
    scheme_end = base.index("://")
    if ref.startswith("//"):
        return base[:scheme_end + 1] + ref if ref[2:3].isalnum() and "//" not in ref[2:] else None
    if "//" in ref:
        return None                     # urljoin collapses empty path segments
    host_start = scheme_end + 3
    path_start = len(base)
    for c in "/?#":
        i = base.find(c, host_start)
        if 0 <= i < path_start:
            path_start = i
    if ref.startswith("/"):
        return base[:path_start] + ref if "//" not in ref else None
    if ":" in ref.split("/", 1)[0]:
        return None
    end = len(base)
    for c in "?#":
        i = base.find(c, path_start)
        if 0 <= i < end:
            end = i
    path = base[path_start:end]
    if "//" in path:
        return None
    if "/." in path or not path.startswith("/"):
        return base[:path_start] + "/" + ref if not path else None
    return base[:path_start] + path[:path.rfind("/") + 1] + ref


def _safe_base(url) -> str | None:
    if not isinstance(url, str) or not url:
        return None
    if not url.isascii():
        url = url.encode("utf-8", "replace").decode("utf-8")
    return url


# -- WAT ------------------------------------------------------------------------------------------
def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


