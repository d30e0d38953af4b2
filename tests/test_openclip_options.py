"""OpenCLIP compatibility of `wit train`: OpenCLIP's option names (aliases, or a one-line
refusal), `--report-to tensorboard,wandb`, and OpenCLIP's WebDataset loader on our shards."""
import argparse
import io
import json
import os
import random

import pytest
import webdataset as wds
from PIL import Image

from pipelines.cli import main
from pipelines.cli import train as train_cli
from trainer.reporting import ReportConfig, check_available, parse_report_to, scalars
from trainer.tokenizer import train_merges
from trainer.train import TrainConfig, train
from wit_builder.core import WitError

pytestmark = [pytest.mark.filterwarnings("ignore:This DataLoader will create"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py

# every option of OpenCLIP 3.3.0's open_clip_train/params.py (names only)
OPENCLIP_OPTIONS = (
    "--train-data --train-data-upsampling-factors --val-data --train-num-samples "
    "--val-num-samples --dataset-type --dataset-resampled --csv-separator --csv-img-key "
    "--csv-caption-key --imagenet-val --imagenet-v2 --cache-dir --logs --log-local --name "
    "--workers --batch-size --epochs --epochs-cooldown --lr --beta1 --beta2 --eps --wd "
    "--momentum --warmup --opt --use-bn-sync --skip-scheduler --lr-scheduler --lr-cooldown-end "
    "--lr-cooldown-power --save-frequency --save-most-recent --zeroshot-frequency "
    "--val-frequency --resume --precision --model --pretrained --pretrained-image --lock-image "
    "--lock-image-unlocked-groups --lock-image-freeze-bn-stats --image-mean --image-std "
    "--image-interpolation --image-resize-mode --aug-cfg --grad-checkpointing --local-loss "
    "--gather-with-grad --force-context-length --force-image-size --force-quick-gelu "
    "--force-patch-dropout --force-custom-text --torchscript --torchcompile --trace "
    "--accum-freq --device --dist-url --dist-backend --report-to --wandb-notes "
    "--wandb-project-name --debug --copy-codebase --horovod --ddp-static-graph "
    "--no-set-device-rank --seed --grad-clip-norm --lock-text --lock-text-unlocked-layers "
    "--lock-text-freeze-layer-norm --log-every-n-steps --coca-caption-loss-weight "
    "--coca-contrastive-loss-weight --remote-sync --remote-sync-frequency "
    "--remote-sync-protocol --delete-previous-checkpoint --distill-model --distill-pretrained "
    "--use-bnb-linear --siglip --loss-dist-impl").split()

MICRO = {"embed_dim": 32, "quick_gelu": False,
         "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16,
                        "heads": 2},
         "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2,
                      "layers": 1}}
COLOURS = {"red": (230, 20, 20), "green": (20, 210, 20), "blue": (20, 20, 230)}


def _parser():
    parser = argparse.ArgumentParser(prog="wit train")
    train_cli.add_arguments(parser)
    return parser


def _config(argv):
    return train_cli.config_from_args(_parser().parse_args(["--train-data", "S"] + argv))


# --- option names ------------------------------------------------------------------------------
def test_openclip_names_are_aliases_of_ours(tmp_path):
    ours = _config(["--out", str(tmp_path / "n"), "--grad-clip", "1.5", "--compile",
                    "--resampled", "--image-size", "64", "--context-length", "16",
                    "--log-every", "5", "--retrieval-data", "V", "--precision", "bf16"])
    theirs = _config(["--logs", str(tmp_path), "--name", "n", "--grad-clip-norm", "1.5",
                      "--torchcompile", "--dataset-resampled", "--force-image-size", "64",
                      "--force-context-length", "16", "--log-every-n-steps", "5",
                      "--val-data", "V", "--precision", "amp_bf16", "--local-loss",
                      "--gather-with-grad", "--save-most-recent", "--opt", "adamw",
                      "--lr-scheduler", "cosine", "--dataset-type", "webdataset"])
    assert theirs == ours
    assert ours.grad_clip == 1.5 and ours.compile and ours.resampled and ours.image_size == 64
    assert ours.out == str(tmp_path / "n") and ours.precision == "bf16"
    assert _config(["--out", "o", "--precision", "amp"]).precision == "fp16"
    assert _config(["--out", "o", "--precision", "amp_bfloat16"]).precision == "bf16"
    assert _config(["--name", "n"]).out == os.path.join("./logs", "n")  # OpenCLIP's default


@pytest.mark.parametrize("argv, words", [
    (["--horovod"], ["--horovod", "does not implement"]),
    (["--lr-cooldown-end", "0.1"], ["--lr-cooldown-end"]),
    (["--aug-cfg", "scale=(0.5,1)", "color_jitter=0.4"], ["--aug-cfg"]),
    (["--save-frequency", "2"], ["--save-frequency", "--save-every"]),
    (["--zeroshot-frequency", "1"], ["--zeroshot-frequency", "--eval-every"]),
    (["--opt", "sgd"], ["--opt sgd", "adamw"]),
    (["--lr-scheduler", "const"], ["--lr-scheduler const", "cosine"]),
    (["--dataset-type", "csv"], ["--dataset-type csv"]),
    (["--precision", "pure_bf16"], ["pure_bf16", "not implemented"]),
    (["--logs", "L"], ["--name"]),
    (["--logs", "L", "--name", "n", "--out", "O"], ["--out", "--logs"]),
])
def test_unimplemented_openclip_options_are_a_one_line_error(argv, words, tmp_path, capsys):
    code = main(["train", "--train-data", str(tmp_path / "x.tar")]
                + ([] if {"--out", "--logs"} & set(argv) else ["--out", str(tmp_path / "o")])
                + argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("wit train: error: "), err
    for word in words:
        assert word in err


def test_every_openclip_option_is_handled():
    """Each OpenCLIP option parses (ours or an alias) or is refused with its name: none is an
    argparse 'unrecognized arguments' exit and none is silently ignored."""
    values = {"--precision": "amp", "--dataset-type": "auto", "--opt": "adamw",
              "--lr-scheduler": "cosine", "--report-to": "", "--train-data": "S"}
    flags = {"--dataset-resampled", "--log-local", "--use-bn-sync", "--skip-scheduler",
             "--save-most-recent", "--pretrained-image", "--lock-image",
             "--lock-image-freeze-bn-stats", "--grad-checkpointing", "--local-loss",
             "--gather-with-grad", "--force-quick-gelu", "--force-custom-text", "--torchscript",
             "--torchcompile", "--trace", "--debug", "--copy-codebase", "--horovod",
             "--ddp-static-graph", "--no-set-device-rank", "--lock-text",
             "--lock-text-freeze-layer-norm", "--delete-previous-checkpoint", "--siglip"}
    refused, accepted = [], []
    for option in OPENCLIP_OPTIONS:
        argv = ["--train-data", "S", "--out", "O"] if option != "--train-data" else ["--out", "O"]
        if option in ("--logs", "--name"):
            argv = ["--train-data", "S"] + (["--name", "n"] if option == "--logs" else [])
        argv += [option] if option in flags else [option, values.get(option, "1")]
        args = _parser().parse_args(argv)      # an unknown option would SystemExit here
        try:
            train_cli.config_from_args(args)
            train_cli.report_from_args(args)
            accepted.append(option)
        except WitError as exc:
            assert str(exc).startswith(option), (option, str(exc))
            refused.append(option)
    assert "--horovod" in refused and "--siglip" in refused and "--grad-clip-norm" in accepted
    assert len(refused) == 54 and len(accepted) == len(OPENCLIP_OPTIONS) - 54


def test_the_option_list_is_openclips_if_it_is_installed():
    params = pytest.importorskip("open_clip_train.params",
                                 reason="open_clip_torch is not installed")
    import inspect
    import re
    names = set(re.findall(r"""["'](--[a-z0-9-]+)["']""", inspect.getsource(params)))
    assert names <= set(OPENCLIP_OPTIONS), sorted(names - set(OPENCLIP_OPTIONS))


# --- reporting ---------------------------------------------------------------------------------
def test_report_to_parsing_and_scalars():
    assert parse_report_to("tensorboard, wandb") == ("tensorboard", "wandb")
    assert parse_report_to("all") == ("tensorboard", "wandb") and parse_report_to("") == ()
    with pytest.raises(WitError, match="unknown target 'tb'"):
        parse_report_to("tb")
    rec = {"type": "train", "step": 3, "epoch": 0, "loss": 2.5, "lr": 1e-3,
           "logit_scale": 14.3, "samples_per_s": 100, "skipped": {"undecodable": 1}}
    assert scalars(rec) == {"train/loss": 2.5, "train/lr": 1e-3, "train/logit_scale": 14.3,
                            "train/samples_per_s": 100.0}
    ev = {"type": "eval", "step": 3, "epoch": 0, "zeroshot": {"top1": 0.5, "num_images": 6,
          "classes": ["a", "b"], "ok": True}, "retrieval": {"image_to_text_R@1": 0.25}}
    assert scalars(ev) == {"eval/zeroshot/top1": 0.5, "eval/zeroshot/num_images": 6.0,
                           "eval/retrieval/image_to_text_R@1": 0.25}


def test_a_missing_reporting_package_is_a_one_line_error(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(WitError, match="needs the tensorboard package.*pip install tensorboard"):
        check_available(ReportConfig(("tensorboard",)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2 shards x 16 solid-colour captioned images, a merges file, a micro model config and a
    zero-shot folder."""
    root = tmp_path_factory.mktemp("oc")
    rng, key, sizes = random.Random(0), 0, {}
    for s in range(2):
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as sink:
            for _ in range(16):
                colour = rng.choice(list(COLOURS))
                buf = io.BytesIO()
                Image.new("RGB", (40, 36), COLOURS[colour]).save(buf, "JPEG")
                sink.write({"__key__": f"{key:09d}", "jpg": buf.getvalue(),
                            "txt": f"a {colour} square"})
                key += 1
        sizes[f"{s:05d}.tar"] = 16
    (root / "sizes.json").write_text(json.dumps(sizes))
    merges = train_merges([f"a {c} square" for c in COLOURS] * 5, 30, str(root / "merges.txt"))
    (root / "micro.json").write_text(json.dumps(MICRO))
    for colour, rgb in COLOURS.items():
        os.makedirs(root / "zs" / colour)
        Image.new("RGB", (40, 40), rgb).save(root / "zs" / colour / "0.png")
    return {"urls": str(root / "{00000..00001}.tar"), "merges": merges,
            "model": str(root / "micro.json"), "zs": str(root / "zs"), "root": root}


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_report_to_tensorboard_writes_the_logged_scalars(data, tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    args = ["train", "--train-data", data["urls"], "--out", str(out), "--model", data["model"],
            "--tokenizer", data["merges"], "--batch-size", "8", "--epochs", "1", "--warmup", "1",
            "--workers", "0", "--log-every", "1", "--zeroshot-dir", data["zs"], "--eval-every",
            "2", "--no-progress", "--report-to", "tensorboard", "--save-every", "2",
            "--keep-checkpoints", "0"]
    assert main(args) == 0
    # as after a crash: resume from step 2; steps 3 and 4 are logged again, and their first
    # events are dropped from TensorBoard as log.jsonl is cut back
    assert main(args + ["--resume", str(out / "checkpoints" / "step-00000002.pt")]) == 0
    capsys.readouterr()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    records = _log(out)
    for kind, names in (("train", ("loss", "lr", "logit_scale", "samples_per_s")),
                        ("eval", ("zeroshot/top1", "zeroshot/top5"))):
        recs = [r for r in records if r["type"] == kind]
        assert recs, kind
        for name in names:
            got = [(e.step, e.value) for e in events.Scalars(f"{kind}/{name}")]
            want = []
            for r in recs:
                value = r
                for part in name.split("/"):
                    value = value[part]
                want.append((r["step"], value))
            assert [s for s, _ in got] == [s for s, _ in want], name
            for (_, a), (_, b) in zip(got, want):
                assert a == pytest.approx(b, rel=1e-6), name
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]


def test_report_to_wandb_offline_writes_a_run_dir(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed")
    monkeypatch.delenv("WANDB_MODE", raising=False)   # offline must be our default
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    out = tmp_path / "run"
    summary = train(TrainConfig(train_data=data["urls"], out=str(out), model=data["model"],
                                tokenizer=data["merges"], batch_size=8, epochs=1, warmup=1,
                                workers=0, log_every=2, progress=False),
                    report=ReportConfig(("wandb",), wandb_project="wit-test", name="tiny"))
    runs = [d for d in os.listdir(out / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1, os.listdir(out / "wandb")
    run_dir = out / "wandb" / runs[0]
    files = [f for f in os.listdir(run_dir) if f.endswith(".wandb")]
    assert len(files) == 1
    # the run's record log (for `wandb sync`): its names and every logged value (JSON-encoded)
    raw = (run_dir / files[0]).read_bytes()
    assert raw.startswith(b":W&B") and b"wit-test" in raw and b"tiny" in raw
    records = [r for r in _log(out) if r["type"] == "train"]
    assert [r["step"] for r in records] == [2, 4] and summary["step"] == 4
    for r in records:
        for name in ("loss", "lr", "logit_scale", "samples_per_s"):
            assert f"train/{name}".encode() in raw and json.dumps(r[name]).encode() in raw, name


# --- OpenCLIP's WebDataset loader on our shards --------------------------------------------------
def test_openclips_get_wds_dataset_reads_our_shards(tmp_path):
    """OpenCLIP's training loader over shards as `wit shards` writes them (key.jpg, key.txt,
    key.json, sizes.json). With webdataset >= 0.2.96 its sample grouping fails (KeyError:
    'fname' on the end-of-shard marker): hence the pin in pyproject.toml."""
    try:
        from open_clip_train.data import get_wds_dataset
    except ImportError as exc:  # open_clip_torch (and its torchvision) not installed
        pytest.skip(f"OpenCLIP's training code is not importable: {exc}")
    import torch

    from trainer.transforms import image_transform
    from wit_builder.shards import _write_shard
    captions, sizes = [], {}
    for s in range(2):
        samples = []
        for i in range(8):
            buf = io.BytesIO()
            Image.new("RGB", (40, 30), (20 * i, 40 * s, 200)).save(buf, "JPEG")
            key = f"{s:05d}{i:04d}"
            captions.append(f"caption {key}")
            samples.append({"key": key, "uid": key, "url": f"http://127.0.0.1/{key}.jpg",
                            "text": captions[-1], "query_ids": [1], "sha256": "0" * 64,
                            "width": 40, "height": 30, "original_width": 40,
                            "original_height": 30, "cluster_id": -1, "cluster_size": 1,
                            "page_url": "", "ext": "jpg", "image": buf.getvalue()})
        sizes[_write_shard(str(tmp_path), s, samples)["tar"]] = len(samples)
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    args = argparse.Namespace(
        train_data=str(tmp_path / "{00000..00001}.tar"), val_data=None, train_num_samples=None,
        dataset_resampled=False, train_data_upsampling_factors=None, seed=0, batch_size=4,
        workers=1, world_size=1)
    index = {c: i for i, c in enumerate(captions)}
    info = get_wds_dataset(args, image_transform(32, train=False), is_train=True,
                           tokenizer=lambda text: torch.tensor([[index[text]]]))
    seen = []
    for images, tokens in info.dataloader:
        assert images.shape == (4, 3, 32, 32) and tokens.shape == (4, 1)
        seen += tokens[:, 0].tolist()
    assert info.dataloader.num_samples == 16 and sorted(seen) == list(range(16))
