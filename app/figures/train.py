"""Figures for the Train tab: the live loss curve, the learning rate, and runs compared.

Owns: how training is drawn (train loss per step, train/val loss at each evaluation, the
ln(V) "random guess" line, overlays of several runs) and the config-diff rows shown beside
the overlay. Builders take plain lists and numbers (as `JobManager.status()` returns them),
never a job or a Gradio component; run names are user text and go into plotly text fields
as data. Does not own: training or job state (`core.train`, `app.jobs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from app.figures import Fig

TRAIN_COLOR = "#94a3b8"      # per-step training loss (noisy, thin)
EVAL_TRAIN_COLOR = "#6366f1"  # train loss on the fixed eval batches
VAL_COLOR = "#f59e0b"         # val loss
GUESS_COLOR = "#ef4444"       # ln(V): a model that guesses uniformly
RUN_COLORS = ["#6366f1", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16", "#ec4899"]
GRID = "rgba(148,163,184,0.3)"
# settings shown in the diff table, in this order (others are left out as noise)
DIFF_KEYS = ("corpus", "tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "steps", "batch_size",
             "lr", "warmup", "weight_decay", "dropout", "optimizer", "seed", "device")


def _figure(traces: list[dict], title: str, height: int, legend: bool = True, xaxis: dict | None = None,
            yaxis: dict | None = None, **kw) -> Fig:
    """The Train tab's layout (plotly's default template, gridded axes, x = step, a unified
    hover), from plain trace dicts, without plotly's validation; `xaxis`/`yaxis` add to the axes."""
    layout = dict(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)),
        height=height, margin=dict(l=10, r=10, t=40, b=10),
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
        showlegend=legend, legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        hovermode="x unified",
        xaxis={**(xaxis or {}), "title": dict(text="step"), "showgrid": True, "gridcolor": GRID, "rangemode": "tozero"},
        yaxis={**(yaxis or {}), "showgrid": True, "gridcolor": GRID}, **kw)
    return Fig(traces, layout)


def _finite(points: Sequence[Sequence], col: int) -> tuple[list, list]:
    xs, ys = [], []
    for p in points:
        v = p[col] if len(p) > col else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(p[0])
            ys.append(v)
    return xs, ys


def loss_curve(losses: Sequence[Sequence], evals: Sequence[Sequence] = (), vocab_size: int | None = None,
               total_steps: int | None = None, title: str = "Loss (cross-entropy, nats per token)") -> Fig:
    """Train loss per step (thin), train and val loss at each evaluation (markers), and a
    dashed ln(V) line: the loss of a model that gives every token the same probability.

    losses: [[step, loss], ...]; evals: [[step, train_loss, val_loss], ...]."""
    xs, ys = _finite(losses, 1)
    traces = [dict(type="scatter", x=xs, y=ys, mode="lines", name="train loss (batch)",
                   line=dict(color=TRAIN_COLOR, width=1), hovertemplate="step %{x}: %{y:.4f}<extra>batch</extra>")]
    for col, name, color in ((1, "train loss (eval)", EVAL_TRAIN_COLOR), (2, "val loss", VAL_COLOR)):
        ex, ey = _finite(evals, col)
        traces.append(dict(type="scatter", x=ex, y=ey, mode="lines+markers", name=name,
                           line=dict(color=color, width=2), marker=dict(size=6),
                           hovertemplate=f"step %{{x}}: %{{y:.4f}}<extra>{name}</extra>"))
    yaxis: dict = dict(title=dict(text="loss"))
    extra = {}
    if vocab_size and vocab_size > 1:
        guess = math.log(vocab_size)
        # what fig.add_hline(y=guess, annotation_position="top right") draws
        extra = dict(shapes=[dict(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=guess, y1=guess,
                                  line=dict(color=GUESS_COLOR, dash="dash", width=1.5))],
                     annotations=[dict(text=f"random guess ln({vocab_size}) = {guess:.2f}", showarrow=False,
                                       xref="x domain", x=1, xanchor="right", yref="y", y=guess,
                                       yanchor="bottom", font=dict(color=GUESS_COLOR))])
        yaxis["range"] = [0, guess * 1.12]
    else:
        yaxis["rangemode"] = "tozero"
    xaxis = dict(range=[0, total_steps]) if total_steps else None
    return _figure(traces, title, 380, xaxis=xaxis, yaxis=yaxis, **extra)


def lr_curve(lrs: Sequence[Sequence], total_steps: int | None = None, title: str = "Learning rate") -> Fig:
    """The learning rate at each step (warmup, then cosine decay)."""
    xs, ys = _finite(lrs, 1)
    trace = dict(type="scatter", x=xs, y=ys, mode="lines", name="lr", line=dict(color=EVAL_TRAIN_COLOR, width=2),
                 hovertemplate="step %{x}: %{y:.2e}<extra></extra>")
    return _figure([trace], title, 220, legend=False, xaxis=dict(range=[0, total_steps]) if total_steps else None,
                   yaxis=dict(title=dict(text="lr"), exponentformat="e", rangemode="tozero"))


def compare_runs(runs: Sequence[Mapping], title: str = "Val loss by run") -> Fig:
    """One line per run: its val loss at each evaluation, or its per-step train loss when it
    has no evaluation yet. runs: [{"name", "evals", "losses"}, ...]."""
    traces = []
    for i, run in enumerate(runs):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        name = str(run.get("name", f"run {i + 1}"))
        xs, ys = _finite(run.get("evals") or [], 2)
        kind = "val"
        if not xs:
            xs, ys = _finite(run.get("losses") or [], 1)
            kind = "train"
        traces.append(dict(type="scatter", x=xs, y=ys, mode="lines+markers" if kind == "val" else "lines", name=name,
                           line=dict(color=color, width=2, dash="solid" if kind == "val" else "dot"),
                           meta=[kind], hovertemplate="%{fullData.name}: %{y:.4f}<extra></extra>"))
    yaxis = dict(title=dict(text="loss"), rangemode="tozero")
    if runs:
        return _figure(traces, title, 340, yaxis=yaxis)
    return _figure(traces, title, 340, xaxis=dict(visible=False), yaxis=dict(yaxis, visible=False),
                   annotations=[dict(text="pick runs to compare", showarrow=False, xref="paper", yref="paper",
                                     x=0.5, y=0.5)])


def config_diff(settings: Mapping[str, Mapping]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the settings that differ between runs: one row per setting, one
    column per run. With one run (or none differing) every known setting is listed."""
    names = list(settings)
    keys = [k for k in DIFF_KEYS if any(k in s for s in settings.values())]
    differing = [k for k in keys if len({repr(settings[n].get(k)) for n in names}) > 1]
    shown = differing if differing and len(names) > 1 else keys
    rows = [[k, *[("—" if settings[n].get(k) is None else str(settings[n].get(k))) for n in names]] for k in shown]
    return ["setting", *names], rows
