"""The Walkthrough tab: one text followed through the picked model, one stage per screen.

Seven stages (text → tokens → ids; ids → vectors; inside one block; the stack; the output
head; pick and repeat; how it learned), each with one picture of the model's own numbers, a
few plain sentences, the lines of PyTorch that computed it (read from the running source),
"what to notice", and a button that opens the tab exploring it with the same text. Back /
Next, the ← and → keys (`KEYS_JS`), and a rail of every stage; `?step=attention&text=...`
(and `&token=3`) opens the page at that stage and text.

API: `/walkthrough` (model key, text ≤ 20,000 characters, token index −1 = the last) → the
stages' numbers as JSON (`core.inspect.walkthrough.walkthrough`). Other events are private.
The numbers are computed once per text and kept in this browser session's `gr.State`; moving
between stages only redraws. Does not own: the numbers (`core.inspect.walkthrough`), the
pictures (`app.figures.walkthrough`), the words (`app.tabs.walkthrough_words`).
"""

from __future__ import annotations

import json

import gradio as gr

from app.figures import walkthrough as figs
from app.tabs import md_escape, user_errors
from app.tabs.walkthrough_words import EXPLORE, stage_words
from core.inspect import walkthrough as W

TITLE = "Walkthrough"
DEFAULT_TEXT = "To be, or not to be, that is the"
RAIL = [(f"{i + 1}. {title}", key) for i, (key, title) in enumerate(W.STAGES)]
SOURCES = {"tokens": "core/tokenizer.py, core/model.py", "embedding": "core/model.py", "attention": "core/model.py",
           "stack": "core/model.py", "output": "core/model.py", "pick": "core/generate.py",
           "learn": "core/data.py, core/model.py, core/train.py"}

# ← and →: click Back / Next, unless a text box or control has the focus (the rail's radios
# move with the arrows natively) or the tab is hidden. Installed once per page.
KEYS_JS = """
if (!window.__gbWalkKeys) {
  window.__gbWalkKeys = true;
  document.addEventListener('keydown', (ev) => {
    if (ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
    if (ev.key !== 'ArrowRight' && ev.key !== 'ArrowLeft') return;
    const t = ev.target;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    const btn = document.querySelector(ev.key === 'ArrowRight' ? '#wt-next' : '#wt-back');
    if (!btn || btn.offsetParent === null || btn.disabled) return;
    ev.preventDefault();
    btn.click();
  });
}
"""

# "Open in the X tab": select that tab and put the text (and token) in its box, in the page. Each
# step waits for what it needs (a tab's content mounts when first shown; the Attention tab's own
# render of the new text resets its query box, so the token goes in once that render has landed).
EXPLORE_JS = """(stage, text, query) => {
  const where = {tokens: ['Tokens', '#tokens-text'], embedding: ['Embeddings', null],
    attention: ['Attention', '#attn-text', '#attn-query', '#attn-notice'],
    stack: ['Embeddings', '#emb-text', null, null, 'Contextual embeddings'],
    output: ['Decode', '#dec-prompt'], pick: ['Decode', '#dec-prompt'], learn: ['Train', null]}[stage];
  if (!where) return [];
  const [name, textSel, querySel, doneSel, subTab] = where;
  const tab = (n) => [...document.querySelectorAll('button[role=tab]')].find((b) => b.textContent.trim() === n);
  const box = (sel) => document.querySelector(sel + ' textarea, ' + sel + ' input');
  const until = (ok, then, left = 300) => ok() ? then() : left > 0 && setTimeout(() => until(ok, then, left - 1), 200);
  const put = (el, value, submit) => {
    const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
    Object.getOwnPropertyDescriptor(proto, 'value').set.call(el, String(value));
    el.dispatchEvent(new Event('input', {bubbles: true}));
    if (submit) el.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
  };
  if (tab(name)) tab(name).click();
  // a box that has just mounted can take its initial value back after our first write (under
  // load the component's own first update lands later), so the text is put again until it holds
  const keep = (sel, value, submit, then, left = 10) => {
    if (box(sel).value !== String(value)) put(box(sel), value, submit);
    setTimeout(() => box(sel).value === String(value) ? then() : left > 0 && keep(sel, value, submit, then, left - 1), 400);
  };
  const fill = () => {
    if (!textSel) return;
    until(() => box(textSel), () => {
      const same = box(textSel).value === String(text);
      const before = doneSel && document.querySelector(doneSel) ? document.querySelector(doneSel).textContent : '';
      // a later render of the text (a typing render still queued, the settle check) resets the query:
      // it is put again until the view has shown it for five checks in a row
      const hold = (ok = 0, left = 150) => setTimeout(() => {
        const shown = document.querySelector(doneSel).textContent.includes(`query token ${query} `);
        if (box(querySel).value !== String(query)) { put(box(querySel), query, true); ok = 0; }
        else ok = shown || Number(query) < 0 ? ok + 1 : 0;
        if (ok < 5 && left > 0) hold(ok, left - 1);
      }, 500);
      keep(textSel, text, textSel === '#emb-text', () => {
        if (querySel) until(() => (same || document.querySelector(doneSel).textContent !== before) && box(querySel),
                            () => { put(box(querySel), query, true); hold(); });
      });
    });
  };
  if (subTab) until(() => tab(subTab), () => { tab(subTab).click(); fill(); }); else fill();
  return [];
}"""

# ?step=…&text=…&token=… → the stage, text and token the page opens with (read on load).
URL_KEYS = ("step", "text", "token")


def compute(catalog, key, text, query=-1, learn=True) -> dict:
    """Validate → the stages' numbers (core) for the model `key` (`learn` False: without stage
    7's training step, which `W.add_step` adds later)."""
    if not key:
        raise ValueError("no model is selected: pick one in the Model list at the top")
    ck = catalog.get(key)
    d = W.walkthrough(ck.model, ck.tokenizer, text, query, learn=learn)
    d["model"]["key"] = key
    return d


def figure(d: dict, key: str):
    """The stage's picture, from its JSON."""
    lab = d["tokens"]["labels"]
    if key == "tokens":
        return figs.token_tiles(lab, d["tokens"]["ids"], d["query"], d["model"]["vocab_size"])
    if key == "embedding":
        e = d["embedding"]
        return figs.embedding_strips(e["token_row"], e["position_row"], e["sum"], e["label"], e["id"], e["position"])
    if key == "attention":
        a = d["attention"]
        return figs.attention_steps(lab, a["scores"], a["weights"], a["heads"], a["query"], a["layer"], a["head"])
    if key == "stack":
        s = d["stack"]
        return figs.residual_stack(s["rows"], s["norms"], [g["label"] for g in s["lens"]],
                                   [g["prob"] for g in s["lens"]], lab[s["position"]], s["position"])
    if key == "output":
        o = d["output"]
        return figs.next_tokens(o["top"], o["rest"], o["position"], lab[o["position"]])
    if key == "pick":
        p = d["pick"]
        return figs.pick_steps(p["top"], p["picks"], p["steps"])
    ln = d["learn"]
    st = ln["step"] or {}
    return figs.learn_losses(ln["losses"], lab[:-1], ln["target_labels"], ln["uniform_loss"], st.get("top_grads", []),
                             st.get("loss_before"), st.get("loss_after"))


def show(d: dict | None, stage) -> tuple:
    """Everything one stage shows: rail, heading, prose, picture, notice, code, explore
    button, and whether Back / Next can move."""
    i = W.check_stage(stage)
    key, title = W.STAGES[i]
    if not d:
        return (key, f"## {i + 1}. {title}", "Type a text and press **Walk through**.", None, "", "",
                gr.update(visible=False), gr.update(interactive=i > 0), gr.update(interactive=i < len(W.STAGES) - 1))
    prose, notice = stage_words(d, key)
    code = f"# from {SOURCES[key]}, as it runs\n" + W.code_snippets()[key]
    return (key, f"## {i + 1} / {len(W.STAGES)} · {title}", prose, figure(d, key), f"**What to notice.** {notice}",
            code, gr.update(value=EXPLORE[key][1], visible=True), gr.update(interactive=i > 0),
            gr.update(interactive=i < len(W.STAGES) - 1))


def summary(d: dict) -> str:
    m = d["model"]
    line = (f"**{d['n_tokens']} tokens** on a model of {m['n_layer']} layers × {m['n_head']} heads, {m['n_embd']} "
            f"wide, {m['vocab_size']:,} tokens in its vocabulary · following token {d['query']} "
            f"‘{md_escape(d['tokens']['labels'][d['query']])}’ (layer {d['layer']}, head {d['head']} in stage 3)")
    if d["truncated"]:
        line += (f"\n\n⚠️ The text has {d['n_tokens_in_text']:,} tokens but this model reads at most "
                 f"{m['block_size']:,}: only the first {d['n_tokens']:,} are used.")
    return line


def read_url(params: dict) -> tuple[str | None, str | None, int | None]:
    """(stage key, text, token) from the page's query parameters; None where absent or bad."""
    stage = params.get("step")
    try:
        stage = W.STAGE_KEYS[W.check_stage(int(stage) - 1 if str(stage).isdigit() else stage)] if stage else None
    except ValueError:
        stage = None
    text = params.get("text")
    text = text[: W.MAX_TEXT_CHARS] if isinstance(text, str) and text else None
    try:
        token = int(params["token"]) if "token" in params else None
    except (TypeError, ValueError):
        token = None
    return stage, text, token


def build(ctx, model_picker: gr.Dropdown) -> None:
    catalog = ctx.catalog
    d0, error = None, ""
    try:
        if model_picker.value:
            d0 = compute(catalog, model_picker.value, DEFAULT_TEXT)
    except ValueError as e:
        error = f"Could not walk through the model: {md_escape(e)}"
    first = show(d0, 0)

    gr.Markdown("Follow one text through the model, stage by stage, with the model's own numbers. Use **Next** / "
                "**Back** or the ← → keys; click a stage on the rail to jump. Every number comes from the model in "
                "the picker above — try it again on a model you trained.")
    with gr.Row(equal_height=False):
        text = gr.Textbox(DEFAULT_TEXT, lines=2, max_lines=6, max_length=W.MAX_TEXT_CHARS, label="Text to walk through",
                          scale=5, elem_id="wt-text")
        query = gr.Number(-1, precision=None, label="Token to follow (−1 = the last)", scale=1, min_width=150,
                          elem_id="wt-query")
        run = gr.Button("Walk through", variant="primary", scale=0, min_width=140, elem_id="wt-run")
    info = gr.Markdown(summary(d0) if d0 else error, elem_id="wt-info")
    rail = gr.Radio(RAIL, value=first[0], label="Stages", elem_id="wt-rail")
    heading = gr.Markdown(first[1], elem_id="wt-heading")
    prose = gr.Markdown(first[2], elem_id="wt-prose")
    plot = gr.Plot(first[3], show_label=False, elem_id="wt-plot")
    notice = gr.Markdown(first[4], elem_id="wt-notice")
    code = gr.Code(first[5], language="python", label="The PyTorch that computed it", interactive=False,
                   elem_id="wt-code")
    with gr.Row():
        back = gr.Button("← Back", interactive=False, scale=0, min_width=120, elem_id="wt-back")
        nxt = gr.Button("Next →", variant="primary", scale=0, min_width=120, elem_id="wt-next")
        explore = gr.Button(EXPLORE["tokens"][1], size="sm", scale=0, min_width=260, elem_id="wt-explore")
    gr.HTML("", js_on_load=KEYS_JS, elem_id="wt-keys", padding=False)
    state = gr.State(d0)  # this session's walkthrough: the numbers of every stage, computed once per text

    stage_out = [rail, heading, prose, plot, notice, code, explore, back, nxt]
    heavy = dict(concurrency_limit=1, concurrency_id="walkthrough")  # a forward, a backward and a model copy
    quiet = dict(api_visibility="private")

    def api(key: str, text: str, query: float = -1) -> dict:
        """The walkthrough's numbers for one text: tokens and ids, the followed token's embedding rows, one
        head's scores, mask and weights, per-layer residual norms and lens guesses, the top-10 next tokens,
        the samplers' picks, the per-position losses and one training step on a copy of the model."""
        return json.loads(json.dumps(compute(catalog, key, text, query)))

    def recompute(key, text, query, stage):  # stages 1–6 at once; the training step follows (`learned`)
        d = compute(catalog, key, text, -1 if query is None else query, learn=False)
        return (d, summary(d), *show(d, stage))

    def learned(d, stage):
        if not d or d["learn"].get("step") is not None:
            return (gr.skip(),) * (1 + len(stage_out))
        d = W.add_step(catalog.get(d["model"]["key"]).model, dict(d, learn=dict(d["learn"])))
        return (d, *show(d, stage)) if stage == "learn" else (d, *(gr.skip(),) * len(stage_out))

    def move(d, stage, by):
        return show(d, max(0, min(len(W.STAGES) - 1, W.check_stage(stage) + by)))

    def from_url(request: gr.Request):
        stage, t, token = read_url(dict(request.query_params) if request is not None else {})
        return (gr.skip() if stage is None else stage, gr.skip() if t is None else t,
                gr.skip() if token is None else token, bool(stage or t or token is not None))

    gr.api(user_errors(api), api_name="walkthrough", **heavy)
    ins = [model_picker, text, query, rail]
    outs = [state, info, *stage_out]
    learn_step = dict(fn=user_errors(learned), inputs=[state, rail], outputs=[state, *stage_out],
                      show_progress="hidden", **heavy, **quiet)
    gr.on([run.click, text.submit, query.submit], user_errors(recompute), ins, outs, **heavy, **quiet).success(
        **learn_step)
    model_picker.change(user_errors(recompute), ins, outs, **heavy, **quiet).success(**learn_step)
    back.click(lambda d, s: move(d, s, -1), [state, rail], stage_out, **quiet)
    nxt.click(lambda d, s: move(d, s, +1), [state, rail], stage_out, **quiet)
    rail.input(user_errors(show), [state, rail], stage_out, **quiet)
    explore.click(None, [rail, text, query], None, js=EXPLORE_JS)
    pending = gr.State(False)
    gr.on(None, from_url, None, [rail, text, query, pending], show_progress="hidden", **quiet).then(
        user_errors(lambda key, t, q, s, go: recompute(key, t, q, s) if go else (gr.skip(),) * len(outs)),
        [*ins, pending], outs, show_progress="minimal", **heavy, **quiet).success(**learn_step)
