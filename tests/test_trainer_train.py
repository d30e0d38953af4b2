"""Training loop: accumulation equality, optimiser groups and schedule, exact resume, and an
end-to-end `wit train` run on generated shards (checkpoint, log, curves, eval, load())."""
import io
import json
import math
import os
import random

import pytest
import torch
import webdataset as wds
from PIL import Image

from trainer.loss import ClipLoss, clip_loss
from trainer.model import create_model
from trainer.tokenizer import Tokenizer, train_merges
from trainer.train import TrainConfig, forward_backward, lr_at, param_groups, train
from pipelines.cli import main

pytestmark = [pytest.mark.filterwarnings("ignore:This DataLoader will create"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py


COLOURS = {"red": (230, 20, 20), "green": (20, 210, 20), "blue": (20, 20, 230)}
MICRO = {"embed_dim": 32, "quick_gelu": False,
         "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                        "heads": 2},
         "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 64, "heads": 2,
                      "layers": 2}}


def _jpeg(rgb, rng):
    jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in rgb)
    im = Image.new("RGB", (40, 36), jitter)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 shards x 24 samples of solid-colour images captioned with the colour, a merges file, a
    model config file and a zero-shot folder."""
    root = tmp_path_factory.mktemp("train")
    rng = random.Random(0)
    sizes, key = {}, 0
    for s in range(4):
        name = f"{s:05d}.tar"
        with wds.TarWriter(str(root / name)) as sink:
            for _ in range(24):
                colour = rng.choice(list(COLOURS))
                caption = rng.choice(["a {} square", "{}", "a photo of something {}"]).format(colour)
                sink.write({"__key__": f"{key:09d}", "jpg": _jpeg(COLOURS[colour], rng),
                            "txt": caption, "json": json.dumps({"label": colour})})
                key += 1
        sizes[name] = 24
    (root / "sizes.json").write_text(json.dumps(sizes))
    caps = [f"a {c} square" for c in COLOURS] * 5 + ["a photo of something"] * 5
    merges = train_merges(caps, 60, str(root / "merges.txt"))
    (root / "micro.json").write_text(json.dumps(MICRO))
    for colour, rgb in COLOURS.items():
        os.makedirs(root / "zs" / colour)
        for i in range(2):
            Image.new("RGB", (40, 40), rgb).save(root / "zs" / colour / f"{i}.png")
    return {"urls": str(root / "{00000..00003}.tar"), "merges": merges,
            "model": str(root / "micro.json"), "zs": str(root / "zs"), "root": root}


# --- accumulation, optimiser groups, schedule --------------------------------------------------
def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_accumulation_equals_the_big_batch():
    torch.manual_seed(0)
    cfg = dict(MICRO, text_cfg=dict(MICRO["text_cfg"], vocab_size=40))
    images = torch.randn(12, 3, 32, 32)
    tokens = torch.randint(1, 38, (12, 12))
    tokens[torch.arange(12), torch.randint(2, 12, (12,))] = 39
    torch.manual_seed(1)
    model, _ = create_model(cfg)
    big = forward_backward(model, ClipLoss(), [(images, tokens)])
    ref = _grads(model)
    model.zero_grad()
    micro = [(images[i:i + 4], tokens[i:i + 4]) for i in range(0, 12, 4)]
    acc = forward_backward(model, ClipLoss(), micro)
    got = _grads(model)
    assert float(acc) == pytest.approx(float(big), rel=1e-6)
    for k in ref:
        err = (got[k] - ref[k]).abs().max()
        assert err <= 1e-5 * ref[k].abs().max() + 1e-8, k
    # naive accumulation (mean of per-micro-batch losses, fewer negatives) is not the same
    model.zero_grad()
    naive = 0.0
    for x, t in micro:
        loss = clip_loss(*model(x, t)) / 3
        loss.backward()
        naive += float(loss.detach())
    assert abs(naive - float(big)) > 1e-2
    assert (model.logit_scale.grad - ref["logit_scale"]).abs() > 1e-4


def test_param_groups_exclude_gains_biases_and_scale():
    model, _ = create_model(dict(MICRO, vision_cfg={"image_size": 64, "layers": [1, 1, 1, 1],
                                                    "width": 8}))
    groups = param_groups(model, 0.2)
    ids = {id(p): n for n, p in model.named_parameters()}
    no_decay = {ids[id(p)] for p in groups[1]["params"]}
    decay = {ids[id(p)] for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.2 and groups[1]["weight_decay"] == 0.0
    assert decay | no_decay == set(ids.values()) and not decay & no_decay
    assert "logit_scale" in no_decay and "ln_final.weight" in no_decay
    assert "visual.layer1.0.bn3.weight" in no_decay and "visual.attnpool.c_proj.bias" in no_decay
    assert {"token_embedding.weight", "positional_embedding", "text_projection",
            "visual.attnpool.positional_embedding", "visual.conv1.weight"} <= decay
    assert all(n.endswith(("bias", "weight", "logit_scale")) for n in no_decay)
    vit, _ = create_model(MICRO)
    names = {id(p): n for n, p in vit.named_parameters()}
    assert "visual.class_embedding" in {names[id(p)] for p in param_groups(vit, 0.1)[1]["params"]}
    assert "visual.proj" in {names[id(p)] for p in param_groups(vit, 0.1)[0]["params"]}


def test_lr_schedule():
    assert lr_at(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert lr_at(35, 1.0, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(3, 1.0, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


# --- resume -----------------------------------------------------------------------------------
def _cfg(data, out, **kw):
    base = dict(train_data=data["urls"], out=str(out), model=data["model"],
                tokenizer=data["merges"], batch_size=8, epochs=2, lr=1e-3, warmup=2,
                workers=2, shuffle_buffer=16, log_every=1, save_every=3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _losses(out):
    with open(os.path.join(out, "log.jsonl")) as fh:
        return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, fh)
                if r["type"] == "train"]


def _assert_identical(a, b, where="checkpoint"):
    """``a`` and ``b`` equal bit for bit: every tensor (dtype, shape, values) and every value."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(torch.uint8) if a.dim() else a, b.view(torch.uint8)
                           if b.dim() else b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# (accum, batch size, stop): 12 steps an epoch, stopped mid-epoch; 6 steps an epoch, stopped
# mid-epoch 0 and resumed across the epoch boundary (a new DataLoader iterator on each side)
@pytest.mark.parametrize("accum,batch,stop", [(1, 8, 5), (2, 4, 5), (1, 16, 4)])
def test_resume_reproduces_the_uninterrupted_run(data, tmp_path, accum, batch, stop):
    kw = {"accum_freq": accum, "batch_size": batch, "max_steps": 8}
    full = train(_cfg(data, tmp_path / "full", **kw))
    assert full["step"] == 8 and full["done"]
    part = train(_cfg(data, tmp_path / "part", stop_at_step=stop, **kw))
    assert part["step"] == stop and not part["done"]
    # the interrupted run logged its last step and checkpointed there; resume continues to 8
    rest = train(_cfg(data, tmp_path / "part", resume="latest", **kw))
    assert rest["step"] == 8
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert [s for s, _, _ in b] == list(range(1, 9))
    assert a == b  # exactly equal losses and learning rates, step by step
    ca = torch.load(tmp_path / "full/checkpoints/latest.pt", weights_only=True)
    cb = torch.load(tmp_path / "part/checkpoints/latest.pt", weights_only=True)
    # the whole checkpoint is bit-identical: weights, optimizer, scaler, position, and every
    # RNG state (torch's included); only the recorded flags differ (--resume, --stop-at-step)
    assert set(ca) == set(cb)
    _assert_identical({k: v for k, v in ca.items() if k != "args"},
                      {k: v for k, v in cb.items() if k != "args"})
    assert ca["data"] == cb["data"] and ca["epoch"] == (1 if batch == 16 else 0)


# --- end to end -------------------------------------------------------------------------------
def test_wit_train_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--train-data", data["urls"], "--out", str(out), "--model", data["model"],
            "--tokenizer", data["merges"], "--batch-size", "16", "--epochs", "8", "--lr", "2e-3",
            "--warmup", "5", "--wd", "0.1", "--workers", "1", "--log-every", "4",
            "--save-every", "10", "--keep-checkpoints", "2", "--zeroshot-dir", data["zs"],
            "--retrieval-data", str(data["root"] / "00003.tar"),
            "--eval-every", "16", "--no-progress"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 48 and printed["total_steps"] == 48   # 96 // 16 * 8
    # no --precision: auto, resolved for this machine's CPU and said so
    from trainer.precision import resolve_precision
    assert printed["precision"] == resolve_precision("auto", torch.device("cpu"))[0]
    assert printed["precision_reason"].startswith("auto: the CPU")
    ckpts = sorted(os.listdir(out / "checkpoints"))
    assert ckpts == ["latest.pt", "step-00000040.pt", "step-00000048.pt"]
    ckpt = torch.load(out / "checkpoints/latest.pt", weights_only=True)
    assert {"model", "model_cfg", "tokenizer_merges", "optimizer", "scaler", "step", "epoch",
            "rng", "data", "args"} <= set(ckpt)
    assert ckpt["step"] == 48 and ckpt["epoch"] == 8 and ckpt["data"] == {"epoch": 8,
                                                                         "batches": 0}
    assert ckpt["model_cfg"]["text_cfg"]["vocab_size"] == Tokenizer.from_merges(
        data["merges"]).vocab_size
    assert ckpt["args"]["batch_size"] == 16 and ckpt["tokenizer_merges"].startswith("#version")
    assert set(ckpt["model"]) == set(create_model(ckpt["model_cfg"])[0].state_dict())
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train_recs][:3] == [4, 6, 8]  # every 4 and at each epoch end
    for r in train_recs:
        assert {"loss", "lr", "logit_scale", "samples_per_s", "epoch"} <= set(r)
        assert r["samples_per_s"] > 0 and 0 < r["logit_scale"] <= 100
    assert train_recs[-1]["loss"] < train_recs[0]["loss"] - 0.3
    assert [e["step"] for e in evals] == [16, 32, 48]
    # it learned the colours: zero-shot on an image folder, as `wit eval` computes it
    assert evals[-1]["zeroshot"]["top1"] == 1.0 and evals[-1]["zeroshot"]["num_images"] == 6
    assert evals[-1]["retrieval"]["num_pairs"] == 24
    # 8 same-colour captions per image: a colour-aware model ranks the right one in its top 10
    assert evals[-1]["retrieval"]["image_to_text_R@10"] >= 0.9
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 48 and summary["eval"]["zeroshot"]["top1"] == 1.0
    # the checkpoint works with load() / wit predict
    assert main(["predict", "--checkpoint", str(out / "checkpoints/latest.pt"), "--image",
                 str(data["root"] / "zs/green/0.png"), "--labels", "red,green,blue"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("green")
    # a second run into the same directory needs --resume; with it, a finished run is a no-op
    assert main(args) == 2
    assert "--resume latest" in capsys.readouterr().err
    assert main(args + ["--resume", "latest"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 48
    assert main(args + ["--resume", "latest", "--model", "tiny-rn"]) == 2
    assert "is a micro run but --model is tiny-rn" in capsys.readouterr().err
    # what the checkpoint fixes cannot be changed on resume: a conflicting flag is refused
    assert main(args + ["--resume", "latest", "--image-size", "48"]) == 2
    err = capsys.readouterr().err
    assert "--image-size" in err and "come from the checkpoint" in err and err.count("\n") == 1
    assert main(args + ["--resume", "latest", "--context-length", "7"]) == 2
    assert "--context-length" in capsys.readouterr().err


def test_train_errors(data, tmp_path, capsys):
    base = ["train", "--train-data", data["urls"], "--out", str(tmp_path / "r")]
    assert main(base) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(base + ["--tokenizer", data["merges"], "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(base + ["--tokenizer", data["merges"], "--model", data["model"],
                        "--batch-size", "200"]) == 2
    assert "fewer than one global batch" in capsys.readouterr().err
    assert main(base + ["--tokenizer", data["merges"], "--precision", "fp16",
                        "--device", "cpu"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_bf16_autocast_with_checkpointing_and_accumulation(data, tmp_path):
    """The mixed-precision path on CPU: bf16 autocast (float32 weights, loss and optimiser
    state), gradient checkpointing and accumulation together; losses track fp32's."""
    kw = dict(max_steps=3, batch_size=4, accum_freq=2, workers=0, save_every=100)
    ref = train(_cfg(data, tmp_path / "fp32", **kw))
    got = train(_cfg(data, tmp_path / "bf16", precision="bf16", grad_checkpointing=True, **kw))
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert len(a) == len(b) == 3 and ref["step"] == got["step"] == 3
    for (_, la, _), (_, lb, _) in zip(a, b):
        assert math.isfinite(lb) and abs(la - lb) < 0.05
    assert [x[1] for x in a] != [x[1] for x in b]   # bf16 rounding did take effect
    ckpt = torch.load(tmp_path / "bf16/checkpoints/latest.pt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())
    assert ckpt["args"]["precision"] == "bf16" and ckpt["scaler"] is None
