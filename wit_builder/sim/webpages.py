"""The simulated web's layout: the population's ``<img>`` links shuffled onto HTML pages of three
hosts, every image given a host and path near the page that shows it (or on the CDN), and each
``src`` written relative, root-relative, protocol-relative or absolute. Pages sometimes carry an
inline ``data:`` image too. :func:`lay_out` returns the pages and the links in page order, with
the URLs and uids the manifest reports.
"""
from __future__ import annotations

import hashlib
import html as htmlmod
import posixpath
from collections import Counter
from urllib.parse import urljoin

import numpy as np

from wit_builder.sim.alttext import FOREIGN_LANGS, camera_name, english_alt
from wit_builder.sim.webcontent import (CDN_HOST, EXT, PAGE_HOSTS, Population, WebConfig, WebImage,
                                        netloc, url)

__all__ = ["lay_out"]

_GIF_1PX = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def _cdn_path(image: WebImage, ext: str) -> str:
    return f"/c/{hashlib.sha1(str(image.id).encode()).hexdigest()[:10]}.{ext}"


def _slug(image: WebImage) -> str:
    if image.scene is None:
        return f"pixel-{image.id}"
    return f"{image.scene.colour}-{image.scene.shape}"


def _place_image(rng, image: WebImage, page_host: str, page_path: str, alt_is_camera: bool) -> None:
    """Give an image its host and path (near the page that shows it)."""
    if image.host:
        return
    ext = EXT.get(image.format or "jpeg", "jpg")
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
        image.path = _cdn_path(image, ext)
        return
    image.host = page_host
    name = f"{camera_name(rng) if alt_is_camera else slug}-{image.id:05d}.{ext}"
    if page_host == "shapes.example":
        image.path = f"/images/{2015 + image.id % 9}/{name}"
    elif page_host == "clipart.example":
        image.path = f"/clips/{image.scene.shape if image.scene else 'misc'}/{name}"
    else:
        image.path = posixpath.join(posixpath.dirname(page_path), "photos", name)


def _src(rng, port: int | None, image: WebImage, page_host: str, page_path: str) -> str:
    """How the page's HTML refers to the image: relative, root-relative, protocol-relative or
    absolute (collect must resolve all of them against the page URL)."""
    if image.host != page_host:
        if rng.random() < 0.5:
            return f"//{netloc(image.host, port)}{image.path}"
        return url(image.host, image.path, port)
    u = rng.random()
    if u < 0.4:
        return image.path
    if u < 0.8:
        return posixpath.relpath(image.path, posixpath.dirname(page_path))
    return url(image.host, image.path, port)


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


class _Layout:
    """Lays the population out page by page (one rng for every placement decision, in order)."""

    def __init__(self, population: Population, port: int | None):
        self.population, self.port = population, port
        self.cfg: WebConfig = population.cfg
        self.images = population.images
        self.rng = np.random.default_rng([int(self.cfg.seed), 0x9A6E])
        self.pages: list[dict] = []
        self.links: list[dict] = []

    def run(self) -> None:
        for im in self.images:  # redirect targets live on the CDN
            if im.kind == "redirect":
                t = self.images[im.target]
                t.host = CDN_HOST
                t.path = _cdn_path(t, EXT[t.format])
        counters = Counter()
        for lang, tags in _paginate(self.rng, self.cfg, self.population.pending):
            host = PAGE_HOSTS[counters["pages"] % len(PAGE_HOSTS)]
            counters["pages"] += 1
            n = counters[host] = counters[host] + 1
            self.page(host, n, lang, tags)
        for im in self.images:
            if not im.host:  # an image no page shows (cannot happen today; keep it addressable)
                im.host, im.path = CDN_HOST, f"/c/orphan-{im.id}.jpg"
            im.url = url(im.host, im.path, self.port)
        for link in self.links:
            if link["image"] is not None:
                link["image_url"] = self.images[link["image"]].url
            # the contract's uid (docs/schemas.md), assuming collect's cleaning leaves these alt
            # texts unchanged (they have no entities, control characters or extra whitespace)
            link["uid"] = (hashlib.sha256(f"{link['url']}\n{link['alt']}".encode()).hexdigest()[:32]
                           if link["alt"] and link["url"].startswith("http") else None)

    def page(self, host: str, n: int, lang: str, tags: list[dict]) -> None:
        """Page ``n`` of ``host`` showing ``tags``: its HTML, its WAT-style links, and the links'
        final fields."""
        path = _page_path(host, n, lang)
        page_url = url(host, path, self.port)
        title = _PAGE_TITLES[host].format(n=n) + ("" if lang == "en" else f" ({lang})")
        imgs = self.img_tags(host, path, tags)
        self.maybe_data_uri(imgs)
        anchors = [("/", "Home"), ("/about.html", "About"),
                   (f"/files/catalogue-{n}.pdf", "Download the catalogue (PDF)"),
                   ("https://www.example.org/", "Our partners")]
        html = _page_html(title, lang, host, imgs, anchors)
        wat = []
        for src, tag in imgs:
            tag["src"] = src
            tag["page_url"] = page_url
            tag["url"] = urljoin(page_url, src) if not src.startswith("data:") else src
            tag["id"] = len(self.links)
            self.links.append(tag)
            wat.append({"path": "IMG@/src", "url": src, "alt": tag["alt"], "title": tag["title"]})
        wat += [{"path": "A@/href", "url": href, "text": text} for href, text in anchors]
        self.pages.append({"url": page_url, "host": host, "path": path, "lang": lang, "title": title,
                           "html": html, "links": wat})

    def img_tags(self, host: str, path: str, tags: list[dict]) -> list[tuple[str, dict]]:
        """``(src, tag)`` per link: the image placed near the page, its src and title chosen."""
        rng, imgs = self.rng, []
        for tag in tags:
            image = self.images[tag["image"]]
            _place_image(rng, image, host, path, "no_query" in tag["cases"])
            src = _src(rng, self.port, image, host, path)
            u = rng.random()
            tag["title"] = (tag["alt"] if u < 0.4 else f"{_slug(image)}.{EXT.get(image.format or 'jpeg')}"
                            if u < 0.55 else None)
            imgs.append((src, tag))
        return imgs

    def maybe_data_uri(self, imgs: list[tuple[str, dict]]) -> None:
        """Sometimes insert an inline ``data:`` image, which must not be downloaded."""
        rng = self.rng
        if rng.random() < self.cfg.data_uri_page_fraction:
            scene = self.population.scene()
            alt, _ = english_alt(rng, scene)
            data_tag = {"image": None, "alt": alt, "lang": "en", "cases": ["data_uri", "english"],
                        "src": _GIF_1PX, "shape": scene.shape, "colour": scene.colour, "title": None,
                        "expect": {"collect": "drop", "download": None}}
            imgs.insert(int(rng.integers(len(imgs) + 1)), (_GIF_1PX, data_tag))


def lay_out(population: Population, port: int | None) -> tuple[list[dict], list[dict]]:
    """The population's links on pages: ``(pages, links)``, links in page order with their
    ``src``, ``page_url``, ``url``, ``id``, ``image_url`` and ``uid``; every image gets its host,
    path and URL (with ``port`` when given)."""
    layout = _Layout(population, port)
    layout.run()
    return layout.pages, layout.links
