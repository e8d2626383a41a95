"""Figures of the Walkthrough tab: one picture per stage, drawn from the stage's JSON (what
`core.inspect.walkthrough.walkthrough` returns, and `/walkthrough` sends).

Owns: the token tiles, the embedding strips, one head's scores → mask → softmax with every
head's row below, the residual stream through the stack with the logit lens's guesses, the
top-10 next tokens and the rest of the mass, the samplers and the next steps, and the
per-position loss with the parameters that got the largest gradients. Each stays readable
from a 66-token character model to GPT-2 (12 × 12 heads, 50,257 tokens, 1,024 positions):
long texts show a window of tokens (the JSON keeps all of them), hover gives exact numbers.
Token labels are data (`safe`). Does not own: any number (core), the words (the tab).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.figures import Fig
from app.figures import figure as _figure
from app.figures.attention import ATTN_SCALE, safe

TILES_SHOWN = 64    # token tiles drawn (the first ones; the query's is always among them)
KEYS_SHOWN = 40     # keys drawn in the attention stage: the last ones up to the query
LOSS_SHOWN = 256    # positions drawn in the loss chart
ACCENT, GREY, INK = "#4f46e5", "#94a3b8", "#1e1b4b"
DIVERGING = [[0.0, "#b91c1c"], [0.5, "#f8fafc"], [1.0, "#1d4ed8"]]


def _tok(i: int, label: str) -> str:
    return f"{i} ‘{safe(label)}’"


def _window(n: int, end: int, size: int) -> range:
    """Up to `size` positions ending at `end` (inclusive), within 0..n-1."""
    return range(max(0, end - size + 1), min(n, end + 1))


# --------------------------------------------------------------------------------------
# 1. tokens


def token_tiles(labels: Sequence[str], ids: Sequence[int], query: int, vocab_size: int,
                per_row: int = 12, shown: int = TILES_SHOWN) -> Fig:
    """Tiles in reading order, each with the token (top) and its id (below); the query's tile
    is filled. Beyond `shown` tokens a window around the query is drawn."""
    n = len(ids)
    start = 0 if n <= shown or query < shown else min(query - shown // 2, n - shown)
    idx = list(range(start, min(n, start + shown)))
    xs = [k % per_row for k in range(len(idx))]
    ys = [k // per_row for k in range(len(idx))]
    shapes = [dict(type="rect", x0=x - 0.46, x1=x + 0.46, y0=y - 0.38, y1=y + 0.38, layer="below",
                   fillcolor=ACCENT if i == query else "#e0e7ff", line=dict(color="#6366f1", width=1))
              for x, y, i in zip(xs, ys, idx)]
    text = [f"<b>{safe(labels[i])}</b><br>{ids[i]}" for i in idx]
    trace = dict(type="scatter", mode="text", x=xs, y=ys, text=text, textposition="middle center",
                 textfont=dict(size=13, color=[("white" if i == query else INK) for i in idx]),
                 customdata=[[i, safe(labels[i]), ids[i]] for i in idx],
                 hovertemplate="position %{customdata[0]}: ‘%{customdata[1]}’ → id %{customdata[2]}<extra></extra>")
    rows = max(1, (len(idx) + per_row - 1) // per_row)
    more = f" · positions {idx[0]}–{idx[-1]} of {n} shown" if len(idx) < n else ""
    title = f"{n} tokens → {n} ids (each one of {vocab_size:,} in the vocabulary){more}"
    return _figure([trace], title, 80 + 62 * rows, showlegend=False, shapes=shapes,
                   xaxis=dict(visible=False, range=[-0.55, per_row - 0.45]),
                   yaxis=dict(visible=False, range=[rows - 0.5, -0.5]))


# --------------------------------------------------------------------------------------
# 2. embeddings


def embedding_strips(token_row: Sequence[float], position_row: Sequence[float], summed: Sequence[float],
                     label: str, token_id: int, position: int) -> Fig:
    """Three colour strips of n_embd numbers: the token's row of wte, the position's row of
    wpe, and their sum (what enters block 0); the exact number on hover."""
    z = np.array([token_row, position_row, summed], dtype=np.float32)
    lim = float(np.nanmax(np.abs(z))) or 1.0
    rows = [f"wte[{token_id}] (token)", f"wpe[{position}] (position)", "sum → block 0"]
    trace = dict(type="heatmap", z=z, y=rows, x=list(range(z.shape[1])), zmin=-lim, zmax=lim, colorscale=DIVERGING,
                 hovertemplate="%{y}<br>dimension %{x}: %{z:.5f}<extra></extra>",
                 colorbar=dict(title=dict(text="value"), thickness=12))
    title = f"Token {_tok(position, label)}: {z.shape[1]} numbers from each table, added"
    return _figure([trace], title, 260, xaxis=dict(title=dict(text="dimension (0 … n_embd−1)"), showgrid=False),
                   yaxis=dict(type="category", autorange="reversed", showgrid=False))


# --------------------------------------------------------------------------------------
# 3. inside one block


def attention_steps(labels: Sequence[str], scores: Sequence[float | None], weights: Sequence[float],
                    heads: Sequence[Sequence[float]], query: int, layer: int, head: int) -> Fig:
    """Three panels over the keys (the last `KEYS_SHOWN` up to the query, plus a few masked
    ones after it): the scores q·k/√d (masked keys marked ✕), the softmax weights, and the
    same query's weights in every head of the layer (the chosen head framed)."""
    n = len(labels)
    keys = list(_window(n, query, KEYS_SHOWN)) + list(range(query + 1, min(n, query + 5)))
    x = [f"{j} {safe(labels[j])}" for j in keys]
    sc = [scores[j] if j <= query and scores[j] is not None else None for j in keys]
    wt = [weights[j] if j <= query else None for j in keys]
    masked = [j for j in keys if j > query]
    xm = [f"{j} {safe(labels[j])}" for j in masked]
    hz = np.array([[h[j] if j <= query else np.nan for j in keys] for h in heads], dtype=np.float32)
    nh = len(heads)
    traces = [
        dict(type="bar", x=x, y=sc, marker=dict(color=GREY), xaxis="x", yaxis="y", name="score",
             hovertemplate="key %{x}<br>q·k/√d = %{y:.5f}<extra></extra>"),
        dict(type="scatter", mode="markers", x=xm, y=[0] * len(xm), marker=dict(symbol="x", size=10, color="#ef4444"),
             xaxis="x", yaxis="y", name="masked", hovertemplate="key %{x}: in the future → masked (−∞)<extra></extra>"),
        dict(type="bar", x=x, y=wt, marker=dict(color=ACCENT), xaxis="x2", yaxis="y2", name="weight",
             hovertemplate="key %{x}<br>softmax weight = %{y:.5f}<extra></extra>"),
        dict(type="heatmap", z=hz, x=x, y=[f"H{h}" for h in range(nh)], zmin=0, zmax=1, colorscale=ATTN_SCALE,
             xaxis="x3", yaxis="y3", hoverongaps=False, showscale=False,
             hovertemplate="head %{y} → key %{x}<br>weight %{z:.5f}<extra></extra>"),
    ]
    r = head
    frame = dict(type="rect", xref="x3 domain", yref="y3", x0=0, x1=1, y0=r - 0.5, y1=r + 0.5,
                 line=dict(color="#f59e0b", width=2))
    hidden = max(0, query + 1 - KEYS_SHOWN)
    note = f" · {hidden} earlier keys not drawn" if hidden else ""
    title = f"Layer {layer}, head {head}: where token {_tok(query, labels[query])} looks{note}"
    ax = dict(type="category", tickfont=dict(size=9), tickangle=-60, domain=[0.0, 1.0])
    gap = 0.09
    hh = min(0.4, 0.05 * nh + 0.1)  # the heads panel; scores and weights share the rest
    p = (1.0 - hh - 2 * gap) / 2
    w0, s0 = hh + gap, hh + 2 * gap + p
    notes = [dict(text=t, x=0, xref="paper", y=y, yref="paper", xanchor="left", yanchor="bottom", showarrow=False,
                  font=dict(size=12)) for t, y in (("① scores q·k/√d (✕ = masked future key)", 1.0),
                                                    ("② softmax → weights (sum to 1)", w0 + p),
                                                    (f"③ the same query in all {nh} heads of layer {layer}", hh))]
    return _figure(traces, title, 560 + 14 * nh, showlegend=False, plot_bgcolor="rgba(0,0,0,0)", shapes=[frame],
                   annotations=notes,
                   xaxis=dict(ax, anchor="y", matches="x3", showticklabels=False),
                   yaxis=dict(anchor="x", domain=[s0, 1.0 - 0.04], zeroline=True),
                   xaxis2=dict(ax, anchor="y2", matches="x3", showticklabels=False),
                   yaxis2=dict(anchor="x2", domain=[w0, w0 + p - 0.02], rangemode="tozero"),
                   xaxis3=dict(ax, anchor="y3"),
                   yaxis3=dict(anchor="x3", domain=[0.0, hh - 0.02], type="category", autorange="reversed"))


# --------------------------------------------------------------------------------------
# 4. the stack


def residual_stack(rows: Sequence[str], norms: Sequence[float], guesses: Sequence[str], probs: Sequence[float],
                   label: str, position: int) -> Fig:
    """The length ‖x‖ of the token's residual stream after the embedding and after each
    block (bars), each labelled with the logit lens's top guess there and its probability."""
    x = ["embedding" if r == "embed" else f"after block {r[1:]}" for r in rows]
    text = [f"{safe(g)}<br>{p:.0%}" if p is not None else safe(g) for g, p in zip(guesses, probs)]
    trace = dict(type="bar", x=x, y=list(norms), text=text, textposition="outside", cliponaxis=False,
                 marker=dict(color=[GREY] + [ACCENT] * (len(rows) - 1)),
                 customdata=[[safe(g), p] for g, p in zip(guesses, probs)],
                 hovertemplate="%{x}<br>‖x‖ = %{y:.3f}<br>top guess ‘%{customdata[0]}’ p=%{customdata[1]:.4f}"
                               "<extra></extra>")
    title = f"Token {_tok(position, label)} through the stack: ‖x‖ and the top guess for the next token"
    top = max([v for v in norms if v is not None] or [1.0])
    return _figure([trace], title, 420, showlegend=False, xaxis=dict(type="category"),
                   yaxis=dict(title=dict(text="‖residual stream‖"), range=[0, top * 1.3]))


# --------------------------------------------------------------------------------------
# 5. output head


def next_tokens(top: Sequence[dict], rest: float, position: int, label: str) -> Fig:
    """Horizontal bars: the 10 most likely next tokens and one bar for all the others."""
    y = [f"{k + 1}. ‘{safe(t['label'])}’ ({t['id']})" for k, t in enumerate(top)] + ["everything else"]
    x = [t["prob"] for t in top] + [rest]
    trace = dict(type="bar", orientation="h", x=x, y=y, text=[f"{p:.1%}" for p in x], textposition="outside",
                 cliponaxis=False, marker=dict(color=[ACCENT] * len(top) + [GREY]),
                 hovertemplate="%{y}<br>p = %{x:.6f}<extra></extra>")
    title = f"After {_tok(position, label)}: the next token, as probabilities"
    return _figure([trace], title, 110 + 30 * len(y), showlegend=False,
                   xaxis=dict(title=dict(text="probability"), range=[0, min(1.0, max(x) * 1.25 + 0.02)]),
                   yaxis=dict(type="category", autorange="reversed"))


# --------------------------------------------------------------------------------------
# 6. pick and repeat


def pick_steps(top: Sequence[dict], picks: Sequence[dict], steps: Sequence[dict]) -> Fig:
    """Top: the distribution's 15 most likely tokens, marked with which each sampler keeps
    and picks. Bottom: the next steps (greedy), each step's five best candidates coloured by
    probability, the chosen one first."""
    names = {"greedy": "greedy", "top_k": "top-k", "top_p": "top-p"}
    x = [f"‘{safe(t['label'])}’ ({t['id']})" for t in top]
    traces = [dict(type="bar", x=x, y=[t["prob"] for t in top], marker=dict(color=GREY), xaxis="x", yaxis="y",
                   hovertemplate="%{x}<br>p = %{y:.5f}<extra></extra>", name="p")]
    ids = [t["id"] for t in top]
    marks = []
    for p in picks:
        kept = set(p["kept_ids"])
        keep = [k for k, i in enumerate(ids) if i in kept]
        traces.append(dict(type="scatter", mode="markers", x=[x[k] for k in keep], y=[names[p["name"]]] * len(keep),
                           marker=dict(symbol="square", size=12, color="#c7d2fe"), xaxis="x", yaxis="y2",
                           hovertemplate=f"{names[p['name']]} keeps %{{x}}<extra></extra>"))
        if p["id"] in ids:
            marks.append((x[ids.index(p["id"])], names[p["name"]]))
    traces.append(dict(type="scatter", mode="markers", x=[m[0] for m in marks], y=[m[1] for m in marks],
                       marker=dict(symbol="star", size=16, color="#f59e0b"), xaxis="x", yaxis="y2",
                       hovertemplate="%{y} picks %{x}<extra></extra>"))
    z = np.array([[c["prob"] for c in s["top"]] for s in steps], dtype=np.float32)
    text = [[safe(c["label"]) for c in s["top"]] for s in steps]
    traces.append(dict(type="heatmap", z=z, text=text, texttemplate="%{text}", zmin=0, zmax=1, colorscale=ATTN_SCALE,
                       x=[f"#{k + 1}" for k in range(z.shape[1] if z.size else 0)],
                       y=[f"step {k + 1}: ‘{safe(s['label'])}’" for k, s in enumerate(steps)],
                       xaxis="x3", yaxis="y3", showscale=False,
                       hovertemplate="%{y}<br>candidate %{x} ‘%{text}’ p=%{z:.4f}<extra></extra>"))
    title = "Three ways to pick from the distribution (★ = the pick), then greedy, step after step"
    return _figure(traces, title, 640, showlegend=False,
                   xaxis=dict(type="category", anchor="y2", tickangle=-45, tickfont=dict(size=10)),
                   yaxis=dict(domain=[0.6, 1.0], title=dict(text="p"), anchor="x"),
                   yaxis2=dict(domain=[0.42, 0.57], type="category", anchor="x"),
                   xaxis3=dict(type="category", anchor="y3", showticklabels=False),
                   yaxis3=dict(domain=[0.0, 0.26], type="category", autorange="reversed", anchor="x3"))


# --------------------------------------------------------------------------------------
# 7. how it learned


def learn_losses(losses: Sequence[float], labels: Sequence[str], targets: Sequence[str], uniform: float,
                 top_grads: Sequence[dict], before: float | None, after: float | None) -> Fig:
    """Left: −log p(true next token) at each position (the first `LOSS_SHOWN`), with ln V (a
    uniform guess) as a line. Right: the parameters with the largest gradient norms."""
    n = min(len(losses), LOSS_SHOWN)
    x = list(range(n))
    custom = [[safe(labels[i]), safe(targets[i])] for i in range(n)]
    traces = [dict(type="bar", x=x, y=list(losses[:n]), customdata=custom, marker=dict(color=ACCENT),
                   xaxis="x", yaxis="y", hovertemplate="position %{x}: after ‘%{customdata[0]}’ the target is "
                                                       "‘%{customdata[1]}’<br>loss = %{y:.4f}<extra></extra>"),
              dict(type="scatter", mode="lines", x=[-0.5, n - 0.5], y=[uniform, uniform], xaxis="x", yaxis="y",
                   line=dict(color="#ef4444", dash="dash"), hovertemplate=f"ln V = {uniform:.3f}: a uniform guess"
                                                                            "<extra></extra>")]
    g = list(top_grads)[::-1]
    traces.append(dict(type="bar", orientation="h", x=[r["grad_norm"] for r in g], y=[safe(r["name"]) for r in g],
                       marker=dict(color="#f59e0b"), xaxis="x2", yaxis="y2",
                       customdata=[[str(tuple(r["shape"])), r["change"]] for r in g],
                       hovertemplate="%{y} %{customdata[0]}<br>‖grad‖ = %{x:.4f}<br>moved by %{customdata[1]:.4f}"
                                     "<extra></extra>"))
    step = (f" · one step: {before:.3f} → {after:.3f}" if before is not None and after is not None else "")
    more = f" (first {n} of {len(losses)})" if n < len(losses) else ""
    title = f"Loss at each position{more}, mean {np.mean(losses[:len(losses)]):.3f} nats{step}" if len(losses) \
        else "No loss: one token has no next token"
    return _figure(traces, title, 440, showlegend=False,
                   xaxis=dict(domain=[0.0, 0.55], title=dict(text="position (predicting the token after it)")),
                   yaxis=dict(title=dict(text="−log p(next)"), rangemode="tozero"),
                   xaxis2=dict(domain=[0.78, 1.0], anchor="y2", title=dict(text="‖gradient‖")),
                   yaxis2=dict(anchor="x2", type="category", tickfont=dict(size=9)))
