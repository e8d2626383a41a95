"""Figure builders: pure functions, data in, a new `go.Figure` out (testable without a browser).

One submodule per tab (`app.figures.model`, `app.figures.tokens`, ...). They take numpy
arrays, lists and strings (user text goes into plotly text fields as data, never HTML) and
never touch gradio, models or files.
"""

from __future__ import annotations

import plotly.graph_objects as go


def layout_dict(title: str, height: int, **kw) -> dict:
    """The layout the tabs' figures share (left-aligned title, tight margins, transparent
    background, system font), as a plain dict; `kw` adds or overrides keys."""
    return dict(title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)), height=height,
                margin=dict(l=10, r=10, t=50, b=10), paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                template="none", font=dict(family="system-ui, sans-serif", size=12), **kw)


def apply_layout(fig: go.Figure, title: str, height: int, **kw) -> go.Figure:
    """Give `fig` the shared layout (and axes that make room for their labels); returns it."""
    fig.update_layout(**layout_dict(title, height, **kw))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig
