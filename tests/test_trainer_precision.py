"""``--precision auto`` picks bf16 only where the hardware has it, and bf16 autocast trains like
fp32: its loss curve stays within the gap between two fp32 runs that differ only in their seed."""
from __future__ import annotations

import pytest
import torch

from trainer.loss import ClipLoss, clamp_logit_scale
from trainer.model import create_model
from trainer.precision import cpu_bf16_flags, resolve_precision
from trainer.step import forward_backward, param_groups

CPU = torch.device("cpu")
AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"


def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(tmp_path):
    amx, avx2 = tmp_path / "amx", tmp_path / "avx2"
    amx.write_text(AMX)
    avx2.write_text(AVX2)
    assert cpu_bf16_flags(str(amx)) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(str(avx2)) == [] and cpu_bf16_flags(str(tmp_path / "none")) == []
    p, why = resolve_precision("auto", CPU, str(amx))
    assert p == "bf16" and "amx_bf16" in why
    p, why = resolve_precision("auto", CPU, str(avx2))
    assert p == "fp32" and "no native bf16" in why
    assert resolve_precision("auto", CPU, str(tmp_path / "none"))[0] == "fp32"
    for asked in ("fp32", "bf16"):  # an explicit choice is kept, whatever the CPU
        assert resolve_precision(asked, CPU, str(amx))[0] == asked
        assert resolve_precision(asked, CPU, str(avx2))[0] == asked


MICRO = {"embed_dim": 32, "quick_gelu": False,
         "vision_cfg": {"image_size": 16, "layers": 2, "width": 64, "patch_size": 8, "heads": 2},
         "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2}}


def _curve(seed: int, precision: str, steps: int = 200, batch: int = 16) -> list[float]:
    """Loss per step of a micro CLIP memorising 64 fixed random pairs (AdamW, constant lr)."""
    g = torch.Generator().manual_seed(1234)              # the same data for every run
    images = torch.randn(64, 3, 16, 16, generator=g)
    tokens = torch.randint(1, 63, (64, 8), generator=g)
    tokens[:, -1] = 63
    torch.manual_seed(seed)
    model, _ = create_model(MICRO)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=2e-3, betas=(0.9, 0.98), eps=1e-6)
    order = torch.randperm(64 * (steps * batch // 64 + 1), generator=torch.Generator().manual_seed(seed)) % 64
    loss_fn = ClipLoss()

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    out = []
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        loss = forward_backward(model, loss_fn, [(images[idx], tokens[idx])], autocast)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clamp_logit_scale(model)
        out.append(float(loss))
    return out


def _smooth(xs: list[float], w: int = 20) -> list[float]:
    return [sum(xs[i:i + w]) / w for i in range(0, len(xs) - w + 1, w)]


def _apart(x: list[float], y: list[float]) -> float:
    """Mean distance of two smoothed curves after their first window (which the init decides)."""
    return sum(abs(p - q) for p, q in zip(x[1:], y[1:])) / (len(x) - 1)


def test_bf16_loss_tracks_fp32_within_the_seed_noise():
    """Same seed (init and batch order) in bf16 autocast vs fp32: the curves differ less than two
    fp32 runs with different seeds do (the larger of two seed pairs: measured here 0.175 vs a
    bf16 gap of 0.05, in mean loss over 20-step windows)."""
    torch.set_num_threads(1)
    fp32 = [_smooth(_curve(seed, "fp32")) for seed in (0, 1, 2)]
    bf16 = _smooth(_curve(0, "bf16"))
    for curve in fp32 + [bf16]:   # each learns, or the comparison means nothing
        assert curve[-1] < 0.5 * curve[0], curve
    noise = max(_apart(fp32[0], fp32[1]), _apart(fp32[0], fp32[2]))
    gap = _apart(fp32[0], bf16)
    assert gap <= noise, (gap, noise)


def test_adamw_is_the_fused_kernel_and_matches_the_per_tensor_loop():
    """`wit train` builds torch's fused AdamW on CPU too (4.5-6.9x faster than the default loop on
    ViT-B/32's parameters, bench/train.py); it must take the same steps."""
    from trainer.build import build_optimizer
    from trainer.config import TrainConfig
    torch.manual_seed(0)
    model, _ = create_model(MICRO)
    ref, _ = create_model(MICRO)
    ref.load_state_dict(model.state_dict())
    cfg = TrainConfig(train_data="unused", out="unused", lr=1e-3)
    fused, _ = build_optimizer(cfg, model, CPU)
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(param_groups(ref, cfg.wd), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, foreach=False)
    for _ in range(20):
        for p, q in zip(model.parameters(), ref.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
