"""Device, dtype and autocast: one helper so every caller makes the same choice.

Owns: picking cuda / mps / cpu, the compute dtype, and an autocast context that is a
no-op where it does not help. Does not own: measuring which CPU path is fastest (the
trainer's start-up probe does that and passes its answer here as `dtype`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit choice that is absent raises."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available on this machine")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was requested but Apple MPS is not available on this machine")
    if requested not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {requested!r}: choose auto, cpu, cuda or mps")
    return torch.device(requested)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The autocast compute dtype: bf16 on CUDA GPUs that support it, else fp32 by default."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"unknown dtype {requested!r}: choose auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to `dtype` on `device`; a null context for fp32 (nothing to cast)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def autocast(self):
        return autocast(self.device, self.dtype)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def placement(device: str = "auto", dtype: str = "auto") -> Placement:
    dev = pick_device(device)
    return Placement(dev, pick_dtype(dev, dtype))


# Dense bf16 peak FLOP/s per device, for MFU (tensor-core dense numbers, no sparsity).
PEAK_FLOPS = {
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 125e12,
    "T4": 65e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None where unknown (MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key]
    return None
