"""The demo's held-out zero-shot set: the folder layout `wit eval` reads, never on the web."""
import hashlib
import os
from collections import Counter

import numpy as np
from PIL import Image

from trainer.evaluate import folder_classes, iter_folder
from trainer.zeroshot import read_lines
from wit_builder.sim import heldout as H
from wit_builder.sim.render import COLOURS, SHAPES, render, sample_scene, scene_seed
from wit_builder.sim.simweb import build_web


def test_layout_is_what_wit_eval_reads(tmp_path):
    out = str(tmp_path / "eval")
    summary = H.write_heldout(out, per_class=3, seed=5)
    for name, classes in (("shapes", SHAPES), ("colours", tuple(COLOURS))):
        info = summary["sets"][name]
        assert info["images"] == 3 * len(classes) and info["chance_top1"] == 1 / len(classes)
        names = read_lines(info["classes"], "classes")
        assert names == list(classes) and folder_classes(info["dir"]) == sorted(classes)
        templates = read_lines(info["templates"], "templates")
        assert len(templates) >= 5 and all("{}" in t for t in templates)
        skipped = Counter()
        labels = [label for _, label in iter_folder(info["dir"], lambda im: im.size, names, skipped)]
        assert not skipped and sorted(Counter(labels).values()) == [3] * len(classes)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp folder left


def test_images_are_the_scenes_of_their_class(tmp_path):
    """Every file is the rendering of a scene whose label is its folder's class (so the
    renderer's colour/shape guarantees hold for the held-out set)."""
    per_class = 2
    sets = H.write_heldout(str(tmp_path / "e"), per_class=per_class, seed=1)["sets"]
    for name, classes in (("shapes", SHAPES), ("colours", tuple(COLOURS))):
        for k, cls in enumerate(classes):
            for i in range(per_class):
                scene = H.heldout_scene(name, 1, k * per_class + i, cls)
                assert getattr(scene, "shape" if name == "shapes" else "colour") == cls
                assert scene.coloured or name == "shapes"  # colour images show their colour
                got = Image.open(os.path.join(sets[name]["dir"], cls, f"{cls}-{i:04d}.jpg"))
                diff = np.abs(np.asarray(got, np.float32) - np.asarray(render(scene), np.float32))
                assert diff.mean() < 8.0  # the same picture, up to JPEG and its grain


def test_rerun_is_skipped_and_force_rebuilds(tmp_path):
    out = str(tmp_path / "e")
    H.write_heldout(out, per_class=1)
    marker = os.path.join(out, "heldout.json")
    before = os.stat(marker).st_mtime_ns
    H.write_heldout(out, per_class=1)
    assert os.stat(marker).st_mtime_ns == before
    H.write_heldout(out, per_class=2)  # other parameters: rebuilt
    assert len(os.listdir(os.path.join(out, "shapes", "star"))) == 2


def test_never_on_the_web(tmp_path):
    info = H.write_heldout(str(tmp_path / "e"), per_class=2, seed=0)["sets"]
    web = build_web(scenes=200, seed=0)
    web_seeds = {im.scene.seed for im in web.images if im.scene is not None}
    web_pixels = {hashlib.sha1(web.render_image(im).tobytes()).hexdigest()
                  for im in web.images[:200] if im.scene is not None}
    for name in ("shapes", "colours"):
        for cls in os.listdir(info[name]["dir"]):
            for f in os.listdir(os.path.join(info[name]["dir"], cls)):
                img = Image.open(os.path.join(info[name]["dir"], cls, f)).convert("RGB")
                assert hashlib.sha1(img.tobytes()).hexdigest() not in web_pixels
    eval_seeds = {scene_seed(f"eval-{n}", 0, i) for n in ("shapes", "colours") for i in range(16)}
    assert not eval_seeds & web_seeds
