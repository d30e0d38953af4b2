"""Exercise the trainer's CUDA paths on a GPU machine (they cannot run on the CPU-only CI).

    python bench/train_gpu_check.py [--compile] [--keep DIR]
    python bench/train_gpu_check.py --device cpu     # dry run of the script itself: fp32, gloo

Checks, on tiny generated shards (solid-colour images captioned with the colour):

1. ``train()`` on CUDA in fp32, bf16 (autocast) and fp16 (autocast + GradScaler: the scaler
   state is checkpointed), with gradient checkpointing and feature-caching accumulation in
   some runs: finite, decreasing losses;
2. ``--stop-at-step`` + ``--resume latest`` on CUDA: the resumed loss sequence against the
   uninterrupted one (reported; GPU kernels need not be bitwise deterministic);
3. NCCL: DDP over min(2, #GPUs) processes (one per GPU) against one process on the same global
   batch: loss and gradients, with and without accumulation; with one GPU the NCCL all-gather /
   reduce-scatter of :class:`trainer.loss.AllGather` runs in a 1-process group;
4. optionally ``torch.compile``.

Prints a JSON report; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import socket
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from trainer.loss import ClipLoss, clip_loss, gather_features  # noqa: E402
from trainer.model import create_model  # noqa: E402
from trainer.train import TrainConfig, forward_backward, train  # noqa: E402

COLOURS = {"red": (230, 20, 20), "green": (20, 210, 20), "blue": (20, 20, 230),
           "yellow": (230, 220, 20)}
CFG = {"embed_dim": 64, "quick_gelu": False,
       "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "heads": 2},
       "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2,
                    "layers": 2}}


def make_data(root: str) -> dict:
    import webdataset as wds
    from PIL import Image

    from trainer.tokenizer import train_merges
    rng = random.Random(0)
    sizes, key = {}, 0
    for s in range(4):
        name = f"{s:05d}.tar"
        with wds.TarWriter(os.path.join(root, name)) as sink:
            for _ in range(64):
                colour = rng.choice(list(COLOURS))
                buf = io.BytesIO()
                Image.new("RGB", (40, 40), COLOURS[colour]).save(buf, "JPEG")
                sink.write({"__key__": f"{key:09d}", "jpg": buf.getvalue(),
                            "txt": f"a {colour} square"})
                key += 1
        sizes[name] = 64
    with open(os.path.join(root, "sizes.json"), "w") as fh:
        json.dump(sizes, fh)
    merges = train_merges([f"a {c} square" for c in COLOURS] * 10, 40,
                          os.path.join(root, "merges.txt"))
    with open(os.path.join(root, "cfg.json"), "w") as fh:
        json.dump(CFG, fh)
    return {"urls": os.path.join(root, "{00000..00003}.tar"), "merges": merges,
            "model": os.path.join(root, "cfg.json")}


def losses(out: str) -> list[float]:
    with open(os.path.join(out, "log.jsonl")) as fh:
        return [r["loss"] for r in map(json.loads, fh) if r["type"] == "train"]


DEVICE = "cuda"


def run_train(data, out, **kw) -> dict:
    cfg = dict(train_data=data["urls"], out=out, model=data["model"], tokenizer=data["merges"],
               batch_size=32, epochs=4, lr=2e-3, warmup=3, workers=2, log_every=1,
               save_every=10, device=DEVICE, progress=False)
    cfg.update(kw)
    return train(TrainConfig(**cfg))


def check_precisions(data, root, compile_: bool) -> dict:
    report = {}
    runs = [("fp32", {}), ("bf16", {"grad_checkpointing": True}),
            ("fp16", {"accum_freq": 2, "batch_size": 16})]
    if compile_:
        runs.append(("bf16-compile", {"precision": "bf16", "compile": True}))
    if DEVICE == "cpu":  # dry run: bf16 is emulated (slow) on most CPUs, fp16 is GPU-only
        runs = [("fp32", {"grad_checkpointing": True}), ("fp32-accum", {"accum_freq": 2})]
    for name, extra in runs:
        out = os.path.join(root, f"run-{name}")
        kw = {"precision": name.split("-")[0], **extra}
        summary = run_train(data, out, **kw)
        seq = losses(out)
        ckpt = torch.load(os.path.join(out, "checkpoints", "latest.pt"), weights_only=True)
        ok = all(math.isfinite(x) for x in seq) and seq[-1] < seq[0] - 0.2
        if name == "fp16":
            ok = ok and ckpt["scaler"] is not None and "scale" in ckpt["scaler"]
        report[name] = {"ok": ok, "first_loss": seq[0], "last_loss": seq[-1],
                        "steps": summary["step"], "samples_per_s": summary["samples_per_s"]}
    return report


def check_resume(data, root) -> dict:
    full, part = os.path.join(root, "full"), os.path.join(root, "part")
    precision = "bf16" if DEVICE == "cuda" else "fp32"
    run_train(data, full, precision=precision, max_steps=16)
    run_train(data, part, precision=precision, max_steps=16, stop_at_step=7)
    run_train(data, part, precision=precision, max_steps=16, resume="latest")
    a, b = losses(full), losses(part)
    diff = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
    return {"ok": len(a) == len(b) == 16 and diff < 1e-2, "max_abs_loss_diff": diff,
            "bitwise_equal": a == b}


def _batch(n):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 100, (n, 16), generator=g)
    tokens[:, 10] = 49407
    return images, tokens


def _model(device):
    torch.manual_seed(0)
    return create_model(CFG)[0].to(device)


def _nccl_worker(rank, world, port, out_dir, kind):
    if kind == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if kind == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")
        model = _model(device)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rank] if kind == "cuda" else None)
        images, tokens = _batch(8 * world)
        x = images[rank * 8:(rank + 1) * 8].to(device)
        t = tokens[rank * 8:(rank + 1) * 8].to(device)
        results = {}
        for name, micro in (("plain", [(x, t)]), ("accum", [(x[:4], t[:4]), (x[4:], t[4:])])):
            model.zero_grad(set_to_none=True)
            loss = forward_backward(ddp, ClipLoss(rank, world), micro)
            dist.all_reduce(loss)
            results[name] = {"loss": (loss / world).cpu(),
                             "grads": {k: p.grad.cpu() for k, p in model.named_parameters()}}
        if world == 1:  # exercise the NCCL gather / reduce-scatter in a 1-process group
            model.zero_grad(set_to_none=True)
            img, txt, scale = model(x, t)
            loss = clip_loss(img, txt, scale, gather_features(img), gather_features(txt))
            loss.backward()
            results["gather"] = {"loss": loss.detach().cpu(),
                                 "grads": {k: p.grad.cpu() for k, p in model.named_parameters()}}
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "nccl.pt"))
    finally:
        dist.destroy_process_group()


def check_nccl(root) -> dict:
    world = min(2, torch.cuda.device_count()) if DEVICE == "cuda" else 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_nccl_worker, args=(world, port, root, DEVICE), nprocs=world)
    got = torch.load(os.path.join(root, "nccl.pt"), weights_only=True)
    device = torch.device("cuda", 0) if DEVICE == "cuda" else torch.device("cpu")
    model = _model(device)
    images, tokens = _batch(8 * world)
    ref_loss = forward_backward(model, ClipLoss(), [(images.to(device), tokens.to(device))])
    ref = {k: p.grad.cpu() for k, p in model.named_parameters()}
    report = {"world_size": world}
    for name, r in got.items():
        rel = max(float((r["grads"][k] - ref[k]).abs().max() / (ref[k].abs().max() + 1e-12))
                  for k in ref)
        dl = abs(float(r["loss"]) - float(ref_loss))
        report[name] = {"ok": dl < 1e-4 and rel < 1e-3, "loss_diff": dl, "max_rel_grad_diff": rel}
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="also train with torch.compile")
    ap.add_argument("--keep", default=None, help="keep the runs in this directory")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a dry run of this script (fp32 only, gloo instead of NCCL)")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("train_gpu_check: no CUDA device", file=sys.stderr)
        return 2
    root = a.keep or tempfile.mkdtemp(prefix="wit-gpu-check-")
    os.makedirs(root, exist_ok=True)
    try:
        data = make_data(root)
        name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
        report = {"device": name, "torch": torch.__version__,
                  "precisions": check_precisions(data, root, a.compile),
                  "resume": check_resume(data, root), "nccl": check_nccl(root)}
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    flat = [v["ok"] for v in report["precisions"].values()] + [report["resume"]["ok"]] + \
        [v["ok"] for k, v in report["nccl"].items() if isinstance(v, dict)]
    report["all_ok"] = all(flat)
    print(json.dumps(report, indent=1))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
