"""The Decode tab: compare decoding methods side by side on the same model, prompt and seed.

One prompt, 2–4 columns, each a method with its settings (`core.decoding.Method`). The
columns advance together, one step each in turn, and their text streams in (a generator
handler); each token is coloured by the probability the model gave it. Clicking a token
shows that step's candidates after each filter and the one chosen; below are the entropy
per step, the beam-search tree, a metrics table, "sample N times" and a temperature ×
method sweep. API: `/decode` (model key, prompt, columns, max_new_tokens, seed, trace) →
one JSON-friendly dict, not streamed (see `decode`). Other events are private. Caps:
MAX_PROMPT_CHARS, MAX_NEW_TOKENS, MAX_COLUMNS, `core.decoding.MAX_SAMPLES`/`MAX_SWEEP_RUNS`.
Does not own: decoding or metrics (`core.decoding`), drawing (`app.figures.decode`).
"""

from __future__ import annotations

import html
import math
import time

import gradio as gr

from app.figures import decode as figs
from app.tabs import clear_when, md_escape, selection_marker, user_errors
from app.validate import LIMITS, boundary
from core import decoding as D
from core.beam import MAX_BEAMS

TITLE = "Decode"
MAX_PROMPT_CHARS = LIMITS["decode.prompt"][1]
MAX_NEW_TOKENS = LIMITS["max_new_tokens"][1]
MAX_COLUMNS = LIMITS["columns"][1]
DEFAULT_PROMPT = "First Citizen:\nBefore we proceed any further,"
DEFAULT_COLUMNS = (dict(kind="greedy"), dict(kind="top_p", temperature=0.8, top_p=0.9),
                   dict(kind="beam", num_beams=4), dict(kind="top_k", temperature=1.0, top_k=40))
METHOD_CHOICES = [(label, key) for key, label in D.METHOD_LABELS.items()]
METRIC_HEADERS = ["column", "method", "length", "tokens/s", "first token (ms)", "mean log p", "perplexity",
                  "distinct-1", "distinct-2", "repeated 3-grams"]
SETTINGS = ("kind", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "num_beams", "length_penalty")
SETTINGS_DEFAULTS = dict(kind="greedy", temperature=1.0, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.0,
                         num_beams=4, length_penalty=1.0)


def piece(tok, i: int) -> str:
    """A token as readable text: its decoded string, or the visible form for partial UTF-8."""
    s = tok.decode([int(i)])
    return tok.display(int(i)) if "\ufffd" in s or not s else s


# Streaming: the browser redraws every column on each update, which costs more than the decoding
# itself when the columns are long, so updates come at most every STREAM_MIN_S, further apart as a
# run goes on (STREAM_SHARE of the time so far), and never more than STREAM_MAX_S apart.
STREAM_MIN_S, STREAM_MAX_S, STREAM_SHARE = 0.4, 2.0, 0.2
WHITESPACE_GLYPHS = {" ": "·", "\t": "→", "\n": "↵\n", "\r": "␍"}


def _visible(label: str) -> str:
    """Newlines stay line breaks but get a visible ↵, so a newline token can be clicked; a token
    that is only whitespace (a char model's space) shows its glyphs instead of an empty box."""
    if label and not label.strip():
        return "".join(WHITESPACE_GLYPHS.get(c, c) for c in label)
    return label.replace("\n", "↵\n")


def stream_interval(elapsed: float) -> float:
    """Seconds until the next streamed update, `elapsed` seconds into a run."""
    return min(STREAM_MAX_S, max(STREAM_MIN_S, STREAM_SHARE * elapsed))


def prepare(catalog, key, prompt: str, columns, max_new_tokens):
    """Validate the request → (checkpoint, prompt ids, methods, max_new_tokens)."""
    prompt = prompt or ""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
    n = D.as_int("max_new_tokens", max_new_tokens)
    if not 1 <= n <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens={n} must be between 1 and {MAX_NEW_TOKENS}")
    if columns is not None and not isinstance(columns, (list, tuple)):
        raise ValueError('columns must be a list of settings, e.g. [{"kind": "greedy"}, {"kind": "top_p", '
                         f'"top_p": 0.9}}], got {D.short_repr(columns)}')
    if not columns or not 1 <= len(columns) <= MAX_COLUMNS:
        raise ValueError(f"give between 1 and {MAX_COLUMNS} columns (got {len(columns or [])})")
    for i, c in enumerate(columns, 1):
        if c is not None and not isinstance(c, dict):
            raise ValueError(f'column {i} must be a dict of settings such as {{"kind": "greedy"}}, '
                             f'got {D.short_repr(c)}')
    methods = [D.Method.from_dict(c) for c in columns]
    ck = catalog.get(key)
    if ck.tokenizer is None:
        raise ValueError("this model has no tokenizer: it cannot read a prompt")
    ids = ck.tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: type at least one character")
    ids = ids[-ck.config.block_size:]
    return ck, ids, methods, n


def start(ck, ids, methods, n, seed, top: int = 10) -> list[D.Column]:
    """The columns, not yet run; `top` candidates per step are traced (0: only the chosen
    token's numbers, for answers that carry no per-step traces)."""
    seed = D.check_seed(seed)
    return D.columns(ck.model, ids, methods, n, seeds=[seed] * len(methods), eot_id=ck.tokenizer.eot_id, top=top)


def advance_all(cols: list[D.Column]):
    """Advance the columns in turn, one step each, until all are done; yield after each round."""
    while True:
        alive = [c.advance() for c in cols]
        if not any(alive):
            return
        yield cols


def column_result(ck, c: D.Column, trace: bool = True) -> dict:
    tok = ck.tokenizer
    out = {"method": c.method.used(), "label": c.method.label(), "ids": list(c.tokens),
           "text": tok.decode(c.tokens), "tokens": [piece(tok, i) for i in c.tokens],
           "probs": [round(s.prob, 6) for s in c.trace], "metrics": _finite(c.metrics())}
    if trace:
        out["steps"] = [dict(s.to_dict(), candidate_tokens=[piece(tok, i) for i in s.candidates]) for s in c.trace]
        if c.beam is not None:
            res = c.beam.result()
            nodes = [dict(id=n.id, step=n.step, parent=n.parent, score=n.score, final_score=n.final_score,
                          label=piece(tok, n.token) if n.token >= 0 else "⟨prompt⟩") for n in c.beam.nodes]
            out["beam"] = {"path": res.path, "score": res.score, "nodes": nodes}
    return out


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def decode(catalog, model: str, prompt: str, columns: list[dict], max_new_tokens: int = 40, seed: int = 0,
           trace: bool = False) -> dict:
    """Run every column to the end; a JSON-friendly dict (with per-step traces if `trace`)."""
    ck, ids, methods, n = prepare(catalog, model, prompt, columns, max_new_tokens)
    cols = start(ck, ids, methods, n, seed, top=10 if trace else 0)
    for _ in advance_all(cols):
        pass
    return {"model": model, "prompt_tokens": len(ids), "seed": int(seed), "max_new_tokens": n,
            "columns": [column_result(ck, c, trace) for c in cols]}


# --------------------------------------------------------------------------------------
# What the page shows, from a result dict (the same one /decode returns with trace=True)


def metric_rows(cols: list[dict]) -> list[list]:
    def r(v, d):
        return None if v is None else round(v, d)
    rows = []
    for i, c in enumerate(cols):
        m = c["metrics"]
        rows.append([i + 1, c["label"], m["length"], r(m["tokens_per_s"], 1),
                     None if m["ttft_s"] is None else round(1000 * m["ttft_s"], 1), r(m["mean_logprob"], 3),
                     r(m["perplexity"], 2), r(m["distinct_1"], 3), r(m["distinct_2"], 3), r(m["repeat_3gram"], 3)])
    return rows


def step_view(col: dict, index: int):
    """Markdown and the candidates figure for token `index` of one column."""
    steps = col.get("steps") or []
    if not steps:
        return "Generate first, then click a token.", None
    index = max(0, min(int(index), len(steps) - 1))
    s = steps[index]
    labels = s["candidate_tokens"]
    chosen = s["candidates"].index(s["token"])
    md = (f"**{md_escape(col['label'])}, step {index + 1}**: chose ‘{md_escape(labels[chosen])}’ — rank {s['rank']} "
          f"under the model, p = {s['prob']:.4f} (log p = {s['logprob']:.3f}); p after the filters = "
          f"{s['sampled_prob']:.4f}; entropy {s['entropy']:.2f} bits; step took {1000 * s['dt']:.1f} ms.")
    fig = figs.candidates_figure(labels, s["stages"], s["kept"], chosen,
                                 f"Step {index + 1}: the top candidates after each stage (★ = chosen)")
    return md, fig


def views(cols: list[dict]):
    ent = figs.entropy_figure([(f"{i + 1}. {c['label']}", [s["entropy"] for s in c.get("steps", [])], c["probs"])
                               for i, c in enumerate(cols)])
    beam = next((c for c in cols if "beam" in c), None)
    tree = None
    if beam is not None:
        b = beam["beam"]
        tree = figs.beam_tree_figure(b["nodes"], b["path"], f"Beam search tree — {beam['label']}, best score "
                                                            f"{b['score']:.3f}")
    return metric_rows(cols), ent, tree


def sample_view(catalog, key, text, max_new_tokens, sd, col, n, n_visible, *flat):
    """Sample N times with one column's method: a summary line and one row per sample."""
    col = int(col)
    if col >= int(n_visible):
        raise ValueError(f"column {col + 1} is not shown; pick one of the first {int(n_visible)}")
    ck, ids, methods, mx = prepare(catalog, key, text, methods_of(n_visible, flat), max_new_tokens)
    s = D.sample_n(ck.model, ids, methods[col], int(n), mx, seed=D.check_seed(sd or 0), eot_id=ck.tokenizer.eot_id)
    sm = s.summary
    md = (f"**{md_escape(methods[col].label())}** × {sm['n']}: {sm['unique']} different texts · distinct-1 across "
          f"samples {sm['distinct_1']:.3f} · distinct-2 {sm['distinct_2']:.3f} · perplexity {sm['perplexity']:.2f}")
    rows = [[int(sd or 0) + j, ck.tokenizer.decode(t), round(m["perplexity"], 2), round(m["distinct_2"], 3)]
            for j, (t, m) in enumerate(zip(s.texts, s.per_sample))]
    return md, rows


def sweep_view(catalog, key, text, max_new_tokens, sd, kinds, temps_text, per):
    """The temperature × method sweep (at most 64 new tokens a run): the figure and its table."""
    try:
        ts = [float(t) for t in str(temps_text).replace(";", ",").split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"cannot read temperatures {temps_text!r}: write numbers separated by commas") from None
    if len(ts) > 8:
        raise ValueError(f"{len(ts)} temperatures; the limit is 8")
    ck, ids, _, mx = prepare(catalog, key, text, [{}], min(int(max_new_tokens), 64))
    pts = D.sweep(ck.model, ids, [D.Method(kind=k) for k in (kinds or [])], ts, n=int(per), max_new_tokens=mx,
                  seed=D.check_seed(sd or 0), eot_id=ck.tokenizer.eot_id)
    rows = [[p["label"], p["temperature"], round(p["perplexity"], 2), round(p["distinct_2"], 3), p["unique"]]
            for p in pts]
    return figs.sweep_figure(pts), rows


def methods_of(n, flat) -> list[dict]:
    """The first `n` columns' settings from the flat list of every column's controls (SETTINGS order)."""
    per = len(SETTINGS)
    return [dict(zip(SETTINGS, flat[i * per:(i + 1) * per])) for i in range(int(n))]


def _column_ui(i: int, d: dict, spans=None, text: str = "", char: bool = False):
    with gr.Column(min_width=240, visible=i < 3, elem_id=f"dec-col-{i}") as col:
        kind = gr.Dropdown(METHOD_CHOICES, value=d["kind"], label=f"Column {i + 1}: method", elem_id=f"dec-kind-{i}")
        with gr.Accordion("Settings", open=False):
            temp = gr.Slider(0.05, 3.0, value=d.get("temperature", 1.0), step=0.05, label="Temperature")
            top_k = gr.Slider(1, 200, value=d.get("top_k", 40), step=1, label="top-k")
            top_p = gr.Slider(0.05, 1.0, value=d.get("top_p", 0.9), step=0.01, label="top-p")
            min_p = gr.Slider(0.0, 0.5, value=d.get("min_p", 0.05), step=0.01, label="min-p")
            rep = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
            beams = gr.Slider(1, MAX_BEAMS, value=d.get("num_beams", 4), step=1, label="Beam width")
            lp = gr.Slider(-2.0, 3.0, value=1.0, step=0.1, label="Length penalty (beam)")
        out = gr.HighlightedText(spans, label=f"Column {i + 1}", color_map=figs.COLOR_MAP, show_legend=False,
                                 show_inline_category=False, combine_adjacent=False, elem_id=f"dec-out-{i}",
                                 elem_classes=["gb-selectable"])
        # a char model's tokens are single characters: its text reads better plain
        plain = gr.Textbox(text, label=f"Column {i + 1} as plain text", lines=3, max_lines=12, interactive=False,
                           visible=char, buttons=["copy"], elem_id=f"dec-plain-{i}")
    return col, [kind, temp, top_k, top_p, min_p, rep, beams, lp], out, plain


def finished(ck, n_prompt: int, res: list[dict], seed) -> dict:
    """What the page shows once every column is done, by output name (from `column_result`s)."""
    rows, ent, tree = views(res)
    char = ck.tokenizer.kind == "char"
    md = (f"{n_prompt} prompt tokens · seed {int(seed or 0)} · "
          + " · ".join(f"column {i + 1}: {len(c['ids'])} tokens" for i, c in enumerate(res)))
    return dict(notice=md, res=res, metrics=rows, ent=ent, tree=tree,
                spans=[figs.token_spans([_visible(t) for t in c["tokens"]], c["probs"]) for c in res],
                plain=[c["text"] for c in res], char=char)


def build(ctx, model_picker: gr.Dropdown) -> None:
    catalog = ctx.catalog
    first = None  # the tab opens with a result, as the others do
    try:
        if model_picker.value:
            ck, ids, methods, mx = prepare(catalog, model_picker.value, DEFAULT_PROMPT, list(DEFAULT_COLUMNS[:3]), 40)
            cols = start(ck, ids, methods, mx, 0)
            for _ in advance_all(cols):
                pass
            first = finished(ck, len(ids), [column_result(ck, c) for c in cols], 0)
    except ValueError:
        pass
    f0 = first or dict(notice="", res=None, metrics=None, ent=None, tree=None, spans=[], plain=[], char=False)

    gr.Markdown("Run several decoding methods on the same prompt, model and seed, side by side. Tokens are "
                "coloured by the probability the model gave them; click one to see the candidates at that step "
                "and what each filter (temperature → top-k → top-p → min-p) cut.")
    prompt = gr.Textbox(DEFAULT_PROMPT, lines=2, max_length=MAX_PROMPT_CHARS, label="Prompt", elem_id="dec-prompt")
    with gr.Row():
        n_cols = gr.Slider(2, MAX_COLUMNS, value=3, step=1, label="Columns", scale=1)
        max_new = gr.Slider(1, MAX_NEW_TOKENS, value=40, step=1, label="Max new tokens", scale=2)
        seed = gr.Number(0, precision=0, label="Seed (same for every column)", scale=1)
        run_btn = gr.Button("Generate", variant="primary", scale=1, elem_id="dec-run")
    notice = gr.Markdown(f0["notice"], elem_id="dec-notice")
    # the colour key, once, above the columns (inside a column it read as output tokens)
    gr.HighlightedText([(name, name) for name, _, _ in figs.BUCKETS], color_map=figs.COLOR_MAP, show_legend=False,
                       show_inline_category=False, label="Colour: the probability the model gave each token",
                       elem_id="dec-legend", interactive=False)
    selection_marker()
    boxes, settings, outs, plains = [], [], [], []
    with gr.Row(equal_height=False):
        for i in range(MAX_COLUMNS):
            shown0 = (f0["spans"][i], f0["plain"][i], f0["char"]) if i < len(f0["spans"]) else ()
            col, s, out, plain = _column_ui(i, DEFAULT_COLUMNS[i], *shown0)
            boxes.append(col)
            settings += s
            outs.append(out)
            plains.append(plain)
    state = gr.State(f0["res"], time_to_live=3600)  # per-session traces: dropped after an idle hour
    step_md = gr.Markdown("Click a token to see that step's candidates.", elem_id="dec-step")
    step_plot = gr.Plot(show_label=False, elem_id="dec-step-plot")
    metrics = gr.Dataframe(f0["metrics"], headers=METRIC_HEADERS, label="Metrics per column (perplexity and log p "
                           "under the model at T=1)", interactive=False, elem_id="dec-metrics", wrap=True,
                           elem_classes=["gb-fit"])
    ent_plot = gr.Plot(f0["ent"], show_label=False)
    tree_plot = gr.Plot(f0["tree"], show_label=False, visible=f0["tree"] is not None, elem_id="dec-tree")
    with gr.Accordion("Sample N times: diversity across samples", open=False):
        with gr.Row():
            which = gr.Dropdown([(f"Column {i + 1}", i) for i in range(MAX_COLUMNS)], value=1, label="Method of")
            n_samples = gr.Slider(2, D.MAX_SAMPLES, value=6, step=1, label="Samples (seeds seed, seed+1, …)")
            sample_btn = gr.Button("Sample")
        sample_md = gr.Markdown()
        sample_df = gr.Dataframe(headers=["seed", "text", "perplexity", "distinct-2"], interactive=False, wrap=True,
                                 column_widths=["9%", "63%", "14%", "14%"], elem_classes=["gb-fit"],
                                 elem_id="dec-samples")
    with gr.Accordion("Sweep: temperature × method → perplexity vs distinct-2", open=False):
        with gr.Row():
            sweep_methods = gr.CheckboxGroup(METHOD_CHOICES, value=["greedy", "sample", "top_k", "top_p", "beam"],
                                            label="Methods")
            temps = gr.Textbox("0.5, 0.8, 1.0, 1.3", label="Temperatures", max_length=100)
            per_point = gr.Slider(1, 8, value=3, step=1, label="Samples per point")
            sweep_btn = gr.Button("Sweep")
        sweep_plot = gr.Plot(show_label=False, elem_id="dec-sweep")
        sweep_df = gr.Dataframe(headers=["method", "temperature", "perplexity", "distinct-2", "unique samples"],
                                interactive=False, wrap=True, elem_classes=["gb-fit"])

    def generate(key, text, n, max_new_tokens, sd, *flat):
        try:  # a generator: `user_errors` cannot wrap it, so bad input is turned into gr.Error here
            yield from _generate(key, text, n, max_new_tokens, sd, *flat)
        except ValueError as e:
            raise gr.Error(html.escape(str(e), quote=False), print_exception=False) from None

    def _generate(key, text, n, max_new_tokens, sd, *flat):
        # outputs: notice, the columns, the plain texts, state, metrics, entropy, tree, step text, step plot
        ck, ids, methods, mx = prepare(catalog, key, text, methods_of(n, flat), max_new_tokens)
        cols = start(ck, ids, methods, mx, sd or 0)
        tok = ck.tokenizer
        pad = [None] * (MAX_COLUMNS - len(cols))
        skip = [gr.skip()] * MAX_COLUMNS
        # the first update clears what the old inputs computed: no stale metrics, traces or plots meanwhile
        yield ["Generating…", *[[] for _ in cols], *pad, *skip, None, None, None, gr.update(value=None, visible=False),
               "Generating…", None]
        t0 = time.perf_counter()
        due = t0 + STREAM_MIN_S
        for _ in advance_all(cols):
            now = time.perf_counter()
            if now >= due:
                spans = [[(_visible(piece(tok, t)), None) for t in c.tokens] for c in cols]
                yield ["Generating…", *spans, *pad, *skip, *[gr.skip()] * 6]
                done = time.perf_counter()  # the next update waits from when this one was handed over
                due = done + stream_interval(done - t0)
        f = finished(ck, len(ids), [column_result(ck, c) for c in cols], sd)
        plain = [gr.update(value=t, visible=f["char"]) for t in f["plain"]] + [gr.update(value="")] * len(pad)
        yield [f["notice"], *f["spans"], *pad, *plain, f["res"], f["metrics"], f["ent"],
               gr.update(value=f["tree"], visible=f["tree"] is not None),
               "Click a token to see that step's candidates.", None]

    def select(i):
        def fn(res, evt: gr.SelectData):
            if not res or i >= len(res):
                return "Generate first, then click a token.", None
            idx = evt.index if isinstance(evt.index, int) else (evt.index[0] if evt.index else 0)
            return step_view(res[i], idx)
        return fn

    sample = user_errors(lambda *a: sample_view(catalog, *a))
    run_sweep = user_errors(lambda *a: sweep_view(catalog, *a))

    heavy = dict(concurrency_limit=2, concurrency_id="decode", api_visibility="private")
    inputs = [model_picker, prompt, n_cols, max_new, seed, *settings]
    shown = [notice, *outs, *plains, state, metrics, ent_plot, tree_plot, step_md, step_plot]
    run_btn.click(generate, inputs, shown, **heavy)
    prompt.submit(generate, inputs, shown, **heavy)
    model_picker.change(generate, inputs, shown, **heavy)  # another model: the columns are redone for it
    # other inputs changed: what was computed from the old ones clears until the next run
    changed = [prompt.change, seed.input, max_new.input, *(c.input for c in settings)]
    clear_when(changed, {notice: "Settings changed: press **Generate** to run them.", **{o: [] for o in outs},
                         **{p: "" for p in plains}, state: None, metrics: None, ent_plot: None, step_plot: None,
                         step_md: "Click a token to see that step's candidates.", tree_plot: gr.update(visible=False)})
    clear_when([model_picker.change, *changed], {sample_md: "", sample_df: None, sweep_plot: None, sweep_df: None})
    for i, out in enumerate(outs):
        out.select(select(i), state, [step_md, step_plot], api_visibility="private")
    n_cols.change(lambda n: [gr.update(visible=i < int(n)) for i in range(MAX_COLUMNS)], n_cols, boxes,
                  api_visibility="private")
    sample_btn.click(sample, [model_picker, prompt, max_new, seed, which, n_samples, n_cols, *settings],
                     [sample_md, sample_df], **heavy)
    sweep_btn.click(run_sweep, [model_picker, prompt, max_new, seed, sweep_methods, temps, per_point],
                    [sweep_plot, sweep_df], **heavy)

    def decode_api(model: str, prompt: str, columns: list[dict], max_new_tokens: int = 40, seed: int = 0,
                   trace: bool = False) -> dict:
        """Run 1–4 decoding methods on one prompt (same model, same seed). Each column is a dict:
        {"kind": greedy|sample|top_k|top_p|min_p|beam, "temperature", "top_k", "top_p", "min_p",
        "repetition_penalty", "num_beams", "length_penalty"}. Returns per column the method, text, ids,
        tokens, per-token probabilities and metrics (and per-step traces when trace=True)."""
        return decode(catalog, model, prompt, columns, max_new_tokens, seed, trace)

    gr.api(boundary(ctx)("decode", decode_api), api_name="decode", concurrency_limit=2, concurrency_id="decode")
