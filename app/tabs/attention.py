"""The Attention tab: every layer and head of the picked model on the user's text, live.

Shows a layer × head grid of pooled heatmaps (updating as the user types, debounced: see
`DEBOUNCE_JS`); clicking a head opens it large with token labels (`CLICK_JS`), clicking
it again or ← Back returns to the grid. Also: where a query token looks (token strip and
every head), aggregations, sortable per-head statistics that can colour the grid, the
attention equation with the model's own numbers, the logit lens, a comparison with a
second model of the same shape, and head ablation. Every number comes from one
inspection pass (`core.inspect.attention.analyse`).

API: `/attention` (model key, text, layer, head, query (−1 = last token), view "grid" |
"head", aggregate, colour-by) → the tab's outputs in `OUTPUT_NAMES` order: view, layer,
head, notice (markdown), main plot, query, token strip, every-head plot, aggregation plot,
statistics rows, equation markdown / plot / rows, vectors, logit lens plot and a JSON
summary (the numbers: tokens, the query's weights, per-head statistics, the equation, the
logit lens). Other events are private. Does not own: the numbers
(`core.inspect.attention`) or the drawing (`app.figures.attention`).

Renders of one browser session may run two at a time and finish out of order; the newest one
the session started wins (`RenderTickets`), so a stale grid from typing cannot undo a click.
"""

from __future__ import annotations

import functools
import threading
import weakref

import gradio as gr
import numpy as np

from app.figures import attention as figs
from app.tabs import clear_when, md_escape, user_errors
from app.validate import boundary
from core.inspect import attention as A

TITLE = "Attention"
DEFAULT_TEXT = ("First Citizen: Before we proceed any further, hear me speak.\n"
                "All: Speak, speak.\nFirst Citizen: Before we proceed any further, hear me speak.")
VIEWS = [("All heads (grid)", "grid"), ("Selected head, large", "head")]
AGG_CHOICES = [(label, key) for key, label in A.AGGREGATES.items()]
COLOR_CHOICES = [("nothing", "none")] + [(label, key) for key, (label, _) in A.STATS.items()]
STATS_HEADERS = ["head", "layer", "index"] + [label for label, _ in A.STATS.values()]


def stat_range(key: str, T: int) -> tuple[float, float]:
    """The fixed colour scale of a statistic: its possible range, so that a model without (say)
    induction heads shows dark tiles, not its noise stretched over the whole scale."""
    return (0.0, float(max(1, T - 1))) if key == "mean_distance" else (0.0, 1.0)


class InductionCache:
    """Each model's induction scores (they do not depend on the text): measured on the first
    view of a model, kept while the model object lives. One per app: `ctx.induction`."""

    def __init__(self):
        self._scores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, model, exclude=()) -> np.ndarray:
        with self._lock:
            found = self._scores.get(model)
        if found is None:
            found = A.measure_induction(model, exclude=exclude)
            with self._lock:
                self._scores[model] = found
        return found


class RenderTickets:
    """One session's render counter, kept in a `gr.State`: "the newest render started wins".

    Gradio deep-copies the State's default once per session (`__deepcopy__` makes a fresh
    counter) and then passes that same object to every handler, so a ticket taken in one
    render is seen by the others; handlers run in worker threads, hence the lock.

    A typing render only exists to show new text: if the newest render started already shows
    its text, it takes no ticket and is skipped. (Gradio sends a deferred keystroke's render
    after the previous one lands plus `DEBOUNCE_JS`'s delay, with the view it read before that
    delay: a head clicked meanwhile must not be closed by a render of the same text.)"""

    def __init__(self):
        self._lock = threading.Lock()
        self._newest = 0
        self._text = None  # the text of the newest render started

    def __deepcopy__(self, memo):
        return RenderTickets()

    def take(self, text=None, typing=False) -> int | None:
        """A render of `text` starts: its ticket, newer than every ticket taken before (None
        for a typing render whose text the newest render already shows)."""
        with self._lock:
            if typing and self._newest and text == self._text:
                return None
            self._newest += 1
            self._text = text
            return self._newest

    def is_newest(self, ticket: int | None) -> bool:
        with self._lock:
            return ticket is not None and ticket == self._newest

    def newest_only(self, compute, n: int, text=None, typing=False) -> tuple:
        """Take a ticket, run `compute()`; if a newer render started meanwhile (or a typing
        render has no ticket), `gr.skip()` for each of the `n` outputs instead (a stale
        render's error is dropped the same way)."""
        ticket = self.take(text, typing)
        if ticket is None:
            return (gr.skip(),) * n
        try:
            out = compute()
        except ValueError:
            if self.is_newest(ticket):
                raise
            return (gr.skip(),) * n
        return out if self.is_newest(ticket) else (gr.skip(),) * n


def _load(catalog, key: str, text: str):
    ck = catalog.get(key)
    return ck, A.prepare_text(ck.tokenizer, text, ck.config.block_size)


def attention_view(catalog, key, text, layer, head, query, view="grid", aggregate="head_mean", color_by="none",
                   induction: InductionCache | None = None):
    """Everything the tab shows for one text, model, head and query (see `render_view`)."""
    ck, prep = _load(catalog, key, text)
    return render_view(ck.model, ck.tokenizer, prep, key, layer, head, query, view, aggregate, color_by,
                       induction=induction)


def render_view(model, tok, prep, key, layer, head, query, view="grid", aggregate="head_mean", color_by="none",
                trace=None, induction: InductionCache | None = None) -> dict:
    """Validate → one trace (`A.analyse`) → every figure and table, by output name."""
    if view not in ("grid", "head"):
        raise ValueError(f"unknown view {view!r}; choose 'grid' or 'head'")
    if color_by != "none" and color_by not in A.STATS:
        raise ValueError(f"unknown statistic {color_by!r}; choose 'none' or one of: {', '.join(A.STATS)}")
    cfg = model.config
    layer, head = A.check_head(cfg, layer, head)
    T, labels = len(prep.ids), prep.labels
    query = A.check_query(query, T)
    exclude = (tok.eot_id,) if tok.eot_id is not None else ()
    scores = induction.get(model, exclude) if induction is not None else None
    an = A.analyse(model, prep.ids, layer, head, query, aggregate_how=aggregate, trace=trace, exclude=exclude,
                   induction_scores=scores)
    name = f"L{layer} H{head}"
    if view == "grid":
        stat = an.stats[color_by] if color_by != "none" else None
        main = figs.attention_grid(an.thumbs, an.thumb_factor, T, stat, A.STATS.get(color_by, ("",))[0], (layer, head),
                                   stat_range=stat_range(color_by, T) if stat is not None else None)
    else:
        main = figs.focused_head(an.focus, labels, an.focus_factor, f"{name} on {T} tokens")
    agg = figs.attention_heatmap(an.aggregate, labels, an.focus_factor, f"{A.AGGREGATES[aggregate]} (an aggregation)")
    eq = an.equation
    return dict(view=view, layer=layer, head=head, notice=_notice(prep, an, cfg, view), main=main, query=query,
                strip=figs.token_strip(labels, an.query_rows[layer, head], query),
                heads_plot=figs.query_heads(an.query_rows, labels, query, (layer, head)), agg_plot=agg,
                stats=_stats_rows(an.stats), eq_md=figs.equation_markdown(eq, labels),
                eq_plot=figs.equation_figure(eq, labels), eq_table=figs.equation_rows(eq, labels),
                vectors=figs.vector_rows(eq), lens_plot=figs.logit_lens(an.lens, labels, tok.display),
                data=_summary(key, prep, an, cfg.block_size, view))


OUTPUT_NAMES = ("view", "layer", "head", "notice", "main", "query", "strip", "heads_plot", "agg_plot", "stats",
                "eq_md", "eq_plot", "eq_table", "vectors", "lens_plot", "data")

# Clicking a head in the grid (or the large head, to go back): gr.Plot has no click event, and
# plotly's own `plotly_click` misses the masked half of a tile (NaN cells are gaps) and its title.
# So any click inside the plot area is read here: in the grid, its data coordinates and the
# tiles' geometry (`layout.meta`) name the head under it (a tile, its masked half or the title
# above it); in the large view any click goes back. A drag (zoom) is not a click. The head's name
# ("L1 H2", or "back") goes to the server as a `click` event of the bridge.
CLICK_JS = """
window.gbAttnTrigger = trigger;  // the newest mount's, if the bridge is ever mounted again
if (!window.gbAttnClick) {
  window.gbAttnClick = true;
  let down = null;
  const plot = (ev) => ev.target.closest && ev.target.closest('#attn-main') &&
                       document.querySelector('#attn-main .js-plotly-plot');
  document.addEventListener('mousedown', (ev) => { down = [ev.clientX, ev.clientY]; }, true);
  document.addEventListener('click', (ev) => {
    const gd = plot(ev);
    if (!gd || !gd._fullLayout || !gd.layout || !gd.layout.meta) return;
    if (down && Math.hypot(ev.clientX - down[0], ev.clientY - down[1]) > 4) return;
    const fl = gd._fullLayout, xa = fl.xaxis, ya = fl.yaxis, box = gd.getBoundingClientRect();
    const px = ev.clientX - box.left - xa._offset, py = ev.clientY - box.top - ya._offset;
    if (px < 0 || py < 0 || px > xa._length || py > ya._length) return;  // the modebar, margins
    const m = gd.layout.meta;
    if (m.view === 'head') { window.gbAttnTrigger('click', {head: 'back'}); return; }
    if (m.view !== 'grid') return;
    const x = xa.p2c(px), y = ya.p2c(py);
    const h = Math.floor((x + 0.5 + m.gap / 2) / m.step), l = Math.floor((y + 0.5 + m.gap) / m.step);
    if (h >= 0 && l >= 0 && h < m.nh && l < m.L) window.gbAttnTrigger('click', {head: `L${l} H${h}`});
  }, true);
}
"""
# Typing is debounced: each keystroke's event waits in the browser, then sends the text as it
# is by then (so the last one to run always has the latest text), and trigger_mode="always_last"
# collapses the events that arrive while one is running.
DEBOUNCE_JS = """(...args) => new Promise((done) => setTimeout(() => {
  const box = document.querySelector('#attn-text textarea');
  if (box) args[1] = window.gbAttnSent = box.value;
  done(args);
}, 350))"""
# After a typing render: if the box holds other text than the newest one sent (a deferred
# keystroke's event went missing, seen once in CI under load), render the box's text now, through
# the bridge's `submit`, so the view never stays on a prefix of what was typed.
SETTLE_JS = """() => {
  const box = document.querySelector('#attn-text textarea');
  if (box && window.gbAttnSent !== undefined && box.value !== window.gbAttnSent && window.gbAttnTrigger) {
    window.gbAttnSent = box.value;
    window.gbAttnTrigger('submit', {});
  }
  return [];
}"""
READ_BOX_JS = """(...args) => {
  const box = document.querySelector('#attn-text textarea');
  if (box) args[1] = box.value;
  return args;
}"""


def as_updates(r: dict) -> tuple:
    """A view as the values of the tab's output components, in OUTPUT_NAMES order."""
    headers, rows = r["vectors"]
    # a value with its headers, not a gr.Dataframe: a returned component makes Gradio rebuild it,
    # its config and its API schema on every render
    special = {"vectors": {"headers": headers or [], "data": rows or []}}
    return tuple(special.get(n, r.get(n)) for n in OUTPUT_NAMES)


def _notice(prep, an, cfg, view) -> str:
    T = len(prep.ids)
    lines = [f"**{T} tokens** · {an.n_layer} layers × {an.n_head} heads · query token {an.query} "
             f"‘{md_escape(prep.labels[an.query])}’ · head L{an.layer} H{an.head}"]
    if prep.truncated:
        lines.append(f"⚠️ The text has {prep.n_total:,} tokens but this model reads at most {cfg.block_size:,}: "
                     f"only the first {T:,} are shown.")
    pooled = []
    if view == "grid" and an.thumb_factor > 1:
        pooled.append(f"the grid (each cell is the max of {an.thumb_factor}×{an.thumb_factor} tokens)")
    if an.focus_factor > 1:
        pooled.append(f"the large views (each cell is the max of {an.focus_factor}×{an.focus_factor} tokens; "
                      "exact weights are in the query views and the equation)")
    if pooled:
        lines.append("🔍 Pooled to keep the page fast: " + "; ".join(pooled) + ".")
    return "\n\n".join(lines)


def _stats_rows(stats: dict) -> list[list]:
    L, nh = stats["entropy"].shape
    out = []
    for l in range(L):
        for h in range(nh):
            vals = [float(stats[k][l, h]) if k in stats else float("nan") for k in A.STATS]
            out.append([f"L{l} H{h}", l, h] + [round(v, 4) if np.isfinite(v) else None for v in vals])
    return out


def _summary(key, prep, an, block_size, view) -> dict:
    eq, lens = an.equation, an.lens
    return {
        "model": key, "tokens": prep.labels, "n_tokens": len(prep.ids), "n_tokens_in_text": prep.n_total,
        "truncated": prep.truncated, "block_size": block_size, "layer": an.layer, "head": an.head,
        "query": an.query, "view": view, "pooled": {"grid": an.thumb_factor, "large": an.focus_factor},
        "weights": [float(x) for x in an.query_rows[an.layer, an.head]],
        "heads": [dict(zip(["head", "layer", "index", *A.STATS], r)) for r in _stats_rows(an.stats)],
        "equation": {"scores": [float(x) for x in eq.scores[: an.query + 1]],
                     "weights": [float(x) for x in eq.weights[: an.query + 1]],
                     "z": [float(x) for x in eq.z], "weights_err": eq.weights_err, "z_err": eq.z_err},
        "logit_lens": {"positions": lens.positions, "rows": lens.rows, "top_ids": lens.top_ids.tolist(),
                       "top_probs": [[round(float(p), 6) for p in r] for r in lens.top_probs]},
    }


def compare_view(catalog, key, other, text, layer, head):
    """Per-head JS divergence between two models on the text, and the head side by side."""
    ck, prep = _load(catalog, key, text)
    ck2 = catalog.get(other)
    layer, head = A.check_head(ck.config, layer, head)
    if ck2.tokenizer is None or ck2.tokenizer.encode(text)[: len(prep.ids)] != prep.ids:
        raise ValueError("the two models split this text into different tokens; compare models that share a tokenizer")
    js, pa, pb = A.compare(ck.model, ck2.model, prep.ids)
    names = [e.label for e in (catalog.entry(key), catalog.entry(other))]
    (a, f), (b, _) = A.pool(pa[layer, head], A.FOCUS_SIDE), A.pool(pb[layer, head], A.FOCUS_SIDE)
    top = np.unravel_index(np.nanargmax(js), js.shape) if np.isfinite(js).any() else (0, 0)
    md = (f"Mean JS divergence over all heads: **{np.nanmean(js):.4f} bits** (0 = identical, 1 = disjoint). "
          f"Most different: L{top[0]} H{top[1]} ({js[top]:.4f}).")
    return (md, figs.divergence_grid(js, *names),
            figs.side_by_side(a, b, prep.labels, f, names[0], names[1], f"L{layer} H{head} in both models"))


def ablate_view(catalog, key, text, heads, query):
    """Zero the chosen heads: the change in the next-token distribution and the loss."""
    ck, prep = _load(catalog, key, text)
    pairs = [_parse_head(h) for h in (heads or [])]
    ab = A.ablate(ck.model, prep.ids, pairs, query)
    order = np.argsort(-np.maximum(ab.probs_before, ab.probs_after))[:10]
    tokens = [ck.tokenizer.display(int(i)) for i in order]
    loss = ("one token: no loss to measure" if ab.loss_before is None else
            f"loss on the text {ab.loss_before:.4f} → {ab.loss_after:.4f} ({ab.loss_after - ab.loss_before:+.4f})")
    md = (f"Ablated {', '.join(f'L{l} H{h}' for l, h in ab.heads)}: {loss}; next-token distribution after "
          f"token {ab.position} ‘{md_escape(prep.labels[ab.position])}’ moved by KL = {ab.kl:.5f} nats.")
    return md, figs.ablation_bars(tokens, ab.probs_before[order], ab.probs_after[order],
                                  f"Next token after position {ab.position}: top 10, with and without the ablation")


def click_target(name: str) -> tuple[str, int | None, int | None]:
    """A click on the main plot → ("head", layer, head) for a grid tile, ("grid", None, None) to go back."""
    if str(name) == "back":
        return "grid", None, None
    return ("head", *_parse_head(name))


def _parse_head(name: str) -> tuple[int, int]:
    try:
        l, h = str(name).replace("L", "").replace("H", "").split()
        return int(l), int(h)
    except ValueError:
        raise ValueError(f"cannot read head {name!r}: write it as 'L1 H0'") from None


def model_controls(catalog, key):
    """Layer, head and ablation choices for the picked model; the compare list."""
    cfg = catalog.get(key).config
    names = [f"L{l} H{h}" for l in range(cfg.n_layer) for h in range(cfg.n_head)]
    return (gr.Dropdown(choices=list(range(cfg.n_layer)), value=0), gr.Dropdown(choices=list(range(cfg.n_head)), value=0),
            gr.Dropdown(choices=names, value=[names[0]]), gr.Dropdown(choices=catalog.choices()))


def build(ctx, model_picker: gr.Dropdown) -> None:
    catalog = ctx.catalog
    induction = ctx.induction
    r = {"vectors": (None, None), "view": "grid", "query": -1}  # the first view, shown when the tab opens
    L, nh = 1, 1
    try:
        if model_picker.value:
            cfg = catalog.get(model_picker.value).config
            L, nh = cfg.n_layer, cfg.n_head
            r = attention_view(catalog, model_picker.value, DEFAULT_TEXT, 0, 0, -1, induction=induction)
    except ValueError as e:
        r["notice"] = f"Could not show the model: {md_escape(e)}"
    heads0 = [f"L{l} H{h}" for l in range(L) for h in range(nh)]
    plot = dict(show_label=False)

    gr.Markdown("A **head** is one attention pattern: its own query, key and value weights decide which earlier "
                "tokens each token takes information from; each layer runs several heads side by side, so "
                "different heads can follow different relations (the previous token, the first token, an earlier "
                "copy of the same word), and their outputs are joined.\n\n"
                "Type and watch every head attend. Each small map is one head: rows are the tokens that look "
                "(queries, top to bottom), columns the tokens they look at (keys); grey cells are the future, "
                "which a GPT may not see. Click a head (or pick its layer and head) to open it large; click it "
                "again, or ← Back, to return to the grid.")
    text = gr.Textbox(DEFAULT_TEXT, lines=3, max_length=A.MAX_TEXT_CHARS, label="Text", elem_id="attn-text")
    notice = gr.Markdown(r.get("notice"), elem_id="attn-notice")
    with gr.Row(equal_height=False):
        pick = dict(allow_custom_value=True, min_width=90)  # choices follow the model; core checks the range
        layer = gr.Dropdown(list(range(L)), value=0, label="Layer", elem_id="attn-layer", **pick)
        head = gr.Dropdown(list(range(nh)), value=0, label="Head", elem_id="attn-head", **pick)
        view = gr.Radio(VIEWS, value=r["view"], label="Show", scale=2, elem_id="attn-view")
        color_by = gr.Dropdown(COLOR_CHOICES, value="none", label="Colour the grid by", scale=2)
        back = gr.Button("← Back to the grid", size="sm", scale=1, min_width=140, elem_id="attn-back")
    main = gr.Plot(r.get("main"), elem_id="attn-main", **plot)
    gr.Markdown("### One query token\nWhich earlier tokens it attends to: shaded below for the selected head "
                "(click a token to make it the query), and in every head in the chart.")
    # precision=None: Gradio's own rounding would turn "x", NaN or infinity into an anonymous error;
    # `A.check_query` rejects them (and 1.5) with a message instead
    query = gr.Number(r["query"], precision=None, label="Query token position (−1 = the last)", elem_id="attn-query")
    strip = gr.HighlightedText(r.get("strip"), label="Selected head: weight on each earlier token (darkest = largest)",
                               show_legend=False, show_inline_category=False, elem_id="attn-strip")
    heads_plot = gr.Plot(r.get("heads_plot"), **plot)
    with gr.Accordion("The equation, with this head's numbers", open=True):
        eq_md = gr.Markdown(r.get("eq_md"))
        eq_plot = gr.Plot(r.get("eq_plot"), **plot)
        eq_table = gr.Dataframe(r.get("eq_table"), headers=figs.EQUATION_HEADERS, label="Every key the query may see",
                                interactive=False, max_height=320)
        vec_table = gr.Dataframe(r["vectors"][1], headers=r["vectors"][0], label="Vectors, one row per dimension",
                                 interactive=False, max_height=320)
    with gr.Accordion("Aggregations", open=False):
        aggregate = gr.Radio(AGG_CHOICES, value="head_mean", label="Aggregation")
        agg_plot = gr.Plot(r.get("agg_plot"), **plot)
    with gr.Accordion("Per-head statistics (click a column to sort)", open=False):
        gr.Markdown(" · ".join(f"**{label}**: {md_escape(what)}" for label, what in A.STATS.values()))
        stats_df = gr.Dataframe(r.get("stats"), headers=STATS_HEADERS, interactive=False, max_height=400)
    with gr.Accordion("Logit lens: what each layer predicts", open=False):
        lens_plot = gr.Plot(r.get("lens_plot"), **plot)
    with gr.Accordion("Compare with another model of the same shape", open=False):
        with gr.Row():
            other = gr.Dropdown(catalog.choices(), value=model_picker.value, label="Second model", scale=3,
                                allow_custom_value=True)
            compare_btn = gr.Button("Compare", scale=1)
        cmp_md = gr.Markdown()
        cmp_grid, cmp_pair = gr.Plot(**plot), gr.Plot(**plot)
    with gr.Accordion("Ablate heads", open=False):
        with gr.Row():
            ablate_heads = gr.Dropdown(heads0, value=heads0[:1], multiselect=True, label="Heads to zero", scale=3,
                                       allow_custom_value=True)
            ablate_btn = gr.Button("Ablate", scale=1)
        abl_md = gr.Markdown()
        abl_plot = gr.Plot(**plot)
    with gr.Accordion("All of it as JSON (what /attention returns last)", open=False):
        data = gr.JSON(r.get("data"), show_label=False)

    bridge = gr.HTML("", js_on_load=CLICK_JS, elem_id="attn-click-bridge", padding=False)

    tickets = gr.State(RenderTickets())  # this session's renders: the newest one started wins
    inputs = [model_picker, text, layer, head, query, view, aggregate, color_by]
    outputs = [view, layer, head, notice, main, query, strip, heads_plot, agg_plot, stats_df, eq_md, eq_plot, eq_table,
               vec_table, lens_plot, data]
    names = ["key", "text", "layer", "head", "query", "view", "aggregate", "color_by"]

    def view_of(a, **fixed):  # the view with some inputs fixed (e.g. query = the last token)
        return as_updates(attention_view(catalog, **{**dict(zip(names, a)), **fixed}, induction=induction))

    def variant(**fixed):  # each render gets the inputs, then this session's RenderTickets
        def render(*a):
            *a, seen = a
            return seen.newest_only(lambda: view_of(a, **fixed), len(outputs), text=a[1])
        return user_errors(render)

    # /attention: always the full answer (API callers get no skips); its ticket still makes older
    # renders of the same session drop theirs. (No docstring: Gradio would publish it as the API's.)
    def answer(*a):
        *a, seen = a
        seen.take(a[1])
        return view_of(a)

    def live(*a):  # while typing, a bad text (e.g. empty) is a notice, not an error toast
        *a, seen = a
        try:
            return seen.newest_only(lambda: view_of(a, query=-1), len(outputs), text=a[1], typing=True)
        except ValueError as e:
            return (gr.skip(),) * 3 + (f"⚠️ {md_escape(e)}",) + (gr.skip(),) * (len(outputs) - 4)

    # Gradio injects event data only into positional parameters, so these name every input.
    def clicked(key, text, layer, head, query, view, aggregate, color_by, seen, evt: gr.SelectData):
        """A token in the strip becomes the query."""
        q = evt.index if isinstance(evt.index, int) else -1
        return variant(query=q)(key, text, layer, head, query, view, aggregate, color_by, seen)

    def plot_clicked(key, text, layer, head, query, view, aggregate, color_by, seen, evt: gr.EventData):
        """A head in the grid opens it; a click on the large head goes back to the grid."""
        where, l, h = click_target(getattr(evt, "head", "back"))
        return variant(view=where, **({} if l is None else dict(layer=l, head=h)))(
            key, text, layer, head, query, view, aggregate, color_by, seen)

    heavy = dict(concurrency_limit=2, concurrency_id="attention")
    quiet = dict(api_visibility="private", show_progress="minimal", **heavy)
    # the renders' inputs: the State goes last (DEBOUNCE_JS finds the text at index 1); a State
    # is not part of the API, so /attention keeps its 8 parameters
    ins = [*inputs, tickets]
    text.submit(boundary(ctx)("attention", answer), ins, outputs, api_name="attention", preprocess=False,
                **heavy)
    # `.change`, not `.input`: Gradio 6's textbox sends no `input` event for deletions (Backspace)
    text.change(live, ins, outputs, trigger_mode="always_last", js=DEBOUNCE_JS, **quiet).then(None, js=SETTLE_JS)
    bridge.submit(live, ins, outputs, js=READ_BOX_JS, **quiet)
    gr.on([layer.input, head.input], variant(view="head"), ins, outputs, **quiet)
    gr.on([view.input, color_by.input, aggregate.input, query.submit], variant(), ins, outputs, **quiet)
    bridge.click(plot_clicked, ins, outputs, **quiet)
    strip.select(clicked, ins, outputs, **quiet)
    back.click(variant(view="grid"), ins, outputs, **quiet)
    model_picker.change(user_errors(functools.partial(model_controls, catalog)), model_picker,
                        [layer, head, ablate_heads, other], api_visibility="private").success(
        variant(layer=0, head=0, query=-1), ins, outputs, **quiet)
    compare_btn.click(user_errors(functools.partial(compare_view, catalog)),
                      [model_picker, other, text, layer, head], [cmp_md, cmp_grid, cmp_pair], **quiet)
    ablate_btn.click(user_errors(functools.partial(ablate_view, catalog)),
                     [model_picker, text, ablate_heads, query], [abl_md, abl_plot], **quiet)
    # the comparison and the ablation were computed on the old model or text: cleared until redone
    # (on leaving the text box, not per keystroke: typing already sends a render per pause)
    clear_when([model_picker.change, text.blur, text.submit], {cmp_md: "", cmp_grid: None, cmp_pair: None, abl_md: "",
                                                    abl_plot: None})
