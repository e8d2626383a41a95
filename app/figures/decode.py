"""Figures of the Decode tab: plain functions, numbers and labels in, a new `Fig` out.

Owns: how decoding is drawn — a step's candidates with their probability after each
stage of the filter chain (model → penalty → temperature → top-k → top-p → min-p) and the
chosen one; entropy per step for every column; the beam-search tree with scores; the sweep
(perplexity vs distinct-2 per method and temperature); and the probability buckets that
colour tokens in `gr.HighlightedText`. Token labels are data: they go through `safe`
(plotly reads `<b>`-style tags in text, so `<`, `>`, `&` become entities it shows
literally). Does not own: computing any of it (`core.decoding`, `core.generate`, `core.beam`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from app.figures import Fig
from app.figures import colorscale as _scale
from app.figures import figure as _figure

# probability buckets for token colouring (HighlightedText categories), most likely first
BUCKETS = (("p ≥ 0.9", 0.9, "#16a34a"), ("0.5–0.9", 0.5, "#86efac"), ("0.2–0.5", 0.2, "#fde68a"),
           ("0.05–0.2", 0.05, "#fdba74"), ("p < 0.05", 0.0, "#f87171"))
COLOR_MAP = {name: color for name, _, color in BUCKETS}
STAGE_COLORS = {"model": "#94a3b8", "penalty": "#64748b", "argmax": "#0f172a", "temperature": "#818cf8",
                "top_k": "#4f46e5", "top_p": "#0891b2", "min_p": "#059669"}
STAGE_NAMES = {"model": "model (T=1)", "penalty": "after repetition penalty", "argmax": "greedy: argmax",
               "temperature": "after temperature", "top_k": "after top-k", "top_p": "after top-p",
               "min_p": "after min-p"}
COLUMN_COLORS = ("#4f46e5", "#059669", "#d97706", "#dc2626")
# one colour per method in the sweep (six methods: none shares a colour)
METHOD_COLORS = ("#4f46e5", "#059669", "#d97706", "#dc2626", "#0891b2", "#9333ea", "#65a30d", "#db2777")
# where each method's temperature labels sit, so labels of methods at similar points part ways
LABEL_POSITIONS = ("top center", "bottom center", "middle right", "middle left", "top right", "bottom left")


def safe(text: object) -> str:
    """A label for a plotly text field: shown literally, never read as a tag."""
    return html.escape(str(text), quote=False)


def bucket(p: float) -> str:
    for name, floor, _ in BUCKETS:
        if p >= floor:
            return name
    return BUCKETS[-1][0]


def token_spans(labels: Sequence[str], probs: Sequence[float]) -> list[tuple[str, str]]:
    """(token text, probability bucket) pairs for `gr.HighlightedText` (which shows text as data)."""
    return [(str(t), bucket(float(p))) for t, p in zip(labels, probs)]


def candidates_figure(labels: Sequence[str], stages: dict[str, Sequence[float]], kept: dict[str, int],
                      chosen: int, title: str) -> Fig:
    """Grouped bars: each candidate's probability after each stage (0 = cut by that filter).
    `chosen` is the index (in `labels`) of the token that was picked; it is outlined and starred."""
    x = [f"{i + 1}. {safe(t)}" + (" ★" if i == chosen else "") for i, t in enumerate(labels)]
    traces = []
    for name, probs in stages.items():
        probs = [float(p) for p in probs]
        n_kept = kept.get(name)
        legend = STAGE_NAMES.get(name, name) + (f" · {n_kept:,} kept" if n_kept is not None else "")
        widths = [3 if i == chosen else 0 for i in range(len(probs))]
        traces.append(dict(
            type="bar", x=x, y=probs, name=safe(legend),
            marker=dict(color=STAGE_COLORS.get(name, "#a1a1aa"), line=dict(color="#111827", width=widths)),
            text=["cut" if p == 0.0 else "" for p in probs], textposition="outside",
            hovertemplate="%{x}<br>" + safe(STAGE_NAMES.get(name, name)) + ": p = %{y:.4f}<extra></extra>",
        ))
    return _figure(traces, title, 360, barmode="group", legend=dict(orientation="h", y=-0.25),
                   xaxis=dict(tickangle=-30), yaxis=dict(title=dict(text="probability"), rangemode="tozero"))


def entropy_figure(columns: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> Fig:
    """One line per column: entropy (bits) of the model's next-token distribution per step,
    with the chosen token's probability in the hover."""
    traces = [dict(
        type="scatter", x=list(range(1, len(ent) + 1)), y=[float(e) for e in ent], mode="lines+markers",
        name=safe(name), line=dict(color=COLUMN_COLORS[i % len(COLUMN_COLORS)], width=2), marker=dict(size=5),
        customdata=[[float(p)] for p in probs],
        hovertemplate="step %{x}: %{y:.2f} bits, chosen p = %{customdata[0]:.3f}<extra></extra>",
    ) for i, (name, ent, probs) in enumerate(columns)]
    return _figure(traces, "Entropy of the next-token distribution, per step", 300,
                   xaxis=dict(title=dict(text="step")),
                   yaxis=dict(title=dict(text="entropy (bits)"), rangemode="tozero"),
                   legend=dict(orientation="h", y=-0.3))


def beam_tree_figure(nodes: Sequence[dict], best_path: Sequence[int], title: str = "Beam search tree") -> Fig:
    """The tree of beams. `nodes`: dicts with id, step, parent, label, score, final_score (or
    None). x = step, y = the node's order among its step's nodes (by parent, then score); edges join a node
    to its parent; the best hypothesis's path is drawn bold; finished hypotheses are squares."""
    by_step: dict[int, list[dict]] = {}
    for n in nodes:
        by_step.setdefault(n["step"], []).append(n)
    y: dict[int, float] = {}
    for s in sorted(by_step):  # children sit in their parents' order, so edges never cross
        ns = sorted(by_step[s], key=lambda n: (-y.get(n["parent"], 0.0), -n["score"]))
        mid = (len(ns) - 1) / 2
        for j, n in enumerate(ns):
            y[n["id"]] = mid - j
    pos = {n["id"]: (n["step"], y[n["id"]]) for n in nodes}
    best = set(best_path)
    ex, ey, bx, by = [], [], [], []
    for n in nodes:
        if n["parent"] < 0 or n["parent"] not in pos:
            continue
        (x0, y0), (x1, y1) = pos[n["parent"]], pos[n["id"]]
        tx, ty = (bx, by) if (n["id"] in best and n["parent"] in best) else (ex, ey)
        tx += [x0, x1, None]
        ty += [y0, y1, None]
    fin = [n.get("final_score") is not None for n in nodes]
    # every node's token as a label would overlap its neighbours: the best path is labelled, alternately
    # above and below (its neighbours are one step apart), and the others show theirs on hover
    on_path = [n["id"] in best for n in nodes]
    text = [safe(n["label"]) if p else "" for n, p in zip(nodes, on_path)]
    where = ["top center" if n["step"] % 2 == 0 else "bottom center" for n in nodes]
    traces = [
        dict(type="scatter", x=ex, y=ey, mode="lines", line=dict(color="#cbd5e1", width=1), hoverinfo="skip",
             showlegend=False),
        dict(type="scatter", x=bx, y=by, mode="lines", line=dict(color="#4f46e5", width=3), hoverinfo="skip",
             name="best hypothesis"),
        dict(type="scatter", x=[pos[n["id"]][0] for n in nodes], y=[pos[n["id"]][1] for n in nodes],
             mode="markers+text", text=text, textposition=where, textfont=dict(size=11, color="#1e1b4b"),
             marker=dict(size=[11 if f else 8 for f in fin], symbol=["square" if f else "circle" for f in fin],
                         color=[n["score"] for n in nodes], colorscale=_scale("Viridis"), showscale=True,
                         colorbar=dict(title=dict(text="sum log p"), thickness=10)),
             customdata=[[safe(n["label"]), n["score"],
                          "—" if n.get("final_score") is None else f"{n['final_score']:.3f}"] for n in nodes],
             hovertemplate="step %{x}: %{customdata[0]}<br>sum log p = %{customdata[1]:.3f}"
                           "<br>final score = %{customdata[2]}<extra></extra>", showlegend=False),
    ]
    steps = max((n["step"] for n in nodes), default=0)
    height = max(320, min(700, 40 * max((len(v) for v in by_step.values()), default=1) + 120))
    return _figure(traces, title, height, xaxis=dict(title=dict(text="step"), range=[-1.0, steps + 0.8]),
                   yaxis=dict(visible=False), legend=dict(orientation="h", y=-0.15))


def sweep_figure(points: Sequence[dict]) -> Fig:
    """Perplexity (under the model) vs distinct-2, one marker series per method, labelled by
    temperature: the guide's quality/creativity table, measured."""
    methods = list(dict.fromkeys(p["label"] for p in points))
    traces = []
    for i, m in enumerate(methods):
        pts = [p for p in points if p["label"] == m]
        traces.append(dict(
            type="scatter", x=[p["distinct_2"] for p in pts], y=[p["perplexity"] for p in pts],
            mode="lines+markers+text", name=safe(m),
            text=["" if p["temperature"] is None else f"T={p['temperature']:g}" for p in pts],
            textposition=LABEL_POSITIONS[i % len(LABEL_POSITIONS)], textfont=dict(size=10),
            marker=dict(size=10, color=METHOD_COLORS[i % len(METHOD_COLORS)],
                        symbol=("circle", "square", "diamond", "triangle-up", "cross", "x")[i % 6]),
            line=dict(width=1, dash="dot", color=METHOD_COLORS[i % len(METHOD_COLORS)]),
            hovertemplate="distinct-2 = %{x:.3f}<br>perplexity = %{y:.2f}<br>%{text}<extra>" + safe(m) + "</extra>",
        ))
    finite = [p["perplexity"] for p in points if math.isfinite(p["perplexity"])]
    log_y = bool(finite) and max(finite) / max(min(finite), 1e-9) > 20
    title = "Sweep: perplexity under the model (lower = more likely) vs distinct-2 (higher = more varied)"
    xs = [p["distinct_2"] for p in points if math.isfinite(p["distinct_2"])] or [0.0, 1.0]
    pad = max(0.03, 0.12 * (max(xs) - min(xs)))  # the axis fits the points, with room for their labels
    x_range = [max(-0.02, min(xs) - pad), min(1.05, max(xs) + pad)]
    return _figure(traces, title, 420, xaxis=dict(title=dict(text="distinct-2"), range=x_range),
                   yaxis=dict(title=dict(text="perplexity"), type="log" if log_y else "linear"),
                   legend=dict(orientation="h", y=-0.2))
