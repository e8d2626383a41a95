"""Attention views derived from one inspection pass (`GPT.trace`): the numbers the Attention
tab draws, with no web code.

Owns: preparing text for a view (`prepare_text`: tokenise, truncate to the block size),
`analyse` (one trace → pooled thumbnails of every head, per-head statistics, the focused
head at full or pooled resolution, the query's row in every head, an aggregation, the
attention equation for one query and the logit lens), and the pieces it is made of, each
usable on its own: per-head statistics (normalised entropy, max weight, mean attended
distance, first-token mass, previous-token score, induction score on a repeated random
sequence), max-pooling with the causal mask kept, aggregations (mean / max over heads,
mean over layers, attention rollout), Jensen–Shannon divergence between two models'
heads, the equation softmax(q·K/√d)·V for one query, the logit lens, and head ablation.

Shapes: patterns are (..., T, T) with rows = queries, columns = keys, rows summing to 1
and zeros above the diagonal (the causal mask); per-head results are (L, nh) arrays.
Masked (future) cells come back as NaN wherever a view is returned, never as zeros.
Does not own: the forward pass (`core.model`), drawing (`app.figures.attention`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from core.model import GPT

MAX_TEXT_CHARS = 50_000
THUMB_SIDE = 64      # grid thumbnails are pooled to at most this many cells a side
GRID_CELLS = 230_000  # ... and to at most this many cells over all heads (the grid's payload)
FOCUS_SIDE = 384     # larger views (focused head, aggregations) are pooled beyond this
LENS_WINDOW = 32     # logit-lens positions shown around the query
INDUCTION_LEN = 50   # length of the random sequence that is repeated to measure induction

STATS = {  # key → (label, what it measures)
    "entropy": ("entropy", "normalised entropy of each query's weights (1 = uniform, 0 = one key)"),
    "max_weight": ("max weight", "the largest weight in each query's row"),
    "mean_distance": ("mean distance", "how many tokens back the weights point, on average"),
    "first_token_mass": ("first-token mass", "weight on the first token (an 'attention sink')"),
    "prev_token_score": ("previous-token", "weight on the token just before the query"),
    "induction_score": ("induction", "on a repeated random sequence: weight on the token after the "
                                     "earlier copy of the query's token"),
}
AGGREGATES = {
    "head_mean": "mean over the heads of the layer",
    "head_max": "max over the heads of the layer",
    "layer_mean": "mean over every layer and head",
    "rollout": "attention rollout (Abnar & Zuidema 2020: layers chained, residual added)",
}


# --------------------------------------------------------------------------------------
# Text in


@dataclass
class PreparedText:
    ids: list[int]            # at most block_size ids
    labels: list[str]         # printable token labels (`Tokenizer.display`)
    n_total: int              # tokens before truncation

    @property
    def truncated(self) -> bool:
        return self.n_total > len(self.ids)


def prepare_text(tokenizer, text: str, block_size: int, max_chars: int = MAX_TEXT_CHARS) -> PreparedText:
    """Tokenise `text` for a view: the first `block_size` tokens (the rest is dropped and
    `truncated` says so). Raises ValueError for no tokenizer, non-text, too long or empty text."""
    if tokenizer is None:
        raise ValueError("this model has no tokenizer, so text cannot be shown on it")
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ValueError(f"text is {len(text):,} characters; the limit is {max_chars:,}")
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("type some text: the attention view needs at least one token")
    kept = ids[:block_size]
    return PreparedText(ids=kept, labels=[tokenizer.display(i) for i in kept], n_total=len(ids))


def check_head(config, layer: int, head: int) -> tuple[int, int]:
    """Validate a (layer, head) pair against the model's shape."""
    layer, head = _int(layer, "layer"), _int(head, "head")
    if not 0 <= layer < config.n_layer:
        raise ValueError(f"layer {layer} is out of range: this model has layers 0..{config.n_layer - 1}")
    if not 0 <= head < config.n_head:
        raise ValueError(f"head {head} is out of range: this model has heads 0..{config.n_head - 1}")
    return layer, head


def check_query(query: int, T: int) -> int:
    """A query position; -1 (or any negative) means the last token."""
    query = _int(query, "query")
    if query < 0:
        query = T + query if query >= -T else T - 1
    if query >= T:
        raise ValueError(f"query position {query} is out of range: the text has tokens 0..{T - 1}")
    return query


def _int(v, name: str) -> int:
    try:
        i = int(v)
    except (TypeError, ValueError, OverflowError):  # None, "two", NaN; infinity overflows
        raise ValueError(f"{name} must be an integer, got {v!r:.40}") from None
    if i != v and not (isinstance(v, str) and v.strip().lstrip("-").isdigit()):
        raise ValueError(f"{name} must be an integer, got {v!r:.40}")
    return i


# --------------------------------------------------------------------------------------
# Per-head statistics on patterns (..., T, T). Queries 1..T-1 are averaged: query 0 can
# only attend to itself, so it says nothing about a head.


def _rows(p: torch.Tensor) -> torch.Tensor:
    return p[..., 1:, :]  # (..., T-1, T)


def _mean_or_nan(x: torch.Tensor) -> np.ndarray:
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1], np.nan, dtype=np.float32)
    return x.mean(-1).float().cpu().numpy()


def normalised_entropy(p: torch.Tensor) -> np.ndarray:
    """Mean over queries of H(row) / log(number of keys the query can see): 1 uniform, 0 one-hot."""
    T = p.shape[-1]
    h = -torch.special.xlogy(_rows(p), _rows(p)).sum(-1)  # (..., T-1)
    n_keys = torch.arange(2, T + 1, device=p.device, dtype=h.dtype)
    return _mean_or_nan(h / n_keys.log())


def max_weight(p: torch.Tensor) -> np.ndarray:
    """Mean over queries of the row's largest weight."""
    return _mean_or_nan(_rows(p).amax(-1))


def mean_distance(p: torch.Tensor) -> np.ndarray:
    """Mean over queries of Σ_j p[i, j]·(i − j): how far back the head looks, in tokens."""
    T = p.shape[-1]
    pos = torch.arange(T, device=p.device, dtype=p.dtype)
    return _mean_or_nan(pos[1:] - _rows(p) @ pos)


def first_token_mass(p: torch.Tensor) -> np.ndarray:
    """Mean over queries of the weight on position 0."""
    return _mean_or_nan(_rows(p)[..., 0])


def prev_token_score(p: torch.Tensor) -> np.ndarray:
    """Mean over queries of the weight on the previous token, p[i, i−1]."""
    return _mean_or_nan(p.diagonal(-1, -2, -1))


def induction_score(p: torch.Tensor, period: int) -> np.ndarray:
    """For a sequence that repeats with `period`, the mean weight a query in the repeat puts
    on the token after the earlier copy of itself, p[i, i − period + 1], for i ≥ period."""
    T = p.shape[-1]
    if not 1 <= period < T:
        raise ValueError(f"period {period} must be between 1 and T-1 = {T - 1}")
    return _mean_or_nan(p.diagonal(-(period - 1), -2, -1)[..., 1:])  # rows i = period..T-1


def head_stats(p: torch.Tensor) -> dict[str, np.ndarray]:
    """Every statistic except induction (which needs its own input) for patterns (..., T, T)."""
    return {"entropy": normalised_entropy(p), "max_weight": max_weight(p), "mean_distance": mean_distance(p),
            "first_token_mass": first_token_mass(p), "prev_token_score": prev_token_score(p)}


def repeated_random_tokens(vocab_size: int, n: int = INDUCTION_LEN, seed: int = 0,
                           exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """(1, 2n) ids: n distinct random tokens, then the same n again (fixed seed)."""
    pool = torch.tensor([i for i in range(vocab_size) if i not in set(exclude)])
    n = min(n, len(pool))
    g = torch.Generator().manual_seed(seed)
    first = pool[torch.randperm(len(pool), generator=g)[:n]]
    return torch.cat([first, first]).unsqueeze(0)


def measure_induction(model: GPT, n: int = INDUCTION_LEN, seed: int = 0, exclude=()) -> np.ndarray:
    """(L, nh) induction scores of every head on a repeated random-token sequence."""
    n = max(1, min(n, model.config.block_size // 2))
    ids = repeated_random_tokens(model.config.vocab_size, n, seed, exclude)
    n = ids.shape[1] // 2
    if n < 2:
        return np.full((model.config.n_layer, model.config.n_head), np.nan, dtype=np.float32)
    p = patterns(model, ids)
    return induction_score(p, n)


# --------------------------------------------------------------------------------------
# Patterns, pooling and aggregations


def patterns(model: GPT, ids) -> torch.Tensor:
    """(L, nh, T, T) float32 attention probabilities of one sequence, from the inspection path."""
    idx = _idx(model, ids)
    tr = model.trace(idx, keep="blocks.*.attn.pattern")
    return torch.stack([tr.tensors.pop(f"blocks.{i}.attn.pattern")[0].float() for i in range(model.config.n_layer)])


def _idx(model: GPT, ids) -> torch.Tensor:
    idx = ids if isinstance(ids, torch.Tensor) else torch.tensor([list(ids)], dtype=torch.long)
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    return idx.to(model.transformer.wte.weight.device)


def grid_side(n_layer: int, n_head: int, max_side: int = THUMB_SIDE, max_cells: int = GRID_CELLS) -> int:
    """Cells a side per grid thumbnail: `max_side`, less for many heads so the whole grid
    holds at most `max_cells` float32 cells (12 × 12 heads → 39 a side, about 0.9 MB)."""
    return max(4, min(max_side, math.isqrt(max_cells // max(1, n_layer * n_head))))


def pool_factor(T: int, max_side: int) -> int:
    return max(1, math.ceil(T / max_side))


def pool(p: torch.Tensor, max_side: int) -> tuple[np.ndarray, int]:
    """Max-pool (..., T, T) to at most `max_side` cells a side; cells wholly above the
    diagonal (future keys) become NaN. Returns (float32 array, tokens per cell)."""
    T = p.shape[-1]
    f = pool_factor(T, max_side)
    lead = p.shape[:-2]
    x = p.float().reshape(-1, 1, T, T)
    if f > 1:
        x = F.max_pool2d(x, f, ceil_mode=True)
    n = x.shape[-1]
    out = x.reshape(*lead, n, n).cpu().numpy().copy()
    out[..., np.triu(np.ones((n, n), dtype=bool), 1)] = np.nan
    return out, f


def rollout(head_mean: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout over layers: R = Ã_{L-1} ⋯ Ã_0 with Ã = (1−r)·A + r·I, rows
    renormalised. `head_mean` is (L, T, T), each layer's attention averaged over heads."""
    T = head_mean.shape[-1]
    eye = torch.eye(T, dtype=head_mean.dtype, device=head_mean.device)
    R = eye
    for A in head_mean:
        A = (1 - residual) * A + residual * eye
        R = (A / A.sum(-1, keepdim=True)) @ R
    return R


def aggregate(p: torch.Tensor, how: str, layer: int) -> torch.Tensor:
    """One (T, T) summary of all patterns p (L, nh, T, T); `how` is a key of AGGREGATES."""
    if how == "head_mean":
        return p[layer].mean(0)
    if how == "head_max":
        return p[layer].amax(0)
    if how == "layer_mean":
        return p.mean((0, 1))
    if how == "rollout":
        return rollout(p.mean(1))
    raise ValueError(f"unknown aggregation {how!r}; choose one of: {', '.join(AGGREGATES)}")


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """Jensen–Shannon divergence (bits, 0..1) between matching rows of p and q (..., T, T),
    averaged over queries 1..T-1."""
    if p.shape != q.shape:
        raise ValueError(f"patterns differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}")
    p, q = _rows(p.float()), _rows(q.float())
    m = 0.5 * (p + q)
    kl = lambda a: (torch.special.xlogy(a, a) - torch.special.xlogy(a, m)).sum(-1)  # noqa: E731
    return _mean_or_nan((0.5 * kl(p) + 0.5 * kl(q)).clamp_min(0) / math.log(2))


# --------------------------------------------------------------------------------------
# The equation for one query, and the logit lens


@dataclass
class Equation:
    """softmax(q·Kᵀ/√d)·V for one layer, head and query, step by step, with the model's own
    numbers, and how far each step is from what the model computed."""
    layer: int
    head: int
    query: int
    head_size: int
    q: np.ndarray          # (hs,)  the query vector
    dots: np.ndarray       # (T,)   q·k_j for every key (future keys too, before masking)
    scores: np.ndarray     # (T,)   q·k_j / √d, −inf where masked
    weights: np.ndarray    # (T,)   softmax of the scores (0 where masked)
    v_norms: np.ndarray    # (T,)   ‖v_j‖
    z: np.ndarray          # (hs,)  Σ_j weights_j · v_j
    model_weights: np.ndarray  # (T,) the model's pattern row
    model_z: np.ndarray    # (hs,)  the model's per-head output
    weights_err: float     # max |weights − model_weights|
    z_err: float           # max |z − model_z|

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_size)


def equation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query: int,
             model_row: torch.Tensor, model_z: torch.Tensor, layer: int = 0, head: int = 0) -> Equation:
    """The equation for one query from one head's q, k, v (T, hs) and the model's results."""
    q, k, v = q.double(), k.double(), v.double()
    T, hs = k.shape
    qi = q[query]
    dots = k @ qi                                  # (T,)
    scores = dots / math.sqrt(hs)
    masked = torch.arange(T) > query
    scores = scores.masked_fill(masked.to(scores.device), float("-inf"))
    weights = torch.softmax(scores, -1)
    z = weights @ v                                # (hs,)
    model_row, model_z = model_row.double(), model_z.double()
    return Equation(layer, head, query, hs, _np(qi), _np(dots), _np(scores), _np(weights), _np(v.norm(dim=-1)),
                    _np(z), _np(model_row), _np(model_z), float((weights - model_row).abs().max()),
                    float((z - model_z).abs().max()))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@dataclass
class LogitLens:
    """Top next-token prediction after the embedding and after every block, at `positions`."""
    rows: list[str]             # "embed", "L0", …, "L{L-1}" (the last row is the model's output)
    positions: list[int]        # the positions shown
    top_ids: np.ndarray         # (R, W) int
    top_probs: np.ndarray       # (R, W)
    next_ids: list[int]         # (W,) the token that actually follows, −1 at the end of the text
    next_probs: np.ndarray      # (R, W) the probability of that token (NaN at the end)


def lens_positions(T: int, query: int, window: int = LENS_WINDOW) -> list[int]:
    start = max(0, min(query - window // 2, T - window))
    return list(range(start, min(T, start + window)))


def logit_lens(model: GPT, residuals: torch.Tensor, ids: list[int], positions: list[int]) -> LogitLens:
    """residuals (L+1, T, C): the stream after the embedding and after every block."""
    with torch.no_grad():
        logits = model.unembed(residuals[:, positions]).float()  # (R, W, V)
        probs = torch.softmax(logits, -1)
    top_p, top_i = probs.max(-1)
    nxt = [ids[p + 1] if p + 1 < len(ids) else -1 for p in positions]
    nxt_t = torch.tensor([max(n, 0) for n in nxt], device=probs.device)
    next_p = probs.gather(-1, nxt_t.view(1, -1, 1).expand(probs.shape[0], -1, 1))[..., 0].cpu()
    next_p[:, torch.tensor(nxt) < 0] = float("nan")
    rows = ["embed"] + [f"L{i}" for i in range(residuals.shape[0] - 1)]
    return LogitLens(rows, list(positions), _np(top_i), _np(top_p), nxt, _np(next_p))


# --------------------------------------------------------------------------------------
# Everything the tab shows, from one trace


@dataclass
class Analysis:
    n_layer: int
    n_head: int
    T: int
    layer: int
    head: int
    query: int
    thumbs: np.ndarray           # (L, nh, P, P) pooled max, NaN above the diagonal
    thumb_factor: int            # tokens per thumbnail cell
    focus: np.ndarray            # (N, N) the focused head (pooled if T > FOCUS_SIDE)
    focus_factor: int
    query_rows: np.ndarray       # (L, nh, T) every head's weights for the query
    stats: dict[str, np.ndarray] = field(default_factory=dict)   # each (L, nh)
    aggregate: np.ndarray | None = None   # (N, N) pooled like `focus`
    aggregate_how: str = "head_mean"
    equation: Equation | None = None
    lens: LogitLens | None = None


def view_keep(layer: int) -> list[str]:
    """What `analyse` keeps from the trace: every pattern, the residual stream (logit lens)
    and the focused layer's q, k, v, z (the equation). Nothing else is stored."""
    pre = f"blocks.{layer}.attn."
    return ["embed", "blocks.*.attn.pattern", "blocks.*.resid_post", pre + "q", pre + "k", pre + "v", pre + "z"]


def analyse(model: GPT, ids: list[int], layer: int = 0, head: int = 0, query: int = -1, *,
            aggregate_how: str = "head_mean", induction: bool = True, thumb_side: int | None = None,
            focus_side: int = FOCUS_SIDE, lens_window: int = LENS_WINDOW, exclude: tuple[int, ...] = (),
            trace=None, induction_scores: np.ndarray | None = None) -> Analysis:
    """One inspection pass over `ids` and every view of the tab derived from it. `trace`: a
    `model.trace(ids, keep=view_keep(layer))` already made (benchmarks time it apart); it is
    consumed (patterns are popped as they are stacked). `thumb_side` None: `grid_side(L, nh)`.
    `induction_scores`: the model's (L, nh) `measure_induction` (it does not depend on the
    text, so callers may keep it); None measures it here when `induction` is true."""
    cfg = model.config
    layer, head = check_head(cfg, layer, head)
    if aggregate_how not in AGGREGATES:
        raise ValueError(f"unknown aggregation {aggregate_how!r}; choose one of: {', '.join(AGGREGATES)}")
    idx = _idx(model, ids)
    T = idx.shape[1]
    query = check_query(query, T)
    pre = f"blocks.{layer}.attn."
    tr = trace if trace is not None else model.trace(idx, keep=view_keep(layer))
    p = torch.stack([tr.tensors.pop(f"blocks.{i}.attn.pattern")[0].float() for i in range(cfg.n_layer)])
    thumbs, tf = pool(p, thumb_side or grid_side(cfg.n_layer, cfg.n_head))
    focus, ff = pool(p[layer, head], focus_side)
    stats = head_stats(p)
    if induction_scores is not None:
        if np.shape(induction_scores) != (cfg.n_layer, cfg.n_head):
            raise ValueError(f"induction scores have shape {np.shape(induction_scores)}; this model has "
                             f"{cfg.n_layer} layers × {cfg.n_head} heads")
        stats["induction_score"] = np.asarray(induction_scores)
    elif induction:
        stats["induction_score"] = measure_induction(model, exclude=exclude)
    agg, _ = pool(aggregate(p, aggregate_how, layer), focus_side)
    q, k, v, z = (tr[pre + n][0, head] for n in "qkvz")
    eq = equation(q, k, v, query, p[layer, head, query], z[query], layer, head)
    residuals = torch.stack([tr["embed"][0]] + [tr[f"blocks.{i}.resid_post"][0] for i in range(cfg.n_layer)])
    lens = logit_lens(model, residuals, list(map(int, idx[0].tolist())), lens_positions(T, query, lens_window))
    return Analysis(cfg.n_layer, cfg.n_head, T, layer, head, query, thumbs, tf, focus, ff,
                    _np(p[:, :, query]), stats, agg, aggregate_how, eq, lens)


# --------------------------------------------------------------------------------------
# Comparing two models, ablating heads


def compare(model_a: GPT, model_b: GPT, ids: list[int]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(L, nh) JS divergence per head between two same-shaped models on the same ids, and
    both models' patterns (L, nh, T, T)."""
    a, b = model_a.config, model_b.config
    if (a.n_layer, a.n_head) != (b.n_layer, b.n_head):
        raise ValueError(f"the models differ in shape: {a.n_layer} layers × {a.n_head} heads vs "
                         f"{b.n_layer} layers × {b.n_head} heads; comparing needs the same shape")
    if len(ids) > b.block_size:
        raise ValueError(f"the text has {len(ids)} tokens; the second model reads at most {b.block_size}")
    pa, pb = patterns(model_a, ids), patterns(model_b, ids)
    return js_divergence(pa, pb), pa, pb


@dataclass
class Ablation:
    heads: list[tuple[int, int]]
    position: int
    loss_before: float | None    # mean next-token loss over the text (None for one token)
    loss_after: float | None
    probs_before: np.ndarray     # (V,) next-token distribution at `position`
    probs_after: np.ndarray
    kl: float                    # KL(before ‖ after) at `position`, nats


def ablate(model: GPT, ids: list[int], heads: list[tuple[int, int]], position: int = -1) -> Ablation:
    """Zero the outputs of `heads` (via `head_mask`) and compare the next-token distribution
    at `position` and the loss on the text with the unablated model."""
    cfg = model.config
    heads = [check_head(cfg, l, h) for l, h in heads]
    if not heads:
        raise ValueError("choose at least one head to ablate")
    idx = _idx(model, ids)
    T = idx.shape[1]
    position = check_query(position, T)
    mask = torch.ones(cfg.n_layer, cfg.n_head, device=idx.device)
    for l, h in heads:
        mask[l, h] = 0.0
    out = []
    for hm in (None, mask):
        logits = model.trace(idx, keep="logits", head_mask=hm).logits[0].float()  # (T, V)
        loss = F.cross_entropy(logits[:-1], idx[0, 1:]).item() if T > 1 else None
        out.append((loss, torch.log_softmax(logits[position], -1)))
    (lb, before), (la, after) = out
    kl = float((before.exp() * (before - after)).sum())
    return Ablation(heads, position, lb, la, _np(before.exp()), _np(after.exp()), max(kl, 0.0))
