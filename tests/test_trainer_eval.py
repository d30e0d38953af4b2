"""Zero-shot, retrieval, linear probe, load() and predict with a colour stand-in CLIP model.

The stand-in's image embedding is the image's mean RGB and its text embedding counts the words
"red", "green", "blue": a perfect model for colour tasks, so the expected metrics are exact.
"""
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.api import label_probs, load
from trainer.evaluate import EvalRequest, evaluate_checkpoint
from trainer.evaluate import _fit_logreg, linear_probe, retrieval_metrics
from trainer.tokenizer import Tokenizer, train_merges
from trainer.transforms import CLIP_MEAN, CLIP_STD, image_transform
from trainer.zeroshot import _CACHE, build_classifier
from wit_builder.core import WitError

COLOURS = ["red", "green", "blue"]


class ColourCLIP(torch.nn.Module):
    def __init__(self, word_ids):
        super().__init__()
        self.register_buffer("word_ids", torch.tensor(word_ids))
        self.logit_scale = torch.nn.Parameter(torch.tensor(np.log(100.0), dtype=torch.float32))

    def encode_image(self, x):
        mean = torch.tensor(CLIP_MEAN)[:, None]
        std = torch.tensor(CLIP_STD)[:, None]
        return (x.flatten(2) * std + mean).mean(-1) + 1e-3

    def encode_text(self, tokens):
        return (tokens[:, :, None] == self.word_ids).sum(1).float() + 1e-3

    def forward(self, image, text):
        return (F.normalize(self.encode_image(image), dim=-1),
                F.normalize(self.encode_text(text), dim=-1), self.logit_scale.exp())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    caps = ["a photo of a red green blue thing", "a colour photo"] * 30
    tok = Tokenizer.from_merges(train_merges(caps, 200, str(d / "m.txt")))
    ids = [tok.encoder[w + "</w>"] for w in COLOURS]
    return ColourCLIP(ids).eval(), image_transform(24, train=False), tok


def _png(rgb):
    buf = io.BytesIO()
    Image.new("RGB", (32, 28), tuple(int(c) for c in rgb)).save(buf, "PNG")
    return buf.getvalue()


COUNTS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (2, 1, 0), (1, 2, 0),
          (0, 1, 2), (2, 0, 1)]


def _caption(c):
    return "a photo of " + " ".join(w for w, n in zip(COLOURS, c) for _ in range(n))


def _write_shard(path, pairs, labels=None):
    with tarfile.open(path, "w") as tf:
        for i, (rgb, caption) in enumerate(pairs):
            meta = {"key": f"{i:09d}"}
            if labels is not None:
                meta["label"] = labels[i]
            for ext, data in (("png", _png(rgb)), ("txt", caption.encode()),
                              ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _rgb(c):
    c = np.array(c, float)
    return c / c.max() * 255


def test_retrieval_recall_exact(bundle, tmp_path):
    model, preprocess, tok = bundle
    pairs = [(_rgb(c), _caption(c)) for c in COUNTS]
    _write_shard(tmp_path / "00000.tar", pairs)
    m = evaluate_checkpoint("stand-in", EvalRequest(retrieval_data=str(tmp_path / "00000.tar"),
                                                    batch_size=4), model_bundle=bundle)["retrieval"]
    assert m["num_pairs"] == 10 and m["image_to_text_R@1"] == 1.0 and m["text_to_image_R@1"] == 1.0
    pairs[0], pairs[1] = (pairs[0][0], pairs[1][1]), (pairs[1][0], pairs[0][1])  # swap 2 captions
    _write_shard(tmp_path / "00001.tar", pairs)
    m = evaluate_checkpoint("stand-in", EvalRequest(retrieval_data=str(tmp_path / "00001.tar")),
                            model_bundle=bundle)["retrieval"]
    assert m["image_to_text_R@1"] == pytest.approx(0.8) and m["image_to_text_R@10"] == 1.0


def test_retrieval_metrics_ranks():
    img = F.normalize(torch.eye(4) + 0.1, dim=-1)
    txt = img[[0, 1, 3, 2]]                      # texts 2 and 3 swapped
    m = retrieval_metrics(img, txt, ks=(1, 2))
    assert m["image_to_text_R@1"] == 0.5 and m["image_to_text_R@2"] == 1.0
    assert m["text_to_image_R@1"] == 0.5


def test_zeroshot_folder_and_shards_with_cache(bundle, tmp_path):
    model, preprocess, tok = bundle
    root = tmp_path / "folder"
    rgbs = {"red": (250, 10, 10), "green": (10, 240, 20), "blue": (5, 5, 250)}
    for name, rgb in rgbs.items():
        os.makedirs(root / name)
        for i in range(2):
            Image.new("RGB", (30, 40), rgb).save(root / name / f"{i}.jpg")
    Image.new("RGB", (30, 40), rgbs["blue"]).save(root / "red" / "wrong.jpg")  # mislabelled
    (root / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "classes.txt").write_text("blue\nred\ngreen\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n{} colour\n")
    _write_shard(tmp_path / "lab.tar", [(rgbs[c], c) for c in ("red", "green", "blue", "red")],
                 labels=["red", 2, "blue", 1])
    cache = tmp_path / "cache"
    m = evaluate_checkpoint("stand-in", EvalRequest(
        zeroshot_dir=str(root), zeroshot_shards=str(tmp_path / "lab.tar"),
        classes=str(tmp_path / "classes.txt"), templates=str(tmp_path / "templates.txt"),
        cache_dir=str(cache)), model_bundle=bundle)
    assert m["zeroshot"]["num_images"] == 7 and m["zeroshot"]["top1"] == pytest.approx(6 / 7)
    assert m["zeroshot"]["top5"] == 1.0 and m["zeroshot"]["skipped"] == {"bad_image": 1}
    assert m["zeroshot_shards"]["top1"] == 1.0 and m["zeroshot_shards"]["num_images"] == 4
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("zeroshot-")
    # built once: the same request is served from the cache (memory, then disk)
    w1 = build_classifier(model, tok, ["blue", "red", "green"], ["a photo of a {}.", "{} colour"],
                          cache_path=str(cache))
    _CACHE.clear()
    w2 = build_classifier(model, tok, ["blue", "red", "green"], ["a photo of a {}.", "{} colour"],
                          cache_path=str(cache))
    assert torch.equal(w1, w2) and w1.shape == (3, 3)
    assert w1.argmax(0).tolist() == [2, 0, 1]   # blue, red, green columns
    with pytest.raises(WitError, match="placeholder"):
        build_classifier(model, tok, ["red"], ["no placeholder"])
    with pytest.raises(WitError, match="does not match"):
        evaluate_checkpoint("x", EvalRequest(zeroshot_dir=str(root),
                                             classes=str(tmp_path / "templates.txt")),
                            model_bundle=bundle)


def test_linear_probe_lbfgs():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 8, generator=g)
    ty = torch.arange(60) % 3
    tx = centres[ty] + torch.randn(60, 8, generator=g)
    grid = (1e-2, 1e-1, 1.0)
    m = linear_probe(x, y, tx, ty, l2_grid=grid)
    assert m["top1"] >= 0.95 and m["num_train"] == 90 and m["l2"] > 0
    shuffled = linear_probe(x, y[torch.randperm(90, generator=g)], tx, ty, l2_grid=grid)
    assert shuffled["top1"] < 0.7
    # the L-BFGS solution is a stationary point of the regularised objective
    w, b = _fit_logreg(x.double(), y, 3, 1e-2)
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = F.cross_entropy(x.double() @ w + b, y) + 0.5 * 1e-2 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert gw.norm() < 1e-5 and gb.norm() < 1e-5


def test_load_and_label_probs(bundle, tmp_path):
    model, preprocess, tok = bundle
    ckpt = {"model": model.state_dict(), "model_cfg": {"embed_dim": 3,
            "vision_cfg": {"image_size": 24}, "text_cfg": {}}, "tokenizer_merges": tok.merges_text,
            "step": 5}
    torch.save(ckpt, tmp_path / "c.pt")
    ids = model.word_ids.tolist()
    m2, pre2, tok2 = load(str(tmp_path / "c.pt"), create_model=lambda cfg: (ColourCLIP([0, 0, 0]), cfg))
    assert m2.word_ids.tolist() == ids and not m2.training
    assert pre2.image_size == 24 and tok2.encode("red green") == tok.encode("red green")
    probs = label_probs(m2, pre2, tok2, Image.new("RGB", (50, 50), (240, 10, 10)),
                        ["a red thing", "a green thing", "a blue thing"])
    assert probs[0] > 0.99 and abs(sum(probs) - 1) < 1e-5
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(WitError, match="not a wit trainer checkpoint"):
        load(str(tmp_path / "bad.pt"))
    with pytest.raises(WitError, match="not found"):
        load(str(tmp_path / "nope.pt"))


def test_package_import_is_lazy():
    import subprocess
    import sys
    code = "import sys, trainer; assert 'torch' not in sys.modules; print(callable(trainer.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
