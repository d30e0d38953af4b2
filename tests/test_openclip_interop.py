"""Our models and tokenizers as OpenCLIP's: merges files OpenCLIP's reader gives our ids,
OpenAI's vocabulary from an installed package, OpenCLIP model configs, the `wit export
--openclip` folder and `state_dict` in checkpoints.

Tests that need OpenCLIP run against the installed ``open_clip_torch`` (its shipped files, its
tokenizer module loaded on its own, or the whole package when it imports) and skip otherwise.
"""
import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from pipelines.cli import main
from trainer import bpe
from trainer.checkpoint import save_checkpoint
from trainer.config import TrainConfig
from trainer.export import (OPENCLIP_CONFIG, OPENCLIP_VOCAB, OPENCLIP_WEIGHTS, export_openclip,
                            openclip_model_cfg, openclip_model_name)
from trainer.model import create_model, list_models, resolve_config
from trainer.tokenizer import Tokenizer, openai_vocab_path, train_merges, write_merges
from wit_builder.core import WitError

TEXTS = ["a photo of a red star", "A Blue circle, on a white background!", "it's 3.14 o'clock",
         "a photo of a cat", "", "the quick brown fox jumps over the lazy dog " * 12,
         "sunset over the river"]
PAPER = [n for n in list_models() if not n.startswith("tiny-")]


def _openclip_dir():
    spec = importlib.util.find_spec("open_clip")   # located, not imported
    return list(spec.submodule_search_locations)[0] if spec else None


OPENCLIP_DIR = _openclip_dir()
needs_openclip_files = pytest.mark.skipif(
    OPENCLIP_DIR is None, reason="open_clip_torch is not installed (pip install --no-deps "
                                 "open_clip_torch); its shipped files are the reference")


def _openclip_tokenizer_module():
    """OpenCLIP's tokenizer.py on its own (it needs ftfy, regex, torch, not torchvision)."""
    spec = importlib.util.spec_from_file_location("_openclip_tokenizer",
                                                  os.path.join(OPENCLIP_DIR, "tokenizer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _import_openclip():
    try:
        import open_clip
    except Exception as exc:  # e.g. torchvision missing or built for another torch
        pytest.skip(f"open_clip does not import here ({type(exc).__name__}: {str(exc)[:80]})")
    return open_clip


@pytest.fixture(scope="module")
def merges(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "merges.txt"
    return Tokenizer.from_merges(train_merges(TEXTS * 20, 80, str(path))).merges


def _read_like_openai(path):
    """Merges as OpenAI's / OpenCLIP's SimpleTokenizer reads a file (written out here from
    their published rule): gunzip, split at newlines, lines 1..48894 are merges."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]


# --- merges files ---------------------------------------------------------------------------
def test_merges_file_gzip_round_trip_has_no_empty_merge(merges, tmp_path):
    path = write_merges(merges, str(tmp_path / "m.txt.gz"))
    raw = open(path, "rb").read()
    assert raw[:2] == b"\x1f\x8b"                       # gzip: OpenCLIP opens it with gzip.open
    text = gzip.decompress(raw).decode()
    assert text.startswith(bpe.MERGES_HEADER + "\n") and not text.endswith("\n")
    read = _read_like_openai(path)
    assert read == list(merges)                        # no empty merge at the end
    tok = Tokenizer.from_merges(path)
    # their vocabulary: 512 byte symbols + one per merge + 2 special tokens, the last two ours
    assert 512 + len(read) + 2 == tok.vocab_size and tok.eot_token_id == tok.vocab_size - 1
    assert not tok.merges_text.endswith("\n") and Tokenizer.from_merges(tok.merges_text).merges \
        == tok.merges
    assert Tokenizer.from_merges(str(tmp_path / "m.txt.gz")).merges == \
        Tokenizer.from_merges(write_merges(merges, str(tmp_path / "m.txt"))).merges


def test_header_only_merges_text_loads():
    tok = Tokenizer(bpe.MERGES_HEADER + "\n")
    assert tok.merges_text == bpe.MERGES_HEADER and tok.vocab_size == 514
    assert Tokenizer.from_merges(tok.merges_text).vocab_size == 514


@needs_openclip_files
def test_openclip_tokenizer_gives_our_ids_on_our_merges(merges, tmp_path):
    oc = _openclip_tokenizer_module()
    path = write_merges(merges, str(tmp_path / "m.txt.gz"))
    ours = Tokenizer.from_merges(path)
    theirs = oc.SimpleTokenizer(bpe_path=path, context_length=32)
    assert theirs.vocab_size == ours.vocab_size
    assert torch.equal(theirs(TEXTS), ours(TEXTS, context_length=32))


# --- OpenAI's vocabulary --------------------------------------------------------------------
def _reference_bpe_ids(text, merges):
    """OpenAI's BPE on plain ASCII text, written from the published rules: lower-case, words of
    letters / single digits / punctuation runs and the contractions, the last symbol of a word
    with </w>, then merge the lowest-ranked adjacent pair until none is ranked."""
    vocab = [chr(c) for c in range(33, 127)]  # (ASCII only: printable bytes map to themselves)
    rank = {m: i for i, m in enumerate(merges)}
    base = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in base] + [chr(256 + i) for i in range(256 - len(base))]
    ids = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols]
                                      + ["".join(m) for m in merges])}
    assert all(c in ids for c in vocab)
    out = []
    pieces = re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+",
                        " ".join(text.split()).lower())
    for piece in pieces:
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pair = min(zip(word, word[1:]), key=lambda p: rank.get(p, len(rank)))
            if pair not in rank:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        out.extend(ids[w] for w in word)
    return out


@needs_openclip_files
def test_openai_vocabulary_from_the_installed_package():
    path = openai_vocab_path()
    assert path == os.path.join(OPENCLIP_DIR, bpe.OPENAI_VOCAB_FILE)
    tok = Tokenizer.from_merges("openai")
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id) == (49408, 49406, 49407)
    # OpenAI's published ids for CLIP README's prompt
    assert tok("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    merges = _read_like_openai(path)
    for text in TEXTS:
        assert tok.encode(text) == _reference_bpe_ids(text, merges), text
    assert TrainConfig(train_data="x", out="y", tokenizer="openai").tokenizer == path
    # found without importing open_clip (which would need torchvision)
    code = ("import sys; from trainer.bpe import openai_vocab_path; p = openai_vocab_path(); "
            "print(p); assert 'open_clip' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == path


@needs_openclip_files
def test_openai_vocabulary_gives_openclips_ids():
    oc = _openclip_tokenizer_module()
    assert torch.equal(oc.SimpleTokenizer()(TEXTS), Tokenizer.from_merges("openai")(TEXTS))


def test_no_openai_vocabulary_installed_is_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bpe, "_VOCAB_PACKAGES", ("no_such_package_wit_test",))
    with pytest.raises(WitError, match="pip install --no-deps open_clip_torch"):
        openai_vocab_path()
    with pytest.raises(WitError, match="bpe_simple_vocab_16e6.txt.gz"):
        Tokenizer.from_merges("openai")
    with pytest.raises(WitError, match="open_clip_torch"):
        TrainConfig(train_data="x", out="y", tokenizer="openai")
    args = ["train", "--train-data", str(tmp_path / "{0..1}.tar"), "--out", str(tmp_path / "r")]
    assert main(args + ["--tokenizer", "openai"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wit train: error: --tokenizer openai:") and "\n" not in err


def test_train_without_tokenizer_says_how_to_get_one(tmp_path, capsys):
    args = ["train", "--train-data", str(tmp_path / "{0..1}.tar"), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wit train: error: a new run needs --tokenizer") and "\n" not in err
    assert "wit tokenizer train" in err and "--tokenizer openai" in err and "open_clip_torch" in err


# --- configs --------------------------------------------------------------------------------
@needs_openclip_files
@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_equal_openclips_quickgelu_configs(name):
    with open(os.path.join(OPENCLIP_DIR, "model_configs", f"{name}-quickgelu.json")) as fh:
        shipped = json.load(fh)
    shipped["vision_cfg"].setdefault("head_width", 64)      # OpenCLIP's default
    shipped["vision_cfg"].setdefault("patch_size", None)
    assert openclip_model_cfg(name) == shipped
    assert openclip_model_name(name) == f"{name}-quickgelu"


def test_vit_b_32_config_is_openclips_quickgelu_config():
    # OpenCLIP's model_configs/ViT-B-32-quickgelu.json (head_width: OpenCLIP's default, 64),
    # written out here so this runs without OpenCLIP installed
    assert openclip_model_cfg("ViT-B/32") == {
        "embed_dim": 512, "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32,
                       "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                     "layers": 12}}
    assert openclip_model_name("ViT-B-32") == "ViT-B-32-quickgelu"
    assert openclip_model_name("RN50") == "RN50-quickgelu"


@needs_openclip_files
def test_exported_keys_are_openclip_config_keys():
    keys = {"top": set(), "vision_cfg": set(), "text_cfg": set()}
    for f in os.listdir(os.path.join(OPENCLIP_DIR, "model_configs")):
        if f.startswith(("ViT-", "RN")):
            with open(os.path.join(OPENCLIP_DIR, "model_configs", f)) as fh:
                cfg = json.load(fh)
            keys["top"] |= set(cfg)
            keys["vision_cfg"] |= set(cfg["vision_cfg"])
            keys["text_cfg"] |= set(cfg["text_cfg"])
    for name in list_models():
        cfg = openclip_model_cfg(name)
        assert set(cfg) <= keys["top"] and set(cfg["text_cfg"]) <= keys["text_cfg"]
        assert set(cfg["vision_cfg"]) <= keys["vision_cfg"] and "heads" not in cfg["vision_cfg"]


def test_tiny_configs_keep_their_heads_and_plain_gelu():
    vit, rn = openclip_model_cfg("tiny-vit"), openclip_model_cfg("tiny-rn")
    # OpenCLIP: ViT heads = width // head_width; ResNet pool heads = width * 32 // head_width
    assert vit["vision_cfg"]["width"] // vit["vision_cfg"]["head_width"] == 3
    assert rn["vision_cfg"]["width"] * 32 // rn["vision_cfg"]["head_width"] == 4
    assert vit["quick_gelu"] is False and rn["quick_gelu"] is False
    assert openclip_model_name("tiny-vit") is None
    assert openclip_model_name(resolve_config("ViT-B-32", vocab_size=10514)) is None
    plain = dict(resolve_config("ViT-B-32"), quick_gelu=False)
    assert openclip_model_name(plain) == "ViT-B-32"
    odd = resolve_config("tiny-vit")
    odd["vision_cfg"]["heads"] = 5                       # 192 channels: no head_width
    with pytest.raises(WitError, match="head_width"):
        openclip_model_cfg(odd)


# --- checkpoints and the export -------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, merges):
    torch.manual_seed(0)
    tok = Tokenizer(bpe.format_merges(merges))
    model, cfg = create_model("tiny-vit", vocab_size=tok.vocab_size)
    run = tmp_path_factory.mktemp("run")
    os.makedirs(run / "checkpoints")
    save_checkpoint(str(run / "checkpoints"), 3, {"model": model.state_dict(), "model_cfg": cfg,
                                                  "tokenizer_merges": tok.merges_text, "step": 3},
                    keep=0)
    return run, model.eval(), cfg, tok


def test_checkpoint_holds_state_dict_for_openclip(run_dir):
    run, model, _, _ = run_dir
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert set(ckpt["state_dict"]) == set(model.state_dict())
    for k, v in ckpt["model"].items():               # the same tensors, stored once
        assert ckpt["state_dict"][k].data_ptr() == v.data_ptr()
        assert torch.equal(v, model.state_dict()[k])
    assert ckpt["openclip_model"] is None and ckpt["model_cfg"]["quick_gelu"] is False


def test_wit_export_openclip(run_dir, tmp_path, capsys):
    run, model, cfg, tok = run_dir
    out = tmp_path / "oc"
    assert main(["export", "--openclip", str(run), str(out)]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted([OPENCLIP_CONFIG, OPENCLIP_VOCAB, OPENCLIP_WEIGHTS])
    config = json.loads((out / OPENCLIP_CONFIG).read_text())
    assert config["model_cfg"]["quick_gelu"] is False
    assert config["model_cfg"]["vision_cfg"]["head_width"] == 64
    assert config["preprocess_cfg"]["size"] == 32
    bpe_path = config["model_cfg"]["text_cfg"]["tokenizer_kwargs"]["bpe_path"]
    assert bpe_path == str(out / OPENCLIP_VOCAB)
    assert _read_like_openai(bpe_path) == list(tok.merges)
    weights = torch.load(out / OPENCLIP_WEIGHTS, weights_only=True)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    # again: refused without --overwrite, then replaced
    assert main(["export", "--openclip", str(run), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--openclip", "--overwrite", str(run), str(out)]) == 0
    assert not [f for f in os.listdir(out) if ".tmp-" in f]


def test_wit_export_bad_input(run_dir, tmp_path, capsys):
    run = run_dir[0]
    cases = [(["export", str(run), str(tmp_path / "a")], "--openclip"),
             (["export", "--openclip", str(tmp_path / "none"), str(tmp_path / "b")], "not found"),
             (["export", "--openclip", str(tmp_path), str(tmp_path / "c")], "latest.pt")]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.safetensors").write_bytes(b"x")
    cases.append((["export", "--openclip", str(run), str(tmp_path / "d")], "model.safetensors"))
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("wit export: error:") and words in err and "\n" not in err, err


def test_openclip_loads_the_export_and_the_checkpoint(run_dir, tmp_path):
    open_clip = _import_openclip()
    run, model, cfg, tok = run_dir
    result = export_openclip(str(run), str(tmp_path / "oc"))
    theirs, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{result['out']}")
    theirs.eval()
    image, text = torch.randn(2, 3, 32, 32), tok(TEXTS, context_length=32)
    with torch.no_grad():
        assert torch.allclose(theirs.encode_image(image), model.encode_image(image), atol=1e-5)
        assert torch.allclose(theirs.encode_text(text), model.encode_text(text), atol=1e-5)
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{result['out']}")(TEXTS), text)
    # the checkpoint itself: OpenCLIP's loader reads its state_dict
    fresh = open_clip.create_model(f"local-dir:{result['out']}")
    open_clip.load_checkpoint(fresh, str(run / "checkpoints" / "latest.pt"))
    with torch.no_grad():
        assert torch.allclose(fresh.eval().encode_image(image), model.encode_image(image),
                              atol=1e-5)


@needs_openclip_files
def test_export_with_openais_merges_uses_openclips_default_vocabulary(tmp_path):
    tok = Tokenizer.from_merges("openai")
    model, cfg = create_model("tiny-rn", vocab_size=tok.vocab_size)
    os.makedirs(tmp_path / "checkpoints")
    path = save_checkpoint(str(tmp_path / "checkpoints"), 1,
                           {"model": model.state_dict(), "model_cfg": cfg,
                            "tokenizer_merges": tok.merges_text, "step": 1}, keep=0)
    result = export_openclip(path, str(tmp_path / "oc"))
    config = json.loads((tmp_path / "oc" / OPENCLIP_CONFIG).read_text())
    assert "tokenizer_kwargs" not in config["model_cfg"]["text_cfg"]   # folder can move
    assert config["model_cfg"]["vision_cfg"]["head_width"] == 32 * 32 // 4
    assert result["model_name"] is None and len(tok.merges) == 48894
    assert _read_like_openai(os.path.join(result["out"], OPENCLIP_VOCAB)) == \
        _read_like_openai(openai_vocab_path())
