"""Figures for the Embeddings tab: plain functions, arrays and labels in, a new `Fig` out.

Owns how embeddings are drawn: the whole-vocabulary map (WebGL, one trace per token
class, matches of a search ringed), the position–position heatmap and the positional
PCA curve, a layer's hidden states with tokens as labels, each token's path across the
layers, and a run's checkpoints in aligned coordinates behind a step slider.

Compact by construction: coordinates are float32 numpy arrays and ids int32 ones, which
go on the wire as base64 typed arrays (`Fig.to_json`); per-point hover text is the token's
label only (the class and the id come from the trace's hovertemplate and `customdata`).
Labels are user or vocabulary text: they are HTML-escaped, because plotly reads a few tags
in text.
Does not own: computing what is drawn (`core.inspect.embeddings`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from app.figures import Fig
from app.figures import colorscale as _scale
from core.inspect.embeddings import CLASS_NAMES

CLASS_COLORS = ("#6366f1", "#0ea5e9", "#f59e0b", "#ef4444", "#a855f7", "#94a3b8", "#111827", "#10b981")
HIGHLIGHT = "#e11d48"
MAX_TEXT_LABELS = 40  # matches labelled on the map (all are ringed)
GRID = "rgba(148,163,184,0.3)"


def esc(text: str) -> str:
    """Text for a plotly text field: shown as typed, never read as markup."""
    return html.escape(text, quote=False)


def _figure(traces: list[dict], title: str, height: int, legend: bool = False, **kw) -> Fig:
    """The tab's layout (plotly's default template, a monospace hover for token labels, the
    legend above the plot), from plain trace dicts, without plotly's per-property validation
    (a vocabulary map is a few traces, but the checkpoints' slider is many); `kw` adds keys."""
    layout = dict(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)),
        height=height, margin=dict(l=10, r=10, t=48, b=10),
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
        showlegend=legend, hoverlabel=dict(font=dict(family="monospace")),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0, itemsizing="constant"),
    )
    layout.update(kw)
    return Fig(traces, layout)


def _axis_titles(explained: Sequence[float], dims: int) -> list[str]:
    return [f"PC{i + 1} ({100 * float(explained[i]):.1f}% of variance)" for i in range(dims)]


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _scatter(coords: np.ndarray, dims: int, **kw) -> dict:
    if dims == 3:
        return dict(type="scatter3d", x=_f32(coords[:, 0]), y=_f32(coords[:, 1]), z=_f32(coords[:, 2]), **kw)
    return dict(type="scattergl", x=_f32(coords[:, 0]), y=_f32(coords[:, 1]), **kw)


def _axes(titles: list[str], dims: int, xaxis: dict | None = None, yaxis: dict | None = None) -> dict:
    """Layout keys for the PCA axes: a cube scene in 3-D, gridded x and y axes in 2-D."""
    if dims == 3:
        return dict(scene=dict(xaxis=dict(title=dict(text=titles[0])), yaxis=dict(title=dict(text=titles[1])),
                               zaxis=dict(title=dict(text=titles[2])), aspectmode="cube"))
    grid = dict(showgrid=True, gridcolor=GRID, zeroline=False)
    return dict(xaxis=dict(xaxis or {}, title=dict(text=titles[0]), **grid),
                yaxis=dict(yaxis or {}, title=dict(text=titles[1]), **grid))


def token_map(coords: np.ndarray, classes: np.ndarray, labels: Sequence[str], explained: Sequence[float], *,
              dims: int = 2, highlight: Sequence[int] = (), title: str = "Token embeddings") -> Fig:
    """Every vocabulary token at its PCA coordinates, one trace per class (click the legend
    to hide one); `highlight` ids are ringed in red and, when few, labelled."""
    if dims not in (2, 3):
        raise ValueError(f"dims={dims!r} must be 2 or 3")
    V = len(labels)
    if coords.shape[0] != V or classes.shape[0] != V or coords.shape[1] < dims:
        raise ValueError(f"coords {coords.shape}, classes {classes.shape} and {V} labels do not match")
    size = 2.5 if V > 20_000 else 4 if V > 2_000 else 6
    traces = []
    for c, name in enumerate(CLASS_NAMES):
        ids = np.flatnonzero(classes == c)
        if not len(ids):
            continue
        traces.append(_scatter(
            coords[ids], dims, mode="markers", name=f"{name} ({len(ids):,})",
            marker=dict(size=size if dims == 2 else size * 0.7, color=CLASS_COLORS[c], opacity=0.7, line=dict(width=0)),
            text=[esc(labels[i]) for i in ids], customdata=ids.astype(np.int32),
            hovertemplate=f"%{{text}}<br>id %{{customdata}} · {name}<extra></extra>",
        ))
    hl = np.asarray(list(highlight), dtype=np.int64)
    if len(hl):
        few = len(hl) <= MAX_TEXT_LABELS
        traces.append(_scatter(
            coords[hl], dims, mode="markers+text" if few else "markers", name=f"matches ({len(hl):,})",
            marker=dict(size=12 if dims == 2 else 6, color="rgba(0,0,0,0)", line=dict(color=HIGHLIGHT, width=2)),
            text=[esc(labels[i]) for i in hl], customdata=hl.astype(np.int32), textposition="top center",
            textfont=dict(color=HIGHLIGHT, size=12),
            hovertemplate="%{text}<br>id %{customdata} · match<extra></extra>",
        ))
    return _figure(traces, title, 640, legend=True, **_axes(_axis_titles(explained, dims), dims))


def positional_heatmap(M: np.ndarray, factor: int = 1,
                       title: str = "Position × position cosine similarity") -> Fig:
    """Cosine similarity between position embeddings; `factor` > 1: each cell averages factor × factor positions."""
    n = M.shape[0]
    if factor > 1:
        title += f" (each cell averages {factor}×{factor} positions)"
    trace = dict(
        type="heatmap", z=_f32(M), x0=0, dx=factor, y0=0, dy=factor, colorscale=_scale("RdBu"), reversescale=True,
        zmin=-1, zmax=1, colorbar=dict(title=dict(text="cos"), thickness=12),
        hovertemplate="position %{y} vs %{x}: cos %{z:.3f}<extra></extra>",
    )
    return _figure([trace], title, 520, meta=dict(cells=n),
                   xaxis=dict(title=dict(text="position"), constrain="domain"),
                   yaxis=dict(title=dict(text="position"), autorange="reversed", scaleanchor="x"))


def positional_curve(coords: np.ndarray, explained: Sequence[float], dims: int = 2,
                     title: str = "Position embeddings, PCA, in position order") -> Fig:
    """The path of position embeddings 0, 1, 2, … through their principal axes, coloured by position."""
    T = coords.shape[0]
    pos = np.arange(T, dtype=np.int32)
    marker = dict(size=5 if dims == 2 else 3, color=pos, colorscale=_scale("Viridis"),
                  colorbar=dict(title=dict(text="position"), thickness=12))
    trace = _scatter(coords, dims, mode="lines+markers", marker=marker, line=dict(color=GRID, width=2),
                     customdata=pos, hovertemplate="position %{customdata}<extra></extra>")
    return _figure([trace], title, 520, **_axes(_axis_titles(explained, dims), dims))


def _points(kind: str, coords, dims: int, **kw) -> dict:
    """A scatter trace of `coords` (N, dims) — or lists per axis — in 2-D ("scatter") or 3-D ("scatter3d")."""
    axes = ("x", "y", "z")[:dims]
    cols = coords if isinstance(coords, (list, tuple)) else [_f32(coords[:, d]) for d in range(dims)]
    return dict(type="scatter3d" if dims == 3 else kind, **dict(zip(axes, cols)), **kw)


def layer_scatter(coords: np.ndarray, labels: Sequence[str], explained: Sequence[float], layer: int,
                  title: str | None = None, dims: int = 2) -> Fig:
    """One layer's hidden states (T, dims) labelled with their tokens, coloured by position."""
    T = coords.shape[0]
    pos = np.arange(T, dtype=np.int32)
    name = "embedding (token + position)" if layer == 0 else f"after block {layer - 1}"
    trace = _points(
        "scatter", coords, dims, mode="markers+text",
        text=[esc(s) for s in labels], textposition="top center", customdata=pos,
        marker=dict(size=9 if dims == 2 else 5, color=pos, colorscale=_scale("Viridis"),
                    colorbar=dict(title=dict(text="position"), thickness=12)),
        hovertemplate="%{text}<br>position %{customdata}<extra></extra>",
    )
    return _figure([trace], title or f"Hidden states at layer {layer}: {name}", 480,
                   **_axes(_axis_titles(explained, dims), dims))


def layer_paths(coords: np.ndarray, labels: Sequence[str], explained: Sequence[float], layer: int | None = None,
                title: str = "Each token's path across the layers (one PCA for all layers)", dims: int = 2) -> Fig:
    """(L+1, T, dims) coordinates: a line per token from the embedding through every block,
    markers coloured by layer, the token's label at its last point; `layer` is ringed."""
    L1, T, _ = coords.shape
    cols: list[list] = [[] for _ in range(dims)]
    lay, tok = [], []
    for t in range(T):
        for d in range(dims):
            cols[d] += coords[:, t, d].tolist() + [None]
        lay += list(range(L1)) + [None]
        tok += [esc(labels[t])] * L1 + [None]
    traces = [_points(
        "scatter", cols, dims, mode="lines+markers", text=tok, customdata=lay, line=dict(color=GRID, width=1.5),
        marker=dict(size=6 if dims == 2 else 3, color=[v if v is not None else 0 for v in lay],
                    colorscale=_scale("Plasma"), cmin=0, cmax=max(1, L1 - 1),
                    colorbar=dict(title=dict(text="layer"), thickness=12)),
        hovertemplate="%{text}<br>layer %{customdata}<extra></extra>", connectgaps=False,
    )]
    traces.append(_points("scatter", coords[-1], dims, mode="text", text=[esc(s) for s in labels],
                          textposition="top center", hoverinfo="skip"))
    if layer is not None and 0 <= layer < L1:
        traces.append(_points(
            "scatter", coords[layer], dims, mode="markers", name=f"layer {layer}",
            marker=dict(size=12 if dims == 2 else 6, color="rgba(0,0,0,0)", line=dict(color=HIGHLIGHT, width=2)),
            hoverinfo="skip"))
    return _figure(traces, title, 480, **_axes(_axis_titles(explained, dims), dims))


def training_steps(coords: np.ndarray, labels: Sequence[str], classes: np.ndarray, steps: Sequence[str],
                   disparities: Sequence[float], explained: Sequence[float],
                   title: str = "Token embeddings over training (aligned to the last checkpoint)") -> Fig:
    """(n, V, 2) aligned coordinates, one WebGL trace per checkpoint; the slider under the
    plot shows one checkpoint at a time (it runs in the browser: no server round trip)."""
    n, V, _ = coords.shape
    text = [esc(s) for s in labels]
    colors = np.asarray(CLASS_COLORS, dtype=object)[classes.astype(np.int64)].tolist()
    ids = np.arange(V, dtype=np.int32)
    traces = [dict(
        type="scattergl", x=_f32(coords[j, :, 0]), y=_f32(coords[j, :, 1]), mode="markers", name=steps[j],
        visible=j == n - 1, showlegend=False, marker=dict(size=5, color=colors, opacity=0.75), text=text,
        customdata=ids, hovertemplate=f"%{{text}}<br>id %{{customdata}} · {esc(steps[j])}<extra></extra>",
    ) for j in range(n)]
    present = [c for c in range(len(CLASS_NAMES)) if np.any(classes == c)]
    for c in present:  # legend entries only: the colours of the classes
        traces.append(dict(type="scattergl", x=[None], y=[None], mode="markers", name=CLASS_NAMES[c], showlegend=True,
                           marker=dict(size=8, color=CLASS_COLORS[c]), hoverinfo="skip"))
    pad = lambda lo, hi: [float(lo - 0.05 * (hi - lo + 1e-9)), float(hi + 0.05 * (hi - lo + 1e-9))]  # noqa: E731
    slider_steps = []
    for j in range(n):
        visible = [i == j for i in range(n)] + [True] * len(present)
        slider_steps.append(dict(method="update", label=steps[j], args=[
            {"visible": visible},
            {"title.text": f"{title}<br><sub>{esc(steps[j])}: distance to the last after alignment "
                           f"{disparities[j]:.3f}</sub>"}]))
    sliders = [dict(active=n - 1, steps=slider_steps, pad=dict(t=50), currentvalue=dict(prefix="checkpoint: "))]
    axes = _axes(_axis_titles(explained, 2), 2, xaxis=dict(range=pad(coords[..., 0].min(), coords[..., 0].max())),
                 yaxis=dict(range=pad(coords[..., 1].min(), coords[..., 1].max())))
    last = f"{title}<br><sub>{esc(steps[-1])}: distance to the last after alignment {disparities[-1]:.3f}</sub>"
    return _figure(traces, last, 640, legend=True, sliders=sliders, **axes,
                   margin=dict(l=10, r=10, t=96, b=10))  # room for the two-line title above the legend
