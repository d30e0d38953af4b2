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

Modules: ``webcontent.py`` (the config, image records and the population of images and links),
``alttext.py`` (alt texts in English and four other languages), ``webpages.py`` (pages, image
addresses, HTML); this one builds the web from them, serves it and writes its manifest.
"""
from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterator

from wit_builder.sim.alttext import FOREIGN_LANGS, english_alt, foreign_alt, match_words
from wit_builder.sim.render import COLOURS, SHAPES, render, scene_seed
from wit_builder.sim.webcontent import (CASES, CDN_HOST, CTYPE, HOSTS, PAGE_HOSTS, Population,
                                        WebConfig, WebImage, netloc, url)
from wit_builder.sim.webpages import lay_out

__all__ = ["WebConfig", "WebImage", "SimWeb", "build_web", "serve", "scene_seed", "HOSTS",
           "PAGE_HOSTS", "CDN_HOST", "CASES", "english_alt", "foreign_alt", "match_words",
           "FOREIGN_LANGS"]


# --- the web ------------------------------------------------------------------------------------

_PRERENDER_WEB = None  # the web a forked prerender worker renders from (see SimWeb.prerender)


def _prerendered_body(url: str) -> bytes:
    return _PRERENDER_WEB._encode(_PRERENDER_WEB.image_by_url(url))


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
        return netloc(host, self.port)

    def url(self, host: str, path: str) -> str:
        return url(host, path, self.port)

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
        """The body the server sends for an image URL: rendered and encoded on each call, or
        taken from memory when :meth:`prerender` made it ahead."""
        image = url_or_image if isinstance(url_or_image, WebImage) else self.image_by_url(url_or_image)
        ready = self.__dict__.get("_bodies", {}).get(image.url)
        if ready is not None:
            return ready
        return self._encode(image)

    def prerender(self, urls=None, processes: int = 1, progress: bool = False) -> int:
        """Render and encode the bodies of ``urls`` (default: every image URL; a redirect's target
        is rendered in its place; URLs the web does not serve are ignored) ahead of serving,
        ``processes`` at a time in forked workers: rendering is Python and numpy, so the server's
        threads render ~100 images/s in all, however many there are. ``image_bytes`` then returns
        the same bodies from memory. Returns how many bodies are held."""
        global _PRERENDER_WEB
        by_url, todo = self._by_url, set()
        for u in (urls if urls is not None else by_url):
            image = by_url.get(u)
            if image is not None and image.kind == "redirect":
                image = self.images[image.target]
            if image is not None and image.kind != "missing":
                todo.add(image.url)
        bodies = self.__dict__.setdefault("_bodies", {})
        todo = sorted(todo - set(bodies))
        if processes <= 1 or len(todo) < 64:
            bodies.update((u, self._encode(by_url[u])) for u in todo)
            return len(bodies)
        import multiprocessing

        from tqdm import tqdm
        _PRERENDER_WEB = self  # the forked workers inherit it
        try:
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                made = pool.imap(_prerendered_body, todo, chunksize=32)
                bodies.update(zip(todo, tqdm(made, total=len(todo), desc="render images",
                                             unit="img", disable=not progress)))
        finally:
            _PRERENDER_WEB = None
        return len(bodies)

    def _encode(self, image: WebImage) -> bytes:
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
            "image/jpeg" if image.kind in ("truncated", "garbage") else CTYPE[image.format])
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


def build_web(config: WebConfig | None = None, port: int | None = None, **overrides) -> SimWeb:
    """Generate the simulated web (see the module docstring). ``port``: the loopback server's port
    (URLs then carry it); ``overrides`` replace WebConfig fields (``build_web(scenes=300)``)."""
    cfg = replace(config or WebConfig(), **overrides)
    if cfg.scenes < 1:
        raise ValueError("WebConfig.scenes must be >= 1")
    population = Population(cfg, port)
    images, _ = population.build()
    tail_uses = dict(population.tail_uses)
    pages, links = lay_out(population, port)
    return SimWeb(cfg, port, images, links, pages, tail_uses=tail_uses)


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
