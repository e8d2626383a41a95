"""The Tokens tab: how the picked model's tokenizer cuts text, live as you type.

Shows the text as coloured token spans (whitespace as glyphs; tokens inside one visible
character, as byte-level BPE makes for emoji and CJK, share one span carrying all their
ids), the counts and the ids, details of a clicked token, the same text through other
tokenizers side by side (the model's, character-level, a BPE trained here, GPT-2's when
its files are on this machine), a surprise overlay (the model's loss on each token) and
the BPE lab (train a byte-level BPE, its merges with their pair counts, the first merges
step by step, characters per token against vocab size).

API: `/tokenize` (model key, text, colour_by "tokens" | "surprise") → first output: the
dict built by `analyze` (ids, token strings, offsets, groups, counts, surprise, the side
by side rows); the rest are what the page shows. Other events are private. The BPE
trained here lives in this browser session (a `gr.State` holding its tokenizer JSON).
Does not own: token maths (`core.inspect.tokens`), drawing (`app.figures.tokens`).
"""
from __future__ import annotations

import math

import gradio as gr

from app.catalog import hub_offline
from app.figures import tokens as figures
from app.sessions import click_record
from app.tabs import clear_when, md_escape, selection_marker, side_action, user_errors
from app.validate import boundary
from core import data
from core.inspect import tokens as T
from core.tokenizer import MIN_BPE_VOCAB_SIZE, Tokenizer

TITLE = "Tokens"
SAMPLE = ("ROMEO:\nBut soft, what light through yonder window breaks?\n"
          "Spaces,  tabs\tand newlines are part of the tokens; so are emoji 👍🏽 and 日本語.")
LAB_SENTENCE = "To be, or not to be, that is the question: 👍🏽"
PALETTE = {"0": "#c7d2fe", "1": "#fde68a", "2": "#a7f3d0", "3": "#fecdd3", "4": "#bae6fd"}
LAB_COLORS = {"0": "#e2e8f0", "1": "#cbd5e1", "new": "#f59e0b"}
MAX_SHOWN = 4000  # spans drawn per view; counts always cover the whole text
COMPARE_HEADERS = ["tokenizer", "vocab", "tokens", "chars / token", "tokens / word", "note"]
DETAIL_HEADERS = ["id", "token", "UTF-8 bytes", "byte-level form", "characters", "surprise (nats)", "p"]
MERGE_HEADERS = ["#", "pair", "new token", "byte-level", "count"]
ROW_NAMES = ("this model's", "character-level", "your BPE", "GPT-2")
CORPORA = ["shakespeare", *data.SYNTHETIC_CORPORA, "text"]


def _num(x, fmt: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def gpt2_tokenizer(ctx) -> Tokenizer | None:
    """GPT-2's tokenizer when this machine has it: a loaded GPT-2 model's, or the local
    Hugging Face cache (found once per app, kept in `ctx.gpt2_tokenizer`). Never downloads."""
    found = ctx.gpt2_tokenizer.get()
    if found is None:
        for key in ctx.catalog.resident():
            try:
                tok = ctx.catalog.get(key).tokenizer
            except ValueError:
                continue
            if tok is not None and tok.kind == "bpe" and tok.vocab_size == 50257 and tok.eot_id == 50256:
                return tok
        found = T.find_gpt2_tokenizer(ctx.catalog.hub_cache_dir)
        if found is not None:
            ctx.gpt2_tokenizer.set(found)
    return found


def _row(name: str, tok: Tokenizer | None, text: str, note: str) -> dict:
    if tok is None:
        return {"name": name, "available": False, "note": note, "vocab_size": None, "counts": None, "shown": []}
    v = T.tokenize(tok, text)
    shown = [T.visible(v.group_text(g)) for g in range(min(len(v.groups), MAX_SHOWN))]
    return {"name": name, "available": True, "note": note, "vocab_size": tok.vocab_size, "counts": v.counts,
            "shown": shown, "n_spans": len(v.groups)}


def analyze(ctx, key: str | None, text: str | None, colour_by: str = "tokens", lab: dict | None = None) -> dict:
    """Everything the tab shows for one text, as plain JSON (also the `/tokenize` API)."""
    text = T.check_text(text)
    if colour_by not in ("tokens", "surprise"):
        raise ValueError(f"colour_by must be 'tokens' or 'surprise', got {colour_by!r}")
    if not key:
        raise ValueError("no model is selected: pick one in the Model list at the top")
    ck = ctx.catalog.get(key)
    tok = ck.tokenizer
    if tok is None:
        raise ValueError(f"the model {key!r} has no tokenizer")
    view = T.tokenize(tok, text)
    out = {"model": key, "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size}, "text": text,
           **view.to_dict(), "surprise": None, "group_surprise": None}
    if colour_by == "surprise":
        s = T.token_surprise(ck.model, view.ids)
        out["surprise"], out["group_surprise"] = s, T.group_surprise(view, s)
    char_tok = Tokenizer.train_char(text) if text else None
    user_bpe = Tokenizer.from_str(lab["tokenizer"]) if lab else None
    gpt2 = gpt2_tokenizer(ctx)
    out["compare"] = [
        _row("this model's", tok, text, f"{tok.kind}, the tokenizer the model was trained with"),
        _row("character-level", char_tok, text, "one token per Unicode character (code point)"),
        _row("your BPE", user_bpe, text,
             "trained in the BPE lab below" if user_bpe else "not trained yet: use the BPE lab below"),
        _row("GPT-2", gpt2, text, "byte-level BPE, as GPT-2 and many later models use" if gpt2
             else "unavailable: not in this machine's Hugging Face cache (fetch it below, or load GPT-2 in the "
                  "Model tab)"),
    ]
    return out


def _spans(shown: list[str], labels: list, total: int) -> list[tuple[str, object]]:
    spans = list(zip(shown[:MAX_SHOWN], labels[:MAX_SHOWN]))
    if total > MAX_SHOWN:
        spans.append((f" … {total - MAX_SHOWN:,} more spans not drawn", None))
    return spans


def render(d: dict):
    """analyze() dict → (token spans, counts markdown, ids text, compare table, [(spans, label)] per tokenizer)."""
    groups, c = d["groups"], d["counts"]
    gs = d.get("group_surprise")
    full = math.log(d["tokenizer"]["vocab_size"])  # nats of a uniform guess over the vocab
    if gs:
        labels = [None if s is None else round(min(1.0, s / full), 3) for s in gs]
    else:
        labels = [str(g % len(PALETTE)) for g in range(len(groups))]
    spans = _spans([g["shown"] for g in groups[:MAX_SHOWN]], labels, len(groups))
    lines = ["| tokens | characters | bytes | characters / token | tokens / word |", "|---|---|---|---|---|",
             f"| {c['tokens']:,} | {c['chars']:,} | {c['bytes']:,} | {_num(c['chars_per_token'])} | "
             f"{_num(c['tokens_per_word'])} |"]
    s = [v for v in (d.get("surprise") or []) if v is not None]
    if d.get("surprise") is not None:
        if s:
            mean = sum(s) / len(s)
            lines.append(f"\nColour: the model's surprise, −log p(token | the tokens before it); full red at "
                         f"{full:.2f} nats or more (a uniform guess over {d['tokenizer']['vocab_size']:,} tokens; "
                         f"a character made of several tokens adds theirs up). Mean {mean:.3f} nats over "
                         f"{len(s):,} tokens (perplexity {math.exp(mean):,.1f}). The first token has no context, "
                         "so no colour.")
        else:
            lines.append("\nSurprise needs at least two tokens: the first token has no context.")
    rows, cmp_values = [], []
    for r in d["compare"]:
        rc = r["counts"] or {}
        rows.append([r["name"], _num(r["vocab_size"], ","), _num(rc.get("tokens"), ","),
                     _num(rc.get("chars_per_token")), _num(rc.get("tokens_per_word")), r["note"]])
        cmp_values.append((_spans(r["shown"], [str(i % len(PALETTE)) for i in range(len(r["shown"]))],
                                  r.get("n_spans", 0)), r["name"]))
    return spans, "\n".join(lines), "[" + ", ".join(map(str, d["ids"])) + "]", rows, cmp_values


def details(d: dict | None, index) -> tuple[str, list[list]]:
    """The clicked span: its characters, and one row per token in it."""
    if not d or not isinstance(index, int) or not 0 <= index < len(d["groups"]):
        return "Click a token above to see its id, bytes and byte-level form.", []
    g = d["groups"][index]
    i, j = g["tokens"]
    s = d.get("surprise")
    rows = []
    for t in range(i, j):
        a, b = d["offsets"][t]
        chars = d["text"][a:b]
        sv = s[t] if s else None
        note = "— (first token: no context)" if s and t == 0 else _num(sv, ".3f")
        rows.append([d["ids"][t], d["tokens"][t], d["bytes"][t], d["byte_level"][t],
                     f"{T.visible(chars)} ({T.code_points(chars)})", note if s else "—",
                     _num(None if sv is None else math.exp(-sv), ".3g")])
    what = "one token" if j - i == 1 else f"{j - i} tokens that together make these characters"
    # offsets are [start, end): a one-character span is "character 25", not "characters 25–26"
    where = (f"character {g['start']:,}" if g["end"] - g["start"] <= 1 else
             f"characters {g['start']:,}–{g['end'] - 1:,}")
    head = (f"**Span {index + 1:,} of {d.get('n_groups', len(d['groups'])):,}**: {where} "
            f"({md_escape(T.code_points(g['text']))}), {what}.")
    return head, rows


# ---- the BPE lab ----------------------------------------------------------------------
def lab_corpus(ctx, source: str, pasted: str | None) -> str:
    if source == "text":
        return T.check_text(pasted, T.MAX_CORPUS_CHARS, "the pasted corpus")
    text = data.load_corpus(source, cache_dir=ctx.cache_dir)
    return text[:T.MAX_CORPUS_CHARS]


def merge_rows(lab: T.BpeLab) -> list[list]:
    d = T.byte_level_display
    return [[m.rank + 1, f"{d(m.left)} + {d(m.right)}", d(m.merged), f"{m.left} {m.right}", m.count]
            for m in lab.merges]


def step_view(lab: dict | None, sentence: str | None, k) -> tuple[list, str]:
    """The sentence after the first k merges; tokens the k-th merge made are marked."""
    if not lab:
        return [], "Train a BPE above to step through its merges."
    sentence = T.check_text(sentence, 1000, "the sample sentence")
    tok = Tokenizer.from_str(lab["tokenizer"])
    merges = T.bpe_merges(tok)
    k = max(0, min(int(k or 0), len(merges)))
    v = T.tokenize(T.truncated_bpe(tok, k), sentence)
    new = "".join(merges[k - 1]) if k else None
    spans = [(t, "new" if bl == new else str(n % 2)) for n, (t, bl) in enumerate(zip(v.tokens, v.byte_level))]
    text = f"After **{k:,}** of {len(merges):,} merges: **{len(v.ids):,}** tokens ({v.counts['bytes']:,} bytes)."
    if k:
        a, b = merges[k - 1]
        d = T.byte_level_display
        text += (f" Merge {k:,} joined «{md_escape(d(a))}» + «{md_escape(d(b))}» → «{md_escape(d(a + b))}», "
                 f"chosen when the pair occurred {lab['counts'][k - 1]:,} times (marked in orange).")
    return spans, text


def build(ctx, model_picker: gr.Dropdown) -> None:
    initial = None
    try:
        if model_picker.value:
            initial = analyze(ctx, model_picker.value, SAMPLE)
    except ValueError:
        pass
    shown0 = render(initial) if initial else ([], "", "", [], [([], name) for name in ROW_NAMES])

    gr.Markdown("Type anything: the model's tokenizer cuts it into tokens as you type. Whitespace shows as "
                "· (space), → (tab) and ↵ (newline). Click a token to inspect it.")
    with gr.Row(equal_height=False):
        text = gr.Textbox(SAMPLE, label="Text", lines=4, max_lines=12, max_length=T.MAX_TEXT_CHARS, scale=4,
                          elem_id="tokens-text")
        colour = gr.Radio(["tokens", "surprise"], value="tokens", label="Colour by", scale=1, min_width=160,
                          info="surprise: the model's loss on each token")
    spans = gr.HighlightedText(shown0[0], label="Tokens (click one)", color_map=PALETTE, show_legend=False,
                               show_inline_category=False, combine_adjacent=False, elem_id="tokens-spans",
                               elem_classes=["gb-selectable"])
    selection_marker()
    counts = gr.Markdown(shown0[1], elem_id="tokens-counts")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            detail_head = gr.Markdown("Click a token above to see its id, bytes and byte-level form.")
            detail = gr.Dataframe([], headers=DETAIL_HEADERS, interactive=False, wrap=True, label="Selected token",
                                  column_widths=["9%", "13%", "17%", "13%", "26%", "12%", "10%"],
                                  elem_classes=["gb-fit"], elem_id="tokens-detail")
        ids = gr.Textbox(shown0[2], label="Token ids", lines=3, max_lines=8, interactive=False, buttons=["copy"],
                         scale=2, elem_id="tokens-ids")
    with gr.Accordion("Side by side: the same text through other tokenizers", open=True):
        compare = gr.Dataframe(shown0[3], headers=COMPARE_HEADERS, interactive=False, wrap=True, show_label=False,
                               column_widths=["14%", "10%", "10%", "12%", "12%", "42%"])
        cmp_rows = [gr.HighlightedText(v, label=label, color_map=PALETTE, show_inline_category=False,
                                       combine_adjacent=False) for v, label in shown0[4]]
        fetch = gr.Button("Fetch GPT-2's tokenizer from the Hugging Face Hub (1.4 MB, once)", size="sm",
                          elem_id="tokens-fetch-gpt2")
    with gr.Accordion("BPE lab: train a byte-level BPE and watch its merges", open=False):
        with gr.Row(equal_height=False):
            source = gr.Dropdown(CORPORA, value="shakespeare", label="Corpus", scale=1,
                                 info="Tiny Shakespeare, a synthetic corpus, or your own text")
            vocab = gr.Slider(MIN_BPE_VOCAB_SIZE, T.MAX_LAB_VOCAB, value=1024, step=1, label="Vocab size", scale=2,
                              info="256 bytes + <|endoftext|> + one token per merge")
            train = gr.Button("Train BPE", variant="primary", scale=0, min_width=140)
        pasted = gr.Textbox(label="Your corpus (when Corpus is 'text')", lines=3, max_lines=8,
                            max_length=T.MAX_CORPUS_CHARS)
        lab_state = gr.State(None, time_to_live=3600)
        lab_head = gr.Markdown()
        with gr.Row(equal_height=False):
            cpt_plot = gr.Plot(show_label=False)
            count_plot = gr.Plot(show_label=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                step = gr.Slider(0, 1, value=0, step=1, label="Merges applied", interactive=True)
                sentence = gr.Textbox(LAB_SENTENCE, label="Sample sentence", max_lines=2, max_length=1000)
                step_spans = gr.HighlightedText(label="The sentence after these merges", color_map=LAB_COLORS,
                                                show_inline_category=False, combine_adjacent=False)
                step_text = gr.Markdown()
            merges = gr.Dataframe([], headers=MERGE_HEADERS, interactive=False, label="Merges in order", scale=2,
                                  max_height=420, wrap=True, column_widths=["12%", "30%", "20%", "22%", "16%"],
                                  elem_classes=["gb-fit"], elem_id="tokens-merges")
    with gr.Accordion("All of the above as JSON (what the /tokenize API returns)", open=False):
        data_json = gr.JSON(initial, show_label=False)
    data_state = gr.State(click_record(initial, MAX_SHOWN), time_to_live=3600)  # what a click needs

    @user_errors
    def tokenize(key, txt, colour_by, lab):
        d = analyze(ctx, key, txt, colour_by, lab)
        *shown, rows = render(d)
        # values only: a returned component (to change its label) makes Gradio rebuild it and its
        # config and API schema on every keystroke; the counts are in the table above the rows
        return (d, click_record(d, MAX_SHOWN), *shown, *(v for v, _ in rows))

    gr.on([text.change, model_picker.change, colour.change, lab_state.change], boundary(ctx)("tokenize", tokenize),
          [model_picker, text, colour, lab_state], [data_json, data_state, spans, counts, ids, compare, *cmp_rows],
          api_name="tokenize", preprocess=False, trigger_mode="always_last", concurrency_limit=4,
          concurrency_id="tokenize")

    # a failed fetch (offline, no cache) is one warning: the spans, ids and tables stay as they are
    @side_action(6 + len(cmp_rows))  # the outputs of fetch.click below
    def fetch_gpt2(key, txt, colour_by, lab):
        """Download GPT-2's tokenizer once (offline: says it is unavailable), then redraw."""
        if gpt2_tokenizer(ctx) is None:
            ctx.gpt2_tokenizer.set(T.fetch_gpt2_tokenizer(ctx.catalog.hub_cache_dir, offline=hub_offline()))
            gr.Info("GPT-2's tokenizer is ready: it is the last row")
        return tokenize(key, txt, colour_by, lab)

    fetch.click(fetch_gpt2, [model_picker, text, colour, lab_state],
                [data_json, data_state, spans, counts, ids, compare, *cmp_rows], api_visibility="private",
                concurrency_limit=1, concurrency_id="fetch_gpt2")

    def select(d, evt: gr.SelectData):
        return details(d, evt.index)

    spans.select(select, data_state, [detail_head, detail], api_visibility="private")
    # the clicked token's panel describes the old tokens once the text, model or colouring changes
    clear_when([text.change, model_picker.change, colour.change, lab_state.change],
               {detail_head: details(None, None)[0], detail: []})

    @user_errors
    def train_lab(src, txt, size, sent):
        lab = T.train_bpe_lab(lab_corpus(ctx, src, txt), T.check_lab_vocab(size))
        state = {"tokenizer": lab.tokenizer.to_str(), "counts": [m.count for m in lab.merges]}
        n = len(lab.merges)
        head = (f"Trained a byte-level BPE with **{lab.tokenizer.vocab_size:,}** tokens ({n:,} merges) on "
                f"{lab.corpus_chars:,} characters ({lab.corpus_bytes:,} bytes): "
                f"**{lab.chars_per_token[-1]:.2f}** characters per token on that corpus. "
                "It now appears in the side-by-side rows above.")
        labels = [f"{r[1]} → {r[2]}" for r in merge_rows(lab)]
        k = min(10, n)
        return (state, head, figures.chars_per_token_curve(lab.vocab_sizes, lab.chars_per_token),
                figures.merge_counts(state["counts"], labels), merge_rows(lab),
                gr.Slider(0, max(n, 1), value=k, step=1), *step_view(state, sent, k))

    train.click(train_lab, [source, pasted, vocab, sentence],
                [lab_state, lab_head, cpt_plot, count_plot, merges, step, step_spans, step_text],
                api_visibility="private", concurrency_limit=1, concurrency_id="bpe_lab")
    gr.on([step.change, sentence.change], user_errors(step_view), [lab_state, sentence, step],
          [step_spans, step_text], api_visibility="private", trigger_mode="always_last")
