"""Device, dtype and autocast: one helper so every caller makes the same choice.

Owns: picking cuda / mps / cpu, the compute dtype, an autocast context that is a no-op
where it does not help, the SDPA backend pin, and the dense bf16 peak FLOP/s per GPU
(for MFU). Does not own: measuring which CPU path is fastest (the trainer's start-up
probe does that and passes its answer here as `dtype` and `sdpa`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SDPA_BACKENDS = ("math", "flash", "efficient", "cudnn")


def available_devices() -> tuple[str, ...]:
    """The device kinds this machine has, fastest first: cuda, then mps, where present; cpu always."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return (*found, "cpu")


# what an absent device is called when a run asks for it
ABSENT = {"cuda": "no CUDA GPU", "mps": "no Apple GPU (MPS)"}


def check_available(requested: str) -> None:
    """Refuse, in words, a device kind this machine does not have ('auto' is always fine)."""
    if requested in ABSENT and requested not in available_devices():
        options = ("auto", *available_devices())
        raise ValueError(f"device {requested!r} was chosen but this machine has {ABSENT[requested]}: "
                         f"choose {', '.join(options[:-1])} or {options[-1]}")


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit choice that is absent raises."""
    if requested == "auto":
        return torch.device(available_devices()[0])
    if requested not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {requested!r}: choose auto, cpu, cuda or mps")
    check_available(requested)
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


def sdpa_kernel(name: str | None):
    """Pin F.scaled_dot_product_attention to one backend ('math', 'flash', ...); None: torch picks."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as _kernel

    backends = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    if name not in backends:
        raise ValueError(f"unknown SDPA backend {name!r}: choose {', '.join(SDPA_BACKENDS)}")
    # MATH stays allowed as the fallback for shapes the pinned kernel cannot run
    return _kernel([backends[name], SDPBackend.MATH] if name != "math" else [SDPBackend.MATH])


def autocast(device: torch.device, dtype: torch.dtype, sdpa: str | None = None):
    """Autocast to `dtype` on `device` (a null context for fp32), with an optional SDPA pin."""
    stack = contextlib.ExitStack()
    if dtype != torch.float32:
        stack.enter_context(torch.autocast(device_type=device.type, dtype=dtype))
    if sdpa is not None:
        stack.enter_context(sdpa_kernel(sdpa))
    return stack


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    sdpa: str | None = None  # pinned SDPA backend, or None for torch's own choice

    def autocast(self):
        return autocast(self.device, self.dtype, self.sdpa)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


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
