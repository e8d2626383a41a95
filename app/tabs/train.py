"""The Train tab: train a small GPT in the browser and watch the loss fall.

Settings (corpus, tokenizer, model size with a live parameter and memory estimate,
training settings, device) go to the job manager (`ctx.jobs`), which runs the training in
the background; this page only follows it. A `gr.Timer` polls a cheap fingerprint of the
run every second and redraws only when something changed, so a refreshed page (or another
browser) re-attaches to the running job. Checkpoints land in the runs folder, where the
shared model picker finds them (it is refreshed when a new checkpoint appears).

API: `/train_start` (settings → status dict), `/train_status` (job name, or "" for the
current run → status dict), `/train_stop` (job name or "" → status dict); the status dict
is `JobManager.status()`. Every other event is private. Does not own: the jobs
(`app.jobs`), the loop (`core.train`), the drawing (`app.figures.train`).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from app.figures import train as figures
from app.jobs import FORM, LIMITS, MAX_PASTED_CHARS
from app.jobs.form import INDUCTION_PRESET
from app.tabs import fmt_bytes, fmt_int, md_escape, user_errors
from app.validate import boundary
from core.config import PRESETS, GPTConfig
from core.data import CORPUS_DESCRIPTIONS
from core.device import available_devices

TITLE = "Train"
D = SimpleNamespace(**FORM)  # the form's defaults (the recipe's numbers come from core.spec.RunSpec)
UI_PRESETS = {k: PRESETS[k] for k in ("workshop", "micro", "nano", "demo", "small")}
# character vocabularies (distinct characters + <unk>) of the built-in corpora, for the estimate
CHAR_VOCAB = {"shakespeare": 66, "induction": 16, "arithmetic": 14, "counting": 13, "patterns": 10}
REFRESH = {}  # the `seen` state after start/stop/resume: redraw everything at the next tick
RUN_HEADERS = ["run", "state", "step", "of", "best val loss", "parameters", "corpus", "tokenizer", "model"]


def _fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def estimate(corpus: str, text: str, tokenizer: str, vocab_size: int, n_layer: int, n_head: int, n_embd: int,
             block_size: int, batch_size: int) -> str:
    """The model's size before anything is allocated (Markdown)."""
    if tokenizer == "bpe":
        v, how = int(vocab_size), "BPE"
    elif corpus == "text":
        v, how = len(set(text or "")) + 1, "characters"
    else:
        v, how = CHAR_VOCAB.get(corpus, 256), "characters" if corpus in CHAR_VOCAB else "characters, at most"
    try:
        cfg = GPTConfig(vocab_size=v, n_layer=int(n_layer), n_head=int(n_head), n_embd=int(n_embd),
                        block_size=int(block_size))
    except (ValueError, TypeError) as e:
        return f"⚠️ {md_escape(e)}"
    return (f"**≈ {fmt_int(cfg.n_params())} parameters** ({fmt_int(cfg.n_params(include_embeddings=False))} "
            f"without embeddings) · vocabulary ≈ {fmt_int(v)} ({how}) · weights {fmt_bytes(cfg.memory_bytes())} · "
            f"training ≈ {fmt_bytes(cfg.training_memory_bytes(int(batch_size)))} at batch {int(batch_size)} · "
            f"head size {cfg.head_size}")


def status_markdown(st: dict | None) -> str:
    if not st:
        return "No run yet: choose the settings and press **Start training**."
    s = st.get("settings") or {}
    parts = [f"### {md_escape(st['job'])} · {st['state']}"]
    if st.get("reason"):
        parts.append(f"⚠️ {md_escape(st['reason'])}")
    loss = "—" if st.get("loss") is None else f"{st['loss']:.4f}"
    val = "—" if st.get("val_loss") is None else f"{st['val_loss']:.4f}"
    lr = "—" if st.get("lr") is None else f"{st['lr']:.2e}"
    tps = "—" if st.get("tokens_per_s") is None else f"{st['tokens_per_s']:,.0f}"
    parts.append("| step | loss | val loss | learning rate | tokens/s | elapsed | ETA |\n"
                 "|---|---|---|---|---|---|---|\n"
                 f"| {fmt_int(st['step'])} / {fmt_int(st['total'])} | {loss} | {val} | {lr} | {tps} | "
                 f"{_fmt_time(st.get('elapsed'))} | {_fmt_time(st.get('eta')) if st['running'] else '—'} |")
    facts = [f"{fmt_int(st['n_params'])} parameters" if st.get("n_params") else None,
             f"{s.get('n_layer')} layers × {s.get('n_head')} heads × {s.get('n_embd')} dims" if s else None,
             f"{md_escape(s.get('corpus'))}, {md_escape(s.get('tokenizer'))} tokenizer" if s else None,
             f"vocabulary {fmt_int(st['vocab_size'])}" if st.get("vocab_size") else None,
             f"on {md_escape(st['device'])}" if st.get("device") else None]
    if any(facts):
        parts.append(" · ".join(f for f in facts if f))
    if st.get("stage"):  # preparing: say what it is doing until the first step
        stage = md_escape(st["stage"])
        parts.append(f"⏳ {stage[:1].upper()}{stage[1:]}…")
    elif st.get("device"):
        parts.append(f"Chosen: {chosen_line(st)}")
    return "\n\n".join(parts)


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * size:
            return f"{s // size} {unit}"
    return f"{s} s"


def chosen_line(st: dict, now: float | None = None) -> str:
    """One line of the compute path the run took: the start event's `choices` summary and when it
    was measured, or else its dtype and attention kernel."""
    c = st.get("choices") if isinstance(st.get("choices"), dict) else {}
    if c.get("summary"):
        line = md_escape(c["summary"])
        if isinstance(c.get("measured_at"), (int, float)):
            line += f" (measured {_ago((now or time.time()) - c['measured_at'])} ago"
            line += ", from the cache)" if c.get("cached") else ")"
        return line
    return f"{md_escape(st.get('dtype'))} · attention kernel {md_escape(st.get('sdpa') or 'auto')}"


def progress_html(st: dict | None) -> str:
    """A progress bar from numbers only (nothing user-supplied goes into this HTML)."""
    step, total = (int(st["step"]), int(st["total"])) if st else (0, 0)
    pct = 100.0 * step / total if total else 0.0
    colors = {"failed": "#ef4444", "stopped": "#f59e0b", "interrupted": "#f59e0b"}
    color = colors.get(st["state"] if st else "", "#6366f1")
    return (f'<div style="height:10px;border-radius:5px;background:rgba(148,163,184,.3);overflow:hidden" '
            f'role="progressbar" aria-label="training progress" aria-valuenow="{step}" aria-valuemin="0" '
            f'aria-valuemax="{total}"><div style="height:100%;width:{pct:.1f}%;background:{color}"></div></div>')


def run_row(r: dict) -> list:
    """A row of the runs table from one of `JobManager.runs()`'s entries."""
    s = r["settings"]
    return [r["name"], r["state"], r["step"], r["total"], "—" if r["best_val"] is None else f"{r['best_val']:.4f}",
            fmt_int(r["n_params"]), s.get("corpus", "—"), s.get("tokenizer", "—"),
            f"{s.get('n_layer')}×{s.get('n_head')}×{s.get('n_embd')}, block {s.get('block_size')}"]


def status_row(st: dict) -> list:
    """The runs table's row of the run a status describes: the same snapshot the status shows."""
    vals = [e[2] for e in st["evals"] if e[2] is not None]
    return run_row({"name": st["job"], "state": st["state"], "step": st["step"], "total": st["total"],
                    "best_val": min(vals) if vals else None, "n_params": st["n_params"], "settings": st["settings"]})


def run_rows(runs: list[dict], st: dict | None = None) -> list[list]:
    """The runs table; the row of the run `st` describes comes from `st` itself, so the table
    never shows another step than the status above it."""
    return [status_row(st) if st is not None and r["name"] == st["job"] else run_row(r) for r in runs]


def patched_rows(table, st: dict) -> list[list] | None:
    """The runs table as the page shows it (`table`: its rows, or a DataFrame) with the row of the
    run `st` describes redrawn from `st`; None when that run has no row yet."""
    rows = table.values.tolist() if hasattr(table, "values") else [list(r) for r in (table or [])]
    names = [r[0] if r else None for r in rows]
    if st["job"] not in names:
        return None
    rows[names.index(st["job"])] = status_row(st)
    return rows


def build(ctx, model_picker: gr.Dropdown) -> dict:
    """Build the tab; returns its link to the Timeline (the button and the run it shows) for `app.ui`."""
    jobs = ctx.jobs
    zip_dir = Path(tempfile.gettempdir()) / "glassbox-downloads"

    def settings_from(corpus, text, tokenizer, vocab_size, preset, n_layer, n_head, n_embd, block_size, steps,
                      batch_size, lr, warmup, weight_decay, dropout, optimizer, seed, device, name,
                      snapshots=D.snapshots, **extra):
        """The form's values by name: the job manager makes them a RunSpec (`app.jobs.form`)."""
        return dict(corpus=corpus, text=text or "", tokenizer=tokenizer, vocab_size=vocab_size,
                    preset=preset or "custom", n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                    steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, weight_decay=weight_decay,
                    dropout=dropout, optimizer=optimizer, seed=seed, device=device, name=name or "",
                    snapshots=snapshots, **extra)

    # ---- API -------------------------------------------------------------------------------
    def train_start(corpus: str = D.corpus, text: str = "", tokenizer: str = D.tokenizer,
                    vocab_size: int = D.vocab_size,
                    n_layer: int = D.n_layer, n_head: int = D.n_head, n_embd: int = D.n_embd,
                    block_size: int = D.block_size, steps: int = D.steps, batch_size: int = D.batch_size,
                    lr: float = D.lr, warmup: int = D.warmup, weight_decay: float = D.weight_decay,
                    dropout: float = D.dropout, optimizer: str = D.optimizer, seed: int = D.seed,
                    device: str = D.device, name: str = "", eval_interval: int = 0, eval_batches: int = D.eval_batches,
                    snapshots: int = D.snapshots) -> dict:
        """Start a training run in the background; returns its status (`job` is its id). Corpus:
        shakespeare, induction, arithmetic, counting, patterns, or text (then pass `text`). `snapshots`:
        weight-only snapshots over the run for the Timeline tab (0: none)."""
        return jobs.start(settings_from(corpus, text, tokenizer, vocab_size, "custom", n_layer, n_head, n_embd,
                                        block_size, steps, batch_size, lr, warmup, weight_decay, dropout, optimizer,
                                        seed, device, name, snapshots, eval_interval=eval_interval,
                                        eval_batches=eval_batches))

    def train_status(job: str = "") -> dict:
        """A run's state and history: state, step, total, losses [[step, loss]], evals
        [[step, train, val]], sample, eta, ... `job` "" means the running (else latest) run."""
        return jobs.status(job or None)

    def train_stop(job: str = "") -> dict:
        """Stop a run (default: the running one); it saves `latest` within one step."""
        return jobs.stop(job or None)

    api = boundary(ctx)
    gr.api(api("train_start", train_start), api_name="train_start", concurrency_limit=2, concurrency_id="train_ctl")
    gr.api(api("train_status", train_status), api_name="train_status", concurrency_limit=None)
    gr.api(api("train_stop", train_stop), api_name="train_stop", concurrency_limit=2, concurrency_id="train_ctl")

    # ---- components ------------------------------------------------------------------------
    gr.Markdown("Train a GPT on a corpus and watch it learn: next-token prediction, one optimizer step at a "
                "time. The run continues in the background if you close the page; its checkpoints appear in "
                "the model picker above, so every other tab can open the model you trained.")
    lim = LIMITS
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            with gr.Accordion("Data", open=True):
                corpus = gr.Dropdown([(f"{k}: {v}", k) for k, v in CORPUS_DESCRIPTIONS.items()], value=D.corpus,
                                     label="Corpus")
                text = gr.Textbox(label="Your text", lines=5, max_length=MAX_PASTED_CHARS, visible=False,
                                  placeholder="Paste at least a few thousand characters")
                upload = gr.File(label="A UTF-8 .txt file", file_types=[".txt"], visible=False, height=90)
                with gr.Row():
                    tokenizer = gr.Radio([("characters", "char"), ("BPE", "bpe")], value=D.tokenizer, label="Tokenizer")
                    vocab = gr.Slider(*lim["vocab_size"], value=D.vocab_size, step=1, label="BPE vocabulary size",
                                      visible=False)
            with gr.Accordion("Model", open=True):
                preset = gr.Dropdown(list(UI_PRESETS) + ["custom"], value=D.preset, label="Preset")
                with gr.Row():
                    n_layer = gr.Slider(*lim["n_layer"], value=D.n_layer, step=1, label="Layers", min_width=150)
                    n_head = gr.Slider(*lim["n_head"], value=D.n_head, step=1, label="Heads", min_width=150)
                with gr.Row():
                    n_embd = gr.Slider(*lim["n_embd"], value=D.n_embd, step=8, label="Width (n_embd)", min_width=150)
                    block = gr.Slider(*lim["block_size"], value=D.block_size, step=8, label="Block size (context)",
                                      min_width=150)
                est = gr.Markdown(estimate(D.corpus, "", D.tokenizer, D.vocab_size, D.n_layer, D.n_head, D.n_embd,
                                           D.block_size, D.batch_size), elem_id="train-estimate")
            with gr.Accordion("Training", open=True):
                with gr.Row():
                    steps = gr.Number(D.steps, label="Steps", precision=0, minimum=lim["steps"][0],
                                      maximum=lim["steps"][1],
                                      min_width=90)
                    batch = gr.Number(D.batch_size, label="Batch size", precision=0, minimum=lim["batch_size"][0],
                                      maximum=lim["batch_size"][1], min_width=90)
                    lr = gr.Number(D.lr, label="Learning rate", minimum=lim["lr"][0], maximum=lim["lr"][1],
                                   min_width=90)
                with gr.Row():
                    warmup = gr.Number(D.warmup, label="Warmup steps", precision=0, minimum=0,
                                       maximum=lim["warmup"][1], min_width=90)
                    wd = gr.Number(D.weight_decay, label="Weight decay", minimum=lim["weight_decay"][0],
                                   maximum=lim["weight_decay"][1], min_width=90)
                    dropout = gr.Number(D.dropout, label="Dropout", minimum=lim["dropout"][0],
                                        maximum=lim["dropout"][1], step=0.05, min_width=90)
                with gr.Row():
                    optimizer = gr.Radio([("AdamW", "adamw"), ("Muon + AdamW", "muon")], value=D.optimizer,
                                         label="Optimizer")
                    device = gr.Radio(["auto", *available_devices()], value=D.device, label="Device")
                with gr.Row():
                    seed = gr.Number(D.seed, label="Seed", precision=0, minimum=0, maximum=lim["seed"][1])
                    snapshots = gr.Slider(*lim["snapshots"], value=D.snapshots, step=1, label="Snapshots",
                                          info="weights kept over the run, dense early: the Timeline tab scrubs them")
                    name = gr.Textbox(label="Run name (optional)", max_length=64, max_lines=1,
                                      placeholder="letters, digits, - and _")
            induction_btn = gr.Button("Preset: watch an induction head form", size="sm",
                                      elem_id="train-induction-preset")
            with gr.Row():
                start_btn = gr.Button("Start training", variant="primary", min_width=120)
                stop_btn = gr.Button("Stop", variant="stop", min_width=80)
                resume_btn = gr.Button("Resume", min_width=80)
        with gr.Column(scale=3, min_width=420):
            status = gr.Markdown(status_markdown(None), elem_id="train-status")
            progress = gr.HTML(progress_html(None), elem_id="train-progress")
            loss_plot = gr.Plot(figures.loss_curve([], []), label="Loss", show_label=False, elem_id="train-loss")
            with gr.Row(equal_height=False):
                lr_plot = gr.Plot(figures.lr_curve([]), label="Learning rate", show_label=False, min_width=240)
                sample = gr.Textbox(label="Latest sample (from the fixed prompt)", lines=8, max_lines=12,
                                    interactive=False, min_width=240)
            with gr.Accordion("Runs", open=True):
                runs_df = gr.Dataframe(headers=RUN_HEADERS, label="Runs on this server (newest first)",
                                       interactive=False, max_height=260, wrap=True, elem_classes=["gb-fit"],
                                       column_widths=["13%", "9%", "8%", "6%", "10%", "15%", "13%", "14%", "12%"])
                with gr.Row(equal_height=False):
                    watch = gr.Dropdown([], value=None, label="Show run", info="Follow, resume, download or scrub this run",
                                        allow_custom_value=True, scale=2)
                    download_btn = gr.Button("Download zip", size="sm", scale=0, min_width=140)
                    timeline_btn = gr.Button("Scrub in Timeline ›", size="sm", scale=0, min_width=160,
                                             elem_id="train-to-timeline")
                    zip_file = gr.File(label="Checkpoint zip", visible=False, scale=1)
                compare = gr.Dropdown([], value=[], multiselect=True, label="Compare runs")
                with gr.Row(equal_height=False):
                    compare_plot = gr.Plot(figures.compare_runs([]), show_label=False, min_width=320)
                    diff_df = gr.Dataframe(headers=["setting"], label="Settings that differ", interactive=False,
                                           min_width=280, wrap=True, elem_classes=["gb-fit"])
    seen = gr.State({}, time_to_live=3600)
    timer = gr.Timer(1.0)

    # ---- handlers --------------------------------------------------------------------------
    def on_corpus(c):
        return gr.Textbox(visible=c == "text"), gr.File(visible=c == "file")

    est_fn = api("train_estimate", estimate, notice=True)

    def on_preset(p, corpus_v, text_v, tokenizer_v, vocab_v, batch_v):
        """A preset's four sizes and their estimate, in one answer."""
        if p not in UI_PRESETS:
            return [gr.skip()] * 5
        d = UI_PRESETS[p]
        sizes = d["n_layer"], d["n_head"], d["n_embd"], d["block_size"]
        return *sizes, est_fn(corpus_v, text_v, tokenizer_v, vocab_v, *sizes, batch_v)

    @user_errors
    def start(corpus_v, text_v, file_v, *vals):
        s = settings_from(corpus_v, text_v, *vals)
        st = jobs.start(s, text_file=file_v)
        gr.Info(f"Started run {st['job']}")
        return st["job"], REFRESH

    @user_errors
    def stop():
        st = jobs.stop(None)  # the running run, whichever run this page shows
        return st["job"], REFRESH

    @user_errors
    def resume(job, steps_v):
        target = job or jobs.current()
        if not target:
            raise ValueError("no run to resume: pick one under Runs")
        st = jobs.resume(target, steps=steps_v if steps_v and steps_v > jobs.status(target)["step"] else None)
        return st["job"], REFRESH

    def tick(job, seen_v, compared, table, request: gr.Request):
        """Redraw only when the run changed; refresh the runs list and the model picker when a
        checkpoint appears or the state changes (the picker keeps each visitor's choice). The
        status and the run's row of the runs table come from one status, in one update."""
        v = jobs.version(job or None)
        if not v[0] or (seen_v.get("v") == list(v) and seen_v.get("runs")):
            return [gr.skip()] * 12
        st = jobs.status(v[0])
        changed = len(st["checkpoints"]) != seen_v.get("ckpts") or st["state"] != seen_v.get("state")
        rows = None if changed or not seen_v.get("runs") else patched_rows(table, st)
        runs = jobs.runs() if rows is None else None
        names = [r["name"] for r in runs] if runs is not None else None
        out_seen = {"v": list(v), "ckpts": len(st["checkpoints"]), "state": st["state"], "runs": True, "job": v[0]}
        compare_out = [gr.skip()] * 3
        if names is not None:
            chosen = [n for n in (compared or []) if n in names]
            if v[0] not in chosen and seen_v.get("job") != v[0]:  # a run this page has not seen: add it
                chosen = [v[0], *chosen][:4]
            compare_out = [gr.Dropdown(choices=names, value=chosen), *show_compare(chosen)]
        return (status_markdown(st), progress_html(st),
                figures.loss_curve(st["losses"], st["evals"], st["vocab_size"], st["total"]),
                figures.lr_curve(st["lrs"], st["total"]), st["sample"], out_seen,
                ctx.picker.update(request) if changed and st["checkpoints"] else gr.skip(),
                run_rows(runs, st) if runs is not None else rows,
                gr.Dropdown(choices=names, value=v[0]) if names is not None else gr.skip(),
                *compare_out)

    def show_compare(selected):
        runs = [jobs.status(n) for n in (selected or [])[:8]]
        headers, rows = figures.config_diff({r["job"]: r["settings"] for r in runs})
        return figures.compare_runs([{"name": r["job"], "evals": r["evals"], "losses": r["losses"]} for r in runs]), \
            gr.Dataframe(value=rows, headers=headers)

    @user_errors
    def download(job):
        target = job or jobs.current()
        if not target:
            raise ValueError("no run to download: pick one under Runs")
        return gr.File(value=str(jobs.zip_run(target, zip_dir)), visible=True)

    private = dict(api_visibility="private")
    corpus.change(on_corpus, corpus, [text, upload], **private)
    tokenizer.change(lambda t: gr.Slider(visible=t == "bpe"), tokenizer, vocab, **private)
    # The estimate is arithmetic: its events skip the queue (queue=False), where they would wait
    # behind decodes, renders and training control, and a preset sends its sizes and their
    # estimate in one answer instead of a second round trip through the sliders' change events.
    instant = dict(queue=False, show_progress="hidden", **private)
    preset.input(on_preset, [preset, corpus, text, tokenizer, vocab, batch], [n_layer, n_head, n_embd, block, est],
                 **instant)
    for s in (n_layer, n_head, n_embd, block):
        s.input(lambda: "custom", None, preset, **instant)
    est_inputs = [corpus, text, tokenizer, vocab, n_layer, n_head, n_embd, block, batch]
    gr.on([c.change for c in est_inputs], est_fn, est_inputs, est, **instant)
    settings_in = [corpus, text, upload, tokenizer, vocab, preset, n_layer, n_head, n_embd, block, steps, batch, lr,
                   warmup, wd, dropout, optimizer, seed, device, name, snapshots]
    ctl = dict(concurrency_limit=2, concurrency_id="train_ctl", **private)
    start_btn.click(start, settings_in, [watch, seen], **ctl)
    preset_fields = {"corpus": corpus, "tokenizer": tokenizer, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
                     "block_size": block, "steps": steps, "batch_size": batch, "lr": lr, "warmup": warmup,
                     "weight_decay": wd, "dropout": dropout, "optimizer": optimizer, "snapshots": snapshots,
                     "seed": seed}
    induction_btn.click(lambda: ("custom", *(INDUCTION_PRESET[k] for k in preset_fields)), None,
                        [preset, *preset_fields.values()], **private)
    stop_btn.click(stop, None, [watch, seen], **ctl)
    resume_btn.click(resume, [watch, steps], [watch, seen], **ctl)
    watch.input(lambda: REFRESH, None, seen, **private)
    timer.tick(tick, [watch, seen, compare, runs_df],
               [status, progress, loss_plot, lr_plot, sample, seen, model_picker, runs_df, watch, compare,
                compare_plot, diff_df],
               show_progress="hidden", concurrency_limit=None, **private)
    compare.change(show_compare, compare, [compare_plot, diff_df], **private)
    download_btn.click(download, watch, zip_file, concurrency_limit=2, **private)
    return {"to_timeline": (timeline_btn, watch)}
