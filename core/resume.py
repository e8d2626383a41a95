"""Exact resume: a run's optimizer state as safetensors + JSON, and its checkpoint made ready.

Owns: flattening optimizer states into named tensors and JSON (nothing is pickled) and back,
and `resumable(out_dir)`, which puts back a checkpoint that a killed save set aside and
checks that `out_dir/latest` can be resumed from (the trainer's `run` and the app's job
manager both call it). Does not own: the file format (`core.checkpoint`), the loop (`core.train`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint as ckpt
from .dist import Dist


def flatten_optim(opts: list[torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], list]:
    """Optimizer states as flat named tensors (for safetensors) plus the JSON-able rest."""
    tensors, meta = {}, []
    for j, opt in enumerate(opts):
        sd = opt.state_dict()
        scalars = {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{j}.{pid}.{k}"] = v
                else:
                    scalars[f"{pid}.{k}"] = v
        meta.append({"param_groups": sd["param_groups"], "scalars": scalars})
    return tensors, meta


def unflatten_optim(opts: list[torch.optim.Optimizer], tensors: dict[str, torch.Tensor], meta: list) -> None:
    """Load what `flatten_optim` wrote back into `opts` (the same optimizers, in the same order)."""
    if len(meta) != len(opts):
        raise ValueError(f"the saved training state has {len(meta)} optimizer(s), this run has {len(opts)}")
    for j, opt in enumerate(opts):
        state: dict[int, dict] = {}
        for name, t in tensors.items():
            if name.startswith(f"optim.{j}."):
                _, _, pid, k = name.split(".", 3)
                state.setdefault(int(pid), {})[k] = t
        for key, v in meta[j]["scalars"].items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        opt.load_state_dict({"state": state, "param_groups": meta[j]["param_groups"]})


def resumable(out_dir: str | Path, dist: Dist | None = None) -> Path:
    """`out_dir/latest`, ready to resume from: a save killed half-way may have set the previous
    checkpoint aside, so put it back first (rank 0 only; the others wait)."""
    out_dir, dist = Path(out_dir), dist or Dist()
    if dist.main:
        for sub in ("latest", "best"):
            ckpt.recover(out_dir / sub)
    dist.barrier()
    if not ckpt.is_checkpoint(out_dir / "latest"):
        raise ValueError(f"resume: no checkpoint at {out_dir / 'latest'} (the run stopped before saving one)")
    return out_dir / "latest"
