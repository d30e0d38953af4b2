"""``--precision auto``: the fastest numerically sound mode for the device the run is on.

* CUDA: bf16 autocast where the GPU has bf16 (Ampere and later), else fp16 autocast with a
  gradient scaler.
* CPU: bf16 autocast where the CPU has native bf16 instructions (``amx_bf16`` or ``avx512_bf16``
  in /proc/cpuinfo: matmuls several times the fp32 rate), else fp32. Without native bf16, torch
  emulates it and bf16 is slower than fp32 (bench/train.py measures both matmul rates).

In every mode the parameters, the AdamW state, the loss and the LayerNorm statistics stay
float32 (autocast casts the matmul inputs only); see docs/trainer.md.
"""
from __future__ import annotations

__all__ = ["resolve_precision", "cpu_bf16_flags"]

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The native-bf16 flags the CPU reports (empty where there are none or no /proc/cpuinfo)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in NATIVE_BF16_FLAGS if f in flags]
    except OSError:
        pass
    return []


def resolve_precision(requested: str, device, cpuinfo: str = "/proc/cpuinfo") -> tuple[str, str]:
    """``(precision, why)``: ``requested`` itself unless it is ``auto``."""
    if requested != "auto":
        return requested, "as requested"
    if device.type == "cuda":
        import torch
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU has bf16"
        return "fp16", "auto: the GPU has no bf16 (fp16 with a gradient scaler)"
    flags = cpu_bf16_flags(cpuinfo)
    if flags:
        return "bf16", f"auto: the CPU has native bf16 ({', '.join(flags)})"
    return "fp32", "auto: the CPU has no native bf16 instructions (bf16 would be emulated, slower)"
