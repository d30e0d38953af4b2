"""Detector model, InfoNCE loss, detector file handling, training and calibration."""
import math

import numpy as np
import pytest
import torch

from wit_builder.augment import synthetic_image
from wit_builder.core import WitError
from wit_builder import detector_train
from wit_builder.detector import (FORMAT, TEMPERATURE, BlurPool, build_model, info_nce_loss, make_config,
                                  model_from_state, read_detector, save_detector, to_batch)
from wit_builder.detector_train import (CalibrationConfig, DetectorTrainConfig, _training_pair,
                                        threshold_for_precision)

RUN_OPTIONS = ("images", "restart", "threads", "device", "progress")


def train_detector(shards, out, **options):
    """wit_builder.detector_train.train_detector with its config fields and run options as keywords."""
    run = {k: options.pop(k) for k in RUN_OPTIONS if k in options}
    return detector_train.train_detector(shards, out, DetectorTrainConfig(**options), **run)


def calibrate_detector(detector, shards=None, **options):
    run = {k: options.pop(k) for k in (*RUN_OPTIONS, "write") if k in options}
    return detector_train.calibrate_detector(detector, shards, CalibrationConfig(**options), **run)


def test_info_nce_matches_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    A, B = a.double().numpy(), b.double().numpy()
    n = len(A)
    total_ab = total_ba = 0.0
    for i in range(n):
        s_ab = [float(np.dot(A[i], B[j])) / 0.07 for j in range(n)]
        s_ba = [float(np.dot(B[i], A[j])) / 0.07 for j in range(n)]
        total_ab += -s_ab[i] + math.log(sum(math.exp(s) for s in s_ab))
        total_ba += -s_ba[i] + math.log(sum(math.exp(s) for s in s_ba))
    expected = 0.5 * (total_ab / n + total_ba / n)
    assert TEMPERATURE == 0.07
    assert float(info_nce_loss(a, b)) == pytest.approx(expected, rel=1e-5)
    # perfect alignment with orthogonal negatives -> near-zero loss
    eye = torch.eye(4)
    assert float(info_nce_loss(eye, eye)) < 1e-5


def test_model_is_weight_normed_antialiased_and_batch_independent():
    cfg = make_config("tiny", image_size=32, embed_dim=64)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, BlurPool) for m in model.modules()) >= 4
    names = dict(model.named_parameters())
    assert any(n.endswith("parametrizations.weight.original0") for n in names)  # weight-norm gain g
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        y1 = model(x[2:3])
    assert y.shape == (5, 64)
    assert torch.allclose(y.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(y[2], y1[0], atol=1e-5)  # no batch statistics
    with torch.no_grad():
        model.train()
        assert torch.allclose(model(x), y, atol=1e-5)  # train mode = eval mode (no BN, no dropout)
    # tiny preset: 2x2 grid head over the last stage's 16*8*4 channels
    assert cfg["pool_grid"] == 2 and model.head.in_features == 4 * 512
    # resnet50 preset: the paper's block counts, global average pooling
    r50 = make_config("resnet50")
    assert r50["layers"] == [3, 4, 6, 3] and r50["pool_grid"] == 1 and r50["image_size"] == 224
    with pytest.raises(WitError):
        make_config("vgg")


def test_blurpool_low_passes_and_keeps_constants():
    bp = BlurPool(1, 3)
    const = torch.full((1, 1, 8, 8), 3.0)
    assert torch.allclose(bp(const), torch.full((1, 1, 4, 4), 3.0))
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    out = bp(checker.float()[None, None])
    assert out.std() < 0.2 * checker.float().std()  # a naive stride-2 subsample would alias to a constant 0 or 1
    assert torch.allclose(out.mean(), torch.tensor(0.5), atol=0.1)


def _images(seed, n, size=(72, 72)):
    rng = np.random.default_rng(seed)
    return [synthetic_image(rng, size) for _ in range(n)]


def _separation(model, size, imgs, seed=123):
    rng = np.random.default_rng(seed)
    pairs = [_training_pair(im, rng, size) for im in imgs]
    with torch.no_grad():
        ea = model.eval()(to_batch([p[0] for p in pairs])).numpy()
        eb = model(to_batch([p[1] for p in pairs])).numpy()
    s = eb @ ea.T
    n = len(s)
    pos, neg = np.diag(s), s[~np.eye(n, dtype=bool)]
    auc = float((pos[:, None] > neg[None, :]).mean())
    top1 = float((s.argmax(1) == np.arange(n)).mean())
    return auc, top1, float(pos.mean() - neg.mean())


def test_tiny_detector_learns_to_separate_copies_from_distractors(tmp_path):
    train, held = _images(0, 64), _images(1, 32)
    out = str(tmp_path / "det.pt")
    torch.manual_seed(0)
    untrained = build_model(make_config("tiny", image_size=32))
    auc0, _, gap0 = _separation(untrained, 32, held)
    res = train_detector(None, out, images=train, steps=40, batch_size=16, arch="tiny", image_size=32,
                         progress=False, threads=1, checkpoint_every=1000)
    hist = res["loss_history"]
    assert np.mean(hist[-10:]) < np.mean(hist[:10])
    model = model_from_state(read_detector(out))
    auc, top1, gap = _separation(model, 32, held)
    # copies of held-out images vs the 31 other held-out originals (chance: auc 0.5, top-1 1/32).
    # Random conv features already rank most copies first (auc0 ~0.92), so also assert the gain.
    assert auc > 0.9 and top1 > 10 / 32
    assert auc > auc0 + 0.025  # measured: 0.911 -> 0.967
    assert gap > gap0 + 0.2  # training pushed distractors away from copies (measured: 0.27 -> 0.78)
    state = torch.load(out, weights_only=True)
    assert state["format"] == FORMAT and state["train"]["step"] == 40 and state["threshold"] is None


def test_training_resumes_exactly(tmp_path, monkeypatch):
    import wit_builder.detector_train as D

    imgs = _images(2, 24, (48, 48))
    kw = dict(images=imgs, batch_size=8, arch="tiny", image_size=32, embed_dim=32, progress=False, threads=1,
              holdout=0.0, steps=6, checkpoint_every=3)
    straight, resumed = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    train_detector(None, straight, **kw)
    calls = {"n": 0}
    real_loss = D.info_nce_loss

    def crash_on_fifth(a, b):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed during step 5, after the step-3 checkpoint
        return real_loss(a, b)

    monkeypatch.setattr(D, "info_nce_loss", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train_detector(None, resumed, **kw)
    assert read_detector(resumed)["train"]["step"] == 3
    monkeypatch.setattr(D, "info_nce_loss", real_loss)
    r = train_detector(None, resumed, **kw)
    assert r["resumed_from"] == 3
    a, b = read_detector(straight), read_detector(resumed)
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    with pytest.raises(WitError, match="config"):
        train_detector(None, resumed, **{**kw, "embed_dim": 16})


def test_threshold_for_precision_hand_made():
    scores = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 1, 0, 1, 1, 0, 0], bool)
    r = threshold_for_precision(scores, labels, 1.0)
    assert r["threshold"] == pytest.approx(0.925) and r["recall"] == 0.5
    r = threshold_for_precision(scores, labels, 0.8)
    assert r["threshold"] == pytest.approx(0.65) and r["recall"] == 1.0 and r["precision"] == 0.8
    with pytest.raises(WitError):
        threshold_for_precision(np.array([0.9, 0.1]), np.array([0, 1], bool), 0.99)


def test_calibrate_stores_threshold_atomically(tmp_path):
    out = str(tmp_path / "det.pt")
    imgs = _images(3, 40, (48, 48))
    train_detector(None, out, images=imgs, steps=2, batch_size=8, arch="tiny", image_size=32, embed_dim=32,
                   progress=False, threads=1)
    cal = calibrate_detector(out, images=imgs, use_all=True, target_precision=0.9, progress=False, threads=1)
    state = read_detector(out)
    assert state["threshold"] == pytest.approx(cal["threshold"])
    assert state["calibration"]["precision"] >= 0.9 and cal["images"] == 40
    assert cal["positive_pairs"] == 40 and cal["negative_pairs"] + cal["ambiguous_pairs"] == 40 * 39
    assert cal["false_positive_rate"] == cal["false_pairs"] / cal["negative_pairs"]
    assert [p.name for p in tmp_path.iterdir()] == ["det.pt"]  # no temp files left
    # calibration images holding duplicates of each other: (copy of i, i's duplicate) is no negative
    dup = imgs[:30] + [im.copy() for im in imgs[:10]]
    cal2 = calibrate_detector(out, images=dup, use_all=True, target_precision=0.9, progress=False, threads=1,
                              write=False)
    assert cal2["ambiguous_pairs"] >= 2 * 10  # both directions of each identical pair
    assert cal2["negative_pairs"] + cal2["ambiguous_pairs"] == 40 * 39
    assert read_detector(out)["threshold"] == pytest.approx(cal["threshold"])  # write=False


def test_bad_detector_files_give_clear_errors(tmp_path):
    with pytest.raises(WitError, match="does not exist"):
        read_detector(str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a torch file")
    with pytest.raises(WitError, match="not a readable detector"):
        read_detector(str(junk))
    trainer = tmp_path / "clip.pt"
    torch.save({"model": {}, "model_cfg": {}, "step": 3}, trainer)
    with pytest.raises(WitError, match="not a wit dedup detector"):
        read_detector(str(trainer))
    cfg = make_config("tiny", image_size=32, embed_dim=32)
    wrong = build_model(make_config("tiny", image_size=32, embed_dim=16)).state_dict()
    bad = str(tmp_path / "mismatch.pt")
    save_detector(bad, {"format": FORMAT, "version": 1, "config": cfg, "model": wrong})
    with pytest.raises(WitError, match="do not match"):
        model_from_state(read_detector(bad), bad)


def test_cli_train_and_calibrate_on_shards_with_a_corrupt_image(tmp_path, capsys):
    import json

    from pipelines.cli import main as wit_main
    from wit_builder.sim.fixtures import write_shard

    imgs = _images(5, 12, (48, 48))
    items = [{"key": f"00000{i:04d}", "image": im} for i, im in enumerate(imgs)]
    items.insert(3, {"key": "000009999", "image": b"\x89PNG\r\n\x1a\n broken"})
    write_shard(str(tmp_path / "00000.tar"), items)
    det = str(tmp_path / "det.pt")
    args = ["dedup", "train", "--shards", str(tmp_path / "{00000..00000}.tar"), "--out", det, "--arch", "tiny",
            "--image-size", "32", "--embed-dim", "32", "--steps", "4", "--batch-size", "12", "--holdout", "0",
            "--threads", "1"]
    assert wit_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["training_images"] == 13 and out["skipped_images"] == 1  # the one corrupt image, counted once
    assert wit_main(["dedup", "calibrate", "--detector", det, "--shards", str(tmp_path), "--all-images",
                     "--target-precision", "0.5", "--threads", "1"]) == 0
    cal = json.loads(capsys.readouterr().out)
    assert cal["images"] == 12 and cal["skipped_images"] == 1
    # calibrating the held-out split of a detector trained with --holdout 0 has nothing to use
    assert wit_main(["dedup", "calibrate", "--detector", det, "--shards", str(tmp_path)]) == 2
    assert "calibration images" in capsys.readouterr().err


def test_training_does_not_depend_on_the_order_of_the_shards_members(tmp_path):
    """A download writes a shard's members in the order its threads finish: the same images in
    another order must train the same detector (the demo's two runs did not)."""
    from wit_builder.imageshards import ImageSource
    from wit_builder.sim.fixtures import write_shard

    imgs = _images(7, 20, (48, 48))
    items = [{"key": f"{i:09d}", "image": im} for i, im in enumerate(imgs)]
    order = list(np.random.default_rng(0).permutation(len(items)))
    for name, rows in (("a", items), ("b", [items[i] for i in order])):
        (tmp_path / name).mkdir()
        write_shard(str(tmp_path / name / "00000.tar"), rows)
    sources = [ImageSource(shards=[str(tmp_path / n / "00000.tar")], split="all") for n in "ab"]
    assert [r.key for r in sources[0].refs] == [r.key for r in sources[1].refs] == [it["key"] for it in items]
    assert [sources[0].read_bytes(i) for i in range(20)] == [sources[1].read_bytes(i) for i in range(20)]
    for s in sources:
        s.close()
    weights = []
    for n in "ab":
        train_detector([str(tmp_path / n / "00000.tar")], str(tmp_path / f"{n}.pt"), arch="tiny", image_size=32,
                       embed_dim=16, steps=3, batch_size=8, holdout=0.2, threads=1, progress=False)
        weights.append(read_detector(str(tmp_path / f"{n}.pt"))["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
