"""CLIP models: OpenAI state_dict layout and parameter counts, attention equivalence with
nn.MultiheadAttention / OpenAI's attention pool, text features, config round trips, init."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.model import (AttentionPool2d, ResidualAttentionBlock, config_from_state_dict,
                           create_model, list_models, model_from_state_dict)
from trainer.tokenizer import Tokenizer, train_merges
from wit_builder.core import WitError


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- OpenAI's layout, written down from the published architecture (CLIP paper + model card):
# text transformer of width w: 77 positions, 49408 tokens; ViT: patch conv without bias, class
# token, ln_pre / ln_post, proj; ResNet: 3-conv stem, bottlenecks with avgpool+conv+BN
# shortcuts named downsample.0 / downsample.1, attention pool with q/k/v/c projections.
def _block(prefix, w):
    return {f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
            f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
            f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,),
            f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,),
            f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,),
            f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,)}


def _text(embed, w, layers):
    out = {"positional_embedding": (77, w), "text_projection": (w, embed), "logit_scale": (),
           "token_embedding.weight": (49408, w), "ln_final.weight": (w,), "ln_final.bias": (w,)}
    for i in range(layers):
        out.update(_block(f"transformer.resblocks.{i}", w))
    return out


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def vit_b32_layout():
    width, grid = 768, 224 // 32
    out = {"visual.class_embedding": (width,), "visual.positional_embedding": (grid ** 2 + 1, width),
           "visual.proj": (width, 512), "visual.conv1.weight": (width, 3, 32, 32),
           "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
           "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,)}
    for i in range(12):
        out.update(_block(f"visual.transformer.resblocks.{i}", width))
    out.update(_text(512, 512, 12))
    return out


def rn50_layout():
    out = {"visual.conv1.weight": (32, 3, 3, 3), "visual.conv2.weight": (32, 32, 3, 3),
           "visual.conv3.weight": (64, 32, 3, 3)}
    out.update(_bn("visual.bn1", 32))
    out.update(_bn("visual.bn2", 32))
    out.update(_bn("visual.bn3", 64))
    inplanes = 64
    for layer, (blocks, planes) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), start=1):
        for b in range(blocks):
            p = f"visual.layer{layer}.{b}"
            out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            out.update(_bn(f"{p}.bn1", planes))
            out.update(_bn(f"{p}.bn2", planes))
            out.update(_bn(f"{p}.bn3", planes * 4))
            if b == 0:
                out[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                out.update(_bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    out["visual.attnpool.positional_embedding"] = (7 * 7 + 1, 2048)
    for proj in ("q", "k", "v"):
        out[f"visual.attnpool.{proj}_proj.weight"] = (2048, 2048)
        out[f"visual.attnpool.{proj}_proj.bias"] = (2048,)
    out["visual.attnpool.c_proj.weight"] = (1024, 2048)
    out["visual.attnpool.c_proj.bias"] = (1024,)
    out.update(_text(1024, 512, 12))
    return out


def _meta(name):
    with torch.device("meta"):
        return create_model(name)


def _params(layout):
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(s) for k, s in layout.items() if not k.endswith(skip))


@pytest.mark.parametrize("name,layout,count", [("ViT-B/32", vit_b32_layout, 151_277_313),
                                               ("RN50", rn50_layout, 102_007_137)])
def test_openai_layout_and_parameter_count(name, layout, count):
    model, cfg = _meta(name)
    expected = layout()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert _params(expected) == count  # the layout written above has the published count ...
    assert sum(p.numel() for p in model.parameters()) == count  # ... and so does the model
    assert cfg["name"] == name.replace("/", "-")


def test_all_configs_build_with_published_sizes():
    # OpenCLIP's model profile table (millions of parameters, 2 decimals)
    published = {"RN50": 102.01, "RN101": 119.69, "RN50x4": 178.30, "ViT-B-32": 151.28,
                 "ViT-B-16": 149.62, "ViT-L-14": 427.62}
    assert set(published) | {"tiny-vit", "tiny-rn"} <= set(list_models())
    for name, millions in published.items():
        model, _ = _meta(name)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions, name
    with pytest.raises(WitError, match="unknown model"):
        create_model("ViT-Z-99")


@pytest.mark.parametrize("causal,quick", [(False, True), (True, False)])
def test_block_equals_multihead_attention_reference(causal, quick):
    torch.manual_seed(0)
    w, h, n, b = 32, 4, 9, 3
    block = ResidualAttentionBlock(w, h, quick_gelu=quick).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    sd = block.state_dict()
    # OpenAI's formulation: sequence-first nn.MultiheadAttention, additive -inf causal mask
    mha = nn.MultiheadAttention(w, h)
    mha.load_state_dict({k[len("attn."):]: v for k, v in sd.items() if k.startswith("attn.")})
    ln1, ln2 = nn.LayerNorm(w), nn.LayerNorm(w)
    ln1.load_state_dict({"weight": sd["ln_1.weight"], "bias": sd["ln_1.bias"]})
    ln2.load_state_dict({"weight": sd["ln_2.weight"], "bias": sd["ln_2.bias"]})
    fc, proj = nn.Linear(w, 4 * w), nn.Linear(4 * w, w)
    fc.load_state_dict({"weight": sd["mlp.c_fc.weight"], "bias": sd["mlp.c_fc.bias"]})
    proj.load_state_dict({"weight": sd["mlp.c_proj.weight"], "bias": sd["mlp.c_proj.bias"]})
    mask = torch.full((n, n), float("-inf")).triu_(1) if causal else None
    x = torch.randn(b, n, w)
    with torch.no_grad():
        s = x.transpose(0, 1)
        s = s + mha(ln1(s), ln1(s), ln1(s), need_weights=False, attn_mask=mask)[0]
        hid = fc(ln2(s))
        act = hid * torch.sigmoid(1.702 * hid) if quick else F.gelu(hid)
        ref = (s + proj(act)).transpose(0, 1)
        got = block(x, causal=causal)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_attention_pool_equals_openai_formulation():
    torch.manual_seed(0)
    pool = AttentionPool2d(spatial=3, channels=16, heads=4, output_dim=8).eval()
    x = torch.randn(2, 16, 3, 3)
    seq = x.flatten(2).permute(2, 0, 1)                       # (HW, N, C)
    seq = torch.cat([seq.mean(0, keepdim=True), seq]) + pool.positional_embedding[:, None]
    ref, _ = F.multi_head_attention_forward(
        seq, seq, seq, 16, 4, None, torch.cat([pool.q_proj.bias, pool.k_proj.bias,
                                               pool.v_proj.bias]),
        None, None, False, 0.0, pool.c_proj.weight, pool.c_proj.bias, training=False,
        need_weights=False, use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight)
    with torch.no_grad():
        torch.testing.assert_close(pool(x), ref[0], atol=1e-5, rtol=1e-5)


TINY_VIT = {"embed_dim": 24, "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                           "heads": 2},
            "text_cfg": {"context_length": 16, "vocab_size": 300, "width": 32, "heads": 2,
                         "layers": 2}}
TINY_RN = {"embed_dim": 24, "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1],
                                           "width": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 300, "width": 64, "layers": 1}}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    caps = ["a photo of a red circle", "a blue square on a white page", "green triangles"] * 20
    return Tokenizer.from_merges(train_merges(caps, 150, str(tmp_path_factory.mktemp("t") / "m")))


def _reference_text_features(model, tokens):
    """OpenAI's text path without any trimming: all positions, causal mask, EOT gather."""
    x = model.token_embedding(tokens) + model.positional_embedding[:tokens.shape[1]]
    for block in model.transformer.resblocks:
        x = block(x, causal=True)
    x = model.ln_final(x)
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def test_text_features_eot_truncation_and_trim(tok):
    torch.manual_seed(0)
    model, _ = create_model(TINY_VIT, vocab_size=tok.vocab_size)
    model.eval()
    texts = ["a red circle", "", "a blue square " * 10, "green"]   # one longer than 16 tokens
    t16, t77 = tok(texts, context_length=16), tok(texts, context_length=77)
    with torch.no_grad():
        ref = _reference_text_features(model, t16)
        torch.testing.assert_close(model.encode_text(t16), ref, atol=1e-5, rtol=1e-5)
        # 77-token rows are cut like the tokenizer cuts at 16 (end token kept)
        torch.testing.assert_close(model.encode_text(t77), ref, atol=1e-5, rtol=1e-5)
        # padding after the end token changes nothing (causal mask)
        short = tok(texts[:2] + texts[3:], context_length=16)
        torch.testing.assert_close(model.encode_text(short), ref[[0, 1, 3]], atol=1e-5,
                                   rtol=1e-5)
        img, txt, scale = model(torch.randn(4, 3, 32, 32), t16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert float(scale) == pytest.approx(1 / 0.07, rel=1e-5)


VIT_64 = {"embed_dim": 24, "quick_gelu": False,
          "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
          "text_cfg": {"context_length": 16, "vocab_size": 300, "width": 64, "layers": 1}}


@pytest.mark.parametrize("cfg", [VIT_64, TINY_RN])
def test_state_dict_round_trip(cfg):
    torch.manual_seed(1)
    model, full = create_model(cfg)
    model.eval()
    sd = model.state_dict()
    inferred = config_from_state_dict(sd, quick_gelu=full["quick_gelu"])
    assert {k: inferred[k] for k in ("embed_dim", "vision_cfg", "text_cfg")} == \
        {k: full[k] for k in ("embed_dim", "vision_cfg", "text_cfg")}
    # OpenAI's JIT archives carry three extra entries; DDP adds "module."
    extra = {"input_resolution": torch.tensor(64), "context_length": torch.tensor(16),
             "vocab_size": torch.tensor(300)}
    other, _ = model_from_state_dict({**{"module." + k: v for k, v in sd.items()}, **extra},
                                     quick_gelu=full["quick_gelu"])
    other.eval()
    x = torch.randn(2, 3, cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["image_size"])
    t = torch.randint(1, 299, (2, 16))
    t[:, 5] = 299
    with torch.no_grad():
        for a, b in zip(model(x, t), other(x, t)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(WitError, match="OpenAI's layout"):
        config_from_state_dict({"visual.proj": torch.zeros(1)})


def test_openai_initialisation():
    torch.manual_seed(0)
    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1],
                                           "width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 256, "heads": 4,
                        "layers": 4}}
    model, _ = create_model(cfg)
    model.requires_grad_(False)
    w, n = 256, 4
    block = model.transformer.resblocks[0]
    close = dict(rel=0.05)
    assert block.attn.in_proj_weight.std().item() == pytest.approx(w ** -0.5, **close)
    assert block.attn.out_proj.weight.std().item() == pytest.approx(w ** -0.5 * (2 * n) ** -0.5,
                                                                    **close)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx((2 * w) ** -0.5, **close)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(w ** -0.5 * (2 * n) ** -0.5,
                                                                 **close)
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, **close)
    assert model.positional_embedding.std().item() == pytest.approx(0.01, **close)
    assert model.text_projection.std().item() == pytest.approx(w ** -0.5, **close)
    pool = model.visual.attnpool
    assert pool.q_proj.weight.std().item() == pytest.approx(512 ** -0.5, **close)
    for layer in (model.visual.layer1, model.visual.layer4):
        assert float(layer[0].bn3.weight.abs().sum()) == 0.0
        assert float(layer[0].bn2.weight.min()) == 1.0
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    vit, _ = create_model(TINY_VIT)
    vit.requires_grad_(False)
    assert vit.visual.class_embedding.std().item() == pytest.approx(32 ** -0.5, rel=0.5)
    assert float(vit.visual.transformer.resblocks[0].attn.in_proj_bias.abs().sum()) == 0.0


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model, _ = create_model(TINY_VIT)
    x, t = torch.randn(3, 3, 32, 32), torch.randint(1, 299, (3, 16))
    t[:, -1] = 299
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        img, txt, scale = model(x, t)
        (scale * img @ txt.T).logsumexp(1).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-6)


TINY_RN_32 = {**TINY_RN, "vision_cfg": {**TINY_RN["vision_cfg"], "image_size": 32}}  # 2x2 map


@pytest.mark.parametrize("cfg", [TINY_VIT, TINY_RN, TINY_RN_32])
def test_flops_from_config_match_a_flop_counter(cfg):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.flops import image_flops, text_flops
    torch.manual_seed(0)
    model, full = create_model(cfg)
    size = full["vision_cfg"]["image_size"]
    x = torch.randn(2, 3, size, size)
    t = torch.randint(1, 298, (2, 16))
    t[:, -1] = 299                    # full length: the text tower runs all 16 positions
    # the math attention backend is made of matmuls the counter sees (fused kernels are opaque)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as counter:
            model.encode_image(x)
        assert counter.get_total_flops() == 2 * image_flops(full, executed=True)
        with FlopCounterMode(display=False) as counter:
            model.encode_text(t)
        assert counter.get_total_flops() == 2 * text_flops(full, executed=True)
    # the model's FLOPs: those of the towers computed in full (every block at every position,
    # convolutions over their padding), as a plain implementation runs them
    from trainer import vision
    from trainer.layers import Transformer
    full_tower = Transformer.forward

    def every_position(self, x, rows=None):
        y = full_tower(self, x)
        return y if rows is None else y[torch.arange(y.shape[0]), rows].unsqueeze(1)
    with pytest.MonkeyPatch.context() as mp, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        mp.setattr(Transformer, "forward", every_position)
        mp.setattr(vision, "SMALL_MAP", 0)
        with FlopCounterMode(display=False) as counter:
            model.encode_image(x)
        assert counter.get_total_flops() == 2 * image_flops(full)
        with FlopCounterMode(display=False) as counter:
            model.encode_text(t)
        assert counter.get_total_flops() == 2 * text_flops(full)


def test_vit_b32_flops():
    from trainer.flops import forward_flops, train_flops
    from trainer.model import resolve_config
    cfg = resolve_config("ViT-B-32")
    # the figure: about 14.8 GFLOPs forward per image-text pair
    assert forward_flops(cfg) / 1e9 == pytest.approx(14.78, abs=0.01)
    assert train_flops(cfg) == 3 * forward_flops(cfg)


def test_resnet_tower_runs_channels_last_with_the_same_numbers():
    """trainer.build and the supervised baseline store a ResNet tower channels-last (NHWC); its
    features and gradients equal the contiguous layout's, and the state dict moves freely
    between the layouts. A ViT tower is left alone."""
    from trainer.vision import use_channels_last
    torch.manual_seed(0)
    ref, _ = create_model("tiny-rn", vocab_size=300)
    nhwc, _ = create_model("tiny-rn", vocab_size=300)
    nhwc.load_state_dict(ref.state_dict())
    assert use_channels_last(nhwc.visual)
    conv = nhwc.visual.layer2[0].conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(6, 3, 32, 32)
    a, b = ref.visual(x), nhwc.visual(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    for name in ("conv1", "layer4.0.conv3"):  # first and last conv: up to summation order
        g_ref = ref.visual.get_submodule(name).weight.grad
        g_nhwc = nhwc.visual.get_submodule(name).weight.grad
        assert (g_ref - g_nhwc).norm() <= 1e-4 * g_ref.norm()
    back, _ = create_model("tiny-rn", vocab_size=300)
    back.load_state_dict(nhwc.state_dict())
    torch.testing.assert_close(back.visual.eval()(x), nhwc.visual.eval()(x), rtol=1e-4, atol=1e-5)
    vit, _ = create_model("tiny-vit", vocab_size=300)
    assert not use_channels_last(vit.visual)


def test_trainer_builds_resnets_channels_last(tmp_path, tok):
    from trainer.build import build_model
    from trainer.config import TrainConfig
    model, _ = build_model(TrainConfig(train_data="x", out=str(tmp_path), model="tiny-rn"), None, None,
                           tok, torch.device("cpu"))
    assert model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.visual.conv1.weight.is_contiguous()
