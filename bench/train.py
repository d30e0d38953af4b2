"""Training throughput and model FLOPs utilisation (MFU) of the CLIP trainer.

    python bench/train.py                 # ViT-B/32 at batch 16, tiny-rn and tiny-vit at 64, CPU
    python bench/train.py --quick         # seconds: tiny-vit at batch 4, one step
    python bench/train.py --device cuda --models ViT-B-32 --batch-size 256 --precisions bf16,fp16,fp32

For each model and precision it times full training steps exactly as ``wit train`` runs them
(``trainer.train.forward_backward`` with the CLIP loss, AdamW step, temperature clamp) on
random images and full-length texts (the end-of-text token in the last position, so the text
tower runs all context positions and the work done equals the counted FLOPs). Model FLOPs per
pair come from the config (``trainer.flops``; ViT-B/32: 14.78 GFLOPs forward, x3 per training
step). In the same run it measures the device's matmul rate in fp32 and bf16 (``F.linear`` with
the model's largest GEMM shape: the MLP of the image transformer at this batch), and reports

    MFU = samples/s x training FLOPs per sample / measured matmul rate (same dtype)

plus where the step time goes (forward / backward / optimiser). For ResNet configs it also times
the image tower's two memory layouts side by side (channels-last, what `wit train` uses, against
the contiguous NCHW layout), alternating steps in the same run.

With ``--gemm-layouts`` it also times, alone and in the precision's dtype, the three products of
every linear layer of the transformer blocks at this batch (the pooled last blocks included):
the forward ``x W^T``, the input gradient ``g W`` and the weight gradient ``g^T x`` (the batch's
tokens as the reduction, the first operand transposed), and says what the step would save if the
weight gradients ran at the forward products' rate (and, beside OpenCLIP, the ratio that would give).

When ``open_clip`` imports (``--openclip auto``, the default; ``on`` requires it), each model and
precision is also timed against OpenCLIP's own training step on the same random batch: its
``CLIP`` built from the same config (``trainer.export.openclip_model_cfg``), its ``ClipLoss``,
AdamW with OpenCLIP's weight-decay groups, the same autocast and the temperature clamp. The two
steps alternate (wit, OpenCLIP, wit, ...) so that both see the same machine state, and the line
gives the median step time of each and their ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer.build import keep_freed_memory  # noqa: E402
from trainer.flops import forward_flops, image_flops, text_flops, train_flops  # noqa: E402
from trainer.loss import ClipLoss, clamp_logit_scale  # noqa: E402
from trainer.model import create_model, resolve_config  # noqa: E402
from trainer.train import forward_backward, param_groups  # noqa: E402
from trainer.vision import use_channels_last  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(m: int, k: int, n: int, dtype, device, seconds: float) -> float:
    """FLOP/s of ``F.linear([m, k], [n, k])`` in ``dtype`` (best of repeated timings)."""
    a = torch.randn(m, k, device=device).to(dtype)
    w = torch.randn(n, k, device=device).to(dtype)
    F.linear(a, w)
    sync(device)
    best, spent = 0.0, 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        F.linear(a, w)
        sync(device)
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 2 * m * k * n / dt)
    return best


def gemm_shape(cfg: dict, batch: int) -> tuple[int, int, int]:
    v = cfg["vision_cfg"]
    if isinstance(v["layers"], (list, tuple)):  # ResNet: the attention pool's projections
        c = 32 * v["width"]
        return batch * ((v["image_size"] // 32) ** 2 + 1), c, c
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    return batch * tokens, v["width"], 4 * v["width"]


def bench_model(name: str, batch: int, precision: str, device, steps: int, warmup: int,
                grad_checkpointing: bool, compile_: bool, vocab_size: int | None = None) -> dict:
    torch.manual_seed(0)
    model, cfg = create_model(name, grad_checkpointing=grad_checkpointing, vocab_size=vocab_size)
    use_channels_last(model.visual)  # as `wit train` (ResNet towers only)
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    run_model = torch.compile(model) if compile_ else model
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = torch.randint(1, cfg["text_cfg"]["vocab_size"] - 1, (batch, ctx), device=device)
    tokens[:, -1] = cfg["text_cfg"]["vocab_size"] - 1
    if precision == "fp32":
        autocast = contextlib.nullcontext
    else:
        def autocast():
            return torch.autocast(device.type, dtype=DTYPES[precision])
    loss_fn = ClipLoss()
    times = {"forward": 0.0, "step": 0.0}
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        forward_backward(run_model, loss_fn, [(images, tokens)], autocast, scaler)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        clamp_logit_scale(model)
        sync(device)
        if i >= warmup:
            times["step"] += time.perf_counter() - t0
    # forward-only and optimiser-only timings for the breakdown
    with torch.no_grad():
        for i in range(max(1, steps // 2) + 1):
            sync(device)
            t0 = time.perf_counter()
            with autocast():
                run_model(images, tokens)
            sync(device)
            if i:
                times["forward"] += time.perf_counter() - t0
    fwd = times["forward"] / max(1, steps // 2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    # the fused AdamW `wit train` uses vs torch's per-tensor loop (its CPU default), alternating
    loop = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, foreach=False)
    med = side_by_side({"fused": opt.step, "loop": loop.step}, 3, 1, device)
    optim = med["fused"]
    step = times["step"] / steps
    return {"model": name, "precision": precision, "batch": batch,
            "grad_checkpointing": grad_checkpointing, "compile": compile_,
            "samples_per_s": batch / step, "step_s": step,
            "forward_s": fwd, "backward_s": max(0.0, step - fwd - optim), "optimizer_s": optim,
            "optimizer_loop_s": med["loop"],
            "gflops_forward_per_pair": forward_flops(cfg) / 1e9,
            "gflops_image": image_flops(cfg) / 1e9, "gflops_text": text_flops(cfg) / 1e9,
            "gflops_train_per_pair": train_flops(cfg) / 1e9,
            "achieved_tflops": batch * train_flops(cfg) / step / 1e12,
            "gflops_train_executed_per_pair": train_flops(cfg, executed=True) / 1e9,
            "executed_tflops": batch * train_flops(cfg, executed=True) / step / 1e12,
            "gemm": gemm_shape(cfg, batch)}


def openclip_step(cfg: dict, batch: int, precision: str, device):
    """A closure running one OpenCLIP training step on a fixed random batch (None, reason when
    open_clip does not import)."""
    try:
        import open_clip
        from open_clip.loss import ClipLoss as OpenClipLoss
    except Exception as exc:  # ImportError, or its own dependencies failing to load
        return None, f"open_clip does not import ({type(exc).__name__}: {exc})"
    from trainer.export import openclip_model_cfg
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**openclip_model_cfg(cfg)).to(device).train()
    decay = [p for n, p in model.named_parameters()
             if not (p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n)]
    rest = [p for n, p in model.named_parameters() if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.2}],
                            lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = OpenClipLoss()
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = torch.randint(1, cfg["text_cfg"]["vocab_size"] - 1, (batch, ctx), device=device)
    tokens[:, -1] = cfg["text_cfg"]["vocab_size"] - 1
    dtype = DTYPES[precision]

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            image_features, text_features, logit_scale = model(images, tokens)[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return step, f"open_clip {open_clip.__version__}"


def wit_step(cfg: dict, batch: int, precision: str, device, channels_last: bool = True):
    """One wit training step (as `wit train` runs it: a ResNet image tower channels-last unless
    ``channels_last=False``) on a fixed random batch, as a closure."""
    torch.manual_seed(0)
    model, cfg = create_model(cfg)
    if channels_last:
        use_channels_last(model.visual)
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, fused=True)
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = torch.randint(1, cfg["text_cfg"]["vocab_size"] - 1, (batch, ctx), device=device)
    tokens[:, -1] = cfg["text_cfg"]["vocab_size"] - 1
    loss_fn = ClipLoss()

    def autocast():
        return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")

    def step():
        forward_backward(model, loss_fn, [(images, tokens)], autocast)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clamp_logit_scale(model)
    return step


def linear_shapes(cfg: dict, batch: int) -> list[tuple[int, int, int, int]]:
    """(tokens, in, out, count) of every linear layer the transformer blocks run at this batch: in
    each full block q/k/v in one product, the attention's output and the MLP's two; in each tower's
    pooled last block the keys and values over every token and the rest at one row per sample."""
    out = []
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    towers = [(batch * t["context_length"], t["width"], t["layers"])]
    if not isinstance(v["layers"], (list, tuple)):
        towers.insert(0, (batch * ((v["image_size"] // v["patch_size"]) ** 2 + 1), v["width"], v["layers"]))
    for tokens, w, layers in towers:
        mlp = int(w * cfg.get("mlp_ratio", 4.0))
        out += [(tokens, w, 3 * w, layers - 1), (tokens, w, w, layers - 1),
                (tokens, w, mlp, layers - 1), (tokens, mlp, w, layers - 1),
                (tokens, w, 2 * w, 1), (batch, w, w, 2), (batch, w, mlp, 1), (batch, mlp, w, 1)]
    return out


def gemm_layouts(cfg: dict, batch: int, dtype, device, reps: int = 5) -> dict:
    """Seconds per step and FLOP/s of the linear layers' forward, input-gradient and weight-gradient
    products (see the module text), each timed alone (median of ``reps``)."""
    secs = {"forward": 0.0, "input_grad": 0.0, "weight_grad": 0.0}
    flops = 0.0
    for tokens, i, o, n in linear_shapes(cfg, batch):
        x = torch.randn(tokens, i, device=device).to(dtype)
        w = torch.randn(o, i, device=device).to(dtype)
        g = torch.randn(tokens, o, device=device).to(dtype)
        for kind, fn in (("forward", lambda: torch.mm(x, w.t())), ("input_grad", lambda: torch.mm(g, w)),
                         ("weight_grad", lambda: torch.mm(g.t(), x))):
            fn()
            ts = []
            for _ in range(reps):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                ts.append(time.perf_counter() - t0)
            secs[kind] += statistics.median(ts) * n
        flops += 2 * tokens * i * o * n
    return {"seconds": secs, "tflops": {k: flops / v / 1e12 for k, v in secs.items()},
            "weight_grad_saving_at_forward_rate_s": secs["weight_grad"] - secs["forward"]}


def side_by_side(steps: dict, rounds: int, warmup: int, device) -> dict:
    """Median seconds per step of each closure, run alternately (A B A B ...)."""
    times = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name, fn in steps.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="seconds: tiny-vit at batch 4, 1 warmup + 1 timed step, short probe")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", default=None,
                    help="comma-separated configs (default ViT-B-32,tiny-rn,tiny-vit; quick: "
                         "tiny-vit)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="batch for every model (default: 16 for ViT-B-32 and the other "
                         "paper configs, 64 for tiny-*)")
    ap.add_argument("--precisions", default=None,
                    help="comma-separated of fp32,bf16,fp16 (default cuda: bf16,fp16,fp32; cpu: "
                         "fp32,bf16, where bf16 training is skipped for non-tiny models when "
                         "the CPU's bf16 matmul is less than half its fp32 rate, i.e. no "
                         "native bf16; naming the precisions forces them)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 3; quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="text vocabulary (default: the config's 49408; `wit train` uses the "
                         "tokenizer's, e.g. 10,513 for 10k merges: a smaller AdamW update)")
    ap.add_argument("--image-size", type=int, default=None, help="override the image size")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--openclip", choices=("auto", "on", "off"), default="auto",
                    help="also time OpenCLIP's training step side by side (auto: when open_clip "
                         "imports; on: fail if it does not)")
    ap.add_argument("--gemm-layouts", action="store_true",
                    help="also time the linear layers' forward, input-gradient and weight-gradient "
                         "products alone (transformer blocks; see the module text)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    models = (a.models or ("tiny-vit" if a.quick else "ViT-B-32,tiny-rn,tiny-vit")).split(",")
    precisions = (a.precisions or ("bf16,fp16,fp32" if device.type == "cuda" else "fp32,bf16"))
    precisions = precisions.split(",")
    steps = a.steps or (1 if a.quick else 3)
    warmup = a.warmup or (1 if a.quick else 2)
    probe_s = 0.3 if a.quick else 2.0
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    # as `wit train` on CPU (trainer.build.setup_device); the OpenCLIP steps run in this same
    # process, so they get it too
    kept = device.type == "cpu" and keep_freed_memory()
    print(f"device {device} ({where}), torch {torch.__version__}"
          + (", malloc keeps freed memory (as wit train)" if kept else ""))
    results = []
    for name in models:
        batch = a.batch_size or (4 if a.quick else 64 if "tiny" in name else 16)
        cfg = resolve_config(name, image_size=a.image_size, vocab_size=a.vocab_size)
        m, k, n = gemm_shape(cfg, batch)
        rates = {p: matmul_rate(m, k, n, DTYPES[p], device, probe_s) for p in precisions}
        print(f"\n{name} at {cfg['vision_cfg']['image_size']} px, batch {batch}: {forward_flops(cfg) / 1e9:.2f} GFLOPs forward per pair "
              f"(image {image_flops(cfg) / 1e9:.2f} + text {text_flops(cfg) / 1e9:.2f}), "
              f"{train_flops(cfg) / 1e9:.2f} per training step; the trainer executes "
              f"{train_flops(cfg, executed=True) / 1e9:.2f} of them (last block at the pooled "
              "token only; small-map convolutions without padding; MFU below is on the model's "
              "FLOPs, 'executed' on these)")
        print("matmul rate F.linear " f"[{m}x{k}]x[{k}x{n}]: "
              + ", ".join(f"{p} {r / 1e12:.3f} TFLOP/s" for p, r in rates.items()))
        for precision in precisions:
            slow = (device.type == "cpu" and precision == "bf16" and not a.precisions
                    and not name.startswith("tiny") and rates["bf16"] < 0.5 * rates["fp32"])
            if slow:
                print(f"  bf16  skipped: this CPU's bf16 matmul runs at "
                      f"{rates['bf16'] / rates['fp32']:.0%} of fp32 (no native bf16 "
                      "instructions); force with --precisions fp32,bf16")
                continue
            r = bench_model(cfg, batch, precision, device, steps, warmup,
                            a.grad_checkpointing, a.compile)
            r["model"] = name
            r["matmul_tflops"] = {p: v / 1e12 for p, v in rates.items()}
            r["mfu"] = {p: r["achieved_tflops"] * 1e12 / v for p, v in rates.items()}
            r["executed_share"] = {p: r["executed_tflops"] * 1e12 / v for p, v in rates.items()}
            results.append(r)
            share = {k: r[f"{k}_s"] / r["step_s"] for k in ("forward", "backward", "optimizer")}
            print(f"  {precision:5s} {r['samples_per_s']:8.2f} samples/s  "
                  f"{r['achieved_tflops'] * 1e3:8.1f} GFLOP/s  "
                  f"MFU {r['mfu'][precision]:.0%} of measured {precision} matmul "
                  f"(executed {r['executed_share'][precision]:.0%})"
                  + (f" ({r['mfu']['fp32']:.0%} of fp32)" if precision != "fp32" and "fp32" in
                     rates else "")
                  + f"  [forward {share['forward']:.0%}, backward {share['backward']:.0%}, "
                  f"AdamW {share['optimizer']:.0%}; fused {r['optimizer_s'] * 1e3:.0f} ms vs per-tensor loop "
                  f"{r['optimizer_loop_s'] * 1e3:.0f} ms: {r['optimizer_loop_s'] / r['optimizer_s']:.1f}x]")
            if a.gemm_layouts:
                gl = gemm_layouts(cfg, batch, DTYPES[precision], device)
                r["gemm_layouts"] = gl
                sec, tf = gl["seconds"], gl["tflops"]
                print(f"  {precision:5s} linear layers' products alone, per step: forward {sec['forward']:.3f} s "
                      f"({tf['forward']:.2f} TFLOP/s), input gradients {sec['input_grad']:.3f} s "
                      f"({tf['input_grad']:.2f}), weight gradients {sec['weight_grad']:.3f} s "
                      f"({tf['weight_grad']:.2f}); at the forward rate the weight gradients would save "
                      f"{gl['weight_grad_saving_at_forward_rate_s']:.3f} s of the {r['step_s']:.3f} s step")
            if isinstance(cfg["vision_cfg"]["layers"], (list, tuple)):
                med = side_by_side({"channels_last": wit_step(cfg, batch, precision, device),
                                    "contiguous": wit_step(cfg, batch, precision, device, channels_last=False)},
                                   steps, warmup, device)
                r["channels_last"] = {"step_s": med["channels_last"], "contiguous_step_s": med["contiguous"],
                                      "ratio": med["contiguous"] / med["channels_last"]}
                print(f"  {precision:5s} ResNet layout side by side ({steps} alternating steps, median): "
                      f"channels-last {batch / med['channels_last']:.2f} samples/s, contiguous "
                      f"{batch / med['contiguous']:.2f}: channels-last {med['contiguous'] / med['channels_last']:.2f}x")
            if a.openclip != "off":
                oc_step, why = openclip_step(cfg, batch, precision, device)
                if oc_step is None:
                    if a.openclip == "on":
                        raise SystemExit(f"--openclip on: {why}")
                    print(f"  OpenCLIP comparison skipped: {why}")
                else:
                    med = side_by_side({"wit": wit_step(cfg, batch, precision, device), "openclip": oc_step},
                                       steps, warmup, device)
                    r["openclip"] = {"version": why, "wit_step_s": med["wit"], "openclip_step_s": med["openclip"],
                                     "ratio": med["openclip"] / med["wit"]}
                    print(f"  {precision:5s} side by side ({why}, {steps} alternating steps, median): "
                          f"wit {batch / med['wit']:.2f} samples/s, OpenCLIP {batch / med['openclip']:.2f}: "
                          f"wit {med['openclip'] / med['wit']:.2f}x")
                    if a.gemm_layouts:
                        bound = med["openclip"] / (med["wit"] - r["gemm_layouts"]["weight_grad_saving_at_forward_rate_s"])
                        r["openclip"]["ratio_if_weight_grads_at_forward_rate"] = bound
                        print(f"  {precision:5s} with the weight gradients at the forward rate (and all else "
                              f"as now): wit {bound:.2f}x")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
