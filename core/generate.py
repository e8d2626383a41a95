"""Decoding: turn a model and a prompt (token ids) into new token ids.

Owns: greedy decoding and sampling with temperature / top-k / top-p, on the KV cache,
seeded by a private `torch.Generator` so a run is reproducible; and the CLI
`python -m core.generate CHECKPOINT --prompt TEXT`. The generator knows only token ids;
text is the caller's business (the CLI uses the checkpoint's tokenizer).
Does not own: the model (`core.model`) or the decoding lab's metrics (the app).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .model import GPT


@dataclass(frozen=True)
class Sampling:
    """How to pick the next token. temperature 0 (or greedy=True) means argmax."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 100.0):
            raise ValueError(f"temperature={self.temperature} must be in [0, 100]")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


def filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p to (…, V) logits; cut tokens get -inf."""
    logits = logits.float() / max(s.temperature, 1e-8)
    if s.top_k is not None and s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses is kept)
        cut = (cum - torch.softmax(sorted_logits, dim=-1)) >= s.top_p
        sorted_logits = sorted_logits.masked_fill(cut, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def pick(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits → (B,) next ids."""
    if s.is_greedy:
        return logits.argmax(dim=-1)
    probs = F.softmax(filter_logits(logits, s), dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.no_grad()
def stream(model: GPT, ids: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
           seed: int | None = None, eot_id: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time. Uses the KV cache while the text fits the block;
    beyond it, the context slides (recomputing the last block_size tokens)."""
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    model.eval()
    device = model.transformer.wte.weight.device
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    block = model.config.block_size
    ctx = list(ids[-block:])
    cache = model.new_kv_cache(1) if use_cache else None
    pending = ctx  # tokens not yet fed to the cache
    for _ in range(max_new_tokens):
        if cache is not None and cache.pos + len(pending) <= block:
            logits, _ = model(torch.tensor([pending], device=device), kv_cache=cache)
        else:  # no cache, or the cache is full: recompute on the window
            cache = None
            logits, _ = model(torch.tensor([ctx[-block:]], device=device))
        nxt = int(pick(logits[:, -1, :], sampling, gen)[0])
        yield nxt
        if eot_id is not None and nxt == eot_id:
            return
        ctx.append(nxt)
        pending = [nxt]


def generate(model: GPT, ids: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             seed: int | None = None, eot_id: int | None = None, use_cache: bool = True) -> list[int]:
    """The new token ids (the prompt is not included)."""
    s = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    return list(stream(model, ids, max_new_tokens, s, seed=seed, eot_id=eot_id, use_cache=use_cache))


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import load  # local import: generation itself needs no files

    p = argparse.ArgumentParser(prog="python -m core.generate", description="Generate text from a checkpoint.")
    p.add_argument("checkpoint", help="a Glassbox or Hugging Face GPT-2-layout folder")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    a = p.parse_args(argv)
    try:
        ck = load(a.checkpoint, device=a.device)
        if ck.tokenizer is None:
            raise ValueError(f"{a.checkpoint} has no tokenizer files")
        ids = ck.tokenizer.encode(a.prompt)
        t0 = time.perf_counter()
        new = generate(ck.model, ids, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                       top_p=a.top_p, greedy=a.greedy, seed=a.seed, eot_id=ck.tokenizer.eot_id)
        dt = time.perf_counter() - t0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = ck.tokenizer.decode(new)
    if a.json:
        print(json.dumps({"prompt": a.prompt, "text": text, "ids": new, "tokens_per_s": len(new) / max(dt, 1e-9)}))
    else:
        print(a.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
