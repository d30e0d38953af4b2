"""CLIP loss: an independent computation, finite differences, and 2-process gloo DDP (with the
all-gather and sharded similarity, with and without accumulation) against one process."""
import math
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.loss import MAX_LOGIT_SCALE, ClipLoss, clamp_logit_scale, clip_loss
from trainer.model import create_model
from trainer.train import forward_backward


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _independent_loss(img, txt, scale):
    """Written out from the definition, in float64 with Python loops."""
    img = [[float(v) for v in row] for row in img]
    txt = [[float(v) for v in row] for row in txt]
    n = len(img)

    def norm(v):
        s = math.sqrt(sum(a * a for a in v))
        return [a / s for a in v]

    img, txt = [norm(v) for v in img], [norm(v) for v in txt]
    sim = [[scale * sum(a * b for a, b in zip(img[i], txt[j])) for j in range(n)] for i in range(n)]

    def ce(rows):
        total = 0.0
        for i, row in enumerate(rows):
            m = max(row)
            total += -(row[i] - m - math.log(sum(math.exp(x - m) for x in row)))
        return total / len(rows)

    cols = [[sim[i][j] for i in range(n)] for j in range(n)]
    return (ce(sim) + ce(cols)) / 2


def test_loss_matches_independent_computation():
    torch.manual_seed(0)
    img, txt = torch.randn(7, 5), torch.randn(7, 5)
    scale = 8.5
    got = ClipLoss()(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), torch.tensor(scale))
    assert float(got) == pytest.approx(_independent_loss(img, txt, scale), rel=1e-5)
    # perfectly aligned, well-separated pairs: loss -> 0; identical texts: log(n)
    eye = torch.eye(4)
    assert float(clip_loss(eye, eye, torch.tensor(100.0))) < 1e-6
    same = F.normalize(torch.ones(4, 4), dim=-1)
    assert float(clip_loss(eye, same, torch.tensor(10.0))) == pytest.approx(math.log(4), rel=1e-5)


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    img = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)

    def f(i, t, s):
        # clip_loss computes in float32 (mixed-precision safety); check the float64 formula
        i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
        logits = s.exp() * i @ t.T
        labels = torch.arange(len(i))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    assert torch.autograd.gradcheck(f, (img, txt, log_scale))
    # and the module's float32 gradients agree with the float64 ones
    loss = clip_loss(F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1),
                     log_scale.float().exp())
    g32 = torch.autograd.grad(loss, [img, txt, log_scale])
    g64 = torch.autograd.grad(f(img, txt, log_scale), [img, txt, log_scale])
    for a, b in zip(g32, g64):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_logit_scale_clamp():
    model, _ = create_model(CFG)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    assert math.exp(model.logit_scale.item()) == pytest.approx(100.0)


CFG = {"embed_dim": 16, "quick_gelu": True,
       "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "heads": 2},
       "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}}
N = 8  # global batch


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(N, 3, 16, 16, generator=g)
    tokens = torch.randint(1, 48, (N, 8), generator=g)
    tokens[torch.arange(N), torch.randint(2, 8, (N,), generator=g)] = 49
    return images, tokens


def _model():
    torch.manual_seed(0)
    return create_model(CFG)[0]


def _ddp_worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    try:
        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        images, tokens = _batch()
        n = N // world
        x, t = images[rank * n:(rank + 1) * n], tokens[rank * n:(rank + 1) * n]
        results = {}
        for name, micro in (("plain", [(x, t)]),
                            ("accum", [(x[:n // 2], t[:n // 2]), (x[n // 2:], t[n // 2:])])):
            model.zero_grad(set_to_none=True)
            loss = forward_backward(ddp, ClipLoss(rank, world), micro)
            dist.all_reduce(loss)
            results[name] = {"loss": loss / world,
                             "grads": {k: p.grad.clone() for k, p in model.named_parameters()}}
            # DDP averaged the gradients: every rank holds the same
            flat = torch.cat([p.grad.flatten() for p in model.parameters()])
            other = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(other, flat)
            results[name]["same_on_ranks"] = all(torch.equal(other[0], o) for o in other)
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "ddp.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_single_process():
    images, tokens = _batch()
    model = _model()
    loss = forward_backward(model, ClipLoss(), [(images, tokens)])
    ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    with tempfile.TemporaryDirectory() as out:
        torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2)
        results = torch.load(os.path.join(out, "ddp.pt"), weights_only=True)
    for name in ("plain", "accum"):
        got = results[name]
        assert got["same_on_ranks"]
        assert float(got["loss"]) == pytest.approx(float(loss), rel=1e-6)
        assert set(got["grads"]) == set(ref)
        for k in ref:
            err = (got["grads"][k] - ref[k]).abs().max()
            assert err <= 1e-5 * ref[k].abs().max() + 1e-8, f"{name}: gradient of {k}"
    # the check can fail: a half-batch loss (no all-gather) is different
    with torch.no_grad():
        half = clip_loss(*model(images[:4], tokens[:4]))
    assert abs(float(half) - float(loss)) > 1e-3
