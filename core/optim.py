"""Optimizers: AdamW for everything, or Muon for the hidden matrices with AdamW for the rest.

Owns: `build_optimizers` (which parameters go where, weight decay on matrices only) and
`Muon`, torch's `torch.optim.Muon` with the form of its Newton–Schulz orthogonalisation
as a choice: torch's own in bfloat16, the same in float32, or float32 in Gram form (the
same polynomial iterated on the small X Xᵀ matrix, fewer multiply-adds for a non-square
matrix). torch orthogonalises in bfloat16, which is fast where the CPU (or GPU) has native
bf16 and tens of times slower than float32 where it has not (AVX2-only CPUs); which form
a run uses is measured by `core.probe`. Does not own: the learning-rate
schedule (`core.config.lr_at`) or the training loop (`core.train`).

The optimizer state (momentum buffers, param groups) is exactly torch's, so checkpoints
written with `torch.optim.Muon` resume here and the other way round; the orthogonalisation
dtype is an attribute of the optimizer, not of its state.
"""

from __future__ import annotations

import torch
from torch import Tensor

ORTHO_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "gram": torch.float32}


def zeropower_newtonschulz(grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float,
                           dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Newton–Schulz orthogonalisation of a 2-D matrix, as torch's Muon does it, in `dtype`.

    The same operations in the same order as `torch.optim._muon._zeropower_via_newtonschulz`
    (whose dtype is fixed to bfloat16), so `dtype=torch.bfloat16` gives torch's numbers bit
    for bit. The result is in `dtype`."""
    if ns_steps >= 100:
        raise ValueError(f"ns_steps={ns_steps} must be below 100")
    if grad.dim() != 2:
        raise ValueError(f"Muon orthogonalises 2-D matrices; got a tensor of shape {tuple(grad.shape)}")
    a, b, c = ns_coefficients
    # a copy even when the dtype already matches: the in-place scaling below must not touch the input
    ortho = grad.to(dtype, copy=True)
    tall = grad.size(0) > grad.size(1)
    if tall:
        ortho = ortho.T
    ortho.div_(ortho.norm().clamp(min=eps))  # spectral norm at most 1
    for _ in range(ns_steps):
        gram = ortho @ ortho.T
        gram_update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        ortho = torch.addmm(ortho, gram_update, ortho, beta=a)
    return ortho.T if tall else ortho


def zeropower_gram(grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float) -> Tensor:
    """The same Newton–Schulz iteration in float32, iterated on the Gram matrix G = X Xᵀ.

    Each step is X ← p(G) X with p(G) = aI + bG + cG², so after k steps X = Q X₀ with Q a
    product of polynomials in G, and the next G is p(G)² G (they commute). Only m×m products
    are iterated (m the short side); X₀'s long side is touched twice, by G₀ = X₀ X₀ᵀ and by
    the final Q X₀. Equal to `zeropower_newtonschulz(..., torch.float32)` to float rounding;
    a square matrix saves nothing, so it takes that path."""
    if ns_steps >= 100:
        raise ValueError(f"ns_steps={ns_steps} must be below 100")
    if grad.dim() != 2:
        raise ValueError(f"Muon orthogonalises 2-D matrices; got a tensor of shape {tuple(grad.shape)}")
    if grad.size(0) == grad.size(1):
        return zeropower_newtonschulz(grad, ns_coefficients, ns_steps, eps, torch.float32)
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.to(torch.float32)
    x = x.T if tall else x  # m × n with m < n
    x = x / x.norm().clamp(min=eps)
    gram = x @ x.T
    q = None
    for k in range(ns_steps):
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # bG + cG²
        poly.diagonal().add_(a)
        q = poly if q is None else poly @ q
        if k < ns_steps - 1:  # the last step's G is never used
            gram = poly @ (gram @ poly)
    out = x if q is None else q @ x
    return out.T if tall else out


def orthogonalise(grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float,
                  form: str) -> Tensor:
    """`form` is a key of ORTHO_DTYPES: 'bfloat16' (torch's), 'float32', or 'gram' (float32, Gram form)."""
    if form == "gram":
        return zeropower_gram(grad, ns_coefficients, ns_steps, eps)
    return zeropower_newtonschulz(grad, ns_coefficients, ns_steps, eps, ORTHO_DTYPES[form])


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` with `ortho_dtype` ('float32', 'gram' (float32 in Gram form) or
    'bfloat16', torch's own) for the Newton–Schulz iterations; every other step of the update
    is torch's."""

    def __init__(self, params, *args, ortho_dtype: str = "float32", **kwargs):
        if ortho_dtype not in ORTHO_DTYPES:
            raise ValueError(f"ortho_dtype={ortho_dtype!r} is not one of {', '.join(ORTHO_DTYPES)}")
        super().__init__(params, *args, **kwargs)
        self.ortho_dtype = ortho_dtype

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import _adjust_lr

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            bufs: list[Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, wd, momentum = float(group["lr"]), group["weight_decay"], group["momentum"]
            for param, grad, buf in zip(params, grads, bufs):
                # torch's _single_tensor_muon, line for line, with the orthogonalisation dtype as a choice
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ortho_dtype)
                param.mul_(1 - lr * wd)
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def build_optimizers(model: torch.nn.Module, cfg, fused: bool = False,
                     ortho: str = "float32") -> list[torch.optim.Optimizer]:
    """AdamW: decay on matrices (dim ≥ 2), none on biases and norms. With cfg.optimizer
    'muon', the hidden 2-D matrices (attention and MLP weights, `.h.` in their names) go to
    `Muon` orthogonalising in `ortho`, the rest to AdamW. `cfg` is a `TrainConfig`."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    hidden = {n for n, p in params.items() if p.dim() == 2 and ".h." in n} if cfg.optimizer == "muon" else set()
    decay = [p for n, p in params.items() if p.dim() >= 2 and n not in hidden]
    no_decay = [p for n, p in params.items() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused or None)]
    if hidden:
        opts.append(Muon([params[n] for n in sorted(hidden)], lr=cfg.lr, weight_decay=cfg.weight_decay,
                         adjust_lr_fn="match_rms_adamw", ortho_dtype=ortho))
    return opts
