"""Figures for the Tokens tab's BPE lab: characters per token against vocab size, and the
pair count that chose each merge.

Pure builders: lists of numbers and strings in, a new `go.Figure` out. Merge strings come
from the user's corpus, so they are HTML-escaped before they reach a plotly text field
(plotly reads a few tags such as <br> and <a> in text, and decodes entities back).
Does not own: computing the numbers (`core.inspect.tokens`).
"""
from __future__ import annotations

import html
from typing import Sequence

import plotly.graph_objects as go

LINE_COLOR = "#6366f1"
COUNT_COLOR = "#f59e0b"
GRID = "rgba(148,163,184,0.3)"
MAX_POINTS = 500


def _layout(fig: go.Figure, title: str, height: int = 300) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)),
        height=height, margin=dict(l=10, r=10, t=40, b=10),
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", showlegend=False,
    )
    fig.update_xaxes(showgrid=True, gridcolor=GRID)
    fig.update_yaxes(showgrid=True, gridcolor=GRID)
    return fig


def _thin(n: int, max_points: int = MAX_POINTS) -> list[int]:
    """At most `max_points` indices spread over range(n), always keeping the first and last."""
    if n <= max_points:
        return list(range(n))
    step = (n - 1) / (max_points - 1)
    return sorted({round(i * step) for i in range(max_points)})


def chars_per_token_curve(vocab_sizes: Sequence[int], chars_per_token: Sequence[float],
                          title: str = "Characters per token against vocab size") -> go.Figure:
    """One line: how many characters of the corpus a token covers on average, after each
    merge (vocab size = bytes + special tokens + merges so far); the end point is marked."""
    if len(vocab_sizes) != len(chars_per_token):
        raise ValueError(f"{len(vocab_sizes)} vocab sizes but {len(chars_per_token)} values")
    keep = _thin(len(vocab_sizes))
    xs = [int(vocab_sizes[i]) for i in keep]
    ys = [float(chars_per_token[i]) for i in keep]
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=LINE_COLOR, width=2),
                               hovertemplate="vocab %{x:,}: %{y:.3f} characters per token<extra></extra>"))
    if xs:
        fig.add_trace(go.Scatter(x=[xs[-1]], y=[ys[-1]], mode="markers+text", marker=dict(color=LINE_COLOR, size=9),
                                 text=[f"{ys[-1]:.2f}"], textposition="top left", hoverinfo="skip"))
    fig.update_xaxes(title="vocab size (tokens)")
    fig.update_yaxes(title="characters per token", rangemode="tozero")
    return _layout(fig, title)


def merge_counts(counts: Sequence[int], labels: Sequence[str] | None = None,
                 title: str = "How often each merged pair occurred when it was chosen") -> go.Figure:
    """Pair count against merge rank (log scale); `labels` (e.g. "·t + h → ·th") go in the hover, escaped."""
    if labels is not None and len(labels) != len(counts):
        raise ValueError(f"{len(counts)} counts but {len(labels)} labels")
    keep = _thin(len(counts))
    custom = [html.escape(labels[i], quote=False) if labels is not None else "" for i in keep]
    fig = go.Figure(go.Scatter(
        x=[i + 1 for i in keep], y=[max(1, int(counts[i])) for i in keep], mode="lines+markers",
        marker=dict(size=4, color=COUNT_COLOR), line=dict(color=COUNT_COLOR, width=1), customdata=custom,
        hovertemplate="merge %{x:,}: %{customdata}<br>%{y:,} times<extra></extra>"))
    fig.update_xaxes(title="merge (in the order learned)")
    fig.update_yaxes(title="pair count", type="log")
    return _layout(fig, title)
