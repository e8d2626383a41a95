"""One training step on one text, on a copy of the model: autograd made visible.

Owns: `one_step` — the training loop's forward → loss → backward → clip → optimizer step,
once, on this text (the target is the input shifted by one token), on a deep copy of the
model: the loss before and after, the gradient norm, and the parameters whose gradients
were largest. The model passed in (the one a server serves to everyone) is never changed:
the copy is made first and dropped at the end.
Does not own: the real training loop (`core.train`), whose optimizer set-up it reuses.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch

from core.config import TrainConfig
from core.model import GPT

LR = 1e-3          # AdamW's learning rate for the one step (the classic recipe's order of size)
TOP_GRADS = 8      # parameters listed by gradient norm


@dataclass
class LearnStep:
    loss_before: float
    loss_after: float
    grad_norm: float               # of all gradients together, before clipping
    clip: float
    lr: float
    optimizer: str
    n_tokens: int                  # positions that have a target
    top_grads: list[dict] = field(default_factory=list)  # {name, shape, grad_norm, change}

    def to_dict(self) -> dict:
        return asdict(self)


def one_step(model: GPT, ids: list[int], lr: float = LR, clip: float = 1.0, top: int = TOP_GRADS) -> LearnStep:
    """Forward, loss, backward, clip and one AdamW step (`core.train.build_optimizers`, the
    classic recipe) on a deep copy of `model`, for the text `ids` (inputs ids[:-1], targets
    ids[1:]); then the loss of the stepped copy on the same text. Dropout is off (eval mode),
    so the same text always gives the same numbers. ValueError for fewer than two ids."""
    from core.train import build_optimizers

    if len(ids) < 2:
        raise ValueError(f"one training step needs at least 2 tokens (an input and its next token), got {len(ids)}")
    if len(ids) - 1 > model.config.block_size:
        raise ValueError(f"{len(ids)} tokens: one step reads at most block_size + 1 = {model.config.block_size + 1}")
    dev = model.transformer.wte.weight.device
    x = torch.tensor([ids[:-1]], dtype=torch.long, device=dev)  # (1, T)
    y = torch.tensor([ids[1:]], dtype=torch.long, device=dev)   # (1, T): the input shifted by one
    work = copy.deepcopy(model)  # never the served model: its weights stay as they are
    work.decode_weight_cache = False  # the copy lives for one request: no fast-path weight copies
    work.eval()
    for p in work.parameters():
        p.requires_grad_(True)
        p.grad = None
    cfg = TrainConfig(optimizer="adamw", lr=lr, grad_clip=clip)
    opts = build_optimizers(work, cfg)
    before = {n: p.detach().clone() for n, p in work.named_parameters()}
    with torch.enable_grad():
        _, loss = work(x, y)
        loss.backward()
    grads = {n: float(p.grad.norm()) for n, p in work.named_parameters() if p.grad is not None}
    norm = float(torch.nn.utils.clip_grad_norm_(work.parameters(), clip if clip > 0 else math.inf))
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        _, after = work(x, y)
    params = dict(work.named_parameters())
    ranked = sorted(grads, key=lambda n: -grads[n])[:top]
    rows = [{"name": n, "shape": list(params[n].shape), "grad_norm": grads[n],
             "change": float((params[n].detach() - before[n]).norm())} for n in ranked]
    return LearnStep(loss.item(), after.item(), norm, clip, lr, "adamw", int(y.numel()), rows)
