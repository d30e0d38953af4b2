"""Augmentation pipeline: determinism under a seed, every family and interpolation produced."""
import io

import numpy as np
import pytest
from PIL import Image

from wit_builder import augment as A


@pytest.fixture(scope="module")
def img():
    return A.synthetic_image(np.random.default_rng(7), (160, 120))


def _bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_augment_is_deterministic_under_a_seed(img):
    for seed in range(5):
        log1, log2 = [], []
        a = A.augment(img, seed, log1)
        b = A.augment(img, np.random.default_rng(seed), log2)
        assert _bytes(a) == _bytes(b)
        assert log1 == log2
    outs = {_bytes(A.augment(img, s)) for s in range(8)}
    assert len(outs) == 8  # different seeds give different copies


def test_synthetic_images_are_deterministic_and_distinct():
    a = A.synthetic_image(3, (64, 64))
    b = A.synthetic_image(3, (64, 64))
    c = A.synthetic_image(4, (64, 64))
    assert _bytes(a) == _bytes(b)
    assert _bytes(a) != _bytes(c)


@pytest.mark.parametrize("family", list(A.FAMILIES))
def test_each_family_changes_the_image_and_is_logged(img, family):
    log = []
    out = A.apply_family(img, family, 11, log)
    assert out.mode == "RGB"
    assert log[0]["family"] == family
    same_size = out.size == img.size
    if same_size:
        diff = np.abs(np.asarray(out, np.int16) - np.asarray(img, np.int16)).mean()
        assert diff > 0.5, f"{family} left the image (nearly) unchanged"
    again = A.apply_family(img, family, 11)
    assert _bytes(again) == _bytes(out)


def test_family_parameters_are_honoured(img):
    w, h = img.size
    out = A.apply_family(img, "crop", 0, fraction=0.3, zoom=False)
    assert abs(out.size[0] * out.size[1] / (w * h) - 0.7) < 0.03
    out = A.apply_family(img, "crop", 0, fraction=0.1, zoom=True)
    assert out.size == img.size
    out = A.apply_family(img, "pad", 0, borders=(0.1, 0.0, 0.1, 0.25), fill=(255, 0, 0))
    assert out.size == (w + 2 * round(0.1 * w), h + round(0.25 * h))
    assert out.getpixel((0, 0)) == (255, 0, 0)
    out = A.apply_family(img, "aspect", 0, ratio=1.5, interpolation="box")
    assert out.size == (round(w * 1.5), h)
    log = []
    A.apply_family(img, "resize", 0, log, scale=0.5, restore=False, interpolation="lanczos")
    assert [r for r in log if r["family"] == "_resize"] == [
        {"family": "_resize", "size": (round(w * 0.5), round(h * 0.5)), "interpolation": "lanczos"}]
    log = []
    A.apply_family(img, "rotate", 0, log, angle=7.0, expand=True)
    assert log[0]["angle"] == 7.0
    # stronger JPEG compression loses more
    err = {q: np.abs(np.asarray(A.apply_family(img, "jpeg", 0, quality=q), np.int16)
                     - np.asarray(img, np.int16)).mean() for q in (10, 90)}
    assert err[10] > err[90]
    with pytest.raises(ValueError):
        A.apply_family(img, "sepia", 0)


def test_pipeline_uses_every_family_and_every_interpolation(img):
    small = img.resize((64, 48))
    families, interps = set(), set()
    for seed in range(60):
        log = []
        A.augment(small, seed, log)
        assert any(r["family"] != "_resize" for r in log)  # at least one op
        families |= {r["family"] for r in log if r["family"] != "_resize"}
        interps |= {r["interpolation"] for r in log if r["family"] == "_resize"}
    assert families == set(A.FAMILIES)
    assert interps == set(A.INTERPOLATIONS)


def test_transparent_and_palette_images_become_rgb():
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert A.to_rgb(rgba).getpixel((3, 3)) == (255, 255, 255)
    pal = Image.new("P", (20, 20))
    assert A.augment(pal, 0).mode == "RGB"
