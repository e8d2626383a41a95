"""Figures for the Model tab: parameters by module kind.

Owns: how the app draws things (colours, axes, hover text). Builders take numbers and
labels, never a model or a Gradio component, so they are tested by reading `fig.data`
and `fig.layout`. User text goes into plotly's text fields as data, never as HTML.
Does not own: computing what is drawn (`core`, or the tab handlers).
"""

from __future__ import annotations

from collections.abc import Mapping

from app.figures import Fig

# One colour per part of the architecture, shared by every view that shows these parts.
KIND_COLORS = {
    "embedding": "#6366f1",
    "attention": "#f59e0b",
    "feed-forward": "#10b981",
    "layer norm": "#94a3b8",
}
FALLBACK_COLOR = "#64748b"


def params_by_kind(counts: Mapping[str, int], title: str = "Where the parameters are") -> Fig:
    """Horizontal bars: parameter count per kind of module (embedding, attention, ...),
    labelled with the count and its share of the total. Built from plain dicts, without
    plotly's per-property validation."""
    kinds = [k for k, v in counts.items() if v > 0]
    values = [int(counts[k]) for k in kinds]
    total = sum(values) or 1
    text = [f"{v:,} ({100 * v / total:.1f}%)" for v in values]
    trace = dict(
        type="bar", x=values, y=kinds, orientation="h",
        marker=dict(color=[KIND_COLORS.get(k, FALLBACK_COLOR) for k in kinds]),
        # labels after each bar, in room the x range keeps for them (inside, "auto" cut the long ones short)
        text=text, textposition="outside", cliponaxis=False, constraintext="none",
        hovertemplate="%{y}: %{x:,} parameters<extra></extra>",
    )
    layout = dict(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)),
        height=80 + 45 * max(1, len(kinds)),
        margin=dict(l=10, r=10, t=40, b=10),
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        showlegend=False,
        xaxis=dict(title=dict(text="parameters"), showgrid=True, gridcolor="rgba(148,163,184,0.3)",
                   range=[0, 1.45 * max(values, default=1)]),
        yaxis=dict(autorange="reversed"),
    )
    return Fig([trace], layout)
