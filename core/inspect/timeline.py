"""The timeline of a run: what its snapshots (`core.snapshots`) show, step by step, on one text.

Owns: finding a run's snapshots (`run_snapshots`), the run's default text (`default_text`: the
held-out excerpt its snapshots carry), and `build`, which derives for every snapshot the
numbers the Timeline tab and `/timeline` show: the losses near its step (the training loss at
the step, and the eval nearest it), the sample nearest it, the per-head statistics
(previous-token, entropy and induction, all on the text), the pooled
attention grid on the text, the top next tokens after the text's last token, and the
probability of the true next token at every position; and, across steps, the token
embeddings aligned onto the last snapshot (orthogonal Procrustes, `core.inspect.embeddings`).

Previous-token and entropy are `core.inspect.attention`'s own functions, run on each snapshot
alone. Induction is measured in context, on the text itself (`context_induction`): the weight a
query puts on the tokens that followed an earlier occurrence of its own last `CONTEXT` tokens. On
a run's own text this finds the head that copies, where the Attention tab's repeated random
sequence can miss it (on the induction corpus, random letters without spaces or `|` are unlike
anything the model saw: three of five seeds formed a copying head that scored 0.1–0.3 there and
0.47–0.77 in context). A text with fewer than `MIN_MATCHES` such queries falls back to the repeated
random sequence, leaving out special tokens and those with no letter or digit.
Does not own: writing snapshots (`core.snapshots`), drawing (`app.figures.timeline`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import checkpoint, snapshots
from core.checkpoint import Checkpoint
from core.inspect import attention as A
from core.inspect.embeddings import align_checkpoints, token_classes, token_labels

MAX_TEXT_CHARS = 4000
MAX_SNAPSHOTS = 64  # a timeline shows at most this many, evenly picked, the first and last kept
TOP_K = 5
TIMELINE_STATS = {"prev_token_score": "previous-token", "induction_score": "induction", "entropy": "entropy"}
GRID_SIDE = 48  # each head's thumbnail is pooled to at most this many cells a side
MIN_MATCHES = 4  # queries with an earlier copy of their context, for induction to be measured on the text
CONTEXT = 3  # tokens a query's context must repeat (two: chance repeats in random words blur the score)


@dataclass(frozen=True)
class StepView:
    """One snapshot's numbers on the text (shapes: L layers, nh heads, T tokens, t ≤ GRID_SIDE)."""

    step: int
    loss: float | None          # the training loss of this step (None at step 0)
    train_loss: float | None    # from the eval nearest this step
    val_loss: float | None
    eval_step: int | None
    sample: str                 # the sample nearest this step ("" when the run has none)
    sample_step: int | None
    stats: dict[str, np.ndarray]  # TIMELINE_STATS key → (L, nh)
    thumbs: np.ndarray            # (L, nh, t, t) pooled attention, NaN above the diagonal
    top: list[tuple[str, float]]  # the most likely tokens after the text, best first
    true_probs: np.ndarray        # (T-1,) p(token i+1 | tokens ≤ i)


@dataclass(frozen=True)
class Timeline:
    steps: list[int]
    labels: list[str]        # the text's tokens, as shown
    n_total: int             # tokens before truncation to the block size
    pool: int                # thumbnail cells per token side
    views: list[StepView]
    induction_on: str        # "text", or "a repeated random sequence" (the text repeats too little)
    embed: np.ndarray        # (n, V, 2) token embeddings, aligned onto the last snapshot's PCA
    embed_classes: np.ndarray  # (V,) token classes (colours)
    embed_disparity: list[float]  # each snapshot's distance to the last after alignment
    embed_explained: list[float]  # the last snapshot's PCA: variance explained per axis
    vocab: list[str]         # token labels for `embed`
    history: list[list]      # [[step, training loss]] up to the last snapshot
    evals: list[list]        # [[step, train loss, val loss]]


def nearest(sorted_steps: Sequence[int], step: int) -> int:
    """Index of the value in `sorted_steps` nearest `step` (the earlier one on a tie)."""
    i = bisect.bisect_left(sorted_steps, step)
    if i == 0:
        return 0
    if i == len(sorted_steps) or step - sorted_steps[i - 1] <= sorted_steps[i] - step:
        return i - 1
    return i


def pick(items: list, limit: int = MAX_SNAPSHOTS) -> list:
    """At most `limit` items, evenly spread, the first and last kept."""
    if len(items) <= limit:
        return items
    idx = sorted({round(k * (len(items) - 1) / (limit - 1)) for k in range(limit)})
    return [items[i] for i in idx]


def run_snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """A run's snapshots, (step, folder) by step, at most `MAX_SNAPSHOTS`. ValueError if it has none."""
    found = pick(snapshots.listing(run_dir))
    if not found:
        raise ValueError(f"the run {Path(run_dir).name!r} has no snapshots: train it with snapshots on "
                         "(the Train tab's 'Snapshots', or --snapshots N)")
    return found


def default_text(run_dir: str | Path) -> str:
    """The held-out excerpt the run's last snapshot carries ("" when there is none)."""
    found = snapshots.listing(run_dir)
    return str(snapshots.read_meta(found[-1][1]).get("excerpt", "")) if found else ""


def induction_exclude(tokenizer, vocab_size: int) -> tuple[int, ...]:
    """Tokens left out of the induction sequence: special ones and those with no letter or digit."""
    if tokenizer is None:
        return ()
    out = []
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if tokenizer.is_special(i) or not any(ch.isalnum() for ch in tokenizer.decode([i])):
            out.append(i)
    return tuple(out) if len(out) < vocab_size - 4 else ()  # keep a sequence to measure on


def context_targets(ids: Sequence[int], n: int = CONTEXT) -> torch.Tensor:
    """(T, T) bool: key k is an induction target of query q when the n tokens before k equal the
    query's last n tokens (ids[k-1-d] = ids[q-d] for d < n), k < q and q ≥ n − 1."""
    a = torch.as_tensor(list(ids), dtype=torch.long)
    T = a.numel()
    q, k = torch.arange(T).unsqueeze(1), torch.arange(T).unsqueeze(0)
    M = (k >= n) & (k < q) & (q >= n - 1)
    for d in range(n):
        M &= a[(k - 1 - d).clamp(min=0)] == a[(q - d).clamp(min=0)]  # (1, T) vs (T, 1)
    return M


def context_induction(p: torch.Tensor, ids: Sequence[int]) -> tuple[np.ndarray, int]:
    """(L, nh) mean over the queries that have induction targets of the weight on them, and how
    many queries had one (0: NaN scores)."""
    M = context_targets(ids).to(p.dtype)
    rows = M.sum(-1) > 0
    n = int(rows.sum())
    if n == 0:
        return np.full(p.shape[:-2], np.nan, dtype=np.float32), 0
    return (p * M).sum(-1)[..., rows].mean(-1).float().cpu().numpy(), n


def step_stats(model, ids: list[int], exclude: tuple[int, ...] = ()) -> tuple[dict[str, np.ndarray], torch.Tensor,
                                                                               torch.Tensor]:
    """One snapshot on `ids`: (TIMELINE_STATS → (L, nh), patterns (L, nh, T, T), logits (T, V))."""
    idx = A._idx(model, ids)
    tr = model.trace(idx, keep=["blocks.*.attn.pattern", "logits"])
    p = tr.patterns()[:, 0].float()  # (L, nh, T, T)
    induction, n = context_induction(p, ids)
    if n < MIN_MATCHES:
        induction = A.measure_induction(model, exclude=exclude)
    stats = {"prev_token_score": A.prev_token_score(p), "entropy": A.normalised_entropy(p),
             "induction_score": induction}
    return stats, p, tr.logits[0].float()


def _near(points: list, step: int) -> list | None:
    if not points:
        return None
    return points[nearest([int(p[0]) for p in points], step)]


def step_view(step: int, ck: Checkpoint, ids: list[int], meta: dict, exclude: tuple[int, ...] = (),
              top_k: int = TOP_K) -> tuple[StepView, int]:
    """The numbers of one snapshot (`meta`: the run's latest meta.json, for the losses and samples near it)."""
    model = ck.model.eval()
    with torch.no_grad():
        stats, p, logits = step_stats(model, ids, exclude)
    side = A.grid_side(model.config.n_layer, model.config.n_head, GRID_SIDE)
    thumbs, pool = A.pool(p, side)
    probs = torch.softmax(logits, -1)  # (T, V)
    true = probs[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1))[:, 0] if len(ids) > 1 else probs[:0, 0]
    top_p, top_i = probs[-1].topk(min(top_k, probs.shape[-1]))
    tok = ck.tokenizer
    top = [(tok.display(int(i)) if tok is not None else str(int(i)), float(v)) for v, i in zip(top_p, top_i)]
    history = {int(h["step"]): h.get("loss") for h in meta.get("history", []) if isinstance(h, dict)}
    evals = [[e["step"], e.get("train_loss"), e.get("val_loss")] for e in meta.get("evals", []) if isinstance(e, dict)]
    ev = _near(evals, step)
    samples = [[s["step"], s.get("text", "")] for s in meta.get("samples", []) if isinstance(s, dict)]
    sm = _near(samples, step)
    view = StepView(step=step, loss=history.get(step), train_loss=ev[1] if ev else None,
                    val_loss=ev[2] if ev else None, eval_step=ev[0] if ev else None, sample=sm[1] if sm else "",
                    sample_step=sm[0] if sm else None, stats=stats, thumbs=thumbs, top=top,
                    true_probs=true.cpu().numpy())
    return view, pool


def build(snaps: Sequence[tuple[int, Checkpoint | Path]], text: str, top_k: int = TOP_K) -> Timeline:
    """The timeline of `snaps` (by step, one run: one tokenizer and architecture) on `text`. A folder
    is loaded (and validated) when its turn comes and let go after, so one model is in memory at a time."""
    if not snaps:
        raise ValueError("no snapshots to show")

    def opened(ck: Checkpoint | Path) -> Checkpoint:
        ck = ck if isinstance(ck, Checkpoint) else checkpoint.load(ck)
        if ck.config != last.config:
            raise ValueError("these snapshots are not of one model: their configs differ")
        return ck

    last = snaps[-1][1] if isinstance(snaps[-1][1], Checkpoint) else checkpoint.load(snaps[-1][1])
    prep = A.prepare_text(last.tokenizer, text, last.config.block_size, MAX_TEXT_CHARS)
    exclude = induction_exclude(last.tokenizer, last.config.vocab_size)
    meta = last.meta or {}  # the last snapshot's history holds every earlier step's losses and samples
    views, wte, pool = [], [], 1
    for k, (step, item) in enumerate(snaps):
        ck = last if k == len(snaps) - 1 else opened(item)
        view, pool = step_view(step, ck, prep.ids, meta, exclude, top_k)
        views.append(view)
        wte.append(ck.model.transformer.wte.weight.detach().clone())
    coords, proj, disparity = align_checkpoints(wte, k=2)
    V = last.config.vocab_size
    history = [[h["step"], h.get("loss")] for h in meta.get("history", []) if isinstance(h, dict)]
    evals = [[e["step"], e.get("train_loss"), e.get("val_loss")] for e in meta.get("evals", []) if isinstance(e, dict)]
    on_text = int(context_targets(prep.ids).any(-1).sum()) >= MIN_MATCHES
    return Timeline(steps=[s for s, _ in snaps], labels=prep.labels, n_total=prep.n_total, pool=pool, views=views,
                    induction_on="text" if on_text else "a repeated random sequence",
                    embed=coords, embed_classes=token_classes(last.tokenizer, V), embed_disparity=list(disparity),
                    embed_explained=[float(x) for x in proj.explained], vocab=token_labels(last.tokenizer, V),
                    history=history, evals=evals)


def as_dict(tl: Timeline) -> list[dict]:
    """Per snapshot, the JSON `/timeline` returns (NaN as None)."""
    def num(x):
        x = float(x)
        return x if np.isfinite(x) else None

    def grid(a: np.ndarray) -> list:
        return [[num(v) for v in row] for row in a]

    return [{"step": v.step, "loss": v.loss, "train_loss": v.train_loss, "val_loss": v.val_loss,
             "eval_step": v.eval_step, "stats": {k: grid(v.stats[k]) for k in TIMELINE_STATS},
             "top_next": [{"token": t, "prob": p} for t, p in v.top],
             "true_token_probs": [num(x) for x in v.true_probs]} for v in tl.views]
