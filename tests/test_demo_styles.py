"""The simulated web's drawing styles (render, outline, line art, hand-drawn, photo, logo) and the
edits every style may get (crops, occluders): what each style promises, not model accuracy."""
from __future__ import annotations

import colorsys
import dataclasses
from collections import Counter

import numpy as np
import pytest

from wit_builder.sim import render as R
from wit_builder.sim.alttext import english_alt, match_words

COLOURED = [s for s in R.STYLES if s not in R.COLOURLESS_STYLES]


def _visible_mean(img, alpha) -> np.ndarray:
    px = np.asarray(img, np.float64)
    return px[alpha > 0.99].mean(axis=0)


@pytest.mark.parametrize("style", COLOURED)
def test_coloured_styles_show_the_objects_colour(style):
    """Whatever the style draws (a stroke, a scribbled fill, a tilted cut-out under a light, a
    logo), the mean colour of the object's visible pixels names its colour."""
    wrong = []
    for k, colour in enumerate(R.COLOURS):
        for seed in range(4):
            s = R.sample_scene(7000 + 100 * k + seed, colour=colour, style=style)
            img, alpha = R.render(s, with_mask=True)
            assert (alpha > 0.99).sum() > 20, s
            if R.nearest_colour(_visible_mean(img, alpha)) != colour:
                wrong.append((colour, s.seed))
    assert not wrong


def test_line_art_shows_no_colour_and_its_texts_name_none():
    rng = np.random.default_rng(0)
    for seed in range(24):
        s = R.sample_scene(seed, style="lineart")
        assert not s.coloured and s.background == "paper"
        img, alpha = R.render(s, with_mask=True)
        r, g, b = _visible_mean(img, alpha) / 255
        assert colorsys.rgb_to_hsv(r, g, b)[1] < 0.15  # grey ink
        alt, _ = english_alt(rng, s)
        assert match_words(alt.lower(), s.shape), alt
        assert not any(match_words(alt.lower(), c) for c in R.COLOURS), alt


def test_styles_are_drawn_with_their_weights_and_fixing_one_changes_nothing_else():
    n = 3000
    got = Counter(R.sample_scene(seed).style for seed in range(n))
    for style, w in R.STYLE_WEIGHTS.items():
        assert abs(got[style] / n - w) < 0.03, (style, got[style] / n, w)
    for seed in range(40):
        drawn = R.sample_scene(seed)
        fixed = R.sample_scene(seed, style=drawn.style)
        assert fixed == drawn
        other = R.sample_scene(seed, style="render")
        assert (other.shape, other.colour, other.width, other.height, other.rotation) == \
            (drawn.shape, drawn.colour, drawn.width, drawn.height, drawn.rotation)
    only = R.sample_scene(5, styles={"photo": 1.0})
    assert only.style == "photo" and only.tilt != (1.0, 0.0) and only.blur > 0
    with pytest.raises(ValueError, match="unknown style"):
        R.sample_scene(0, style="cubist")


def test_occluders_and_crops_hide_part_of_the_object():
    occluded = cropped = 0
    for seed in range(400):
        s = R.sample_scene(seed)
        whole = dataclasses.replace(s, occluder=None)
        _, a_whole = R.render(whole, with_mask=True)
        if s.occluder is not None and occluded < 5:
            _, a = R.render(s, with_mask=True)
            assert a.sum() < a_whole.sum() - 5  # the occluder covers part of it
            occluded += 1
        m = s.radius * 0.98
        if s.style != "logo" and (s.cx - m < -1 or s.cy - m < -1 or s.cx + m > s.width + 1
                                  or s.cy + m > s.height + 1):
            cropped += 1
        clean = R.sample_scene(seed, edits=False)
        assert clean.occluder is None
    assert occluded == 5 and cropped >= 10


def test_style_specific_drawing():
    # logo: the brand name is drawn (and named by some alt texts)
    s = R.sample_scene(3, style="logo")
    assert s.text and s.text.isalpha()
    with_text = np.asarray(R.render(s), np.float64)
    without = np.asarray(R.render(dataclasses.replace(s, text=None)), np.float64)
    assert np.abs(with_text - without).sum() > 0
    rng = np.random.default_rng(1)
    assert any(s.text in english_alt(rng, s)[0] for _ in range(40))
    # photo: the tilt squashes the object; the blur softens edges
    p = R.sample_scene(11, style="photo", edits=False)
    _, a_tilt = R.render(p, with_mask=True)
    _, a_flat = R.render(dataclasses.replace(p, tilt=(1.0, 0.0)), with_mask=True)
    assert a_tilt.sum() < a_flat.sum() * (p.tilt[0] + 0.08)
    sharp = np.asarray(R.render(dataclasses.replace(p, blur=0.0)).convert("L"), np.float64)
    soft = np.asarray(R.render(p).convert("L"), np.float64)
    assert np.abs(np.diff(soft, axis=1)).mean() < np.abs(np.diff(sharp, axis=1)).mean()
    # outline: a stroke, not a filled shape
    o = R.sample_scene(12, shape="circle", style="outline", edits=False)
    _, a_out = R.render(o, with_mask=True)
    _, a_fill = R.render(dataclasses.replace(o, style="render", stroke=0.0), with_mask=True)
    assert a_out[int(o.cy), int(o.cx)] == 0 and a_fill[int(o.cy), int(o.cx)] == 1
    assert 0.14 * o.radius <= o.stroke <= 0.22 * o.radius
    # hand-drawn: the contour wobbles (differs from the exact polygon's coverage)
    h = R.sample_scene(13, style="handdrawn", edits=False)
    _, a_hand = R.render(h, with_mask=True)
    _, a_exact = R.render(dataclasses.replace(h, style="render", stroke=0.0), with_mask=True)
    assert np.abs((a_hand > 0.5).astype(int) - (a_exact > 0.5).astype(int)).sum() > 20


def test_alt_texts_often_say_how_the_picture_was_made():
    words = {"outline": "outline", "handdrawn": ("hand-drawn", "drawing", "doodle", "drew", "markers",
                                                  "drawn"),
             "photo": ("photo", "paper", "cardboard", "snapshot", "photographed"), "logo": "logo"}
    rng = np.random.default_rng(2)
    for style, w in words.items():
        w = (w,) if isinstance(w, str) else w
        texts = [english_alt(rng, R.sample_scene(seed, style=style))[0] for seed in range(60)]
        said = sum(any(x in t.lower() for x in w) for t in texts)
        assert said >= 0.5 * len(texts), (style, texts[:5])
