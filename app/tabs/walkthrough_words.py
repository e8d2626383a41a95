"""The words of the Walkthrough tab (not a tab itself): for each stage, two to four plain
sentences with the model's own numbers, "what to notice", and the tab that explores it.

Owns: `stage_words(d, key)` → (prose, notice) as markdown, from the stage's JSON (what
`core.inspect.walkthrough.walkthrough` returns); every token label is escaped (`md_escape`).
Also `EXPLORE`: stage → (the tab's title, what the link does there). Nothing here computes a
number; it only formats the ones core gave.
"""

from __future__ import annotations

from app.tabs import md_escape

# stage key → (tab title, a short "open …" button label)
EXPLORE = {
    "tokens": ("Tokens", "Open this text in the Tokens tab →"),
    "embedding": ("Embeddings", "Explore the whole embedding table in the Embeddings tab →"),
    "attention": ("Attention", "Open this text and token in the Attention tab →"),
    "stack": ("Embeddings", "Follow every token through the layers (Embeddings → Contextual) →"),
    "output": ("Decode", "Continue this text in the Decode tab →"),
    "pick": ("Decode", "Compare decoding methods on this text in the Decode tab →"),
    "learn": ("Train", "Train a model yourself in the Train tab →"),
}


def _t(label: str) -> str:
    return f"‘{md_escape(label)}’"


def _pct(p: float | None) -> str:
    return "—" if p is None else f"{p:.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def stage_words(d: dict, key: str) -> tuple[str, str]:
    """(prose, what to notice) for stage `key` of the walkthrough `d`."""
    return _WORDS[key](d)


def _tokens(d: dict) -> tuple[str, str]:
    t, m, n = d["tokens"], d["model"], d["n_tokens"]
    cpt = t["counts"].get("chars_per_token")
    prose = (f"A GPT never sees letters. Its tokenizer ({t['tokenizer']}-level) cuts the text into **{n} tokens** and "
             f"swaps each for its **id**, a whole number below the vocabulary size, **{m['vocab_size']:,}**. Those "
             f"ids, a list of shape ({n},), are all the model receives.")
    notice = (f"How much text one token covers: here {_num(cpt, '.2f')} characters on average. Common words are one "
              "token and rare ones several; a space usually belongs to the token after it (shown as ·). "
              f"Hover a tile for its position and id.")
    if d["truncated"]:
        notice += (f"\n\n⚠️ The text has {d['n_tokens_in_text']:,} tokens but this model reads at most "
                   f"{m['block_size']:,} at once (its block size): only the first {n:,} are used on every stage.")
    return prose, notice


def _embedding(d: dict) -> tuple[str, str]:
    e, m = d["embedding"], d["model"]
    C = m["n_embd"]
    prose = (f"Each id picks one row of a learned table, `wte` ({m['vocab_size']:,} × {C}): the token's vector of "
             f"{C} numbers. A second table, `wpe` ({m['block_size']:,} × {C}), holds one vector per position, so "
             "the model can tell *dog bites man* from *man bites dog*. The two rows are added: "
             f"({d['n_tokens']},) ids become a ({d['n_tokens']}, {C}) array — the **residual stream** every block "
             "reads and writes.")
    notice = (f"Token {_t(e['label'])} (id {e['id']}) at position {e['position']}: its `wte` row is the same wherever "
              "the token appears, and the `wpe` row is the same for every token at that position. Hover any cell: "
              "the bottom strip is exactly the top two added.")
    return prose, notice


def _attention(d: dict) -> tuple[str, str]:
    a, m = d["attention"], d["model"]
    w = [x if x is not None else 0.0 for x in a["weights"][: a["query"] + 1]]
    top = max(range(len(w)), key=w.__getitem__)
    labels = d["tokens"]["labels"]
    nrm, ln = a["norms"], a["ln"]
    prose = (f"A block first rescales each vector (**LayerNorm**: spread {ln['std_in']:.3f} → {ln['std_out']:.3f}). "
             f"Then a **head** turns every token into a query q, a key k and a value v of {a['head_size']} numbers "
             f"(shape {tuple(a['shapes']['qkv'])} for all heads). The query of {_t(a['label'])} is compared with "
             f"every earlier key — score = q·k/√{a['head_size']} — later keys are **masked** (a GPT may not read "
             "ahead), **softmax** turns the scores into weights that sum to 1, and the head's output is the "
             "weighted sum of the values.\n\n"
             f"There are {m['n_head']} heads so that each can look for something different (the previous token, "
             f"a matching word, the start of a line). Their outputs sit side by side ({m['n_embd']} numbers), the "
             f"projection `c_proj` mixes them, and the result is **added** to the token's vector (the residual: "
             f"‖x‖ {nrm['x_in']:.2f} → {nrm['x_mid']:.2f}). Then the **MLP**, a small two-layer network that works "
             f"on each token alone ({a['mlp_active']:,} of its {a['mlp_hidden']:,} hidden units are positive "
             f"here), adds its own change (‖x‖ → {nrm['x_out']:.2f}).")
    notice = (f"Head {a['head']} of layer {a['layer']} puts its largest weight, {w[top]:.1%}, on token {top} "
              f"{_t(labels[top])}. Recomputed from q and k, these weights match the model's own attention to "
              f"{_num(a['softmax_err'], '.0e')}. In ③ each head looks somewhere else.")
    return prose, notice


def _stack(d: dict) -> tuple[str, str]:
    s, m = d["stack"], d["model"]
    last = s["lens"][-1]
    prose = (f"The block is repeated **{m['n_layer']} times**, each with its own weights; every block reads the "
             "residual stream and adds its change to it, so the stream carries more and more context. The "
             "**logit lens** peeks inside: it runs the output head on the stream after each block, as if the model "
             "had to answer there.")
    guesses = " → ".join(_t(g["label"]) for g in s["lens"])
    notice = (f"The guesses layer by layer: {guesses}. The last one is the model's own answer ({_t(last['label'])}, "
              f"{_pct(last['prob'])}). The bars show the stream's length ‖x‖ growing as blocks add to it.")
    if s["next"] is not None:
        notice += f" The text really continues with {_t(s['next']['label'])}."
    return prose, notice


def _output(d: dict) -> tuple[str, str]:
    o = d["output"]
    top = o["top"][0]
    prose = (f"After the last block and a final LayerNorm, the **output head** multiplies the vector by the token "
             "table `wte` again (the weights are shared, *tied*), giving one score — a **logit** — for each of the "
             f"{o['vocab_size']:,} tokens. **Softmax** turns the logits into probabilities that sum to 1.")
    notice = (f"The most likely next token is {_t(top['label'])} ({_pct(top['prob'])}). The top {len(o['top'])} hold "
              f"{_pct(1 - o['rest'])}; the other {o['vocab_size'] - len(o['top']):,} tokens share {_pct(o['rest'])}. "
              f"A uniform guess would give each token {o['uniform_prob']:.2g}; the entropy is "
              f"{o['entropy_bits']:.2f} bits (0 = certain).")
    return prose, notice


def _pick(d: dict) -> tuple[str, str]:
    p = d["pick"]
    by = {x["name"]: x for x in p["picks"]}
    g, k, tp = by["greedy"], by["top_k"], by["top_p"]
    prose = (f"The model only gives probabilities; a **decoding rule** picks one token. **Greedy** takes the most "
             f"likely ({_t(g['label'])}); **top-k** keeps the {p['top_k']} most likely and samples among them "
             f"({_t(k['label'])}, seed {p['seed']}); **top-p** keeps the fewest tokens whose probability reaches "
             f"{p['top_p']} — {tp['kept']:,} here — and samples ({_t(tp['label'])}). The pick is appended and the "
             "whole model runs again, once per new token.")
    steps = " ".join(_t(s["label"]) for s in p["steps"])
    notice = (f"Greedy, four steps: {steps}. When one token dominates, all three rules agree; when the distribution "
              "is flat, sampling makes every run different (the seed fixes it here). Each step reuses the keys and "
              "values of the earlier tokens (the KV cache) instead of recomputing them.")
    if p["steps_context"] < d["n_tokens"]:
        notice += (f" (The steps start from the last {p['steps_context']:,} tokens, which leaves room in the "
                   "model's block for the new ones.)")
    return prose, notice


def _learn(d: dict) -> tuple[str, str]:
    ln, m = d["learn"], d["model"]
    if ln["loss"] is None:
        return ("Training compares each prediction with the token that really comes next.", ln.get("note", ""))
    st = ln["step"] or {}
    prose = (f"Training uses the text as its own answer key: at each position the **target is the next token** (the "
             f"input shifted by one). The **loss** is −log p(target), averaged over {len(ln['losses'])} positions: "
             f"{ln['loss']:.3f} nats here (a uniform guess scores ln {m['vocab_size']:,} = {ln['uniform_loss']:.2f}). "
             f"`loss.backward()` gives each of the {m['n_params']:,} parameters a **gradient** — which way to move "
             "it to lower the loss — and the optimizer nudges every one a little.")
    if st:
        part = "this text" if st["n_tokens"] == len(ln["losses"]) else f"the first {st['n_tokens']:,} positions"
        prose += (f" We took exactly **one step** (AdamW, learning rate {st['lr']:g}) on a *copy* of the model: the "
                  f"loss on {part} went **{st['loss_before']:.3f} → {st['loss_after']:.3f}**. The model everyone "
                  "is using is unchanged.")
    else:
        prose += " One training step on a copy of the model is being taken now; it shows here in a moment."
    names = ", ".join(f"`{r['name']}`" for r in st.get("top_grads", [])[:3])
    notice = ("Tall bars are the tokens the model found surprising. "
              + (f"The largest gradients went to {names}. " if names else "")
              + "Training is this step repeated on many texts: start a run in the Train tab, then come back and walk "
                "through the same text on the new model.")
    return prose, notice


_WORDS = {"tokens": _tokens, "embedding": _embedding, "attention": _attention, "stack": _stack,
          "output": _output, "pick": _pick, "learn": _learn}
