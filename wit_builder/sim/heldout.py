"""The demo's held-out zero-shot evaluation sets: freshly drawn images, never on the simulated web.

Class sets in the image-folder layout ``wit eval --zeroshot-dir`` reads (``DIR/<class>/<image>``,
see ``trainer/evaluate.py``), each with a class-names file and a prompt template file for prompt
ensembling (``--classes``, ``--templates``)::

    OUT/shapes/<shape>/<shape>-NNNN.jpg     in distribution: the web's renderer and styles,
                                            balanced over the 8 shapes, random colours
    OUT/shapes_classes.txt                  one shape per line
    OUT/shapes_templates.txt                "a photo of a {}.", "a drawing of a {}.", ...
    OUT/colours/<colour>/<colour>-NNNN.jpg  in distribution, balanced over the 8 colours, random
                                            shapes, only styles that show the colour
    OUT/colours_classes.txt
    OUT/colours_templates.txt
    OUT/shapes_sketch/<shape>/...           distribution shift: the 8 shapes drawn by
    OUT/shapes_silhouette/<shape>/...       ``shifted.py``, code the web never used (pencil
    OUT/shapes_render2/<shape>/...          sketches, silhouettes, a second renderer), with the
    OUT/shapes_sketch_classes.txt, ...      shapes' classes and templates
    OUT/heldout.json                        parameters, sets (kind: in_distribution | shifted),
                                            counts, chance accuracy

In-distribution scenes come from their own seed streams (``scene_seed("eval-shapes", seed, i)``),
disjoint from the web's (``"web"``), and carry fewer distractors than the web (10% instead of
20%) so that each image's label is unambiguous. The shifted sets are CLIP's robustness question
(ImageNet-Sketch, -Rendition, ObjectNet): does zero-shot accuracy survive a change of the image
distribution that the training data never showed? The set is written to a temporary folder and renamed into place, so
it is either complete or absent; calling again with the same parameters finds ``heldout.json`` and
returns at once (``force=True`` rebuilds it).

:func:`calibration_images` renders another such set, from the ``"calibration"`` stream, for
calibrating the near-duplicate detector (``wit demo``'s dedup stage).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from wit_builder.core import WitError, atomic_write_json
from wit_builder.sim.render import (COLOURLESS_STYLES, COLOURS, SHAPES, STYLE_WEIGHTS, render,
                                    sample_scene, scene_seed)
from wit_builder.sim.shifted import SHIFTED_STYLES, write_shifted_set

__all__ = ["SHAPE_TEMPLATES", "COLOUR_TEMPLATES", "write_heldout", "class_sets", "heldout_scene",
           "shifted_sets", "calibration_images"]

SHAPE_TEMPLATES = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "{} clip art.",
    "a {} icon.",
    "a picture of a {}.",
    "a simple {} shape.",
    "a small {}.",
    "a large {}.",
)
COLOUR_TEMPLATES = (
    "a {} shape.",
    "a {} object.",
    "something {}.",
    "{} clip art.",
    "a photo of a {} shape.",
    "a drawing of something {}.",
    "a {} icon.",
    "a {} sticker.",
)


def class_sets() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """``{set name: (class names, templates)}``: the in-distribution sets."""
    return {"shapes": (SHAPES, SHAPE_TEMPLATES), "colours": (tuple(COLOURS), COLOUR_TEMPLATES)}


def shifted_sets() -> dict[str, str]:
    """``{set name: shifted style}``: the distribution-shifted shape sets."""
    return {f"shapes_{style}": style for style in SHIFTED_STYLES}


def heldout_scene(name: str, seed: int, index: int, cls: str):
    """The in-distribution held-out scene number ``index`` of set ``name`` (shapes: ``cls`` is
    its shape; colours: its colour, in a style that shows colour)."""
    if name == "shapes":
        return sample_scene(scene_seed("eval-shapes", seed, index), distractor_prob=0.1, shape=cls)
    styles = {k: v for k, v in STYLE_WEIGHTS.items() if k not in COLOURLESS_STYLES}
    return sample_scene(scene_seed("eval-colours", seed, index), distractor_prob=0.1, colour=cls,
                        styles=styles)


def _params(per_class: int, seed: int) -> dict:
    return {"version": 2, "per_class": int(per_class), "seed": int(seed),
            "shifted": list(SHIFTED_STYLES)}


def write_heldout(out: str, per_class: int = 50, seed: int = 0, force: bool = False,
                  quality: int = 92, progress: bool = True) -> dict:
    """Write the held-out set under ``out`` (see the module docstring); returns its summary
    (also ``out/heldout.json``): per set the folder, classes and templates files, the number of
    images and the chance top-1 accuracy."""
    if per_class < 1:
        raise WitError(f"held-out set: per_class must be >= 1, got {per_class}")
    marker = os.path.join(out, "heldout.json")
    if not force and os.path.exists(marker):
        with open(marker, encoding="utf-8") as fh:
            done = json.load(fh)
        if done.get("params") == _params(per_class, seed):
            return done
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-", dir=parent)
    from tqdm import tqdm
    total = per_class * (sum(len(c) for c, _ in class_sets().values()) + len(SHAPES) * len(SHIFTED_STYLES))
    try:
        summary = {"params": _params(per_class, seed), "sets": {}}
        bar = tqdm(total=total, desc="held-out sets", unit="img", leave=False, disable=not progress)
        for name, (classes, templates) in class_sets().items():
            for k, cls in enumerate(classes):
                folder = os.path.join(tmp, name, cls.replace(" ", "_"))
                os.makedirs(folder)
                for i in range(per_class):
                    scene = heldout_scene(name, seed, k * per_class + i, cls)
                    render(scene).save(os.path.join(folder, f"{cls}-{i:04d}.jpg"), "JPEG",
                                       quality=quality)
                    bar.update(1)
            summary["sets"][name] = _class_set(tmp, out, name, classes, templates, per_class,
                                               {"kind": "in_distribution"})
        for name, style in shifted_sets().items():
            write_shifted_set(os.path.join(tmp, name), style, per_class, seed, quality=quality)
            bar.update(per_class * len(SHAPES))
            summary["sets"][name] = _class_set(tmp, out, name, SHAPES, SHAPE_TEMPLATES, per_class,
                                               {"kind": "shifted", "style": style})
        bar.close()
        atomic_write_json(os.path.join(tmp, "heldout.json"), summary)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _class_set(tmp: str, out: str, name: str, classes, templates, per_class: int, extra: dict) -> dict:
    """Write ``name``'s classes and templates files under ``tmp``; its heldout.json entry."""
    with open(os.path.join(tmp, f"{name}_classes.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(classes) + "\n")
    with open(os.path.join(tmp, f"{name}_templates.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(templates) + "\n")
    return {"dir": os.path.join(out, name), "classes": os.path.join(out, f"{name}_classes.txt"),
            "templates": os.path.join(out, f"{name}_templates.txt"), "class_names": list(classes),
            "images": per_class * len(classes), "chance_top1": 1.0 / len(classes), **extra}


def calibration_images(n: int, seed: int, size: int) -> list:
    """``n`` freshly rendered scenes (their own seed stream, so none is on the web or in the
    held-out set), resized as ``wit download`` stores images (img2dataset's ``border`` mode:
    longer side to ``size``, padded to a white square)."""
    from PIL import Image

    out = []
    for i in range(n):
        img = render(sample_scene(scene_seed("calibration", seed, i)))
        k = size / max(img.size)
        img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))),
                         Image.Resampling.BOX)
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        out.append(canvas)
    return out
