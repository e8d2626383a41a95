"""The walkthrough's numbers (`core.inspect.walkthrough`), each against an independent
computation from the weights: the embedding sum against wte[id] + wpe[pos], one head's
scores against Q·Kᵀ/√d from c_attn, the stack's norms and lens guesses against a plain loop
over the blocks, the probabilities against softmax(model(ids)), the picks against argmax /
the top-k and top-p sets, the losses against F.cross_entropy, the one training step against
a plain AdamW step; the served model is left unchanged; the quoted code is the running code;
and the pictures stay small and readable at GPT-2's shape."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.figures import walkthrough as figs
from app.figures.attention import payload_bytes
from app.tabs import walkthrough as tab
from core.inspect import walkthrough as W
from core.inspect.learn_step import LR, one_step
from tests.conftest import make_model

ROOT = Path(__file__).resolve().parents[1]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak."


@pytest.fixture(scope="module")
def char_model(char_tokenizer):
    return make_model(char_tokenizer.vocab_size, seed=3, block_size=64, n_head=4), char_tokenizer


@pytest.fixture(scope="module")
def walk(char_model):
    model, tok = char_model
    return W.walkthrough(model, tok, TEXT, query=20, layer=1, head=2)


def arr(x):
    return np.array([np.nan if v is None else v for v in x], dtype=np.float64)


def test_tokens_and_embedding_rows_are_the_tables_rows(walk, char_model):
    model, tok = char_model
    ids = tok.encode(TEXT)
    assert walk["tokens"]["ids"] == ids and walk["n_tokens"] == len(ids) and not walk["truncated"]
    assert walk["tokens"]["labels"] == [tok.display(i) for i in ids]
    e = walk["embedding"]
    wte, wpe = model.transformer.wte.weight.detach(), model.transformer.wpe.weight.detach()
    assert e["id"] == ids[20] and e["position"] == 20
    assert np.allclose(e["token_row"], wte[ids[20]].numpy(), atol=1e-6)
    assert np.allclose(e["position_row"], wpe[20].numpy(), atol=1e-6)
    assert np.allclose(e["sum"], (wte[ids[20]] + wpe[20]).numpy(), atol=1e-5)
    assert e["shape_vectors"] == [len(ids), model.config.n_embd]


def test_one_heads_scores_mask_softmax_and_sum_from_the_weights(walk, char_model):
    model, tok = char_model
    ids = tok.encode(TEXT)
    cfg, blk = model.config, model.transformer.h[1]
    hs, C = cfg.head_size, cfg.n_embd
    with torch.no_grad():  # the stream entering block 1, by hand, then its first LayerNorm and c_attn
        x = model.transformer.wte.weight[ids] + model.transformer.wpe.weight[: len(ids)]
        x = model.transformer.h[0](x[None])[0][0]
        h = F.layer_norm(x, (C,), blk.ln_1.weight, blk.ln_1.bias, 1e-5)
        q, k, v = (h @ blk.attn.c_attn.weight.T + blk.attn.c_attn.bias).split(C, dim=-1)
        q, k, v = (t[:, 2 * hs:3 * hs].double() for t in (q, k, v))  # head 2
    scores = (k @ q[20]) / math.sqrt(hs)
    a = walk["attention"]
    assert a["mask"] == [j <= 20 for j in range(len(ids))]
    assert np.allclose(arr(a["scores"])[:21], scores[:21].numpy(), atol=1e-4)
    assert all(s is None for s in a["scores"][21:])  # masked: −∞
    w = torch.softmax(scores[:21], -1)
    assert np.allclose(arr(a["weights"])[:21], w.numpy(), atol=1e-5) and np.allclose(a["weights"][21:], 0)
    assert np.allclose(a["z"], (w @ v[:21]).numpy(), atol=1e-4)
    assert a["softmax_err"] < 1e-5 and a["z_err"] < 1e-5
    assert len(a["heads"]) == cfg.n_head and all(abs(sum(r) - 1) < 1e-4 for r in a["heads"])
    assert a["heads"][2] == a["weights"]
    assert a["shapes"]["qkv"] == [cfg.n_head, len(ids), hs] and a["scale"] == pytest.approx(1 / math.sqrt(hs))


def test_stack_norms_and_lens_against_a_plain_loop_over_the_blocks(walk, char_model):
    model, tok = char_model
    ids = tok.encode(TEXT)
    with torch.no_grad():
        x = (model.transformer.wte.weight[ids] + model.transformer.wpe.weight[: len(ids)])[None]
        streams = [x]
        for block in model.transformer.h:
            x = block(x)[0]
            streams.append(x)
        guesses = [int(model.lm_head(model.transformer.ln_f(s[0, 20])).argmax()) for s in streams]
    s = walk["stack"]
    assert s["rows"] == ["embed", "L0", "L1"]
    assert np.allclose(s["norms"], [float(t[0, 20].norm()) for t in streams], rtol=1e-3)
    assert [g["id"] for g in s["lens"]] == guesses
    assert s["next"]["id"] == ids[21]


def test_output_probabilities_are_softmax_of_the_models_logits(walk, char_model):
    model, tok = char_model
    ids = tok.encode(TEXT)
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([ids]))[0][0], -1)
    o = walk["output"]
    top = torch.topk(probs[20], 10)
    assert [t["id"] for t in o["top"]] == top.indices.tolist()
    assert np.allclose([t["prob"] for t in o["top"]], top.values.numpy(), atol=1e-6)
    assert o["rest"] == pytest.approx(1 - float(top.values.sum()), abs=1e-5)
    # the last stage's distribution is the end of the text's: the picks
    last = probs[-1]
    p = {x["name"]: x for x in walk["pick"]["picks"]}
    assert p["greedy"]["id"] == int(last.argmax()) and p["greedy"]["kept"] == 1
    assert p["top_k"]["kept"] == W.TOP_K and p["top_k"]["id"] in torch.topk(last, W.TOP_K).indices.tolist()
    order = torch.sort(last, descending=True).values
    n_top_p = int((torch.cumsum(order, 0) - order < W.TOP_P).sum())  # the fewest tokens reaching p
    assert p["top_p"]["kept"] == n_top_p and p["top_p"]["mass"] >= W.TOP_P - 1e-6


def test_greedy_steps_match_recomputing_the_whole_text(walk, char_model):
    model, tok = char_model
    ids = tok.encode(TEXT)
    with torch.no_grad():
        for st in walk["pick"]["steps"]:
            probs = torch.softmax(model(torch.tensor([ids]))[0][0, -1], -1)
            assert st["id"] == int(probs.argmax()) and st["prob"] == pytest.approx(float(probs.max()), abs=1e-5)
            assert st["top"][0]["id"] == st["id"]
            ids = ids + [st["id"]]
    assert len(walk["pick"]["steps"]) == 1 + W.MORE_STEPS


def test_losses_are_cross_entropy_of_the_shifted_text(walk, char_model):
    model, tok = char_model
    ids = tok.encode(TEXT)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0]
    ce = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    ln = walk["learn"]
    assert ln["inputs"] == ids[:-1] and ln["targets"] == ids[1:]
    assert np.allclose(ln["losses"], ce.numpy(), atol=1e-4) and ln["loss"] == pytest.approx(float(ce.mean()), abs=1e-4)
    assert ln["step"]["loss_before"] == pytest.approx(float(ce.mean()), abs=1e-4)
    assert ln["uniform_loss"] == pytest.approx(math.log(model.config.vocab_size), abs=1e-3)


def test_one_step_is_a_plain_adamw_step_on_a_copy_and_the_model_is_unchanged(char_model):
    model, tok = char_model
    ids = tok.encode(TEXT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    st = one_step(model, ids)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the served model is untouched
    assert all(p.grad is None for p in model.parameters()) and not model.training
    # the same step by hand: AdamW, decay on matrices only, gradients clipped to norm 1
    ref = copy.deepcopy(model)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    named = dict(ref.named_parameters())
    groups = [{"params": [p for p in named.values() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in named.values() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99), eps=1e-8)
    loss = F.cross_entropy(ref(x)[0][0], y[0])
    loss.backward()
    norms = {n: float(p.grad.norm()) for n, p in named.items()}
    total = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0))
    opt.step()
    with torch.no_grad():
        after = float(F.cross_entropy(ref(x)[0][0], y[0]))
    assert st.loss_before == pytest.approx(loss.item(), abs=1e-5) and st.loss_after == pytest.approx(after, abs=1e-4)
    assert st.loss_after < st.loss_before and st.grad_norm == pytest.approx(total, rel=1e-4)
    assert [r["name"] for r in st.top_grads] == sorted(norms, key=lambda n: -norms[n])[: len(st.top_grads)]
    assert all(r["grad_norm"] == pytest.approx(norms[r["name"]], rel=1e-4) for r in st.top_grads)
    assert st.n_tokens == len(ids) - 1
    with pytest.raises(ValueError, match="at least 2 tokens"):
        one_step(model, ids[:1])


def test_deterministic_json_and_the_edges(walk, char_model, monkeypatch):
    model, tok = char_model
    again = W.walkthrough(model, tok, TEXT, query=20, layer=1, head=2)
    assert json.dumps(again) == json.dumps(walk)  # same text, same model: the same numbers, and plain JSON
    long = W.walkthrough(model, tok, TEXT * 10, learn=False)
    assert long["truncated"] and long["n_tokens"] == 64 and long["n_tokens_in_text"] == len(tok.encode(TEXT * 10))
    assert long["query"] == 63 and long["learn"]["step"] is None and len(long["learn"]["losses"]) == 63
    monkeypatch.setattr(W, "LEARN_TOKENS", 20)  # the step reads the first LEARN_TOKENS positions only
    cut = W.walkthrough(model, tok, TEXT * 10)["learn"]["step"]
    assert cut["n_tokens"] == 20 and cut["loss_before"] == pytest.approx(np.mean(long["learn"]["losses"][:20]), abs=1e-4)
    one = W.walkthrough(model, tok, "F")
    assert one["learn"]["losses"] == [] and one["learn"]["loss"] is None and "two" in one["learn"]["note"]
    with pytest.raises(ValueError, match="at least one token"):
        W.walkthrough(model, tok, "")
    with pytest.raises(ValueError, match="20,000"):
        W.walkthrough(model, tok, "x" * 20_001)
    with pytest.raises(ValueError, match="query position 99 is out of range"):
        W.walkthrough(model, tok, TEXT, query=99)
    with pytest.raises(ValueError, match="no tokenizer"):
        W.walkthrough(model, None, TEXT)
    assert W.check_stage("attention") == 2 and W.check_stage(6) == 6
    with pytest.raises(ValueError, match="unknown stage"):
        W.check_stage("nope")


def test_quoted_code_is_the_running_source():
    sources = {p: (ROOT / p).read_text() for p in ("core/model.py", "core/generate.py", "core/train.py",
                                                     "core/data.py", "core/tokenizer.py")}
    snippets = W.code_snippets()
    assert set(snippets) == set(W.STAGE_KEYS)
    for key, text in snippets.items():
        for line in text.splitlines():
            if line.strip() and not line.startswith("# ") and not line.startswith("probs = F.softmax(logits[0, -1]"):
                assert any(line.strip() in src for src in sources.values()), (key, line)
    assert "nn.Embedding(config.vocab_size, config.n_embd)" in snippets["embedding"]
    assert "self.data[idx + 1]" in snippets["learn"] and ".backward()" in snippets["learn"]


def test_every_stage_draws_and_its_words_escape_token_text(char_model, walk):
    model, tok = char_model
    d = W.walkthrough(model, tok, "<b>&amp;</b> <script>", learn=True)
    for key in W.STAGE_KEYS:
        out = tab.show(d, key)
        assert out[0] == key and out[3] is not None
        for md in (out[2], out[4]):
            assert "<script" not in md and "<b>" not in md
        assert "<script" not in out[3].to_json()


def test_pictures_stay_small_at_gpt2s_shape():
    """12 layers × 12 heads, 50,257 tokens, 1,024 positions (a narrow random model of that shape)."""
    model = make_model(50257, seed=0, n_layer=12, n_head=12, n_embd=24, block_size=1024)
    from core.tokenizer import Tokenizer

    tok = Tokenizer.train_char("abcdefghij klmnop")  # ids below 50,257: any tokenizer whose ids fit
    d = W.walkthrough(model, tok, "abc defg hij " * 100, learn=False)
    assert d["n_tokens"] == 1024 and d["truncated"] and len(d["attention"]["heads"]) == 12
    assert len(d["stack"]["lens"]) == 13 and d["output"]["vocab_size"] == 50257
    for key in W.STAGE_KEYS:
        fig = tab.figure(d, key)
        assert payload_bytes(fig) < 400_000, key
    tiles = figs.token_tiles(d["tokens"]["labels"], d["tokens"]["ids"], d["query"], 50257)
    assert len(tiles.data[0].x) == figs.TILES_SHOWN and "of 1024 shown" in tiles.layout.title.text
    steps = figs.attention_steps(d["tokens"]["labels"], d["attention"]["scores"], d["attention"]["weights"],
                                 d["attention"]["heads"], d["query"], 0, 0)
    assert len(steps.data[0].x) == figs.KEYS_SHOWN and "earlier keys not drawn" in steps.layout.title.text
    assert len(json.dumps(d)) < 2_000_000  # what /walkthrough sends
    assert d["pick"]["steps_context"] == 1024 - 4  # the steps start from the tokens that leave room for them
