"""`wit eval` and `wit predict` end to end (the colour stand-in replaces trainer.model here)."""
import json
import os
import sys
import types

import pytest
import torch
from PIL import Image

from test_trainer_eval import COLOURS, ColourCLIP, _write_shard, bundle  # noqa: F401
from pipelines.cli import main


def _checkpoint(tmp_path, bundle, monkeypatch):
    model, _, tok = bundle
    ids = model.word_ids.tolist()
    fake = types.ModuleType("trainer.model")
    fake.create_model = lambda cfg, **kw: (ColourCLIP([0, 0, 0]), cfg)
    monkeypatch.setitem(sys.modules, "trainer.model", fake)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()},
                "model_cfg": {"vision_cfg": {"image_size": 24}}, "tokenizer_merges": tok.merges_text,
                "step": 1}, path)
    return str(path), ids


def test_predict_cli(tmp_path, bundle, monkeypatch, capsys):  # noqa: F811
    ckpt, _ = _checkpoint(tmp_path, bundle, monkeypatch)
    Image.new("RGB", (40, 40), (10, 20, 240)).save(tmp_path / "x.jpg")
    assert main(["predict", "--checkpoint", ckpt, "--image", str(tmp_path / "x.jpg"),
                 "--labels", "a red thing, a blue thing,a green thing"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("a blue thing") and float(lines[0].split()[-1]) > 0.99
    assert main(["predict", "--checkpoint", ckpt, "--image", str(tmp_path / "x.jpg"),
                 "--labels", "red,blue", "--json"]) == 0
    probs = json.loads(capsys.readouterr().out)
    assert set(probs) == {"red", "blue"} and abs(sum(probs.values()) - 1) < 1e-5
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert main(["predict", "--checkpoint", ckpt, "--image", str(tmp_path / "bad.jpg"),
                 "--labels", "red"]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_eval_cli_writes_metrics(tmp_path, bundle, monkeypatch, capsys):  # noqa: F811
    ckpt, _ = _checkpoint(tmp_path, bundle, monkeypatch)
    root = tmp_path / "zs"
    for name, rgb in zip(COLOURS, [(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
        os.makedirs(root / name)
        Image.new("RGB", (30, 30), rgb).save(root / name / "a.png")
    _write_shard(tmp_path / "ret.tar", [((250, 0, 0), "red"), ((0, 0, 250), "a blue one")])
    out = tmp_path / "m" / "metrics.json"
    assert main(["eval", "--checkpoint", ckpt, "--zeroshot-dir", str(root),
                 "--retrieval-data", str(tmp_path / "ret.tar"),
                 "--linear-probe-train", str(root), "--linear-probe-test", str(root),
                 "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["zeroshot"]["top1"] == 1.0 and m["zeroshot"]["num_images"] == 3
    assert m["retrieval"]["image_to_text_R@1"] == 1.0
    assert m["linear_probe"]["num_test"] == 3
    assert main(["eval", "--checkpoint", ckpt, "--out", str(out)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_eval_cli_paper_options(tmp_path, bundle, monkeypatch, capsys):  # noqa: F811
    """Caption-file retrieval, a given validation set, the binary sweep and the feature choice."""
    ckpt, _ = _checkpoint(tmp_path, bundle, monkeypatch)
    root = tmp_path / "zs"
    for name, rgb in zip(COLOURS, [(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
        os.makedirs(root / name)
        for i in range(3):
            Image.new("RGB", (30, 30), tuple(max(0, c - 20 * i) for c in rgb)).save(root / name / f"{i}.png")
    (tmp_path / "caps.jsonl").write_text(
        json.dumps({"image": "zs/red/0.png", "captions": ["blue", "a red one"]}) + "\n"
        + json.dumps({"image": "zs/blue/0.png", "caption": "blue"}) + "\n")
    out = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", ckpt, "--retrieval-data", str(tmp_path / "caps.jsonl"),
                 "--linear-probe-train", str(root), "--linear-probe-test", str(root),
                 "--linear-probe-val", str(root), "--probe-sweep", "binary",
                 "--probe-features", "embedding", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["retrieval"]["num_images"] == 2 and m["retrieval"]["num_texts"] == 3
    assert m["retrieval"]["image_to_text_R@1"] == 1.0
    # the red image's caption "blue" finds the blue image first
    assert m["retrieval"]["text_to_image_R@1"] == pytest.approx(2 / 3)
    lp = m["linear_probe"]
    assert lp["num_train"] == 18 and lp["l2_tried"] <= 15 and lp["features"] == "embedding"
    assert lp["top1"] == 1.0
    assert main(["eval", "--checkpoint", ckpt, "--zeroshot-dir", str(root), "--wnid-map",
                 str(tmp_path / "caps.jsonl"), "--out", str(out)]) == 2
    assert "--wnid-map maps wnid folders to class names: give --classes" in capsys.readouterr().err
