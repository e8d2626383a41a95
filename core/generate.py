"""Decoding: turn a model and a prompt (token ids) into new token ids, one step at a time.

Owns: greedy decoding and sampling with a repetition penalty and the filter chain
temperature → top-k → top-p → min-p, on the KV cache, seeded by a private
`torch.Generator` so a run is reproducible; the per-step trace (`Step`: the top
candidates and their probabilities before and after each filter, the chosen token, its
rank and probability under the model, the entropy, the timings). The generator knows only
token ids; text is the caller's business. `python -m core.generate CHECKPOINT --prompt TEXT`
runs the command line, whose parser lives in `core.cli` (so this module imports no other
decoding strategy: `core.beam` builds on it).
Does not own: the model (`core.model`), beam search (`core.beam`), the decoding lab's
methods and metrics (`core.decoding`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import GPT

LN2 = math.log(2.0)
# Logits are kept within this bound (finite in float32, far beyond any model's logits), so a
# tiny repetition penalty or temperature cannot overflow them to infinity (softmax: NaN).
LOGIT_LIMIT = 1e30


@dataclass(frozen=True)
class Sampling:
    """How to pick the next token. temperature 0 (or greedy=True) means argmax.

    Filters run in this order on the (penalised) logits: temperature, top-k, top-p, min-p.
    None (or top_p=1, min_p=0) switches a filter off. `repetition_penalty` is the CTRL /
    Hugging Face rule: every token already in the text has its logit divided by the
    penalty when positive, multiplied by it when negative (1.0 = off); it applies to
    greedy decoding too.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 100.0):
            raise ValueError(f"temperature={self.temperature} must be in [0, 100]")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be at least 1")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.min_p is not None and not (0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p={self.min_p} must be in [0, 1]")
        if not (0.0 < self.repetition_penalty <= 10.0):
            raise ValueError(f"repetition_penalty={self.repetition_penalty} must be in (0, 10]")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


# --------------------------------------------------------------------------------------
# The filter chain: one function per filter, each (logits, s) -> logits, or None when off.
# `filter_logits` (the fast path) and `filter_stages` (the trace) run the same functions.


def _temperature(logits: torch.Tensor, s: Sampling) -> torch.Tensor | None:
    if s.temperature == 1.0:
        return None
    return (logits / max(s.temperature, 1e-8)).clamp(-LOGIT_LIMIT, LOGIT_LIMIT)


def _top_k(logits: torch.Tensor, s: Sampling) -> torch.Tensor | None:
    if s.top_k is None or s.top_k >= logits.size(-1):
        return None
    kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, s: Sampling) -> torch.Tensor | None:
    if s.top_p is None or s.top_p >= 1.0:
        return None
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    # keep the smallest prefix whose mass reaches top_p (the token that crosses is kept); the most
    # likely token always stays, however small top_p (1e-300 is 0 in float32: it would cut them all)
    cut = (probs.cumsum(dim=-1) - probs) >= s.top_p
    cut[..., 0] = False
    sorted_logits = sorted_logits.masked_fill(cut, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _min_p(logits: torch.Tensor, s: Sampling) -> torch.Tensor | None:
    if not s.min_p:
        return None
    probs = torch.softmax(logits, dim=-1)
    floor = s.min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < floor, float("-inf"))  # the most likely token always stays


FILTERS: tuple[tuple[str, Callable[[torch.Tensor, Sampling], torch.Tensor | None]], ...] = (
    ("temperature", _temperature), ("top_k", _top_k), ("top_p", _top_p), ("min_p", _min_p),
)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """(…, V) logits; `seen` a (…, V) bool mask of tokens already in the text."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty).clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Apply temperature, top-k, top-p, then min-p to (…, V) logits; cut tokens get -inf."""
    logits = logits.float()
    for _, fn in FILTERS:
        out = fn(logits, s)
        if out is not None:
            logits = out
    return logits


def filter_stages(logits: torch.Tensor, s: Sampling) -> list[tuple[str, torch.Tensor]]:
    """The logits after each filter that is on, in order (the trace's view of `filter_logits`)."""
    logits = logits.float()
    stages = []
    for name, fn in FILTERS:
        out = fn(logits, s)
        if out is not None:
            logits = out
            stages.append((name, logits))
    return stages


def pick(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits → (B,) next ids."""
    if s.is_greedy:
        return logits.argmax(dim=-1)
    probs = F.softmax(filter_logits(logits, s), dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


# --------------------------------------------------------------------------------------
# The per-step trace


@dataclass
class Step:
    """One decoding step. Probabilities "under the model" are softmax(raw logits) at T=1.

    candidates: token ids, the `top` best by the order the filters cut on (plus the chosen
    token if it is not among them). stages: stage name → probability of each candidate
    after that stage ("model", then "penalty" when on, then each filter that is on; 0 =
    cut). kept: stage name → how many tokens of the vocabulary survive it.
    entropy: of the model's distribution, in bits. t: seconds of this run's own compute
    from its start to this token; dt: seconds this step took.
    """

    index: int
    token: int
    prob: float
    logprob: float
    rank: int
    sampled_prob: float
    entropy: float
    candidates: list[int] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    t: float = 0.0
    dt: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _entropy_bits(logp: torch.Tensor) -> float:
    h = -(logp.exp() * logp).nan_to_num(0.0).sum(dim=-1)  # nats; 0·log 0 counts as 0
    return float(h.clamp_min(0.0)) / LN2


def _chosen_step(index: int, raw: torch.Tensor, nxt: int, sampled_prob: float) -> Step:
    """A `Step` without candidates or stages: the chosen token's numbers under the model."""
    logp = F.log_softmax(raw.float(), dim=-1)
    lp = logp[nxt]
    return Step(index=index, token=nxt, prob=float(lp.exp()), logprob=float(lp), rank=int((logp > lp).sum()) + 1,
                sampled_prob=sampled_prob, entropy=_entropy_bits(logp))


def _trace_step(index: int, raw: torch.Tensor, penalised: torch.Tensor | None, s: Sampling, nxt: int,
                top: int, filtered: list[tuple[str, torch.Tensor]] | None = None) -> Step:
    """Build the `Step` for one (V,) row of raw logits (and the penalised ones, if the
    repetition penalty is on) and the token chosen from it. `filtered`: the (V,) logits after
    each filter (`filter_stages`), if the caller already has them."""
    rawf = raw.float()
    stages = [("model", rawf)]
    base = rawf
    if penalised is not None:
        base = penalised.float()
        stages.append(("penalty", base))
    if s.is_greedy:
        keep = torch.full_like(base, float("-inf"))
        keep[int(base.argmax())] = 0.0
        stages.append(("argmax", keep))
    else:
        stages += filter_stages(base, s) if filtered is None else filtered
    cand = torch.topk(base, min(top, base.numel())).indices.tolist()
    if nxt not in cand:
        cand.append(nxt)
    every = torch.stack([lg for _, lg in stages])  # (stages, V): one softmax for all of them
    probs = F.softmax(every, dim=-1)
    at_cand = probs[:, torch.tensor(cand)].tolist()
    kept = torch.isfinite(every).sum(dim=-1).tolist()
    step = _chosen_step(index, rawf, nxt, float(probs[-1, nxt]))
    step.candidates = cand
    step.stages = {name: [round(x, 6) for x in row] for (name, _), row in zip(stages, at_cand)}
    step.kept = {name: int(k) for (name, _), k in zip(stages, kept)}
    return step


# --------------------------------------------------------------------------------------
# The decoding loop


def check_top(top: int) -> None:
    """How many candidates a traced step records: 0 to 100."""
    if not 0 <= top <= 100:
        raise ValueError(f"top={top} candidates must be between 0 and 100")


def check_prompt(model: GPT, ids: list[int], max_new_tokens: int) -> None:
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    V = model.config.vocab_size
    bad = next((i for i in ids if not 0 <= int(i) < V), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is out of range: the model has ids 0..{V - 1}")


# The decorator (not a `with` block around the yields) enters inference mode on each resume and
# leaves it at each yield, so a half-consumed generator never leaves the caller's thread with
# autograd switched off.
@torch.inference_mode()
def decode_rows(model: GPT, ids: list[int], max_new_tokens: int, samplings: list[Sampling],
               seeds: list[int | None], eot_id: int | None, use_cache: bool, top: int | None) -> Iterator[list]:
    """Decode one prompt several ways at once: row r samples with `samplings[r]` from its own
    generator (`seeds[r]`) and stops at its own end-of-text. Each step yields one item per row:
    an int (top None) or a `Step` (top 0: the chosen token's numbers only; top > 0: with `top`
    candidates and every filter's cut), or None once that row has stopped. Uses the KV cache
    while the text fits the block; beyond it, the context slides (recomputing the last
    block_size tokens).

    The rows share one forward per step, a batch of one new token each (reading the weights
    once, not once per row). The prompt is run once and its keys and values copied to every
    row, and everything after the forward is done row by row on (1, V) slices with the row's
    own generator, so a row picks as it would alone from the same logits. Its logits come
    from a batch, whose matmuls may sum in another order than a one-row product (the demo
    model: up to 2e-6 apart), so only a near-tie between two tokens could pick differently
    (in the tests the tokens always match a lone run's). A row's `Step.dt` is the shared
    forward plus its own pick."""
    check_prompt(model, ids, max_new_tokens)
    B = len(samplings)
    if B < 1 or len(seeds) != B:
        raise ValueError(f"give one seed per sampling (got {len(seeds)} seeds for {B} samplings)")
    model.eval()
    device = model.transformer.wte.weight.device
    gens: list[torch.Generator | None] = []
    for seed in seeds:
        gen = None
        if seed is not None:
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
        gens.append(gen)
    block = model.config.block_size
    ctxs = [list(ids[-block:]) for _ in range(B)]
    seens: list[torch.Tensor | None] = []
    for s in samplings:
        seen = None
        if s.repetition_penalty != 1.0:  # the penalty sees the whole prompt, as Hugging Face's does
            seen = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
            seen[torch.tensor(ids, device=device)] = True
        seens.append(seen)
    # a cache just long enough (up to the block): less memory to allocate and zero per call
    size = min(block, len(ctxs[0]) + max(max_new_tokens, 1))
    cache = model.new_kv_cache(1, size) if use_cache else None
    live = [True] * B
    clock = time.perf_counter
    elapsed = [0.0] * B
    for i in range(max_new_tokens):
        t0 = clock()
        if i == 0 and cache is not None:  # the prompt, once; its keys and values go to every row
            logits, _ = model(torch.tensor([ctxs[0]], device=device), kv_cache=cache, last_only=True)
            if B > 1:
                logits = logits.expand(B, -1, -1)
                big = model.new_kv_cache(B, size)
                big.k[:] = cache.k
                big.v[:] = cache.v
                big.pos = cache.pos
                cache = big
        elif cache is not None and cache.pos + 1 <= cache.max_len:
            logits, _ = model(torch.tensor([c[-1:] for c in ctxs], device=device), kv_cache=cache, last_only=True)
        else:  # no cache, or the cache is full: recompute on the window
            cache = None
            logits, _ = model(torch.tensor([c[-block:] for c in ctxs], device=device))
        shared = clock() - t0
        out: list = [None] * B
        for r in range(B):
            if not live[r]:
                ctxs[r].append(ctxs[r][-1])  # a stopped row rides along; its results are dropped
                continue
            t1 = clock()
            s, gen, seen = samplings[r], gens[r], seens[r]
            raw = logits[r:r + 1, -1, :]  # (1, V)
            penalised = raw if seen is None else apply_repetition_penalty(raw, seen, s.repetition_penalty)
            filtered, probs = None, None
            if top is not None and not s.is_greedy:  # filter once, for the pick and the trace (as `pick` does)
                filtered = filter_stages(penalised, s)
                final = filtered[-1][1] if filtered else penalised.float()
                probs = F.softmax(final, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=gen)[0, 0])
            else:
                nxt = int(pick(penalised, s, gen)[0])
            if top is not None:
                if top:
                    step = _trace_step(i, raw[0], None if seen is None else penalised[0], s, nxt, top,
                                       None if filtered is None else [(name, lg[0]) for name, lg in filtered])
                else:
                    step = _chosen_step(i, raw[0], nxt, 1.0 if probs is None else float(probs[0, nxt]))
                step.dt = shared + (clock() - t1)
                elapsed[r] += step.dt
                step.t = elapsed[r]
                out[r] = step
            else:
                out[r] = nxt
            if eot_id is not None and nxt == eot_id:
                live[r] = False
            if seen is not None:
                seen[nxt] = True
            ctxs[r].append(nxt)
        yield out
        if not any(live):
            return


def _loop(model: GPT, ids: list[int], max_new_tokens: int, s: Sampling, seed: int | None,
          eot_id: int | None, use_cache: bool, top: int | None) -> Iterator:
    """`decode_rows` with one row: yields its items."""
    for (item,) in decode_rows(model, ids, max_new_tokens, [s], [seed], eot_id, use_cache, top):
        yield item


def stream(model: GPT, ids: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
           seed: int | None = None, eot_id: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time (stops after `eot_id` or `max_new_tokens`)."""
    yield from _loop(model, ids, max_new_tokens, sampling, seed, eot_id, use_cache, None)


def steps(model: GPT, ids: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
          seed: int | None = None, eot_id: int | None = None, use_cache: bool = True,
          top: int = 10) -> Iterator[Step]:
    """Like `stream`, but yield a traced `Step` per token (`top` candidates recorded; with
    top=0 only the chosen token's probability, log-probability, rank and the entropy, which
    is several times cheaper). The same seed gives the same tokens as `stream`."""
    check_top(top)
    yield from _loop(model, ids, max_new_tokens, sampling, seed, eot_id, use_cache, top)


def generate(model: GPT, ids: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
             seed: int | None = None, eot_id: int | None = None, use_cache: bool = True,
             min_p: float | None = None, repetition_penalty: float = 1.0) -> list[int]:
    """The new token ids (the prompt is not included)."""
    s = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, min_p=min_p,
                 repetition_penalty=repetition_penalty)
    return list(stream(model, ids, max_new_tokens, s, seed=seed, eot_id=eot_id, use_cache=use_cache))


if __name__ == "__main__":
    from .cli import generate_main

    sys.exit(generate_main())
