"""Figures of the Attention tab: plain functions, arrays and labels in, a new `Fig` out.

Owns: how attention is drawn — the layer × head grid of pooled float32 thumbnails (a
12 × 12 grid at 1024 tokens is about 1.3 MB on the wire, under its 2 MB budget; see
`payload_bytes`), the large view of one head or an aggregation (the causal upper triangle
is NaN everywhere, drawn grey: masked, never zero), the query's row in every head, the
equation's scores and softmax, the logit lens, per-head divergences between two models, two
patterns side by side, and the effect of an ablation; plus the text of the equation panel.
Token labels are data: they go through `safe` (plotly reads `<b>`-style tags in text, so
`<`, `>` and `&` are written as entities, which it shows literally). Does not own:
computing any of it (`core.inspect.attention`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

import numpy as np
from plotly.colors import sample_colorscale

from app.figures import Fig
from app.figures import colorscale as _scale
from app.figures import figure as _figure
from app.figures import layout_dict as _layout_dict

ATTN_SCALE = [[0.0, "#ffffff"], [0.04, "#eef2ff"], [0.15, "#c7d2fe"], [0.35, "#818cf8"],
              [0.6, "#4f46e5"], [0.85, "#3730a3"], [1.0, "#1e1b4b"]]
MASK_COLOR = "#cbd5e1"     # masked (future) cells: grey, distinct from a zero weight (white)
STAT_SCALE = "Viridis"
LENS_SCALE = "Greens"
DIFF_SCALE = "Reds"


def safe(text: object) -> str:
    """A label for a plotly text field: shown literally, never read as a tag."""
    return html.escape(str(text), quote=False)


def pooled_note(factor: int) -> str:
    return f"pooled: each cell is the max of {factor}×{factor} tokens" if factor > 1 else ""


def axis_labels(labels: Sequence[str], factor: int = 1) -> list[str]:
    """Unique category labels "position token" (or "first–last" ranges when pooled)."""
    if factor == 1:
        return [f"{i} {safe(t)}" for i, t in enumerate(labels)]
    T = len(labels)
    return [f"{a}–{min(T, a + factor) - 1}" for a in range(0, T, factor)]


# --------------------------------------------------------------------------------------
# The grid


def payload_bytes(fig: Fig) -> int:
    """Bytes the figure costs on the wire: Gradio sends `fig.to_json()` as a JSON string."""
    return len(json.dumps(fig.to_json()).encode())


def attention_grid(thumbs: np.ndarray, factor: int, T: int, stat: np.ndarray | None = None,
                   stat_label: str = "", focus: tuple[int, int] | None = None,
                   stat_range: tuple[float, float] | None = None) -> Fig:
    """Every head as a small heatmap (rows = queries, top to bottom; columns = keys),
    layers down, heads across, one trace per head named `L{l} H{h}` (clicking one opens it:
    `layout.meta.view` is "grid"). `thumbs` (L, nh, P, P) float32 with NaN above the
    diagonal: masked cells are gaps over a grey tile, never zeros. `stat` (L, nh) colours
    each tile's frame on the fixed scale `stat_range` (e.g. 0–1 for a score, so noise near 0
    stays dark; None: the values' own range, said in the colour bar's title) and joins its
    label. `layout.meta` carries the tiles' geometry (step, size P, gap, L, nh), so a click
    anywhere on a tile or its title can name the head. Plain dicts (a 12 × 12 grid is 144
    traces, 300 shapes and annotations)."""
    L, nh, P = thumbs.shape[:3]
    gap = max(2.0, 0.3 * P)
    step = P + gap
    z_all = np.asarray(thumbs, dtype=np.float32)
    colors = None
    if stat is not None:
        finite = stat[np.isfinite(stat)]
        if stat_range is not None:
            lo, hi = map(float, stat_range)
        else:
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            stat_label = f"{stat_label} (range {lo:.3g}–{hi:.3g})"
        norm = np.clip((np.nan_to_num(stat, nan=lo) - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
        colors = np.array(sample_colorscale(STAT_SCALE, norm.ravel().tolist())).reshape(L, nh)
    traces, shapes, notes = [], [], []
    what = f"max weight of {factor}×{factor} tokens" if factor > 1 else "weight"
    for l in range(L):
        for h in range(nh):
            x0, y0 = h * step, l * step
            name = f"L{l} H{h}"
            val = f" · {stat[l, h]:.2f}" if stat is not None and np.isfinite(stat[l, h]) else ""
            traces.append(dict(
                type="heatmap", z=z_all[l, h], x0=x0, dx=1, y0=y0, dy=1, zmin=0, zmax=1, colorscale=ATTN_SCALE,
                showscale=(l == 0 and h == 0), name=name, hoverongaps=False,
                hovertemplate=f"{name}{safe(val)} · {what} %{{z:.3f}}<br>click to open it large<extra></extra>",
                colorbar=dict(title=dict(text="weight"), thickness=12, len=0.5, y=1, yanchor="top"),
            ))
            # the masked (future) triangle is NaN: the heatmap leaves a gap and this grey tile shows
            shapes.append(dict(type="rect", x0=x0 - 0.5, x1=x0 + P - 0.5, y0=y0 - 0.5, y1=y0 + P - 0.5,
                               fillcolor=MASK_COLOR, line=dict(width=0), layer="below"))
            notes.append(dict(x=x0 + P / 2 - 0.5, y=y0 - 0.5, text=f"{name}{safe(val)}", showarrow=False,
                              yanchor="bottom", font=dict(size=10 if nh <= 8 else 9)))
            if colors is not None or focus == (l, h):
                color = "#f59e0b" if focus == (l, h) else colors[l, h]
                shapes.append(dict(type="rect", x0=x0 - 1, x1=x0 + P, y0=y0 - 1, y1=y0 + P,
                                   line=dict(color=color, width=3 if focus == (l, h) else 2.5)))
    if stat is not None:
        traces.append(dict(type="scatter", x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
                           marker=dict(color=[lo, hi], colorscale=_scale(STAT_SCALE), showscale=True, cmin=lo, cmax=hi,
                                       colorbar=dict(title=dict(text=safe(stat_label)), thickness=12, len=0.45,
                                                     y=0, yanchor="bottom"))))
    note = pooled_note(factor)
    title = (f"Every head: {L} layers × {nh} heads · {T} tokens · grey = masked (future) · click a head to open it"
             + (f" · {note}" if note else ""))
    tile_px = min(150, 1000 / nh)
    meta = dict(view="grid", step=float(step), P=int(P), gap=float(gap), L=int(L), nh=int(nh))
    layout = _layout_dict(title, int(80 + L * tile_px * 1.3), annotations=notes, shapes=shapes, meta=meta,
                          xaxis=dict(visible=False, range=[-1.5, nh * step - gap + 0.5], constrain="domain"),
                          yaxis=dict(visible=False, range=[L * step - gap + 0.5, -0.4 * P - 2], scaleanchor="x"))
    return Fig(traces, layout)


# --------------------------------------------------------------------------------------
# One pattern, large


def attention_heatmap(pattern: np.ndarray, labels: Sequence[str], factor: int, title: str,
                      colorscale=ATTN_SCALE, meta: dict | None = None) -> Fig:
    """A (N, N) pattern with token labels on both axes (ranges when pooled), the exact weight
    on hover (the cell's max when pooled), NaN cells (future keys) drawn grey."""
    ticks = axis_labels(labels, factor)
    what = "max weight" if factor > 1 else "weight"
    trace = dict(type="heatmap", z=np.asarray(pattern, dtype=np.float32), x=ticks, y=ticks, zmin=0, zmax=1,
                 colorscale=_scale(colorscale), hoverongaps=False,
                 hovertemplate=f"query %{{y}}<br>key %{{x}}<br>{what} %{{z:.6f}}<extra></extra>",
                 colorbar=dict(title=dict(text="weight"), thickness=12))
    note = pooled_note(factor)
    extra = {} if meta is None else dict(meta=meta)
    return _figure([trace], safe(title) + (f" · {note}" if note else ""), 700, plot_bgcolor=MASK_COLOR,
                   xaxis=dict(type="category", title=dict(text="key (attended to)"), tickangle=-60,
                              tickfont=dict(size=9), showgrid=False, constrain="domain"),
                   yaxis=dict(type="category", title=dict(text="query"), autorange="reversed", tickfont=dict(size=9),
                              showgrid=False, scaleanchor="x"), **extra)


def focused_head(pattern: np.ndarray, labels: Sequence[str], factor: int, title: str) -> Fig:
    """One head, large (`attention_heatmap`), marked so that clicking it goes back to the grid."""
    return attention_heatmap(pattern, labels, factor, title + " · click it (or ← Back) to return to the grid",
                             meta=dict(view="head"))


def _subplot_title(text: str, x: float, y: float) -> dict:
    """A subplot's title, as `make_subplots(subplot_titles=...)` writes it."""
    return dict(font=dict(size=16), showarrow=False, text=text, x=x, xanchor="center", xref="paper",
                y=y, yanchor="bottom", yref="paper")


def side_by_side(a: np.ndarray, b: np.ndarray, labels: Sequence[str], factor: int,
                 title_a: str, title_b: str, title: str) -> Fig:
    """Two patterns of the same size next to each other, one colour scale (two subplots,
    the domains `make_subplots(1, 2, horizontal_spacing=0.08)` gives)."""
    ticks = axis_labels(labels, factor)
    traces = [dict(type="heatmap", z=np.asarray(z, dtype=np.float32), x=ticks, y=ticks, zmin=0, zmax=1,
                   colorscale=ATTN_SCALE, showscale=col == 2, hoverongaps=False,
                   hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.6f}<extra></extra>",
                   colorbar=dict(title=dict(text="weight"), thickness=12), xaxis=xa, yaxis=ya)
              for col, z, xa, ya in ((1, a, "x", "y"), (2, b, "x2", "y2"))]
    xaxis = dict(type="category", showgrid=False, tickfont=dict(size=8), tickangle=-60)
    yaxis = dict(type="category", showgrid=False, tickfont=dict(size=8), autorange="reversed")
    note = pooled_note(factor)
    return _figure(traces, safe(title) + (f" · {note}" if note else ""), 520, plot_bgcolor=MASK_COLOR,
                   xaxis=dict(xaxis, anchor="y", domain=[0.0, 0.46]), yaxis=dict(yaxis, anchor="x", domain=[0.0, 1.0]),
                   xaxis2=dict(xaxis, anchor="y2", domain=[0.54, 1.0]),
                   yaxis2=dict(yaxis, anchor="x2", domain=[0.0, 1.0]),
                   annotations=[_subplot_title(safe(title_a), 0.23, 1.0), _subplot_title(safe(title_b), 0.77, 1.0)])


# --------------------------------------------------------------------------------------
# One query


def query_heads(rows: np.ndarray, labels: Sequence[str], query: int, focus: tuple[int, int]) -> Fig:
    """rows (L, nh, T): where the query token looks, in every head (one row per head; only
    keys up to the query: later ones are masked). The focused head is framed."""
    L, nh, _ = rows.shape
    z = np.asarray(rows[:, :, : query + 1], dtype=np.float32).reshape(L * nh, query + 1)
    heads = [f"L{l} H{h}" for l in range(L) for h in range(nh)]
    keys = axis_labels(labels[: query + 1])
    trace = dict(type="heatmap", z=z, x=keys, y=heads, zmin=0, zmax=1, colorscale=ATTN_SCALE,
                 hovertemplate="%{y} → key %{x}<br>weight %{z:.6f}<extra></extra>",
                 colorbar=dict(title=dict(text="weight"), thickness=12))
    r = focus[0] * nh + focus[1]
    frame = dict(type="rect", xref="x domain", x0=0, x1=1, y0=r - 0.5, y1=r + 0.5, line=dict(color="#f59e0b", width=2))
    title = f"Where token {query} ‘{safe(labels[query])}’ looks, in every head"
    return _figure([trace], title, int(max(260, min(900, 90 + 16 * L * nh))), shapes=[frame],
                   xaxis=dict(type="category", tickangle=-60, tickfont=dict(size=9), showgrid=False),
                   yaxis=dict(type="category", autorange="reversed", tickfont=dict(size=9), showgrid=False))


def token_strip(labels: Sequence[str], weights: np.ndarray, query: int) -> list[tuple[str, float | None]]:
    """Value for a `gr.HighlightedText`: each token shaded by the query's weight on it
    (scaled so the largest is full colour); tokens after the query get no shade."""
    top = float(np.max(weights[: query + 1])) or 1.0
    return [(str(t), round(float(weights[i]) / top, 4) if i <= query else None) for i, t in enumerate(labels)]


# --------------------------------------------------------------------------------------
# The equation


def equation_figure(eq, labels: Sequence[str]) -> Fig:
    """Two stacked bar charts over the keys up to the query: the scores q·k/√d, then the
    softmax of them (the attention weights). Masked keys are listed in the title."""
    n = eq.query + 1
    keys = axis_labels(labels[:n])
    traces = [dict(type="bar", x=keys, y=eq.scores[:n], marker=dict(color="#94a3b8"), xaxis="x", yaxis="y",
                   hovertemplate="key %{x}<br>q·k/√d = %{y:.6f}<extra></extra>"),
              dict(type="bar", x=keys, y=eq.weights[:n], marker=dict(color="#4f46e5"), xaxis="x2", yaxis="y2",
                   hovertemplate="key %{x}<br>weight = %{y:.6f}<extra></extra>")]
    masked = len(eq.weights) - n
    title = (f"L{eq.layer} H{eq.head}, query {eq.query} ‘{safe(labels[eq.query])}’ · "
             + (f"{masked} later keys masked (−∞ → weight 0)" if masked else "no later keys to mask"))
    # the domains of make_subplots(2, 1, shared_xaxes=True, vertical_spacing=0.12)
    xaxis = dict(type="category", tickangle=-60, tickfont=dict(size=9), domain=[0.0, 1.0])
    return _figure(traces, title, 460, showlegend=False,
                   xaxis=dict(xaxis, anchor="y", matches="x2", showticklabels=False),
                   yaxis=dict(anchor="x", domain=[0.56, 1.0]),
                   xaxis2=dict(xaxis, anchor="y2"), yaxis2=dict(anchor="x2", domain=[0.0, 0.44]),
                   annotations=[_subplot_title("scores  q·k / √d", 0.5, 1.0),
                                _subplot_title("softmax → attention weights (sum to 1)", 0.5, 0.44)])


def _vec(v: np.ndarray, k: int = 6) -> str:
    head = ", ".join(f"{x:+.3f}" for x in v[:k])
    return f"[{head}{', …' if len(v) > k else ''}]"


def equation_markdown(eq, labels: Sequence[str]) -> str:
    """The equation with this head's numbers, step by step (markdown; labels escaped)."""
    n = eq.query + 1
    top = int(np.argmax(eq.weights[:n]))
    tok = lambda i: f"{i} ‘{_md(labels[i])}’"  # noqa: E731
    return "\n".join([
        f"**Attention(Q, K, V) = softmax(QKᵀ / √d) V** — layer {eq.layer}, head {eq.head}, "
        f"query {tok(eq.query)}; d = head size = {eq.head_size}, so 1/√d = {eq.scale:.4f}.",
        "",
        f"1. **Query** q = W_q·x = {_vec(eq.q)} ({eq.head_size} numbers, all in the table below).",
        f"2. **Scores**: q·k for each of the {n} keys it may see, times 1/√d. "
        f"Keys after the query are **masked** (score −∞), {len(eq.weights) - n} of them.",
        f"3. **Softmax** turns the scores into weights that sum to {eq.weights[:n].sum():.6f}; "
        f"the largest, {eq.weights[top]:.4f}, is on key {tok(top)}.",
        f"4. **Weighted sum of the values** z = Σ weight·v = {_vec(eq.z)}.",
        "",
        f"Recomputed here from q, k, v, the weights match the model's own attention row to "
        f"{eq.weights_err:.1e} and z matches the head's output to {eq.z_err:.1e}.",
    ])


def _md(text: object) -> str:
    import re

    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~>])", r"\\\1", html.escape(str(text), quote=False))


def equation_rows(eq, labels: Sequence[str]) -> list[list]:
    """One row per key up to the query: position, token, q·k, q·k/√d, weight, ‖v‖, weight·‖v‖."""
    return [[j, str(labels[j]), round(float(eq.dots[j]), 6), round(float(eq.scores[j]), 6),
             round(float(eq.weights[j]), 6), round(float(eq.v_norms[j]), 4),
             round(float(eq.weights[j] * eq.v_norms[j]), 4)] for j in range(eq.query + 1)]


EQUATION_HEADERS = ["key", "token", "q·k", "q·k/√d", "softmax", "‖v‖", "weight·‖v‖"]


def vector_rows(eq) -> tuple[list[str], list[list]]:
    """Headers and rows of the vectors, one row per dimension (a row per vector was head-size
    columns wide, wider than any box): q, z recomputed, z from the model."""
    headers = ["dimension", "q (query)", "z = Σ softmax·v", "z from the model"]
    rows = [[f"d{i}", *(round(float(v[i]), 5) for v in (eq.q, eq.z, eq.model_z))] for i in range(eq.head_size)]
    return headers, rows


# --------------------------------------------------------------------------------------
# Logit lens, comparing, ablating


def logit_lens(lens, labels: Sequence[str], vocab_label) -> Fig:
    """Rows = after the embedding and after each block; columns = positions. Each cell: the
    top next-token prediction there (text) and its probability (colour); hover adds the
    probability of the token that really comes next. `vocab_label(id)` names a token."""
    cols = [f"{p} {safe(labels[p])}" for p in lens.positions]
    top = [[safe(vocab_label(int(i))) for i in row] for row in lens.top_ids]
    nxt = [safe(vocab_label(i)) if i >= 0 else "(end of text)" for i in lens.next_ids]
    prob = lambda p: "—" if not np.isfinite(p) else f"{p:.4f}"  # noqa: E731
    custom = [[[nxt[c], prob(lens.next_probs[r, c])] for c in range(len(cols))] for r in range(len(lens.rows))]
    trace = dict(
        type="heatmap", z=lens.top_probs.astype(np.float32), x=cols,
        y=[f"after {r}" if r != "embed" else "embedding" for r in lens.rows],
        text=top, texttemplate="%{text}", textfont=dict(size=9), customdata=custom, zmin=0, zmax=1,
        colorscale=_scale(LENS_SCALE), colorbar=dict(title=dict(text="p(top)"), thickness=12),
        hovertemplate=("%{y}, at %{x}<br>top prediction %{text} p=%{z:.4f}"
                       "<br>actual next %{customdata[0]} p=%{customdata[1]}<extra></extra>"),
    )
    first, last = lens.positions[0], lens.positions[-1]
    title = f"Logit lens: the top next token after each layer, positions {first}–{last}"
    return _figure([trace], title, int(140 + 34 * len(lens.rows)),
                   xaxis=dict(type="category", tickangle=-60, tickfont=dict(size=9), side="bottom"),
                   yaxis=dict(type="category", autorange="reversed"))


def divergence_grid(js: np.ndarray, name_a: str, name_b: str) -> Fig:
    """(L, nh) Jensen–Shannon divergence per head, averaged over queries (bits, 0..1)."""
    L, nh = js.shape
    trace = dict(
        type="heatmap", z=js.astype(np.float32), x=[f"H{h}" for h in range(nh)], y=[f"L{l}" for l in range(L)],
        zmin=0, zmax=max(float(np.nanmax(js)) if js.size else 0, 1e-6), colorscale=_scale(DIFF_SCALE),
        text=[[f"{v:.3f}" for v in row] for row in js], texttemplate="%{text}",
        hovertemplate="%{y} %{x}: JS divergence %{z:.4f} bits<extra></extra>",
        colorbar=dict(title=dict(text="JS (bits)"), thickness=12))
    title = f"How differently each head attends: {safe(name_a)} vs {safe(name_b)} (JS divergence, mean over queries)"
    return _figure([trace], title, int(120 + 36 * L), xaxis=dict(type="category", side="top"),
                   yaxis=dict(type="category", autorange="reversed", scaleanchor="x"))


def ablation_bars(token_labels: Sequence[str], before: np.ndarray, after: np.ndarray, title: str) -> Fig:
    """Grouped bars: the next-token probabilities of the top tokens, before and after."""
    x = [f"{i + 1}. {safe(t)}" for i, t in enumerate(token_labels)]
    traces = [dict(type="bar", name="model", x=x, y=before, marker=dict(color="#94a3b8"),
                   hovertemplate="%{x}<br>p = %{y:.5f} (model)<extra></extra>"),
              dict(type="bar", name="head(s) ablated", x=x, y=after, marker=dict(color="#ef4444"),
                   hovertemplate="%{x}<br>p = %{y:.5f} (ablated)<extra></extra>")]
    return _figure(traces, safe(title), 380, barmode="group", showlegend=True,
                   legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
                   xaxis=dict(type="category", tickangle=-45),
                   yaxis=dict(title=dict(text="probability"), rangemode="tozero"))


def nice(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"
