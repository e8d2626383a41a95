"""The walkthrough: one text followed through the model, stage by stage, with the model's own
numbers (the derived view behind the Walkthrough tab and `/walkthrough`).

Owns: `walkthrough` (one trace of the text → the numbers of the seven stages, as plain JSON:
text → tokens → ids; ids → vectors; inside one block; the stack; the output head; pick and
repeat; how it learned), `STAGES` (their keys and titles, in order) and `code_snippets` (the
few lines of PyTorch each stage quotes, read from the running source with `inspect.getsource`,
so the page never shows code that is not the code that ran).
Does not own: the forward pass (`core.model`), decoding (`core.generate`), the one training
step on a copy (`core.inspect.learn_step`), the words and pictures (`app/`).

Every number is read from the trace (`GPT.trace`) or derived from it here with the model's own
modules; nothing is estimated. Deterministic: no sampling without a fixed seed, dropout off.
"""

from __future__ import annotations

import inspect
import math
import re
import textwrap
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from core import generate as G
from core.inspect import attention as A
from core.inspect import tokens as T
from core.inspect.learn_step import one_step
from core.model import GPT, Block, CausalSelfAttention

MAX_TEXT_CHARS = 20_000  # as the Tokens tab: a lesson's text, cut to the block size after
TOP_N = 10               # next tokens shown with their probabilities
TOP_K = 10               # the top-k sampler's k
TOP_P = 0.9              # the top-p sampler's p
MORE_STEPS = 3           # generation steps shown after the first pick
SEED = 0                 # the samplers' seed: the same text always gives the same picks
LEARN_TOKENS = 256       # the training step reads at most this many positions (a backward costs ~2 forwards)

STAGES = (
    ("tokens", "Text → tokens → ids"),
    ("embedding", "ids → vectors"),
    ("attention", "Inside one block"),
    ("stack", "The stack of blocks"),
    ("output", "Output head → probabilities"),
    ("pick", "Pick and repeat"),
    ("learn", "How it learned"),
)
STAGE_KEYS = tuple(k for k, _ in STAGES)


def check_stage(stage) -> int:
    """A stage by key ("attention") or index (0..6) → its index; ValueError otherwise."""
    if isinstance(stage, str) and stage.strip().lower() in STAGE_KEYS:
        return STAGE_KEYS.index(stage.strip().lower())
    if isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage < len(STAGES):
        return stage
    raise ValueError(f"unknown stage {stage!r:.40}; choose one of: {', '.join(STAGE_KEYS)}")


# --------------------------------------------------------------------------------------
# The code each stage quotes


def _lines(obj, *needles: str) -> str:
    """The first line of `obj`'s source that contains each needle, in order, each without its
    indentation (a KeyError names a needle that is no longer there: the quote went stale)."""
    src = inspect.getsource(obj).splitlines()
    out = []
    for needle in needles:
        found = next((line for line in src if needle in line), None)
        if found is None:
            raise KeyError(f"{needle!r} is no longer in the source of {obj.__qualname__}")
        out.append(found.strip())
    return "\n".join(out)


def _body(obj) -> str:
    """A short function's whole source, dedented, without its docstring."""
    text = textwrap.dedent(inspect.getsource(obj))
    return re.sub(r'\n\s*""".*?"""\n', "\n", text, count=1, flags=re.S).rstrip()


@lru_cache(maxsize=1)
def code_snippets() -> dict[str, str]:
    """Stage key → the lines of PyTorch it quotes, from `core/model.py`, `core/generate.py`,
    `core/data.py` and the training loop in `core/train.py`."""
    from core import data, train
    from core.tokenizer import Tokenizer

    att = CausalSelfAttention.forward
    return {
        "tokens": "# core/tokenizer.py\n" + _lines(Tokenizer.encode, "def encode", "return self._encode")
                  + "\n# core/model.py: a GPT reads at most block_size tokens\n"
                  + _lines(GPT._check_idx, "if past + T > self.config.block_size"),
        "embedding": "# core/model.py, GPT.__init__ and GPT._embed\n"
                     + _lines(GPT.__init__, "wte=nn.Embedding", "wpe=nn.Embedding") + "\n"
                     + _lines(GPT._embed, "pos = torch.arange", "tok_emb =", "pos_emb =", "return tok_emb + pos_emb"),
        "attention": "# core/model.py, Block.forward and CausalSelfAttention.forward\n"
                     + _lines(Block.forward, "self.attn(self.ln_1(x)") + "\n"
                     + _lines(att, "q, k, v = ", "q = q.view", "scores = (q @ k.transpose", "tril()",
                              "scores = scores.masked_fill", "att = F.softmax", "y = self.attn_dropout(att) @ v",
                              "y = y.transpose(1, 2)", "y = self.resid_dropout")
                     + "\n" + _lines(Block.forward, "x = x + a", "x = x + self.mlp")
                     + "\n# MLP.forward\n" + _lines(_mlp_forward(), "return self.dropout"),
        "stack": "# core/model.py, GPT.forward and GPT.unembed (the logit lens)\n"
                 + _lines(GPT.forward, "for i, block in enumerate(self.transformer.h)", "x, _ = block(")
                 + "\n" + _lines(GPT.unembed, "return fastpath.linear(self.lm_head, self.transformer.ln_f(resid)"),
        "output": "# core/model.py: the output head is the token embedding, reused\n"
                  + _lines(GPT.__init__, "self.lm_head = nn.Linear", "self.lm_head.weight = ") + "\n"
                  + _lines(GPT.forward, "x = self.transformer.ln_f(x)", "logits = fastpath.linear(self.lm_head")
                  + "\nprobs = F.softmax(logits[0, -1], dim=-1)  # (V,): sums to 1",
        "pick": "# core/generate.py\n" + _body(G._top_k) + "\n\n" + _body(G._top_p) + "\n\n" + _body(G.pick),
        "learn": "# core/data.py: the target is the input shifted by one token\n"
                 + _lines(data.BatchSampler.next, "return self.data[idx], self.data[idx + 1]")
                 + "\n# core/model.py, GPT.forward\n" + _lines(GPT.forward, "loss = F.cross_entropy")
                 + "\n# core/train.py, Trainer.train_step\n"
                 + _lines(train.Trainer.train_step, "_, loss = self.model(x, y)", "(loss / cfg.grad_accum).backward()",
                          "norm = torch.nn.utils.clip_grad_norm_", "opt.step()", "opt.zero_grad"),
    }


def _mlp_forward():
    from core.model import MLP

    return MLP.forward


# --------------------------------------------------------------------------------------
# The stages' numbers


def _f(x, nd: int = 6) -> float | None:
    """A float for JSON (None for ±inf / NaN), rounded to `nd` significant-ish decimals."""
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


def _fl(a, nd: int = 6) -> list:
    return [_f(x, nd) for x in np.asarray(a, dtype=np.float64).ravel()]


def _label(tok, i: int) -> str:
    try:
        return tok.display(int(i))
    except ValueError:  # an id past the tokenizer's vocab (a padded model vocab): show the number
        return f"<id {int(i)}>"


def _tokens(tok, ids: list[int]) -> list[dict]:
    return [{"id": int(i), "label": _label(tok, i)} for i in ids]


def walkthrough(model: GPT, tok, text: str, query: int = -1, layer: int = 0, head: int = 0,
                max_chars: int = MAX_TEXT_CHARS, learn: bool = True) -> dict:
    """The seven stages' numbers for `text` on `model` (plain JSON: lists, floats, strings).

    `query`: the token followed through stages 2–5 (−1 = the last); `layer`, `head`: the
    block and head opened in stage 3. Texts longer than the block size are cut to it
    (`truncated`). `learn` False skips the training step (stage 7's losses stay).
    Raises ValueError for a missing tokenizer, non-text, too long or empty text, bad indices."""
    if tok is None:
        raise ValueError("this model has no tokenizer, so text cannot be shown on it")
    view = T.tokenize(tok, text, max_chars)
    if not view.ids:
        raise ValueError("type some text: the walkthrough needs at least one token")
    cfg = model.config
    layer, head = A.check_head(cfg, layer, head)
    ids = view.ids[: cfg.block_size]
    n = len(ids)
    query = A.check_query(query, n)
    dev = model.transformer.wte.weight.device
    idx = torch.tensor([ids], dtype=torch.long, device=dev)
    pre = f"blocks.{layer}."
    keep = ["embed", "blocks.*.resid_post", pre + "resid_mid", pre + "attn.pattern", "logits",
            *(pre + "attn." + x for x in "qkvz")]
    tr = model.trace(idx, keep=keep)
    out = {
        "model": {"vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
                  "head_size": cfg.head_size, "block_size": cfg.block_size, "n_params": model.num_params()},
        "text": view.text, "n_tokens": n, "n_tokens_in_text": len(view.ids), "truncated": len(view.ids) > n,
        "query": query, "layer": layer, "head": head, "stages": [{"key": k, "title": t} for k, t in STAGES],
        "tokens": {"ids": ids, "labels": [_label(tok, i) for i in ids], "offsets": [list(o) for o in view.offsets[:n]],
                   "vocab_size": cfg.vocab_size, "tokenizer": tok.kind, "counts": view.counts},
    }
    out["embedding"] = _embedding(model, tr, ids, query, tok)
    out["attention"] = _block(model, tr, query, layer, head, tok, ids)
    residuals = torch.stack([tr["embed"][0]] + [tr[f"blocks.{i}.resid_post"][0] for i in range(cfg.n_layer)])
    out["stack"] = _stack(model, residuals, ids, query, tok)
    logits = tr["logits"][0].float()  # (T, V)
    out["output"] = _output(logits[query], query, tok)
    out["pick"] = _pick(model, ids, logits[-1], tok)
    out["learn"] = _learn(model, ids, logits, tok, learn)
    return out


def _embedding(model: GPT, tr, ids: list[int], query: int, tok) -> dict:
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    tid = ids[query]
    summed = tr["embed"][0, query]  # what the model computed: the residual stream entering block 0
    return {"position": query, "id": tid, "label": _label(tok, tid), "token_row": _fl(wte[tid].detach()),
            "position_row": _fl(wpe[query].detach()), "sum": _fl(summed), "shape_ids": [len(ids)],
            "shape_vectors": [len(ids), model.config.n_embd], "wte_shape": list(wte.shape),
            "wpe_shape": list(wpe.shape)}


def _norm(x: torch.Tensor) -> float:
    return _f(x.float().norm(), 4)


@torch.no_grad()
def _block(model: GPT, tr, query: int, layer: int, head: int, tok, ids) -> dict:
    cfg = model.config
    blk = model.transformer.h[layer]
    pre = f"blocks.{layer}."
    x_in = (tr["embed"] if layer == 0 else tr[f"blocks.{layer - 1}.resid_post"])[0, query]  # (C,)
    mid, post = tr[pre + "resid_mid"][0, query], tr[pre + "resid_post"][0, query]
    ln = blk.ln_1(x_in)
    q, k, v, z = (tr[pre + "attn." + n][0] for n in "qkvz")  # (nh, T, hs)
    pattern = tr[pre + "attn.pattern"][0].float()  # (nh, T, T)
    eq = A.equation(q[head], k[head], v[head], query, pattern[head, query], z[head, query], layer, head)
    hidden = blk.mlp.gelu(blk.mlp.c_fc(blk.ln_2(mid)))  # (4C,) the MLP's hidden units for this token
    n_keys = query + 1
    return {
        "layer": layer, "head": head, "query": query, "label": _label(tok, ids[query]), "head_size": cfg.head_size,
        "scale": _f(eq.scale), "shapes": {"x": [len(ids), cfg.n_embd], "qkv": [cfg.n_head, len(ids), cfg.head_size],
                                          "scores": [cfg.n_head, len(ids), len(ids)], "mlp_hidden": [4 * cfg.n_embd]},
        "ln": {"mean_in": _f(x_in.mean(), 4), "std_in": _f(x_in.std(unbiased=False), 4),
               "mean_out": _f(ln.mean(), 4), "std_out": _f(ln.std(unbiased=False), 4)},
        "q": _fl(eq.q), "k_norms": _fl(k[head, :n_keys].norm(dim=-1)), "dots": _fl(eq.dots[:n_keys]),
        "scores": _fl(eq.scores), "mask": [j <= query for j in range(len(ids))], "weights": _fl(eq.model_weights),
        "softmax_err": _f(eq.weights_err, 9), "z": _fl(eq.z), "z_err": _f(eq.z_err, 9),
        "heads": [_fl(pattern[h, query]) for h in range(cfg.n_head)],
        "head_z_norms": [_norm(z[h, query]) for h in range(cfg.n_head)],
        "norms": {"x_in": _norm(x_in), "attn_out": _norm(mid - x_in), "x_mid": _norm(mid), "mlp_out": _norm(post - mid),
                  "x_out": _norm(post)},
        "mlp_active": int((hidden > 0).sum()), "mlp_hidden": int(hidden.numel()),
    }


@torch.no_grad()
def _stack(model: GPT, residuals: torch.Tensor, ids: list[int], query: int, tok) -> dict:
    lens = A.logit_lens(model, residuals, ids, [query])
    rows = lens.rows
    nxt = ids[query + 1] if query + 1 < len(ids) else None
    return {
        "rows": rows, "position": query, "norms": [_norm(r[query]) for r in residuals],
        "mean_norms": [_f(r.float().norm(dim=-1).mean(), 4) for r in residuals],
        "lens": [{"id": int(lens.top_ids[r, 0]), "label": _label(tok, lens.top_ids[r, 0]),
                  "prob": _f(lens.top_probs[r, 0])} for r in range(len(rows))],
        "next": None if nxt is None else {"id": nxt, "label": _label(tok, nxt),
                                          "probs": _fl(lens.next_probs[:, 0])},
    }


def _top(probs: torch.Tensor, tok, n: int, logits: torch.Tensor | None = None) -> list[dict]:
    p, i = torch.topk(probs, min(n, probs.numel()))
    rows = [{"id": int(a), "label": _label(tok, a), "prob": _f(b)} for a, b in zip(i.tolist(), p.tolist())]
    if logits is not None:
        for r in rows:
            r["logit"] = _f(logits[r["id"]], 4)
    return rows


def _entropy_bits(probs: torch.Tensor) -> float:
    return _f(-(torch.special.xlogy(probs, probs)).sum() / math.log(2), 4)


def _output(logits: torch.Tensor, position: int, tok) -> dict:
    probs = F.softmax(logits, -1)
    top = _top(probs, tok, TOP_N, logits)
    rest = max(0.0, 1.0 - float(torch.topk(probs, len(top)).values.sum()))  # the mass of every other token
    return {"position": position, "top": top, "rest": _f(rest),
            "entropy_bits": _entropy_bits(probs), "vocab_size": int(probs.numel()),
            "uniform_prob": _f(1.0 / probs.numel(), 9)}


def _picked(logits: torch.Tensor, s: G.Sampling, tok, name: str) -> dict:
    """One sampler on the (V,) logits: what it keeps, their mass, and its pick (seeded)."""
    probs = F.softmax(logits, -1)
    kept = torch.isfinite(G.filter_logits(logits, s)) if not s.is_greedy else probs == probs.max()
    gen = torch.Generator(device=logits.device).manual_seed(SEED)
    chosen = int(G.pick(logits[None], s, gen)[0])
    return {"name": name, "kept": int(kept.sum()), "mass": _f(probs[kept].sum()), "id": chosen,
            "label": _label(tok, chosen), "prob": _f(probs[chosen]),
            "kept_ids": torch.nonzero(kept).flatten().tolist()[:TOP_N * 10]}


def _pick(model: GPT, ids: list[int], logits: torch.Tensor, tok) -> dict:
    samplers = [("greedy", G.Sampling(greedy=True)), ("top_k", G.Sampling(top_k=TOP_K)),
                ("top_p", G.Sampling(top_p=TOP_P))]
    picks = [_picked(logits, s, tok, name) for name, s in samplers]
    # a text that fills the block would slide the context (a full forward per step): keep the
    # cache's room for the new tokens instead, by starting from the last tokens that leave it
    room = model.config.block_size - (1 + MORE_STEPS)
    context = ids if len(ids) <= room else ids[-max(1, room):]
    steps = []
    for st in G.steps(model, context, 1 + MORE_STEPS, G.Sampling(greedy=True), seed=SEED, top=5):
        steps.append({"id": st.token, "label": _label(tok, st.token), "prob": _f(st.prob),
                      "top": [{"id": int(c), "label": _label(tok, c), "prob": _f(p)}
                              for c, p in zip(st.candidates, st.stages["model"])][:5]})
    return {"position": len(ids) - 1, "top_k": TOP_K, "top_p": TOP_P, "seed": SEED, "picks": picks,
            "steps_context": len(context),
            "top": _top(F.softmax(logits, -1), tok, 15), "steps": steps,
            "appended": "".join(s["label"] for s in steps)}


def add_step(model: GPT, d: dict) -> dict:
    """Stage 7's training step for a walkthrough made with `learn=False` (the page shows stages
    1–6 first and fills this in after): `d["learn"]["step"]`, in place; `d` is returned."""
    ids = d["tokens"]["ids"]
    if len(ids) >= 2 and d["learn"].get("step") is None:
        d["learn"]["step"] = one_step(model, ids[: LEARN_TOKENS + 1]).to_dict()
    return d


def _learn(model: GPT, ids: list[int], logits: torch.Tensor, tok, learn: bool) -> dict:
    V = model.config.vocab_size
    base = {"inputs": ids[:-1], "targets": ids[1:], "target_labels": [_label(tok, i) for i in ids[1:]],
            "uniform_loss": _f(math.log(V), 4)}
    if len(ids) < 2:
        return {**base, "losses": [], "loss": None, "step": None,
                "note": "one token has no next token to predict: type at least two"}
    losses = F.cross_entropy(logits[:-1], torch.tensor(ids[1:], device=logits.device), reduction="none")
    out = {**base, "losses": _fl(losses, 5), "loss": _f(losses.mean(), 5), "step": None}
    if learn:
        out["step"] = one_step(model, ids[: LEARN_TOKENS + 1]).to_dict()
    return out
