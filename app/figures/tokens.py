"""Figures for the Tokens tab's BPE lab: characters per token against vocab size, and the
pair count that chose each merge.

Pure builders: lists of numbers and strings in, a new `Fig` out. Merge strings come
from the user's corpus, so they are HTML-escaped before they reach a plotly text field
(plotly reads a few tags such as <br> and <a> in text, and decodes entities back).
Does not own: computing the numbers (`core.inspect.tokens`).
"""
from __future__ import annotations

import html
from collections.abc import Sequence

from app.figures import Fig

LINE_COLOR = "#6366f1"
COUNT_COLOR = "#f59e0b"
GRID = "rgba(148,163,184,0.3)"
MAX_POINTS = 500


def _figure(traces: list[dict], title: str, xaxis: dict, yaxis: dict, height: int = 300) -> Fig:
    """The BPE lab's layout (plotly's default template, gridded axes, no legend), from plain
    trace dicts, without plotly's validation."""
    layout = dict(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)),
        height=height, margin=dict(l=10, r=10, t=40, b=10),
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)", showlegend=False,
        xaxis=dict(xaxis, showgrid=True, gridcolor=GRID), yaxis=dict(yaxis, showgrid=True, gridcolor=GRID),
    )
    return Fig(traces, layout)


def _thin(n: int, max_points: int = MAX_POINTS) -> list[int]:
    """At most `max_points` indices spread over range(n), always keeping the first and last."""
    if n <= max_points:
        return list(range(n))
    step = (n - 1) / (max_points - 1)
    return sorted({round(i * step) for i in range(max_points)})


def chars_per_token_curve(vocab_sizes: Sequence[int], chars_per_token: Sequence[float],
                          title: str = "Characters per token against vocab size") -> Fig:
    """One line: how many characters of the corpus a token covers on average, after each
    merge (vocab size = bytes + special tokens + merges so far); the end point is marked."""
    if len(vocab_sizes) != len(chars_per_token):
        raise ValueError(f"{len(vocab_sizes)} vocab sizes but {len(chars_per_token)} values")
    keep = _thin(len(vocab_sizes))
    xs = [int(vocab_sizes[i]) for i in keep]
    ys = [float(chars_per_token[i]) for i in keep]
    traces = [dict(type="scatter", x=xs, y=ys, mode="lines", line=dict(color=LINE_COLOR, width=2),
                   hovertemplate="vocab %{x:,}: %{y:.3f} characters per token<extra></extra>")]
    if xs:
        traces.append(dict(type="scatter", x=[xs[-1]], y=[ys[-1]], mode="markers+text",
                           marker=dict(color=LINE_COLOR, size=9), text=[f"{ys[-1]:.2f}"], textposition="top left",
                           hoverinfo="skip"))
    return _figure(traces, title, xaxis=dict(title=dict(text="vocab size (tokens)")),
                   yaxis=dict(title=dict(text="characters per token"), rangemode="tozero"))


def merge_counts(counts: Sequence[int], labels: Sequence[str] | None = None,
                 title: str = "How often each merged pair occurred when it was chosen") -> Fig:
    """Pair count against merge rank (log scale); `labels` (e.g. "·t + h → ·th") go in the hover, escaped."""
    if labels is not None and len(labels) != len(counts):
        raise ValueError(f"{len(counts)} counts but {len(labels)} labels")
    keep = _thin(len(counts))
    custom = [html.escape(labels[i], quote=False) if labels is not None else "" for i in keep]
    trace = dict(
        type="scatter", x=[i + 1 for i in keep], y=[max(1, int(counts[i])) for i in keep], mode="lines+markers",
        marker=dict(size=4, color=COUNT_COLOR), line=dict(color=COUNT_COLOR, width=1), customdata=custom,
        hovertemplate="merge %{x:,}: %{customdata}<br>%{y:,} times<extra></extra>")
    return _figure([trace], title, xaxis=dict(title=dict(text="merge (in the order learned)")),
                   yaxis=dict(title=dict(text="pair count"), type="log"))
