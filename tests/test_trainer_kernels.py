"""The trainer's faster forms of CLIP's operations compute the same function as the plain ones:
QuickGELU through SiLU, the explicit attention used on CPU in bf16, the patch embedding as one
GEMM, 1x1 and small-map convolutions as GEMMs, the towers' last block computed at the pooled
token only (trainer/layers.py, trainer/vision.py, trainer/model.py)."""
import pytest
import torch
import torch.nn.functional as F

import trainer.layers as layers
from trainer.layers import QuickGELU, attention
from trainer.model import VisionTransformer


def test_quick_gelu_is_x_sigmoid_1702x_with_its_gradient():
    torch.manual_seed(0)
    x = (torch.randn(1000) * 4).requires_grad_()
    y = QuickGELU()(x)
    ref_x = x.detach().clone().requires_grad_()
    ref = ref_x * torch.sigmoid(1.702 * ref_x)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    g = torch.randn(1000)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-6, rtol=1e-6)
    x64 = torch.randn(50, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(QuickGELU(), (x64,))


def _qkv(shape, dtype, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(*shape).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_bf16_attention_is_explicit_and_matches_sdpa(monkeypatch, causal):
    q, k, v = _qkv((3, 4, 9, 16), torch.bfloat16)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=causal)

    def no_sdpa(*a, **kw):
        raise AssertionError("SDPA called for a short bf16 sequence on CPU")
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", no_sdpa)
    y = attention(q, k, v, causal)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 4, 9, 16)
    torch.testing.assert_close(y.float(), ref.detach(), atol=3e-2, rtol=3e-2)
    g = torch.randn_like(ref)
    y.backward(g.bfloat16())
    ref.backward(g)
    for got, want in zip((q, k, v), ref_in):
        torch.testing.assert_close(got.grad.float(), want.grad, atol=6e-2, rtol=6e-2)
    if causal:   # query 0 sees key 0 only: its output is v[..., 0, :]
        torch.testing.assert_close(y[..., 0, :].float(), v[..., 0, :].float(), atol=0, rtol=0)


def test_fp32_and_large_attention_use_sdpa(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*a, **kw):
        calls.append(a[0].dtype)
        return real(*a, **kw)
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", counting)
    q, k, v = _qkv((2, 2, 8, 8), torch.float32)
    torch.testing.assert_close(attention(q, k, v), real(q, k, v))
    assert calls == [torch.float32]
    monkeypatch.setattr(layers, "EXPLICIT_ATTENTION_MAX_SCORES", 2 * 2 * 8 * 8 - 1)
    attention(*_qkv((2, 2, 8, 8), torch.bfloat16))
    assert calls == [torch.float32, torch.bfloat16]


def test_patch_embedding_gemm_equals_the_convolution():
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, width=16, layers=1, heads=2,
                            output_dim=8, quick_gelu=True)
    x = torch.randn(3, 3, 32, 32)
    y = vit.embed_patches(x)
    ref_w = vit.conv1.weight.detach().clone().requires_grad_()
    ref = F.conv2d(x, ref_w, stride=8).flatten(2).transpose(1, 2)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(vit.conv1.weight.grad, ref_w.grad, atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception, match="not a multiple of patch size"):
        vit.embed_patches(torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize("size,dtype,gemm", [(1, torch.float32, True), (2, torch.float32, True),
                                             (8, torch.float32, False), (8, torch.bfloat16, True)])
def test_1x1_convolution_gemm_equals_the_convolution(monkeypatch, size, dtype, gemm):
    from trainer import vision
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 24, 1, bias=False).to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(5, 16, size, size).to(dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    calls = []
    real = vision.F.linear
    monkeypatch.setattr(vision.F, "linear", lambda *a: calls.append(1) or real(*a))
    y = vision.conv1x1(conv, x)
    assert bool(calls) == gemm
    assert y.shape == (5, 24, size, size) and y.is_contiguous(memory_format=torch.channels_last)
    _assert_same_as_conv2d(y, conv, x, padding=0)


def _assert_same_as_conv2d(y, conv, x, padding):
    """``y`` (computed from ``x`` by ``conv``'s weight) equals ``F.conv2d``, and so do the
    gradients it sends to ``x`` and the weight."""
    ref_x = x.detach().clone().requires_grad_()
    ref_w = conv.weight.detach().clone().requires_grad_()
    ref = F.conv2d(ref_x, ref_w, padding=padding)
    tol = 1e-5 if x.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(conv.weight.grad, ref_w.grad, atol=tol * 10, rtol=tol)


@pytest.mark.parametrize("size,dtype,channels_last",
                         [((2, 2), torch.float32, True), ((1, 2), torch.float32, False),
                          ((1, 1), torch.float32, True), ((2, 2), torch.bfloat16, True)])
def test_small_map_convolution_gemm_equals_the_convolution(monkeypatch, size, dtype,
                                                           channels_last):
    from trainer import vision
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    conv = torch.nn.Conv2d(12, 20, 3, padding=1, bias=False).to(dtype).to(memory_format=layout)
    x = torch.randn(6, 12, *size).to(dtype).contiguous(memory_format=layout).requires_grad_()
    calls = []
    real = vision.F.linear
    monkeypatch.setattr(vision.F, "linear", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(vision.nn.Conv2d, "forward", lambda *a: pytest.fail("convolution called"))
    y = vision.conv_small_map(conv, x)
    assert calls == [1]
    assert y.shape == (6, 20, *size) and y.is_contiguous(memory_format=layout)
    _assert_same_as_conv2d(y, conv, x, padding=1)


def test_small_map_convolution_is_exact_in_float64_and_leaves_other_convolutions_alone():
    from trainer import vision
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: vision.conv_small_map(conv, x), (x, conv.weight))
    torch.testing.assert_close(vision.conv_small_map(conv, x), F.conv2d(x, conv.weight, padding=1),
                               atol=1e-12, rtol=1e-12)
    # a bigger map, a stride, a bias or other padding: the convolution itself
    for layer, shape in ((conv, (2, 3, 4, 4)),
                         (torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), (2, 3, 2, 2)),
                         (torch.nn.Conv2d(3, 4, 3, padding=1), (2, 3, 2, 2)),
                         (torch.nn.Conv2d(3, 4, 3, padding=0, bias=False), (2, 3, 3, 3))):
        layer = layer.double()
        z = torch.randn(*shape, dtype=torch.float64)
        calls = []
        real = layer.forward
        layer.forward = lambda t: calls.append(1) or real(t)
        torch.testing.assert_close(vision.conv_small_map(layer, z), real(z))
        assert calls == [1]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transformer_last_block_on_picked_rows_equals_the_full_output(causal, dtype):
    from trainer.layers import Transformer
    torch.manual_seed(0)
    t = Transformer(32, 2, 4, quick_gelu=False, causal=causal)
    rows = torch.tensor([8, 3, 0, 5, 8]) if causal else torch.zeros(5, dtype=torch.long)
    x = torch.randn(5, 9, 32).requires_grad_()
    ref_t = __import__("copy").deepcopy(t)
    ref_x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = t(x, rows=rows)
        ref = ref_t(ref_x)[torch.arange(5), rows].unsqueeze(1)
    assert y.shape == (5, 1, 32)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float(), ref.float(), atol=tol, rtol=tol)
    g = torch.randn(5, 1, 32)
    y.float().backward(g)
    ref.float().backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, atol=tol, rtol=tol)
    for (name, p), ref_p in zip(t.named_parameters(), ref_t.parameters()):
        torch.testing.assert_close(p.grad, ref_p.grad, atol=tol * 5, rtol=tol, msg=name)
    if causal:   # a later position's input cannot reach an earlier row's output
        x2 = x.detach().clone()
        x2[1, 4:] += 10
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            torch.testing.assert_close(t(x2, rows=rows)[1], t(x.detach(), rows=rows)[1])


def test_attention_mask_in_explicit_form_equals_sdpa(monkeypatch):
    q, k, v = _qkv((3, 2, 1, 16), torch.bfloat16)
    k, v = (torch.randn(3, 2, 7, 16).bfloat16().requires_grad_() for _ in range(2))
    allowed = (torch.arange(7) <= torch.tensor([6, 2, 0])[:, None]).view(3, 1, 1, 7)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention",
                        lambda *a, **kw: pytest.fail("SDPA called"))
    y = attention(q, k, v, allowed=allowed)
    torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=3e-2)
    # the third query sees key 0 only
    torch.testing.assert_close(y[2, :, 0].float(), v[2, :, 0].float(), atol=0, rtol=0)


def test_text_and_image_features_equal_the_full_towers_pooled():
    from trainer.model import create_model
    torch.manual_seed(0)
    model, cfg = create_model("tiny-vit", vocab_size=100, context_length=12)
    model.eval()
    text = torch.randint(1, 98, (4, 12))
    text[:, -3:] = 0
    text[torch.arange(4), torch.tensor([8, 3, 5, 8])] = 99       # end tokens
    images = torch.randn(4, 3, cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["image_size"])
    with torch.no_grad():
        got_t, got_i = model.encode_text(text), model.encode_image(images)
        eot = text.argmax(-1)
        x = model.token_embedding(text[:, :9]) + model.positional_embedding[:9]
        for block in model.transformer.resblocks:
            x = block(x, True)
        want_t = model.ln_final(x)[torch.arange(4), eot] @ model.text_projection
        v = model.visual
        x = torch.cat([v.class_embedding.expand(4, 1, -1), v.embed_patches(images)], 1)
        x = v.ln_pre(x + v.positional_embedding)
        for block in v.transformer.resblocks:
            x = block(x)
        want_i = v.ln_post(x[:, 0]) @ v.proj
    torch.testing.assert_close(got_t, want_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_i, want_i, atol=1e-5, rtol=1e-5)


_FAULTS = """
import resource, sys
import torch
sys.path.insert(0, {root!r})
if {keep}:
    from trainer.build import keep_freed_memory
    assert keep_freed_memory()


def step():   # a training step's pattern: several large buffers alive at once, then freed
    live = [torch.empty(n * 2 ** 20).fill_(1.0) for n in (10, 16, 12)]   # 40-64 MB each
    del live


step()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_reuses_large_blocks_instead_of_faulting_them_in_again():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def faults(keep):
        out = subprocess.run([sys.executable, "-c", _FAULTS.format(root=root, keep=keep)],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])
    # one step's buffers (152 MB) in 4 KiB pages; each above glibc's largest mmap threshold
    # (32 MB), so that without keep_freed_memory() every one is a fresh mapping
    pages = 38 * 2 ** 22 // 4096
    assert faults(False) > 2.9 * pages         # 3 steps: all fresh mappings, faulted page by page
    assert faults(True) < pages                # freed blocks reused (8k-25k faults seen)


def test_bench_gemm_layouts_time_the_linear_layers_the_blocks_run(monkeypatch):
    """bench/train.py --gemm-layouts times, per step, the products of exactly the linear layers the
    transformer blocks run (the pooled last blocks included), at their shapes."""
    import collections
    import importlib.util
    import os

    import trainer.model as model_mod
    spec = importlib.util.spec_from_file_location(
        "bench_train", os.path.join(os.path.dirname(__file__), "..", "bench", "train.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    model, cfg = model_mod.create_model("tiny-vit", vocab_size=100)
    batch = 3
    seen, where = collections.Counter(), {"block": None}
    blocks = [m for m in model.modules() if isinstance(m, layers.ResidualAttentionBlock)]
    assert len(blocks) == cfg["vision_cfg"]["layers"] + cfg["text_cfg"]["layers"]
    for blk in blocks:
        blk.register_forward_pre_hook(lambda m, a: where.update(block=m))
        blk.register_forward_hook(lambda m, a, o: where.update(block=None))
    real = F.linear

    def recording(x, w, b=None):
        if where["block"] is not None:
            seen[(x.numel() // x.shape[-1], w.shape[1], w.shape[0])] += 1
        return real(x, w, b)
    monkeypatch.setattr(F, "linear", recording)
    size = cfg["vision_cfg"]["image_size"]
    tokens = torch.randint(1, 98, (batch, cfg["text_cfg"]["context_length"]))
    tokens[:, -1] = 99
    model(torch.randn(batch, 3, size, size), tokens)
    expected = collections.Counter()
    for t, i, o, n in bench.linear_shapes(cfg, batch):
        expected[(t, i, o)] += n
    assert seen == expected
    r = bench.gemm_layouts(cfg, 2, torch.float32, torch.device("cpu"), reps=1)
    assert set(r["seconds"]) == {"forward", "input_grad", "weight_grad"} and all(v > 0 for v in r["seconds"].values())
