"""The demo's shifted evaluation set (sketch, silhouette, render2): properties of the generators."""
import os

import numpy as np
import pytest
from PIL import Image, ImageFilter

from wit_builder.sim import shifted as S
from wit_builder.sim.scenes import SHAPES, scene_seed


def _hsv(img: Image.Image) -> np.ndarray:
    """H x W x 3 float HSV in [0, 1] (hue as a fraction of a turn)."""
    return np.asarray(img.convert("HSV"), dtype=np.float64) / 255.0


def _hue_mean(hsv: np.ndarray, where: np.ndarray) -> float:
    """Saturation-weighted circular mean hue (degrees) of the pixels ``where``."""
    a = hsv[..., 0][where] * 2 * np.pi
    wgt = hsv[..., 1][where]
    return float(np.degrees(np.arctan2((np.sin(a) * wgt).sum(), (np.cos(a) * wgt).sum())) % 360)


def _hue_gap(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.parametrize("style", S.SHIFTED_STYLES)
def test_draw_is_deterministic_and_seed_dependent(style):
    a, b = S.draw_shifted(style, "star", 5), S.draw_shifted(style, "star", 5)
    assert a.mode == "RGB" and a.tobytes() == b.tobytes()
    assert a.tobytes() != S.draw_shifted(style, "star", 6).tobytes()
    _, m1 = S.draw_shifted(style, "cross", 9, with_mask=True)
    _, m2 = S.draw_shifted(style, "cross", 9, with_mask=True)
    assert np.array_equal(m1, m2)
    # the shape is part of the stream: the same seed draws a different scene for another shape
    assert a.tobytes() != S.draw_shifted(style, "circle", 5).tobytes()


@pytest.mark.parametrize("style", S.SHIFTED_STYLES)
def test_sizes_and_masks(style):
    aspects = set()
    for shape in SHAPES:
        for seed in range(4):
            img, mask = S.draw_shifted(style, shape, seed, with_mask=True)
            w, h = img.size
            assert 128 <= w <= 224 and 128 <= h <= 224
            ratio = max(w, h) / min(w, h)
            assert ratio == 1.0 or abs(ratio - 4 / 3) < 0.01, (w, h)
            aspects.add(round(w / h, 2))
            assert mask.shape == (h, w) and mask.dtype == np.float32
            assert 0.0 <= mask.min() and mask.max() <= 1.0
            # non-trivial: a shape of radius >= 0.22 of the shorter side covers a real area ...
            assert mask.sum() > 0.02 * w * h, (shape, seed)
            assert (mask > 0.99).sum() > 0.5 * mask.sum()
            # ... and lies fully inside the frame
            border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
            assert border.max() == 0.0, (shape, seed)
    assert len(aspects) >= 2


def test_sketch_is_colourless_pencil_on_paper():
    for k, shape in enumerate(SHAPES):
        for seed in range(3):
            img, mask = S.draw_shifted("sketch", shape, 100 * k + seed, with_mask=True)
            hsv = _hsv(img)
            assert hsv[..., 1].mean() < 0.15 and np.percentile(hsv[..., 1], 99) < 0.25
            v = hsv[..., 2]
            paper = np.median(v)
            assert paper > 0.8
            # the outline is drawn: dark pencil pixels along the mask's edge
            edge = (mask > 0.05) & (mask < 0.95)
            assert v[edge].mean() < paper - 0.15, (shape, seed)
            # and it survives shrinking to 32 x 32 px
            small = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX)) / 255.0
            assert small.min() < paper - 0.2, (shape, seed)


def test_silhouette_is_dark_on_vivid():
    for k, shape in enumerate(SHAPES):
        for seed in range(3):
            img, mask = S.draw_shifted("silhouette", shape, 100 * k + seed, with_mask=True)
            hsv = _hsv(img)
            assert hsv[..., 2][mask > 0.9].mean() < 0.25, (shape, seed)
            assert hsv[..., 1][mask < 0.01].mean() > 0.45, (shape, seed)
            assert hsv[..., 2][mask < 0.01].mean() > 0.6, (shape, seed)


def _far_from_object(mask: np.ndarray, grow: int = 8) -> np.ndarray:
    """Pixels more than about ``grow`` px from the object (a max filter on a 4x smaller mask)."""
    h, w = mask.shape
    small = Image.fromarray((mask > 0.01).astype(np.uint8) * 255).reduce(4)
    near = small.point(lambda v: 255 if v else 0).filter(ImageFilter.MaxFilter(2 * (grow // 4) + 3))
    return np.asarray(near.resize((w, h), Image.Resampling.NEAREST)) == 0


def test_render2_contrasts_and_has_stray_lines():
    for k, shape in enumerate(SHAPES):
        for seed in range(3):
            img, mask = S.draw_shifted("render2", shape, 100 * k + seed, with_mask=True)
            hsv = _hsv(img)
            bg, obj = _far_from_object(mask), mask > 0.9
            assert hsv[..., 1][bg].mean() > 0.45, (shape, seed)
            assert hsv[..., 1][obj].mean() > 0.45, (shape, seed)
            assert _hue_gap(_hue_mean(hsv, obj), _hue_mean(hsv, bg)) > 60, (shape, seed)
            # not flat outside the object: thin lines stand out of a smoothed copy of the image
            px = np.asarray(img, dtype=np.float64)
            smooth = np.asarray(img.filter(ImageFilter.BoxBlur(6)), dtype=np.float64)
            detail = np.abs(px - smooth).sum(axis=-1)[bg]
            assert (detail > 40).sum() >= 20, (shape, seed)


def test_clutter_appears_sometimes_away_from_the_object():
    """Some sketches carry pencil marks well away from the shape (the clutter element)."""
    with_clutter = 0
    n = 40
    for seed in range(n):
        img, mask = S.draw_shifted("sketch", SHAPES[seed % 8], 7000 + seed, with_mask=True)
        v = _hsv(img)[..., 2]
        far = _far_from_object(mask, int(0.12 * min(img.size)) + 4)
        if (v[far] < np.median(v) - 0.2).sum() >= 4:
            with_clutter += 1
    assert 0.1 * n <= with_clutter <= 0.5 * n


def test_geometry_differs_from_the_web_renderer():
    """The canonical shapes (mid-range proportions, no rotation) are not the web's polygons."""
    from wit_builder.sim import render as R
    size, r = 160, 64.0
    ious = {}
    for shape in SHAPES:
        mine = S.shape_coverage(shape, size, size, size / 2, size / 2, r) > 0.5
        web = R._mask((0, size, 0, size), shape, size / 2, size / 2, r, 0) > 0.5
        ious[shape] = (mine & web).sum() / (mine | web).sum()
    assert sum(iou < 0.95 for iou in ious.values()) >= 6, ious
    assert all(iou > 0.3 for iou in ious.values()), ious  # same concept, same place


def _hull_area(xs: np.ndarray, ys: np.ndarray) -> float:
    """Area of the convex hull of pixel centres (monotone chain over each row's two ends)."""
    rows = np.unique(ys)
    lo = np.array([xs[ys == r].min() for r in rows])
    hi = np.array([xs[ys == r].max() for r in rows])
    pts = sorted(set(zip(lo.tolist(), rows.tolist())) | set(zip(hi.tolist(), rows.tolist())))

    def turn(o, a, b):  # > 0: a left turn o -> a -> b
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(points):
        chain = []
        for p in points:
            while len(chain) >= 2 and turn(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]
    hull = np.array(half(pts) + half(pts[::-1]), dtype=float)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def _features(mask: np.ndarray) -> np.ndarray:
    """Rotation- and scale-invariant mask descriptors: fill of the enclosing disc, solidity,
    radius of gyration, and the magnitudes of harmonics 1-6 of the boundary's angular distance
    profile around the centroid."""
    ys, xs = np.nonzero(mask > 0.5)
    dx, dy = xs - xs.mean(), ys - ys.mean()
    d = np.hypot(dx, dy)
    dmax = d.max()
    bins = ((np.arctan2(dy, dx) + np.pi) * (72 / (2 * np.pi))).astype(int) % 72
    profile = np.zeros(72)
    np.maximum.at(profile, bins, d / dmax)
    harmonics = np.abs(np.fft.rfft(profile))[1:7] / 72
    return np.concatenate([[len(xs) / dmax ** 2, len(xs) / _hull_area(xs, ys),
                            np.sqrt((d ** 2).mean() / len(xs)), profile.mean(), profile.std()],
                           harmonics])


def test_shapes_stay_distinguishable():
    """A nearest-centroid classifier on rotation-invariant mask features, fitted on 15 random
    scenes per shape, names the shape of 10 other scenes per shape (other sizes, rotations and
    proportions)."""
    X, y = [], []
    for k, shape in enumerate(SHAPES):
        for i in range(25):
            _, mask = S.draw_shifted("silhouette", shape, 9000 + i, with_mask=True)
            X.append(_features(mask))
            y.append(k)
    X, y = np.array(X), np.array(y)
    fit = np.tile(np.arange(25) < 15, 8)
    mu, sd = X[fit].mean(0), X[fit].std(0) + 1e-9
    Z = (X - mu) / sd
    centroids = np.stack([Z[fit & (y == k)].mean(0) for k in range(8)])
    pred = ((Z[~fit][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y[~fit]).mean() >= 0.9


def test_write_shifted_set_layout(tmp_path):
    out = str(tmp_path / "sketch")
    n = S.write_shifted_set(out, "sketch", per_class=2, seed=3, quality=85)
    assert n == 16
    assert sorted(os.listdir(out)) == sorted(SHAPES)
    for shape in SHAPES:
        files = sorted(os.listdir(os.path.join(out, shape)))
        assert files == [f"{shape}-0000.jpg", f"{shape}-0001.jpg"]
        with Image.open(os.path.join(out, shape, files[0])) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
    # scene i of shape k comes from its own stream, never the web's
    k = SHAPES.index("star")
    want = S.draw_shifted("sketch", "star", S.shifted_seed("sketch", 3, k * 2 + 1))
    with Image.open(os.path.join(out, "star", "star-0001.jpg")) as got:
        diff = np.abs(np.asarray(got, dtype=float) - np.asarray(want, dtype=float)).mean()
    assert diff < 4
    web = {scene_seed("web", 3, i) for i in range(200)}
    assert not web & {S.shifted_seed(style, 3, i) for style in S.SHIFTED_STYLES for i in range(200)}


def test_unknown_style_or_shape_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="choose from sketch, silhouette, render2"):
        S.draw_shifted("watercolour", "star", 0)
    with pytest.raises(ValueError, match="choose from circle, square"):
        S.draw_shifted("sketch", "octagon", 0)
    with pytest.raises(ValueError, match="choose from sketch"):
        S.write_shifted_set(str(tmp_path / "x"), "oil", per_class=1, seed=0)
    with pytest.raises(ValueError):
        S.write_shifted_set(str(tmp_path / "x"), "sketch", per_class=0, seed=0)
    assert not os.path.exists(tmp_path / "x")
