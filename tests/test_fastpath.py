"""The CPU inference fast path (core.fastpath): every kernel gives nn.Linear's logits to float
rounding, the choice is measured once per machine and model shape, copies follow their weights."""

import copy
import gc

import pytest
import torch

from core import fastpath
from core.config import GPTConfig
from core.model import GPT


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Measured choices go to this test's folder, not the user's cache."""
    monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=48, n_layer=3, n_head=4, n_embd=32)).eval()


def _plain(model, fn):
    """`fn()` with the fast path off: nn.Linear's own calls, the reference."""
    model.decode_weight_cache = False
    try:
        return fn()
    finally:
        del model.decode_weight_cache  # back to the class default


def _decode(model, idx, chunks):
    """Logits of a KV-cache decode fed in `chunks` (a prompt, chunks, one-token steps)."""
    cache = model.new_kv_cache(idx.size(0))
    outs, pos = [], 0
    for c in chunks:
        outs.append(model(idx[:, pos:pos + c], kv_cache=cache)[0])
        pos += c
    return torch.cat(outs, 1), cache


CHUNKS = [8, 1, 1, 5, 1, 1, 1, 6, 1]  # prompt, one-token steps, chunks after a past


@pytest.mark.parametrize("kind", fastpath.KINDS)
def test_every_kind_gives_nn_linears_logits(model, kind):
    if kind not in fastpath.available_kinds():
        pytest.skip(f"{kind} is not available in this PyTorch build")
    fastpath.fixed_plan(model, kind)
    model.clear_decode_cache()
    idx = torch.randint(0, 50, (2, 25))
    with torch.no_grad():
        fast, fast_cache = _decode(model, idx, CHUNKS)
        plain, plain_cache = _plain(model, lambda: _decode(model, idx, CHUNKS))
        built = set().union(*(fastpath.kinds_of(p) for p in model.parameters()))
        assert built == (set() if kind == "linear" else {kind})
        assert torch.allclose(fast, plain, atol=1e-5)
        assert torch.allclose(fast_cache.k, plain_cache.k, atol=1e-5) and fast_cache.pos == plain_cache.pos
        # a prompt forward without a cache, the trace and the logit lens take the same path
        full = _plain(model, lambda: model(idx)[0])
        assert torch.allclose(model(idx)[0], full, atol=1e-5)
        tr = model.trace(idx, keep=("logits", "blocks.0.resid_post"))
        assert torch.allclose(tr.logits, full, atol=1e-5)
        lens = _plain(model, lambda: model.unembed(tr["blocks.0.resid_post"]))
        assert torch.allclose(model.unembed(tr["blocks.0.resid_post"]), lens, atol=1e-5)
    assert torch.allclose(fast, full, atol=1e-5)
    model.clear_decode_cache()
    del model.__dict__["inference_plan"]


def test_the_measured_choice_gives_nn_linears_logits(model):
    m = copy.deepcopy(model)
    plan = fastpath.choose(m, refresh=True)
    assert set(plan["kinds"]) == {torch.Size(s) for s in [(96, 32), (32, 32), (128, 32), (32, 128), (50, 32)]}
    assert all(k in fastpath.available_kinds() for ks in plan["kinds"].values() for k in ks)
    for times in (plan["choice"]["ms"]["all"]["1"], plan["choice"]["ms"]["128x32"]["4"]):  # one row: the whole model
        assert set(times) == set(fastpath.available_kinds()) and all(t > 0 for t in times.values())
    assert len({ks[0] for ks in plan["kinds"].values()}) == 1  # one kind for every shape at one row
    idx = torch.randint(0, 50, (3, 25))
    with torch.no_grad():
        fast, _ = _decode(m, idx, CHUNKS)
        plain, _ = _plain(m, lambda: _decode(m, idx, CHUNKS))
    assert torch.allclose(fast, plain, atol=1e-5)


def test_the_choice_is_cached_per_machine_and_shape(tmp_path, monkeypatch):
    """A second model of the same shape reuses the measured choice (no second measurement);
    another machine fingerprint or another shape measures again."""
    calls = []
    real = fastpath.measure
    monkeypatch.setattr(fastpath, "measure", lambda m: calls.append(1) or real(m))
    cfg = GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)
    idx = torch.randint(0, 40, (1, 6))
    with torch.no_grad():
        GPT(cfg).eval()(idx)
        assert len(calls) == 1
        second = GPT(cfg).eval()
        second(idx)
        assert len(calls) == 1 and second.inference_plan["cached"]
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # part of the machine's fingerprint
        assert not GPT(cfg).eval()(idx)[0].isnan().any()
        assert len(calls) == 2
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()(idx)
        assert len(calls) == 3
    assert (tmp_path / "cache" / "speed" / "inference.json").is_file()


def test_no_fast_path_with_grad_or_in_training(model):
    m = copy.deepcopy(model)
    idx = torch.randint(0, 50, (1, 8))
    m(idx)  # grad on
    with torch.no_grad():
        m.train()
        m(idx)
        m.eval()
    assert "inference_plan" not in m.__dict__
    assert not any(fastpath.kinds_of(p) for p in m.parameters())


@pytest.mark.parametrize("kind", ["t", "onednn"])
def test_copies_see_weight_changes(model, kind):
    """An in-place change to a weight (optimizer step, load_state_dict) makes its copy stale:
    the next forward uses the new weights."""
    if kind not in fastpath.available_kinds():
        pytest.skip(f"{kind} is not available in this PyTorch build")
    m = copy.deepcopy(model)
    fastpath.fixed_plan(m, kind)
    idx = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        _decode(m, idx, [4] + [1] * 8)  # builds the copies
        m.transformer.h[1].mlp.c_fc.weight.mul_(3.0)
        m.transformer.wte.weight.add_(0.1)  # the tied output head
        full = _plain(m, lambda: m(idx)[0])
        assert torch.allclose(_decode(m, idx, [4] + [1] * 8)[0], full, atol=1e-5)
        assert torch.allclose(m(idx)[0], full, atol=1e-5)
        m.load_state_dict(model.state_dict())
        assert torch.allclose(_decode(m, idx, [4] + [1] * 8)[0], _plain(model, lambda: model(idx)[0]), atol=1e-5)


def test_untied_head_is_read_from_lm_head(model):
    """The fast path reads the output head's weight from lm_head, tied or not."""
    m = copy.deepcopy(model)
    m.lm_head.weight = torch.nn.Parameter(torch.randn(50, 32) * 0.02)
    fastpath.fixed_plan(m, "t")
    idx = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        fast, _ = _decode(m, idx, [6, 1, 1, 1, 1])
        plain, _ = _plain(m, lambda: _decode(m, idx, [6, 1, 1, 1, 1]))
    assert torch.allclose(fast, plain, atol=1e-5)
    assert fastpath.kinds_of(m.lm_head.weight) == {"t"} and not fastpath.kinds_of(m.transformer.wte.weight)


def test_a_hooked_linear_runs_its_module(model):
    m = copy.deepcopy(model)
    fastpath.fixed_plan(m, "t")
    calls = []
    m.transformer.h[1].mlp.c_fc.register_forward_hook(lambda *a: calls.append(1))
    idx = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        fast, _ = _decode(m, idx, [9, 1])
        plain, _ = _plain(m, lambda: _decode(m, idx, [9, 1]))
    assert len(calls) == 4 and torch.allclose(fast, plain, atol=1e-5)
    assert not fastpath.kinds_of(m.transformer.h[1].mlp.c_fc.weight)


def test_inference_tensors_take_the_plain_path():
    """Weights created in inference mode have no version counter: no copy, nn.Linear."""
    with torch.inference_mode():
        torch.manual_seed(1)
        m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
        fastpath.fixed_plan(m, "t")
        idx = torch.randint(0, 50, (1, 10))
        full = _plain(m, lambda: m(idx)[0])
        fast, _ = _decode(m, idx, [3] + [1] * 7)
    assert torch.allclose(fast, full, atol=1e-5)
    assert not any(fastpath.kinds_of(p) for p in m.parameters())


def test_copies_go_with_their_weights():
    """The copies live as long as the weight: dropping a model frees them."""
    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    fastpath.fixed_plan(m, "t")
    with torch.no_grad():
        m(torch.randint(0, 50, (1, 4)), kv_cache=m.new_kv_cache(1))
    assert fastpath.copy_bytes(m) == 4 * sum(p.numel() for p in m.parameters() if p.dim() == 2 and p is not m.transformer.wpe.weight)
    ids = [id(p) for p in m.parameters() if fastpath.kinds_of(p)]
    assert ids
    del m
    gc.collect()
    assert not any(i in fastpath._COPIES for i in ids)


def test_unknown_kind_is_refused(model):
    with pytest.raises(ValueError, match="'fast'.*available"):
        fastpath.fixed_plan(model, "fast")

