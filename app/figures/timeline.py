"""Figures of the Timeline tab: a run's snapshots, one step at a time and all steps at once.

Owns: how a timeline is drawn — the loss curve with a marker at the chosen step, the top next
tokens after the text, the per-head statistics against step (one line per head, three panels:
previous-token, induction, entropy; a head that forms shows as a rising line), the
probability of the true next token at every position against step (a heatmap), and the
step header's Markdown. The attention grid and the aligned embeddings reuse the Attention and
Embeddings tabs' builders. Pure: a `core.inspect.timeline.Timeline` (or its parts) in, a new
`Fig` out; token labels are data, escaped with `safe`. Does not own: computing any of it
(`core.inspect.timeline`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.figures import Fig
from app.figures import figure as _figure
from app.figures.attention import attention_grid, safe
from app.figures.embeddings import training_steps
from app.figures.train import loss_curve
from core.inspect.timeline import TIMELINE_STATS, StepView, Timeline

MARK_COLOR = "#f59e0b"
HEAD_COLORS = ["#6366f1", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16", "#ec4899",
               "#64748b", "#d946ef", "#0ea5e9", "#f97316"]


def _step_line(step: int, yref: str = "paper") -> dict:
    return dict(type="line", xref="x", x0=step, x1=step, yref=yref, y0=0, y1=1,
                line=dict(color=MARK_COLOR, width=2, dash="dot"))


def loss_at(tl: Timeline, step: int, vocab_size: int | None = None) -> Fig:
    """The run's loss curve (as the Train tab draws it) with a vertical marker at `step`."""
    fig = loss_curve(tl.history, tl.evals, vocab_size, title=f"Loss · step {step:,} marked")
    d = fig.to_dict()
    layout = dict(d["layout"])
    layout["shapes"] = [*layout.get("shapes", []), _step_line(step)]
    return Fig(d["data"], layout)


def top_next(view: StepView, last_label: str) -> Fig:
    """The most likely next tokens after the text's last token, at this step."""
    labels = [safe(t) for t, _ in view.top][::-1]
    probs = [p for _, p in view.top][::-1]
    trace = dict(type="bar", orientation="h", x=probs, y=labels, marker=dict(color="#6366f1"),
                 text=[f"{p:.1%}" for p in probs], textposition="auto",
                 hovertemplate="%{y}: %{x:.3f}<extra></extra>")
    return _figure([trace], f"Next token after “{safe(last_label)}” · step {view.step:,}", 260,
                   xaxis=dict(range=[0, 1], title=dict(text="probability")),
                   yaxis=dict(type="category"))


def grid(tl: Timeline, i: int) -> Fig:
    """The layer × head attention grid on the text at snapshot `i`, frames coloured by induction."""
    v = tl.views[i]
    return attention_grid(v.thumbs, tl.pool, len(tl.labels), stat=v.stats["induction_score"],
                          stat_label="induction score", stat_range=(0.0, 1.0))


def head_stats(tl: Timeline, step: int | None = None) -> Fig:
    """Per-head statistics against step: three stacked panels, one line per head (same colour
    in every panel), and the chosen step marked."""
    steps = tl.steps
    L, nh = tl.views[0].stats["entropy"].shape
    traces = []
    for j, (key, label) in enumerate(TIMELINE_STATS.items()):
        axis = "" if j == 0 else str(j + 1)
        for l in range(L):
            for h in range(nh):
                name = f"L{l} H{h}"
                ys = [float(v.stats[key][l, h]) for v in tl.views]
                ys = [y if math.isfinite(y) else None for y in ys]
                traces.append(dict(type="scatter", x=steps, y=ys, mode="lines+markers", name=name, legendgroup=name,
                                   showlegend=j == 0, xaxis="x" + axis, yaxis="y" + axis,
                                   line=dict(color=HEAD_COLORS[(l * nh + h) % len(HEAD_COLORS)], width=1.5),
                                   marker=dict(size=4),
                                   hovertemplate=f"{name} · step %{{x}}: %{{y:.3f}}<extra>{label}</extra>"))
    third = 1 / 3
    axes = {}
    labels = {**TIMELINE_STATS, "induction_score": "induction" + (" (on the text)" if tl.induction_on == "text"
                                                                  else " (random repeat)")}
    for j, label in enumerate(labels.values()):
        axis = "" if j == 0 else str(j + 1)
        lo = 1 - (j + 1) * third + 0.04
        axes["yaxis" + axis] = dict(domain=[lo, lo + third - 0.08], range=[0, 1.05], title=dict(text=label))
        bottom = j == len(TIMELINE_STATS) - 1
        axes["xaxis" + axis] = dict(anchor="y" + axis, showticklabels=bottom, **({"matches": "x"} if j else {}),
                                    **({"title": dict(text="step")} if bottom else {}))
    shapes = [] if step is None else [dict(_step_line(step), xref="x" + ("" if j == 0 else str(j + 1)))
                                      for j in range(len(TIMELINE_STATS))]
    return _figure(traces, "Every head against step: a head forming shows as a rising line", 620, shapes=shapes,
                   legend=dict(orientation="h", y=-0.08), **axes)


def true_token_probs(tl: Timeline) -> Fig:
    """p(true next token) at every position (columns) against step (rows)."""
    z = np.stack([v.true_probs for v in tl.views]).astype(np.float32) if tl.views else np.zeros((0, 0))
    x = [f"{i + 1} {safe(t)}" for i, t in enumerate(tl.labels[1:])]
    y = [f"step {s:,}" for s in tl.steps]
    trace = dict(type="heatmap", z=z, x=x, y=y, zmin=0, zmax=1, colorscale="Greens", reversescale=True,
                 colorbar=dict(title=dict(text="p(true)"), thickness=12),
                 hovertemplate="%{y} · next token %{x}: %{z:.3f}<extra></extra>")
    return _figure([trace], "Probability of the true next token at every position, against step",
                   max(260, 60 + 22 * len(y)), xaxis=dict(type="category", tickangle=-60),
                   yaxis=dict(type="category", autorange="reversed"))


def embeddings(tl: Timeline) -> Fig:
    """Token embeddings over the snapshots, aligned onto the last (the Embeddings tab's view)."""
    return training_steps(tl.embed, tl.vocab, tl.embed_classes, [f"step {s:,}" for s in tl.steps],
                          tl.embed_disparity, tl.embed_explained, title="Token embeddings over the snapshots "
                          "(aligned to the last)")


def header(tl: Timeline, i: int, total_steps: int | None = None) -> str:
    """The chosen step in words (Markdown; numbers only, no user text)."""
    v = tl.views[i]

    def f(x: float | None) -> str:
        return "—" if x is None or not math.isfinite(x) else f"{x:.3f}"

    of = f" of {total_steps:,}" if total_steps else ""
    best = np.nanmax(v.stats["induction_score"]) if np.isfinite(v.stats["induction_score"]).any() else float("nan")
    at = f" (eval at step {v.eval_step:,})" if v.eval_step is not None and v.eval_step != v.step else ""
    return (f"**Step {v.step:,}{of}** · snapshot {i + 1} of {len(tl.steps)} · training loss {f(v.loss)} · "
            f"train / val loss {f(v.train_loss)} / {f(v.val_loss)}{at} · best head's induction score {f(best)}")


def sample_label(v: StepView) -> str:
    return "Sample (none yet)" if v.sample_step is None else f"Sample from the fixed prompt at step {v.sample_step:,}"


def best_head(views: Sequence[StepView], key: str) -> list[float]:
    """The best head's value of statistic `key` at each step (what a forming head lifts)."""
    return [float(np.nanmax(v.stats[key])) for v in views]
