"""The demo's procedural renderer: determinism and class separability of colours and shapes."""
import colorsys
import io

import numpy as np
import pytest
from PIL import Image

from wit_builder.sim import render as R


def _interior_mean(img: Image.Image, alpha: np.ndarray) -> np.ndarray:
    px = np.asarray(img, dtype=np.float64)
    inside = alpha > 0.99
    assert inside.sum() > 50
    return px[inside].mean(axis=0)


def test_render_is_deterministic_and_seed_dependent():
    a, b = R.render(R.sample_scene(11)), R.render(R.sample_scene(11))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != R.render(R.sample_scene(12)).tobytes()
    assert 128 <= min(a.size) and max(a.size) <= 256 and a.mode == "RGB"


def test_fixing_labels_reproduces_the_scene():
    for seed in range(20):
        s = R.sample_scene(seed)
        assert R.sample_scene(seed, shape=s.shape, colour=s.colour, texture=s.texture) == s


def test_every_shape_colour_background_and_texture_renders():
    for i, shape in enumerate(R.SHAPES):
        for j, bg in enumerate(R.BACKGROUNDS):
            s = R.sample_scene(100 * i + j, shape=shape, background=bg,
                               texture=R.TEXTURES[(i + j) % len(R.TEXTURES)])
            img, alpha = R.render(s, with_mask=True)
            assert img.size == (s.width, s.height) and alpha.shape == (s.height, s.width)
            # the object is fully inside the frame: its coverage is about its polygon's area
            assert alpha.sum() > 0.3 * s.radius ** 2
            assert s.background == bg


def test_bad_names_are_rejected():
    with pytest.raises(ValueError):
        R.sample_scene(0, shape="octagon")
    with pytest.raises(ValueError):
        R.sample_scene(0, colour="teal")


def test_colour_box_centres_classify_to_themselves():
    for name, ((h0, h1), (s0, s1), (v0, v1)) in R.COLOURS.items():
        rgb = colorsys.hsv_to_rgb(((h0 + h1) / 2 % 360) / 360, (s0 + s1) / 2, (v0 + v1) / 2)
        assert R.nearest_colour(rgb) == name


@pytest.mark.parametrize("texture", R.TEXTURES)
def test_object_colour_maps_back_to_its_name(texture):
    """The mean colour of the object's pixels (whatever its texture, background, shadow or
    distractor) is nearest to its own colour: colours are unambiguous."""
    wrong = []
    for k, colour in enumerate(R.COLOURS):
        for seed in range(6):
            s = R.sample_scene(1000 * k + seed, colour=colour, texture=texture, style="render")
            img, alpha = R.render(s, with_mask=True)
            got = R.nearest_colour(_interior_mean(img, alpha))
            if got != colour:
                wrong.append((colour, got, s.seed))
    assert not wrong


def test_object_contrasts_with_background():
    for seed in range(40):
        s = R.sample_scene(seed)
        img, alpha = R.render(s, with_mask=True)
        px = np.asarray(img, dtype=np.float64) / 255
        obj = px[alpha > 0.99].mean(axis=0)
        bg = px[alpha < 0.01].mean(axis=0)
        assert np.linalg.norm(obj - bg) > 0.25, s


def _shape_features(alpha: np.ndarray, radius: float) -> np.ndarray:
    """Rotation-invariant mask descriptors: area / (pi r^2), solidity, radius of gyration and
    maximum extent relative to sqrt(area)."""
    from scipy.spatial import ConvexHull
    ys, xs = np.nonzero(alpha > 0.5)
    pts = np.stack([xs, ys], 1).astype(float)
    area = len(pts)
    d = np.sqrt(((pts - pts.mean(0)) ** 2).sum(1))
    return np.array([area / (np.pi * radius ** 2), area / ConvexHull(pts).volume,
                     np.sqrt((d ** 2).mean() / area), d.max() / np.sqrt(area)])


def test_shapes_are_separable_from_their_masks():
    """A nearest-centroid classifier on rotation-invariant mask features, fitted on some scenes,
    names the shape of other scenes (different seeds, sizes, rotations) without error."""
    X, y = [], []
    for i in range(160):
        s = R.sample_scene(5000 + i, shape=R.SHAPES[i % 8], style="render", edits=False)
        _, alpha = R.render(s, with_mask=True)
        X.append(_shape_features(alpha, s.radius))
        y.append(i % 8)
    X, y = np.array(X), np.array(y)
    fit = np.arange(len(y)) < 80
    mu, sd = X[fit].mean(0), X[fit].std(0)
    Z = (X - mu) / sd
    centroids = np.stack([Z[fit & (y == k)].mean(0) for k in range(8)])
    pred = ((Z[~fit][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y[~fit]).mean() == 1.0


def test_shape_masks_differ_pairwise():
    masks = {}
    for shape in R.SHAPES:
        masks[shape] = R._mask((0, 128, 0, 128), shape, 64, 64, 50, 0) > 0.5
    for a in R.SHAPES:
        for b in R.SHAPES:
            if a < b:
                inter = (masks[a] & masks[b]).sum()
                union = (masks[a] | masks[b]).sum()
                assert inter / union < 0.85, (a, b)


def test_images_encode_in_web_formats():
    img = R.render(R.sample_scene(3))
    for fmt in ("JPEG", "PNG", "WEBP"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        back = Image.open(io.BytesIO(buf.getvalue()))
        assert back.size == img.size


def test_scene_seed_streams_are_disjoint():
    web = {R.scene_seed("web", 0, i) for i in range(2000)}
    ev = {R.scene_seed("eval-shapes", 0, i) for i in range(2000)}
    assert len(web) == 2000 and not web & ev
