"""The model: fast path vs inspection path, KV cache vs recompute, the trace's names and shapes."""

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


def _decode_logits(model, idx, chunks, **kw):
    """Logits of a KV-cache decode fed in `chunks`, concatenated along T."""
    cache = model.new_kv_cache(idx.size(0))
    outs, pos = [], 0
    for c in chunks:
        outs.append(model(idx[:, pos:pos + c], kv_cache=cache, **kw)[0])
        pos += c
    return torch.cat(outs, 1)


@pytest.mark.parametrize("min_work", [0, None], ids=["onednn", "by-size"])
def test_decode_fast_path_equals_plain_path(model, monkeypatch, min_work):
    """The inference fast path (no grad, eval, CPU, float32: prepacked oneDNN weights for big
    products — forced here for every product with min_work 0 — and transposed copies for
    small few-row ones) gives the same logits as nn.Linear's, and is only taken there."""
    from core import model as M

    if min_work is not None:
        monkeypatch.setattr(M, "ONEDNN_MIN_WORK", min_work)
    model.clear_decode_cache()
    idx = torch.randint(0, 50, (2, 24))
    chunks = [8] + [1] * 16
    full, _ = model(idx)
    with torch.no_grad():
        fast = _decode_logits(model, idx, chunks)
        assert any(M._fast_kinds(p) for p in model.parameters())  # the copies were built
        model.decode_weight_cache = False
        try:
            plain = _decode_logits(model, idx, chunks)
        finally:
            del model.decode_weight_cache  # back to the class default
    assert torch.allclose(fast, plain, atol=1e-5)
    assert torch.allclose(fast, full, atol=1e-5)
    kinds = set().union(*(M._fast_kinds(p) for p in model.parameters()))
    if min_work == 0 and M._onednn_ok():  # every CPU build of torch this project pins has oneDNN
        assert kinds == {"onednn"}
    elif min_work is None:  # this model's weights are all small: transposed copies only
        assert kinds == {"t"}
    with torch.no_grad():  # the same copies serve a forward without a cache, the trace and the lens
        assert torch.allclose(model(idx)[0], full, atol=1e-5)
        tr = model.trace(idx, keep=("logits", "blocks.0.resid_post"))
        assert torch.allclose(tr.logits, full, atol=1e-5)
        with torch.enable_grad():
            lens_ref = model.unembed(tr["blocks.0.resid_post"])
        assert torch.allclose(model.unembed(tr["blocks.0.resid_post"]), lens_ref, atol=1e-5)
    # with grad on, or in training mode, the copies are neither built nor used
    model.clear_decode_cache()
    assert not any(M._fast_kinds(p) for p in model.parameters())
    _decode_logits(model, idx, chunks)
    assert not any(M._fast_kinds(p) for p in model.parameters())


@pytest.mark.parametrize("min_work", [0, None], ids=["onednn", "by-size"])
def test_decode_fast_path_sees_weight_changes(model, monkeypatch, min_work):
    """An in-place change to a weight (optimizer step, load_state_dict) makes the transposed
    copy stale: the next decode uses the new weights."""
    import copy

    from core import model as M

    if min_work is not None:
        monkeypatch.setattr(M, "ONEDNN_MIN_WORK", min_work)
    m = copy.deepcopy(model)
    idx = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        _decode_logits(m, idx, [4] + [1] * 8)  # builds the copies
        m.transformer.h[1].mlp.c_fc.weight.mul_(3.0)
        m.transformer.wte.weight.add_(0.1)  # the tied output head
        with torch.enable_grad():  # grad on: the plain nn.Linear path, the reference
            full, _ = m(idx)
        fast = _decode_logits(m, idx, [4] + [1] * 8)
        assert torch.allclose(fast, full, atol=1e-5)
        assert torch.allclose(m(idx)[0], full, atol=1e-5)  # the fast path without a cache too
        m.load_state_dict(model.state_dict())
        fast = _decode_logits(m, idx, [4] + [1] * 8)
        with torch.enable_grad():
            assert torch.allclose(fast, model(idx)[0], atol=1e-5)


def test_decode_fast_path_with_inference_tensors():
    """Weights created in inference mode have no version counter: no copy, the plain path."""
    from core import model as M

    with torch.inference_mode():
        torch.manual_seed(1)
        m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
        idx = torch.randint(0, 50, (1, 10))
        full, _ = m(idx)
        fast = _decode_logits(m, idx, [3] + [1] * 7)
    assert torch.allclose(fast, full, atol=1e-5)
    assert not any(M._fast_kinds(p) for p in m.parameters())


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


def test_fast_path_fallback_without_onednn(model, monkeypatch):
    """Where oneDNN is missing the fast path falls back to transposed copies for few-row
    matmuls and nn.Linear for the rest; the logits are the same."""
    from core import model as M

    monkeypatch.setattr(M, "_ONEDNN", False)
    model.clear_decode_cache()
    idx = torch.randint(0, 50, (1, 16))
    full, _ = model(idx)
    try:
        with torch.no_grad():
            fast = _decode_logits(model, idx, [8] + [1] * 8)
            assert set().union(*(M._fast_kinds(p) for p in model.parameters())) == {"t"}
        assert torch.allclose(fast, full, atol=1e-5)
    finally:
        model.clear_decode_cache()  # don't leave transposed copies for the next test


def test_fast_copies_go_with_their_weights():
    """The copies live as long as the weight: dropping a model frees them."""
    import gc

    from core import model as M

    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        m(torch.randint(0, 50, (1, 4)), kv_cache=m.new_kv_cache(1))
    ids = [id(p) for p in m.parameters() if M._fast_kinds(p)]
    assert ids
    del m
    gc.collect()
    assert not any(i in M._FAST for i in ids)


@pytest.mark.parametrize("min_work", [0, None], ids=["onednn", "by-size"])
def test_one_token_step_equals_the_modules_bit_for_bit(model, monkeypatch, min_work):
    """A one-token cached step on the fast path skips the module calls (`GPT._decode_one`): the
    logits and the cache are the same bits as the blocks' own forwards, which it falls back to
    when any module has a hook (and the hook fires)."""
    from core import model as M

    if min_work is not None:
        monkeypatch.setattr(M, "ONEDNN_MIN_WORK", min_work)
    calls = []
    idx = torch.randint(0, 50, (3, 10))
    with torch.no_grad():
        lean_cache, hooked_cache = model.new_kv_cache(3), model.new_kv_cache(3)
        model(idx[:, :9], kv_cache=lean_cache)
        model(idx[:, :9], kv_cache=hooked_cache)
        assert model._plain()
        lean, _ = model(idx[:, 9:], kv_cache=lean_cache)
        handle = model.transformer.h[1].mlp.register_forward_hook(lambda *a: calls.append(1))
        try:
            assert not model._plain()
            hooked, _ = model(idx[:, 9:], kv_cache=hooked_cache)
        finally:
            handle.remove()
    assert calls == [1]  # the hooked model ran its modules
    assert torch.equal(lean, hooked) and lean.shape == (3, 1, 50)
    assert torch.equal(lean_cache.k, hooked_cache.k) and torch.equal(lean_cache.v, hooked_cache.v)
    assert lean_cache.pos == hooked_cache.pos == 10
