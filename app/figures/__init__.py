"""Figure builders: pure functions, data in, a new `go.Figure` out (testable without a browser).

One submodule per tab (`app.figures.model`, `app.figures.tokens`, ...). They take numpy
arrays, lists and strings (user text goes into plotly text fields as data, never HTML) and
never touch gradio, models or files.

Figures are built from plain dicts and handed to `go.Figure(..., _validate=False)`:
plotly's per-property validation cost most of a request's time under load. What it used
to do is done here instead: titles are written `dict(text=...)` (plotly.js 3 reads no
string titles), properties are nested dicts (no `marker_color` shorthands), and named
colour scales are expanded to plotly.py's own stops by `colorscale` (plotly.js has its
own scales under the same names, some reversed).
"""

from __future__ import annotations

import re
from functools import lru_cache

import plotly.graph_objects as go
from plotly.colors import get_colorscale

_AXIS = re.compile(r"[xy]axis\d*")


def layout_dict(title: str, height: int, **kw) -> dict:
    """The layout the tabs' figures share (left-aligned title, tight margins, transparent
    background, system font), as a plain dict; `kw` adds or overrides keys."""
    return {**dict(title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)), height=height,
                   margin=dict(l=10, r=10, t=50, b=10), paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                   template="none", font=dict(family="system-ui, sans-serif", size=12)), **kw}


def figure(traces: list[dict], title: str, height: int, **kw) -> go.Figure:
    """A figure with the shared layout (`layout_dict`), from plain trace dicts (each with its
    `type`), without plotly's validation. Every axis in `kw` (xaxis, yaxis, xaxis2, ...) and
    the first x and y axes make room for their labels (`automargin`)."""
    layout = layout_dict(title, height, **kw)
    for name in dict.fromkeys(["xaxis", "yaxis", *(k for k in layout if _AXIS.fullmatch(k))]):
        layout[name] = {**(layout.get(name) or {}), "automargin": True}
    return go.Figure(data=traces, layout=layout, _validate=False)


@lru_cache(maxsize=None)
def _scale(name: str) -> tuple:
    return tuple(tuple(stop) for stop in get_colorscale(name))


def colorscale(scale) -> list:
    """A colour scale as [[position, colour], ...]: a name ("Viridis", "Greens") becomes
    plotly.py's stops, as validation made it; a list is returned as it is."""
    if isinstance(scale, str):
        return [list(stop) for stop in _scale(scale)]
    return scale
