"""The CLIP paper's evaluation protocols: ImageNet zero-shot with the shipped class names and 80
templates (wnid folders), retrieval with several captions per image, and the linear probe's L2
sweep (appendix A.3)."""
import io
import json
import math
import os
import random
import tarfile

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from test_trainer_eval import ColourCLIP
from test_trainer_eval_cli import _checkpoint
from pipelines.cli import main
from trainer.evaluate import (PAPER_L2_GRID, EvalRequest, evaluate_checkpoint, linear_probe,
                              probe_image_features, retrieval_from_similarity, retrieval_metrics,
                              sweep_l2)
from trainer.tokenizer import Tokenizer, train_merges
from trainer.transforms import image_transform
from trainer.zeroshot import load_list, read_wnid_map
from wit_builder.core import WitError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: small ops, shared cores

# one word per class that occurs in no other ImageNet class name and in no template
WORDS = {"tench": 0, "goldfish": 1, "ostrich": 9}
RGB = {"tench": (250, 5, 5), "goldfish": (5, 250, 5), "ostrich": (5, 5, 250)}


@pytest.fixture(scope="module")
def word_bundle(tmp_path_factory):
    """The colour stand-in CLIP whose three text dimensions count 'tench', 'goldfish' and
    'ostrich' (red, green and blue images)."""
    d = tmp_path_factory.mktemp("tok")
    caps = ["a photo of a tench goldfish ostrich", "a red green blue photo"] * 30
    tok = Tokenizer.from_merges(train_merges(caps, 300, str(d / "m.txt")))
    ids = [tok.encoder[w + "</w>"] for w in WORDS]
    return ColourCLIP(ids).eval(), image_transform(24, train=False), tok


def _wnids(n=1000):
    return [f"n{1000000 + 7 * i:08d}" for i in range(n)]


def _wnid_layout(root, wnids, all_folders=False):
    for i, w in enumerate(wnids if all_folders else []):
        os.makedirs(root / w, exist_ok=True)
    for word, cls in WORDS.items():
        os.makedirs(root / wnids[cls], exist_ok=True)
        for j in range(2):
            Image.new("RGB", (30, 26), RGB[word]).save(root / wnids[cls] / f"{j}.JPEG")


def test_shipped_imagenet_lists():
    classes, templates = load_list("imagenet", "classes"), load_list("imagenet", "templates")
    assert len(classes) == 1000 and len(templates) == 80 and len(set(templates)) == 80
    assert classes[:3] == ["tench", "goldfish", "great white shark"] and classes[9] == "ostrich"
    assert all(t.count("{}") == 1 for t in templates) and "a photo of a {}." in templates
    for word, cls in WORDS.items():   # the stand-in model's words pick out one class each
        assert [i for i, c in enumerate(classes) if word in c.split()] == [cls]
        assert not any(word in t for t in templates)
    # shipped as package data: the directory is a package and the files match its "*.txt" rule
    import trainer.eval_data as ed
    names = os.listdir(os.path.dirname(ed.__file__))
    assert {"imagenet_classes.txt", "imagenet_templates.txt", "__init__.py"} <= set(names)


def test_imagenet_wnid_folders_zeroshot(word_bundle, tmp_path):
    wnids = _wnids()
    root = tmp_path / "val"
    _wnid_layout(root, wnids)
    (tmp_path / "map.txt").write_text("".join(f"{w} some, lemmas\n" for w in wnids))
    req = dict(zeroshot_dir=str(root), classes="imagenet", templates="imagenet")
    m = evaluate_checkpoint("x", EvalRequest(**req, wnid_map=str(tmp_path / "map.txt")),
                            model_bundle=word_bundle)["zeroshot"]
    assert m["num_classes"] == 1000 and m["num_images"] == 6
    assert m["top1"] == 1.0 and m["top5"] >= m["top1"]
    # a map that swaps the first two classes' wnids mislabels the tench and goldfish folders
    swapped = [wnids[1], wnids[0]] + wnids[2:]
    (tmp_path / "swapped.txt").write_text("\n".join(swapped) + "\n")
    m = evaluate_checkpoint("x", EvalRequest(**req, wnid_map=str(tmp_path / "swapped.txt")),
                            model_bundle=word_bundle)["zeroshot"]
    assert m["top1"] == pytest.approx(1 / 3) and m["top5"] >= m["top1"]
    # three wnid folders cannot be placed among 1000 classes without a map
    with pytest.raises(WitError, match="3 wnid folders for 1000 class names.*--wnid-map"):
        evaluate_checkpoint("x", EvalRequest(**req), model_bundle=word_bundle)
    with pytest.raises(WitError, match="wnids.*--classes imagenet"):
        evaluate_checkpoint("x", EvalRequest(zeroshot_dir=str(root)), model_bundle=word_bundle)
    (tmp_path / "bad.txt").write_text("n01440764\ntench\n")
    with pytest.raises(WitError, match="bad.txt: entry 2 is 'tench'"):
        read_wnid_map(str(tmp_path / "bad.txt"))


def test_all_wnid_folders_map_in_sorted_order(word_bundle, tmp_path):
    wnids = _wnids()
    root = tmp_path / "val"
    _wnid_layout(root, wnids, all_folders=True)   # all 1000 folders, images in three
    m = evaluate_checkpoint("x", EvalRequest(zeroshot_dir=str(root), classes="imagenet",
                                             templates="imagenet"),
                            model_bundle=word_bundle)["zeroshot"]
    assert m["top1"] == 1.0 and m["num_images"] == 6 and m["num_classes"] == 1000


def test_eval_cli_imagenet_lists(word_bundle, tmp_path, monkeypatch):
    ckpt, _ = _checkpoint(tmp_path, word_bundle, monkeypatch)
    wnids = _wnids()
    root = tmp_path / "val"
    _wnid_layout(root, wnids)
    (tmp_path / "map.txt").write_text("\n".join(wnids) + "\n")
    out = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", ckpt, "--zeroshot-dir", str(root), "--classes", "imagenet",
                 "--templates", "imagenet", "--wnid-map", str(tmp_path / "map.txt"),
                 "--out", str(out)]) == 0
    m = json.loads(out.read_text())["zeroshot"]
    assert m["top1"] == 1.0 and m["top5"] == 1.0 and m["num_classes"] == 1000


# ---- retrieval with several captions per image ----

def _brute_force(sims, owner, ks):
    n, t = len(sims), len(sims[0])
    out = {}
    for k in ks:
        hits = 0
        for i in range(n):
            ranks = [sum(sims[i][u] > sims[i][c] for u in range(t)) for c in range(t) if owner[c] == i]
            hits += min(ranks) < k
        out[f"image_to_text_R@{k}"] = hits / n
        hits = 0
        for c in range(t):
            hits += sum(sims[j][c] > sims[owner[c]][c] for j in range(n)) < k
        out[f"text_to_image_R@{k}"] = hits / t
    return out


def test_multi_caption_recall_matches_brute_force():
    # hand-worked: image 0 owns texts 0, 1; image 1 owns text 2
    sims = torch.tensor([[0.1, 0.9, 0.5],
                         [0.8, 0.2, 0.3]])
    m = retrieval_from_similarity(sims, [0, 0, 1], ks=(1, 2))
    assert m["image_to_text_R@1"] == 0.5        # image 0: its text 1 is best; image 1: text 2 is 2nd
    assert m["image_to_text_R@2"] == 1.0
    assert m["text_to_image_R@1"] == pytest.approx(1 / 3)   # texts 0 and 2 prefer the other image
    assert m["text_to_image_R@2"] == 1.0
    assert m["num_images"] == 2 and m["num_texts"] == 3
    rng = random.Random(0)
    for _ in range(30):
        n, t = rng.randint(1, 6), rng.randint(6, 14)
        owner = list(range(n)) + [rng.randrange(n) for _ in range(t - n)]
        rng.shuffle(owner)
        sims = [[float(rng.randint(0, 4)) for _ in range(t)] for _ in range(n)]   # many ties
        ks = (1, 2, 3, 5)
        got = retrieval_from_similarity(torch.tensor(sims), owner, ks)
        want = _brute_force(sims, owner, ks)
        assert {k: got[k] for k in want} == pytest.approx(want)
    with pytest.raises(WitError, match="image 1 has no caption"):
        retrieval_from_similarity(torch.zeros(2, 2), [0, 0])
    # one caption each: the same as the one-to-one protocol
    img = F.normalize(torch.eye(4) + 0.1, dim=-1)
    assert retrieval_metrics(img, img[[0, 1, 3, 2]], ks=(1,))["image_to_text_R@1"] == 0.5


def _multi_caption_data():
    return [((250, 5, 5), ["a photo of red", "blue green"]),
            ((5, 250, 5), ["green", "red and blue"]),
            ((5, 5, 250), ["blue blue", "green red"])]


def _check_multi(m):
    # every image's best text is its one-colour caption; the two-colour captions rank their
    # image last of three
    assert m["num_images"] == 3 and m["num_texts"] == 6
    assert m["image_to_text_R@1"] == 1.0
    assert m["text_to_image_R@1"] == 0.5 and m["text_to_image_R@5"] == 1.0


def test_multi_caption_file_and_shards(tmp_path):
    from test_trainer_eval import COLOURS
    d = tmp_path / "tok"
    d.mkdir()
    tok = Tokenizer.from_merges(train_merges(["a photo of red green blue and"] * 30, 200,
                                             str(d / "m.txt")))
    bundle = (ColourCLIP([tok.encoder[w + "</w>"] for w in COLOURS]).eval(),
              image_transform(24, train=False), tok)
    lines = []
    for i, (rgb, caps) in enumerate(_multi_caption_data()):
        os.makedirs(tmp_path / "img", exist_ok=True)
        Image.new("RGB", (20, 20), rgb).save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "captions": caps}))
    lines.append(json.dumps({"image": "img/missing.png", "captions": ["red"]}))
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n")
    m = evaluate_checkpoint("x", EvalRequest(retrieval_data=str(tmp_path / "caps.jsonl"), batch_size=2),
                            model_bundle=bundle)["retrieval"]
    _check_multi(m)
    assert m["skipped"] == {"missing_image": 1}
    # the same as shards whose .json holds the captions
    with tarfile.open(tmp_path / "r.tar", "w") as tf:
        for i, (rgb, caps) in enumerate(_multi_caption_data()):
            buf = io.BytesIO()
            Image.new("RGB", (20, 20), rgb).save(buf, "PNG")
            for ext, data in (("png", buf.getvalue()), ("txt", caps[0].encode()),
                              ("json", json.dumps({"captions": caps}).encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    _check_multi(evaluate_checkpoint("x", EvalRequest(retrieval_data=str(tmp_path / "r.tar")),
                                     model_bundle=bundle)["retrieval"])
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(WitError, match="bad.jsonl, line 2: invalid JSON"):
        evaluate_checkpoint("x", EvalRequest(retrieval_data=str(tmp_path / "bad.jsonl")),
                            model_bundle=bundle)


# ---- linear probe: the paper's L2 sweep and features ----

def test_paper_l2_grid():
    assert len(PAPER_L2_GRID) == 96
    assert PAPER_L2_GRID[0] == pytest.approx(1e-6) and PAPER_L2_GRID[-1] == pytest.approx(1e6)
    ratios = {round(b / a, 9) for a, b in zip(PAPER_L2_GRID, PAPER_L2_GRID[1:])}
    assert len(ratios) == 1   # log-spaced


def _spurious_problem(n, seed, train):
    """A weak signal (class means -1/+1, unit noise) and a tiny-scale feature that separates
    the training set perfectly but is random elsewhere: fitting it needs large weights, which
    only a weak L2 penalty allows."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    s = y if train else torch.randint(0, 2, (n,), generator=g)
    spurious = 0.01 * (s.double() * 2 - 1) * (0.5 + torch.rand(n, generator=g, dtype=torch.float64))
    signal = (y.double() * 2 - 1) + torch.randn(n, generator=g, dtype=torch.float64)
    return torch.stack([signal, spurious], 1), y


def test_sweep_prefers_strong_l2_when_weak_l2_overfits():
    x, y = _spurious_problem(60, 0, train=True)
    vx, vy = _spurious_problem(400, 1, train=False)
    lam, acc, tried = sweep_l2(x, y, vx, vy, 2, "binary", max_iter=300)
    assert len(tried) <= 15 and lam >= 1e-2 and acc > 0.75
    assert tried[1e-6] < 0.6                 # weak regularisation fits the spurious feature
    eighths = [math.log10(v) * 8 for v in tried]
    assert all(abs(e - round(e)) < 1e-6 for e in eighths)       # on the 1/8-decade lattice
    assert any(round(e) % 2 for e in eighths)   # refined down to 1/8 of a decade at the peak


def _tiny_scale_problem(n, seed):
    """Imbalanced classes (70/20/10) separable only through features of scale 1e-3: a strong
    L2 penalty shrinks the weights until the majority class wins everywhere."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0] * (7 * n // 10) + [1] * (2 * n // 10) + [2] * (n - 9 * n // 10))
    centres = torch.eye(3, dtype=torch.float64) * 4
    x = 1e-3 * (centres[y] + 0.5 * torch.randn(len(y), 3, generator=g, dtype=torch.float64))
    return x, y


def test_sweep_prefers_weak_l2_when_strong_l2_underfits():
    x, y = _tiny_scale_problem(100, 0)
    vx, vy = _tiny_scale_problem(100, 1)
    lam, acc, tried = sweep_l2(x, y, vx, vy, 3, "grid", max_iter=100)
    assert len(tried) == 96 and acc == 1.0 and lam < 1e-2
    assert tried[PAPER_L2_GRID[-1]] == pytest.approx(0.7)   # lambda = 1e6: the majority class only
    tx, ty = _tiny_scale_problem(100, 2)
    m = linear_probe(x, y, tx, ty, l2_grid=(1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6), val_x=vx, val_y=vy,
                     max_iter=100)
    assert m["top1"] == 1.0 and m["num_train"] == 200 and m["l2"] < 1e-2 and m["l2_tried"] == 6


def test_probe_features_before_projection():
    from trainer.model import create_model
    torch.manual_seed(0)
    cfg = {"embed_dim": 8, "quick_gelu": False,
           "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "heads": 2},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    model, _ = create_model(cfg)
    model.eval()
    images = torch.randn(3, 3, 16, 16)
    feats = probe_image_features(model, images, features="paper")
    assert feats.shape == (3, 32)           # the ViT width, not the 8-dim embedding
    assert torch.allclose(feats @ model.visual.proj, model.encode_image(images), atol=1e-5)
    emb = probe_image_features(model, images, features="embedding")
    assert emb.shape == (3, 8) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    with pytest.raises(WitError, match="linear probe features 'x'"):
        probe_image_features(model, images, features="x")


# ---- CLIP section 5: accuracy on All / Overlap / Clean ----

def test_subset_accuracy_hand_made(tmp_path):
    from wit_builder.overlap import add_accuracy, subset_accuracy
    hits = {"a": (True, True), "b": (False, True), "c": (True, True), "d": (False, False),
            "e": (True, True)}   # e: no overlap decision (e.g. the detector could not read it)
    acc = subset_accuracy(hits, ["a", "b"], ["c", "d", "x"])   # x: the model could not read it
    assert acc["overlap"] == {"examples": 2, "top1": 0.5, "top5": 1.0}
    assert acc["clean"] == {"examples": 2, "top1": 0.5, "top5": 0.5}
    assert acc["all"] == {"examples": 4, "top1": 0.5, "top5": 0.75}
    assert acc["all_minus_clean_top1"] == 0.0
    assert acc["unmatched"] == {"no_prediction": 1, "no_overlap_decision": 1}
    assert subset_accuracy(hits, [], ["a"])["overlap"]["top1"] is None
    with pytest.raises(WitError, match="both overlapping and clean"):
        subset_accuracy(hits, ["a"], ["a"])
    (tmp_path / "summary.json").write_text(json.dumps({"sets": {"s": {"overlap": 2}}}))
    (tmp_path / "s.overlap.txt").write_text("a\nb\n")
    (tmp_path / "s.clean.txt").write_text("c\n")
    acc = add_accuracy(str(tmp_path), "s", hits, {"bad_image": 1})
    saved = json.loads((tmp_path / "summary.json").read_text())["sets"]["s"]
    assert saved["overlap"] == 2 and saved["accuracy"] == acc
    assert acc["all"]["top1"] == pytest.approx(2 / 3) and acc["skipped"] == {"bad_image": 1}
    assert acc["all_minus_clean_top1"] == pytest.approx(2 / 3 - 1)
    with pytest.raises(WitError, match="t.overlap.txt"):
        add_accuracy(str(tmp_path), "t", hits)


def test_dedup_overlap_reports_accuracy(tmp_path, monkeypatch):
    import numpy as np

    from test_trainer_eval import COLOURS
    from trainer.evaluate import labelled_set_hits
    from wit_builder.augment import synthetic_image
    from wit_builder.detector import FORMAT, build_model, make_config, save_detector
    from wit_builder.sim.fixtures import write_shard
    d = tmp_path / "tok"
    d.mkdir()
    tok = Tokenizer.from_merges(train_merges(["a photo of red green blue"] * 30, 200, str(d / "m.txt")))
    bundle = (ColourCLIP([tok.encoder[w + "</w>"] for w in COLOURS]).eval(),
              image_transform(24, train=False), tok)
    ckpt, _ = _checkpoint(tmp_path, bundle, monkeypatch)
    cfg = make_config("tiny", image_size=32, embed_dim=32)
    torch.manual_seed(0)
    det = str(tmp_path / "det.pt")
    save_detector(det, {"format": FORMAT, "version": 1, "config": cfg,
                        "model": build_model(cfg).state_dict(), "threshold": 0.995})
    rng = np.random.default_rng(42)
    imgs = [synthetic_image(rng, (96, 80)) for _ in range(3)]
    (tmp_path / "train").mkdir()
    write_shard(str(tmp_path / "train" / "00000.tar"),
                [{"key": f"{i:09d}", "image": im, "uid": f"u{i}"} for i, im in enumerate(imgs)])
    ev = tmp_path / "ev"
    for c in COLOURS:
        (ev / c).mkdir(parents=True)
    imgs[0].save(ev / "red" / "copy.png")                          # in the training data
    Image.new("RGB", (64, 64), (10, 240, 10)).save(ev / "green" / "g.png")
    Image.new("RGB", (64, 64), (10, 10, 240)).save(ev / "blue" / "b.png")
    out = tmp_path / "overlap"
    assert main(["dedup", "overlap", "--eval", str(ev), "--shards", str(tmp_path / "train"),
                 "--detector", det, "--out", str(out), "--threads", "1", "--checkpoint", ckpt,
                 "--device", "cpu"]) == 0
    acc = json.loads((out / "summary.json").read_text())["sets"]["ev"]["accuracy"]
    assert (out / "ev.overlap.txt").read_text() == "red/copy.png\n"
    assert acc["overlap"]["examples"] == 1 and acc["clean"]["examples"] == 2
    assert acc["all"]["examples"] == 3 and acc["clean"]["top1"] == 1.0
    hits, _ = labelled_set_hits("x", str(ev), model_bundle=bundle)
    assert acc["overlap"]["top1"] == float(hits["red/copy.png"][0])
    assert acc["all"]["top1"] == pytest.approx((2 + hits["red/copy.png"][0]) / 3)
    assert main(["dedup", "overlap", "--eval", str(ev), "--shards", str(tmp_path / "train"),
                 "--detector", det, "--out", str(out), "--classes", "imagenet"]) == 2


def test_blocked_retrieval_equals_the_whole_matrix():
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(23, 6, generator=g), dim=-1)
    owner = torch.cat([torch.arange(23), torch.randint(0, 23, (40,), generator=g)])
    txt = F.normalize(img[owner] + 0.8 * torch.randn(63, 6, generator=g), dim=-1)
    whole = retrieval_from_similarity(img @ txt.T, owner, ks=(1, 3, 10))
    for block in (4, 7, 23):     # 4 and 7: several blocks, some cut through an image's captions
        assert retrieval_metrics(img, txt, ks=(1, 3, 10), text_image=owner, block=block) == whole
    assert 0 < whole["image_to_text_R@1"] < 1 and 0 < whole["text_to_image_R@1"] < 1
    keep = owner != 5
    with pytest.raises(WitError, match="image 5 has no caption"):
        retrieval_metrics(img, txt[keep], text_image=owner[keep], block=4)
