"""The Timeline tab: scrub a run's snapshots on one slider and watch the model learn.

A run trained with snapshots (`core.snapshots`) is picked by name; its timeline on a text (by
default an excerpt of the run's held-out text) is computed once (`core.inspect.timeline`) and
kept in `TimelineCache`, so moving the slider only redraws. For the chosen step: the step's
losses, the loss curve with a marker, the sample nearest that step, the layer × head attention
grid on the text and the top next tokens after it. Across all steps: every head's
previous-token, induction and entropy scores, the probability of each true next token, and the
token embeddings aligned across snapshots.

API: `/timeline` (run name, text → per snapshot: step, losses, per-head statistics, top next
tokens, true-token probabilities). Every other event is private. Does not own: the numbers
(`core.inspect.timeline`), the drawing (`app.figures.timeline`), the runs (`app.jobs`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from app.figures import timeline as figures
from app.tabs import user_errors
from app.validate import boundary
from core import snapshots
from core.inspect import timeline as TL
from core.spec import check_name

TITLE = "Timeline"
INTRO = ("Watch a model learn: a run trained with **snapshots** (the Train tab's *Snapshots* setting) keeps its "
         "weights at steps spread over the run, dense early. Pick the run, then move the slider: every view below "
         "shows the model as it was at that step.")
INDUCTION = (
    "**Watch an induction head form.** Each line of the *induction* corpus is a few random words and then the same "
    "words again (`ab kc | ab kc`). The first half cannot be predicted; the second half can, but only by copying: "
    "find the earlier copy of the current token and predict the token that followed it. Two heads working together "
    "do this (Olsson et al. 2022): a *previous-token* head in layer 0 writes each position's previous token into it, "
    "and an *induction* head in layer 1 looks for the position whose previous token matches the current token and "
    "copies what comes next. For a long stretch of the run little happens: the loss sits near the cost of guessing "
    "letters and no head's induction score passes 0.2. Then, within a few hundred steps, one layer-1 head's "
    "induction score jumps above 0.5 and the loss drops at the same time (the bump in the loss curve): scrub across "
    "it and watch the grid's stripe appear. With the Train tab's preset, measured on a 2-core CPU: the loss sits near "
    "2.07 until about step 1,500, then falls to 1.73 by step 1,798 while head L1 H0's induction score climbs from "
    "0.15 to 0.58 (about 28 s into the run; bench/timeline.py measures it on your machine). The induction score "
    "here is measured on the text below: the weight on the token that followed an earlier copy of the last three.")


class TimelineCache:
    """The timelines built last, by (run folder, text, the snapshots on disk): a slider move
    redraws from memory; a new snapshot (a run still training) makes a new entry. Thread-safe."""

    def __init__(self, size: int = 4):
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def get(self, run_dir: Path, text: str) -> TL.Timeline:
        found = snapshots.listing(run_dir)
        try:  # a run trained again under the same name has the same steps but newer folders
            stamp = found[-1][1].stat().st_mtime_ns if found else 0
        except OSError:
            stamp = 0
        key = (str(run_dir), text, tuple(s for s, _ in found), stamp)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        tl = TL.build(TL.run_snapshots(run_dir), text)
        with self._lock:
            self._items[key] = tl
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return tl


def run_folder(runs_dir: Path, run: str) -> Path:
    """The folder of run `run` (a checked name: no path can be spelled with it)."""
    folder = Path(runs_dir) / check_name(run)
    if not folder.is_dir():
        raise ValueError(f"there is no run named {run!r} on this server")
    return folder


def runs_with_snapshots(runs_dir: Path) -> list[str]:
    """Names of the runs that have snapshots, newest first."""
    try:
        runs = [d for d in Path(runs_dir).iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return []
    runs.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    return [d.name for d in runs if snapshots.listing(d)]


def build(ctx, model_picker: gr.Dropdown) -> dict:
    """Build the tab; returns the event that fills it when it is opened (`on_open`: `app.ui` wires it to the
    tab's select) and the one that puts a run in its box for another tab's link (`ask_for`)."""
    cache: TimelineCache = ctx.timelines

    def timeline_of(run: str, text: str) -> tuple[TL.Timeline, str, dict]:
        folder = run_folder(ctx.runs_dir, run)
        text = text or TL.default_text(folder)
        if not text.strip():
            raise ValueError("type some text to look at the run's snapshots on")
        found = snapshots.listing(folder)
        meta = snapshots.read_meta(found[-1][1]) if found else {}
        return cache.get(folder, text), text, meta

    # ---- API -------------------------------------------------------------------------------
    def timeline_api(run: str, text: str = "") -> dict:
        """A run's snapshots on `text` ("" = an excerpt of its held-out text): per snapshot its step, the
        training loss at that step, train and val loss from the nearest eval, every head's statistics
        ({prev_token_score, induction_score, entropy}: [layer][head]), the top next tokens after the text
        and the probability of each true next token. Induction is measured on the text (the weight on tokens
        that followed an earlier copy of the query's last three tokens), or, when the text hardly repeats
        itself, on a repeated random sequence: `induction_on` says which."""
        tl, text, _ = timeline_of(run, text)
        return {"run": run, "text": text, "tokens": tl.labels, "truncated": tl.n_total > len(tl.labels),
                "induction_on": tl.induction_on, "snapshots": TL.as_dict(tl)}

    api = boundary(ctx)
    gr.api(api("timeline", timeline_api), api_name="timeline", concurrency_limit=2, concurrency_id="timeline")

    # ---- components ------------------------------------------------------------------------
    gr.Markdown(INTRO)
    names = runs_with_snapshots(ctx.runs_dir)
    with gr.Row(equal_height=False):
        run = gr.Dropdown(names, value=names[0] if names else None, label="Run", scale=2,
                          info="runs with snapshots, newest first", elem_id="timeline-run")
        refresh = gr.Button("↻ Runs", size="sm", scale=0, min_width=90)
        text = gr.Textbox(label="Text to look at", lines=2, max_lines=4, max_length=TL.MAX_TEXT_CHARS, scale=4,
                          placeholder="empty: an excerpt of the run's held-out text", elem_id="timeline-text")
        show = gr.Button("Show", variant="primary", scale=0, min_width=90)
    explain = gr.Markdown("", elem_id="timeline-explain")
    slider = gr.Slider(0, 1, value=0, step=1, label="Snapshot (move to scrub through training)",
                       elem_id="timeline-slider")
    head = gr.Markdown("Pick a run that has snapshots.", elem_id="timeline-step")
    with gr.Row(equal_height=False):
        loss_plot = gr.Plot(show_label=False, elem_id="timeline-loss", min_width=360)
        top_plot = gr.Plot(show_label=False, elem_id="timeline-top", min_width=260)
    sample = gr.Textbox(label="Sample", lines=3, max_lines=6, interactive=False, elem_id="timeline-sample")
    grid_plot = gr.Plot(show_label=False, elem_id="timeline-grid")
    with gr.Accordion("Across all steps", open=True):
        stats_plot = gr.Plot(show_label=False, elem_id="timeline-heads")
        probs_plot = gr.Plot(show_label=False, elem_id="timeline-probs")
        embed_plot = gr.Plot(show_label=False, elem_id="timeline-embeddings")

    # ---- handlers --------------------------------------------------------------------------
    def step_outputs(tl: TL.Timeline, i: int, total: int | None, vocab: int | None):
        i = max(0, min(int(i), len(tl.views) - 1))
        v = tl.views[i]
        last = tl.labels[-1] if tl.labels else ""
        return (figures.header(tl, i, total), figures.loss_at(tl, v.step, vocab), figures.top_next(v, last),
                gr.Textbox(value=v.sample, label=figures.sample_label(v)), figures.grid(tl, i),
                figures.head_stats(tl, v.step))

    def facts(meta: dict) -> tuple[int | None, int | None, bool]:
        train = meta.get("train") or {}
        data = meta.get("data") or {}
        return train.get("steps"), (meta.get("model") or {}).get("vocab_size"), data.get("corpus") == "induction"

    @user_errors
    def load(run_v, text_v):
        if not run_v:
            raise ValueError("no run with snapshots yet: train one with Snapshots above 0 (the Train tab)")
        tl, text_v, meta = timeline_of(run_v, text_v)
        total, vocab, induction = facts(meta)
        n = len(tl.steps)
        return (text_v, INDUCTION if induction else "", gr.Slider(0, max(1, n - 1), value=n - 1, step=1),
                *step_outputs(tl, n - 1, total, vocab), figures.true_token_probs(tl), figures.embeddings(tl))

    @user_errors
    def pick_run(run_v):
        return load(run_v, "")

    @user_errors
    def open_tab(run_v, text_v, loaded):
        """Opening the tab: the run list rescanned; the first time (or after a link put a run in the
        box), the run in the box, else the newest."""
        names = runs_with_snapshots(ctx.runs_dir)
        if (loaded and run_v in names) or not names:
            value = run_v if run_v in names else (names[0] if names else None)
            return gr.Dropdown(choices=names, value=value), loaded, *[gr.skip()] * len(load_outs)
        first = run_v if run_v in names else names[0]
        return gr.Dropdown(choices=names, value=first), True, *load(first, "")

    @user_errors
    def ask_for(job):
        """Another tab's link to a run: it goes in the box and is loaded when the tab opens."""
        if not job:
            raise ValueError("no run shown: pick one under Runs")
        names = runs_with_snapshots(ctx.runs_dir)
        if job not in names:
            raise ValueError(f"run {job} has no snapshots yet: the first is saved at step 0 of a run with "
                             "Snapshots above 0")
        return gr.Dropdown(choices=names, value=job), False

    @user_errors
    def scrub(run_v, text_v, i):
        if not run_v or not text_v:
            return [gr.skip()] * 6
        tl, _, meta = timeline_of(run_v, text_v)
        total, vocab, _ = facts(meta)
        return step_outputs(tl, i, total, vocab)

    def refresh_runs(current):
        names = runs_with_snapshots(ctx.runs_dir)
        return gr.Dropdown(choices=names, value=current if current in names else (names[0] if names else None))

    private = dict(api_visibility="private")
    heavy = dict(concurrency_limit=2, concurrency_id="timeline", **private)
    step_outs = [head, loss_plot, top_plot, sample, grid_plot, stats_plot]
    load_outs = [text, explain, slider, *step_outs, probs_plot, embed_plot]
    loaded = gr.State(False)
    run.input(pick_run, run, load_outs, **heavy)
    show.click(load, [run, text], load_outs, **heavy)
    text.submit(load, [run, text], load_outs, **heavy)
    refresh.click(refresh_runs, run, run, **private)
    slider.input(scrub, [run, text, slider], step_outs, trigger_mode="always_last", show_progress="hidden", **heavy)
    on_open = dict(fn=open_tab, inputs=[run, text, loaded], outputs=[run, loaded, *load_outs], **heavy)
    return {"on_open": on_open, "ask_for": dict(fn=ask_for, outputs=[run, loaded])}
