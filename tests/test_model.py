"""The model: fast path vs inspection path, KV cache vs recompute, the trace's names and shapes.

The CPU inference fast path's kernels are tested in test_fastpath.py."""

import pytest
import torch

from core.config import GPTConfig
from core.model import GPT, TRACE_NAMES


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=48, n_layer=3, n_head=4, n_embd=32)
    return GPT(cfg).eval()


def test_forward_shapes_and_loss(model):
    idx = torch.randint(0, 50, (2, 20))
    logits, loss = model(idx)
    assert logits.shape == (2, 20, 50) and loss is None
    logits, loss = model(idx, idx)
    assert loss.ndim == 0 and loss.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.1)


def test_tied_head(model):
    assert model.lm_head.weight is model.transformer.wte.weight


def test_sdpa_equals_inspection_path(model):
    idx = torch.randint(0, 50, (3, 48))
    fast, _ = model(idx)
    tr = model.trace(idx, keep="*")
    assert torch.allclose(fast, tr.logits, atol=1e-5)
    for i in range(3):
        p = tr[f"blocks.{i}.attn.pattern"]
        assert p.shape == (3, 4, 48, 48)
        assert torch.allclose(p.sum(-1), torch.ones(3, 4, 48), atol=1e-5)
        assert p.triu(diagonal=1).abs().max() == 0  # causal: nothing from the future


def test_trace_names_shapes_and_filter(model):
    idx = torch.randint(0, 50, (1, 10))
    tr = model.trace(idx, keep="*")
    expected = {"embed", "ln_f", "logits"} | {n.format(i=i) for n in TRACE_NAMES if "{i}" in n for i in range(3)}
    assert set(tr.names()) == expected
    assert tr["blocks.2.attn.q"].shape == (1, 4, 10, 8)
    assert tr["blocks.0.resid_post"].shape == (1, 10, 32)
    assert tr.patterns().shape == (3, 1, 4, 10, 10)
    assert tr.residuals().shape == (4, 1, 10, 32)
    only = model.trace(idx, keep=["blocks.1.attn.pattern"])
    assert only.names() == ["blocks.1.attn.pattern"]
    with pytest.raises(KeyError, match="not in this trace"):
        only["logits"]
    # logit lens on the last residual equals the logits
    assert torch.allclose(model.unembed(tr["blocks.2.resid_post"]), tr.logits, atol=1e-5)


def test_head_mask_zero_changes_output_and_ones_do_not(model):
    idx = torch.randint(0, 50, (1, 12))
    base = model.trace(idx).logits
    ones = model.trace(idx, head_mask=torch.ones(3, 4)).logits
    assert torch.allclose(base, ones)
    m = torch.ones(3, 4)
    m[0, 1] = 0
    assert not torch.allclose(base, model.trace(idx, head_mask=m).logits)


@pytest.mark.parametrize("chunks", [[48], [1] * 20, [10, 1, 1, 15, 5], [30, 18]])
def test_kv_cache_equals_recompute(model, chunks):
    T = sum(chunks)
    idx = torch.randint(0, 50, (2, T))
    full, _ = model(idx)
    cache = model.new_kv_cache(2)
    outs, pos = [], 0
    for c in chunks:
        lg, _ = model(idx[:, pos:pos + c], kv_cache=cache)
        outs.append(lg)
        pos += c
    assert cache.pos == T
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def test_too_long_and_empty_inputs_raise(model):
    with pytest.raises(ValueError, match="block_size=48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    cache = model.new_kv_cache(1)
    model(torch.zeros(1, 40, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)


def test_describe_modules_counts_add_up(model):
    rows = model.describe_modules()
    assert sum(r["params"] for r in rows) == model.num_params()
    assert rows[0]["module"] == "transformer.wte" and rows[0]["shape"] == [50, 32]
    assert rows[-1] == {"module": "lm_head", "shape": [50, 32], "params": 0}  # tied: counted at wte
    assert [r["module"] for r in rows[2:8]] == [f"transformer.h.0.{m}" for m in (
        "ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]


def test_blocks_take_keywords_past_x(model):
    """Block and attention take everything past x by keyword: a positional call is refused."""
    x = torch.randn(1, 5, 32)
    with pytest.raises(TypeError):
        model.transformer.h[0](x, None, 0)
    y, att = model.transformer.h[0](x, need_weights=True)
    assert y.shape == (1, 5, 32) and att.shape == (1, 4, 5, 5)


def test_last_only_logits(model):
    idx = torch.randint(0, 50, (2, 20))
    full, _ = model(idx)
    last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, 50) and torch.allclose(last, full[:, -1:], atol=1e-6)
    with torch.no_grad():
        cache = model.new_kv_cache(2)
        a, _ = model(idx[:, :15], kv_cache=cache, last_only=True)
        b, _ = model(idx[:, 15:], kv_cache=cache, last_only=True)
    assert torch.allclose(a[:, 0], full[:, 14], atol=1e-5) and torch.allclose(b[:, 0], full[:, -1], atol=1e-5)
    with pytest.raises(ValueError, match="last_only"):
        model(idx, idx, last_only=True)
