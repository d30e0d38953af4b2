"""The supervised baseline (trainer/supervised.py): labels from captions, training on shards to a
held-out folder accuracy, skip counting, determinism, the checkpoint round trip and errors."""
import io
import json
import os
import random

import pytest
import torch
import webdataset as wds
from PIL import Image

from trainer.supervised import (SupervisedConfig, caption_label, evaluate_supervised,
                                load_supervised, train_supervised)
from wit_builder.core import WitError
from wit_builder.sim.fixtures import write_shard

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220)}
CLASSES = ("red", "blue")


def _jpeg(rgb, rng, size=(40, 36)):
    jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in rgb)
    buf = io.BytesIO()
    Image.new("RGB", size, jitter).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_shards(root, n_shards=2, per_shard=24, unlabelled_every=0, seed=0):
    """Solid red / blue images captioned "a red thing" / "a blue thing" (every
    ``unlabelled_every``-th sample captioned "a thing": no class); returns the shard pattern."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    sizes, key = {}, 0
    for s in range(n_shards):
        name = f"{s:05d}.tar"
        items = []
        for _ in range(per_shard):
            colour = rng.choice(sorted(COLOURS))
            unlabelled = unlabelled_every and key % unlabelled_every == 0
            caption = "a thing" if unlabelled else rng.choice(
                ["a {} thing", "something {}", "A {} square"]).format(colour)
            items.append({"key": f"{key:09d}", "image": _jpeg(COLOURS[colour], rng),
                          "width": 40, "height": 36, "caption": caption})
            key += 1
        write_shard(os.path.join(root, name), items)
        sizes[name] = per_shard
    with open(os.path.join(root, "sizes.json"), "w") as fh:
        json.dump(sizes, fh)
    return f"{root}/{{00000..{n_shards - 1:05d}}}.tar"


def _write_folder(root, per_class=10, seed=1):
    rng = random.Random(seed)
    for colour, rgb in COLOURS.items():
        os.makedirs(os.path.join(root, colour))
        for i in range(per_class):
            with open(os.path.join(root, colour, f"{i}.jpg"), "wb") as fh:
                fh.write(_jpeg(rgb, rng, size=(48, 40)))
    return str(root)


def _cfg(urls, out, **kw):
    settings = {"classes": CLASSES, "model": "tiny-rn", "batch_size": 16, "steps": 40,
                "lr": 2e-3, "warmup": 5, "threads": 1, "progress": False}
    return SupervisedConfig(train_data=urls, out=str(out), **{**settings, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 40-step run on 48 samples (every 6th unlabelled) and a held-out folder."""
    root = tmp_path_factory.mktemp("supervised")
    urls = _write_shards(str(root / "shards"), unlabelled_every=6)
    summary = train_supervised(_cfg(urls, root / "run"))
    return {"root": root, "urls": urls, "summary": summary, "out": root / "run",
            "folder": _write_folder(root / "heldout")}


@pytest.mark.parametrize("caption, expected", [
    ("a red thing", 0),
    ("A BLUE one", 1),
    ("blue paint on a red wall", 1),          # the earliest class wins, not the first listed
    ("reds and blues", 0),                    # plurals count
    ("a scarlet redness", None),              # whole words only
    ("bluey", None),
    ("nothing here", None),
    ("", None),
])
def test_caption_label_colours(caption, expected):
    assert caption_label(caption, CLASSES) == expected


def test_caption_label_shapes_plural_and_multiword():
    shapes = ("circle", "square", "red circle", "box", "butterfly")
    assert caption_label("a scircle", shapes) is None
    assert caption_label("three Circles", shapes) == 0
    assert caption_label("boxes", shapes) == 3
    assert caption_label("two butterflies", shapes) == 4
    assert caption_label("a square, then a circle", shapes) == 1
    assert caption_label("a red circle", shapes) == 2          # longer match at the same place
    assert caption_label("a red\n circle", shapes) == 2
    assert caption_label("circle-shaped", shapes) == 0          # hyphen ends a word
    assert caption_label("icon of a big_square", ("big_square",)) is None  # '_' is a word char
    assert caption_label("a big square", ("big_square",)) == 0  # '_' in a name reads as a space


def test_training_reaches_heldout_accuracy(trained):
    summary = trained["summary"]
    assert summary["steps"] == 40
    result = evaluate_supervised(str(trained["out"] / "supervised.pt"), trained["folder"])
    assert result["num_images"] == 20
    assert result["top1"] >= 0.9, result
    assert len(result["labels"]) == len(result["predictions"]) == 20
    assert sum(map(sum, result["confusion"])) == 20
    assert [sum(row) for row in result["confusion"]] == [10, 10]   # rows: true classes
    assert summary["train_accuracy"] >= 0.9
    assert summary["samples_per_s"] > 0 and summary["seconds"] > 0


def test_unlabelled_captions_are_skipped_and_counted(trained):
    summary = trained["summary"]
    assert summary["samples_read"] == 48
    assert summary["skipped"] == {"no_label": 8}                   # keys 0, 6, ..., 42
    assert summary["labelled"] == 40
    assert sum(summary["per_class"].values()) == 40
    assert set(summary["per_class"]) == set(CLASSES)
    on_disk = json.loads((trained["out"] / "supervised.json").read_text())
    assert on_disk["labelled"] == 40 and on_disk["skipped"] == {"no_label": 8}


def test_bad_images_are_counted(tmp_path):
    urls = _write_shards(str(tmp_path / "shards"), n_shards=1, per_shard=8)
    with wds.TarWriter(str(tmp_path / "shards" / "00001.tar")) as sink:
        sink.write({"__key__": "bad000001", "jpg": b"\xff\xd8garbage", "txt": "a red thing"})
        sink.write({"__key__": "bad000002", "txt": "a blue thing"})
    urls = f"{tmp_path}/shards/{{00000..00001}}.tar"
    summary = train_supervised(_cfg(urls, tmp_path / "run", steps=2, batch_size=4))
    assert summary["samples_read"] == 10 and summary["labelled"] == 8
    assert summary["skipped"] == {"bad_image": 1, "missing_image": 1}


def test_same_seed_same_weights(tmp_path):
    urls = _write_shards(str(tmp_path / "shards"), n_shards=1, per_shard=16)
    heads = []
    for run in ("a", "b", "c"):
        train_supervised(_cfg(urls, tmp_path / run, steps=4, batch_size=8, threads=2,
                              seed=0 if run != "c" else 1))
        model, _, _ = load_supervised(str(tmp_path / run / "supervised.pt"))
        heads.append(model.head.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], heads[2])


def test_checkpoint_round_trip(trained):
    path = str(trained["out"] / "supervised.pt")
    model, preprocess, classes = load_supervised(path)
    assert classes == list(CLASSES)
    assert not model.training
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["image_size"] == 32 and ckpt["model_cfg"]["name"] == "tiny-rn"
    assert ckpt["summary"]["labelled"] == trained["summary"]["labelled"]
    for k, v in ckpt["head"].items():
        assert torch.equal(model.head.state_dict()[k], v)
    for k, v in ckpt["visual"].items():
        assert torch.equal(model.visual.state_dict()[k], v)
    image = Image.new("RGB", (64, 64), COLOURS["blue"])
    x = preprocess(image)
    assert x.shape == (3, 32, 32)
    with torch.no_grad():
        assert int(model(x[None]).argmax()) == 1
    # the (model, preprocess, classes) tuple evaluates the same as the path
    by_tuple = evaluate_supervised((model, preprocess, classes), trained["folder"], batch_size=7)
    by_path = evaluate_supervised(path, trained["folder"])
    assert by_tuple["predictions"] == by_path["predictions"]
    assert not [n for n in os.listdir(trained["out"]) if ".tmp-" in n]   # atomic writes


def test_no_labels_is_a_clear_error(tmp_path):
    urls = _write_shards(str(tmp_path / "shards"), n_shards=1, per_shard=6, unlabelled_every=1)
    with pytest.raises(WitError, match="no usable labelled sample among the 6 read") as info:
        train_supervised(_cfg(urls, tmp_path / "run"))
    assert "\n" not in str(info.value) and "no_label" in str(info.value)
    assert not (tmp_path / "run" / "supervised.pt").exists()


def test_missing_shards_and_bad_settings(tmp_path):
    with pytest.raises(WitError, match="shard\\(s\\) not found"):
        train_supervised(_cfg(f"{tmp_path}/{{00000..00002}}.tar", tmp_path / "run"))
    urls = _write_shards(str(tmp_path / "shards"), n_shards=1, per_shard=2)
    with pytest.raises(WitError, match="duplicate class"):
        train_supervised(_cfg(urls, tmp_path / "run", classes=("red", "Red")))
    with pytest.raises(WitError, match="unknown model"):
        train_supervised(_cfg(urls, tmp_path / "run", model="no-such-model"))


def test_evaluate_folder_with_unknown_class(trained, tmp_path):
    os.makedirs(tmp_path / "green")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "green" / "0.jpg")
    with pytest.raises(WitError, match="does not match any class"):
        evaluate_supervised(str(trained["out"]), str(tmp_path))
