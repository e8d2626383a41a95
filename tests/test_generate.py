"""Decoding properties on a tiny real model (no mocks)."""

import math

import pytest
import torch

from core.generate import Sampling, filter_logits, generate
from tests.conftest import make_model


@pytest.fixture(scope="module")
def model():
    return make_model(40, seed=1, block_size=48)


def test_seeded_sampling_is_reproducible(model):
    a = generate(model, [1, 2, 3], 30, temperature=1.0, seed=7)
    b = generate(model, [1, 2, 3], 30, temperature=1.0, seed=7)
    c = generate(model, [1, 2, 3], 30, temperature=1.0, seed=8)
    assert a == b and a != c and len(a) == 30


def test_greedy_is_the_argmax_chain(model):
    ids = [5, 6]
    out = generate(model, ids, 20, greedy=True)
    seq = list(ids)
    for _ in range(20):
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    assert out == seq[2:]


def test_cache_and_recompute_agree_past_the_block(model):
    # 60 new tokens from a 10-token prompt crosses block_size=48: the context slides
    a = generate(model, list(range(10)), 60, greedy=True, use_cache=True)
    b = generate(model, list(range(10)), 60, greedy=True, use_cache=False)
    assert a == b and len(a) == 60


def test_top_k_never_leaves_the_k_best(model):
    logits, _ = model(torch.tensor([[1, 2, 3]]))
    top3 = set(torch.topk(logits[0, -1], 3).indices.tolist())
    for seed in range(20):
        assert generate(model, [1, 2, 3], 1, top_k=3, seed=seed)[0] in top3


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, Sampling(top_p=0.7)))[0].tolist()
    assert kept == [True, True, False, False]
    kept = torch.isfinite(filter_logits(logits, Sampling(top_p=0.5)))[0].tolist()
    assert kept == [True, False, False, False]


def test_stops_at_eot_and_validates(model):
    first = generate(model, [1], 1, greedy=True)[0]
    assert generate(model, [1], 10, greedy=True, eot_id=first) == [first]
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 5)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [1], 5, top_p=1.5)


# --- the filter chain and the per-step trace ---------------------------------------------

from core.generate import apply_repetition_penalty, steps, stream  # noqa: E402


def test_min_p_keeps_tokens_above_a_fraction_of_the_best():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, Sampling(min_p=0.5)))[0].tolist()
    assert kept == [True, True, False, False]  # 0.15 < 0.5 * 0.5
    kept = torch.isfinite(filter_logits(logits, Sampling(min_p=1.0)))[0].tolist()
    assert kept == [True, False, False, False]  # the best token always stays


def test_filters_run_in_order_temperature_then_top_k_then_top_p():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    # top-k 3 renormalises to [.44, .33, .22]; top-p 0.7 then keeps the first two (0.44 < 0.7 <= 0.78)
    kept = torch.isfinite(filter_logits(logits, Sampling(top_k=3, top_p=0.7)))[0].tolist()
    assert kept == [True, True, False, False]
    # a high temperature flattens before the nucleus is measured: more tokens survive top-p
    flat = torch.isfinite(filter_logits(logits, Sampling(temperature=10.0, top_p=0.7)))[0].sum()
    sharp = torch.isfinite(filter_logits(logits, Sampling(temperature=0.1, top_p=0.7)))[0].sum()
    assert flat > sharp == 1


def test_repetition_penalty_lowers_seen_tokens_and_changes_greedy(model):
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]
    plain = generate(model, [1, 2, 3], 30, greedy=True)
    penalised = generate(model, [1, 2, 3], 30, greedy=True, repetition_penalty=3.0)
    assert plain != penalised
    assert len(set(penalised)) >= len(set(plain))


def test_trace_matches_stream_and_records_the_filters(model):
    s = Sampling(temperature=0.9, top_k=5, top_p=0.8)
    toks = list(stream(model, [3, 4], 15, s, seed=11))
    trace = list(steps(model, [3, 4], 15, s, seed=11, top=8))
    assert [t.token for t in trace] == toks
    for st in trace:
        assert list(st.stages) == ["model", "temperature", "top_k", "top_p"]
        assert st.kept["model"] == 40 and st.kept["top_k"] == 5 and 1 <= st.kept["top_p"] <= 5
        assert st.token in st.candidates and 1 <= st.rank <= 5  # top-k never leaves the 5 best
        assert all(p == 0.0 for p in st.stages["top_k"][5:8])  # candidates 6..8 are cut by top-k
        i = st.candidates.index(st.token)
        assert st.stages["top_p"][i] > 0.0 and abs(st.sampled_prob - st.stages["top_p"][i]) < 1e-5
        assert 0.0 <= st.entropy <= math.log2(40) + 1e-6 and sum(st.stages["model"]) <= 1.0 + 1e-4
        assert st.dt > 0 and st.t >= st.dt
    assert [t.t for t in trace] == sorted(t.t for t in trace)


def test_greedy_trace_rank_is_one_and_logprob_is_the_models(model):
    trace = list(steps(model, [7], 10, Sampling(greedy=True), top=3))
    seq = [7]
    for st in trace:
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq]))
        logp = torch.log_softmax(logits[0, -1], -1)
        assert st.rank == 1 and st.token == int(logp.argmax())
        assert abs(st.logprob - float(logp.max())) < 1e-5
        entropy = float(-(logp.exp() * logp).sum()) / math.log(2)
        assert abs(st.entropy - entropy) < 1e-4 and st.entropy > 0.1
        seq.append(st.token)


def test_max_new_tokens_is_respected(model):
    for n in (0, 1, 7):
        assert len(generate(model, [1], n, temperature=1.0, seed=0)) == n
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1], -1)


def test_cli_prints_json(tiny_ckpt, capsys):
    import json

    from core.cli import generate_main as main

    assert main([str(tiny_ckpt), "--prompt", "First", "--max-new-tokens", "6", "--greedy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["ids"]) == 6 and out["prompt"] == "First"
    assert main([str(tiny_ckpt), "--prompt", "First", "--max-new-tokens", "5", "--beams", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["ids"]) == 5
    assert main([str(tiny_ckpt), "--prompt", "First", "--top-p", "3"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_a_half_consumed_stream_leaves_autograd_on(char_tokenizer):
    """A generator that yields inside `with torch.inference_mode()` leaves the mode on in the
    caller's thread while suspended: training after an abandoned stream then fails."""
    import torch

    from core.generate import Sampling, steps, stream
    from tests.conftest import make_model

    model = make_model(char_tokenizer.vocab_size)
    for gen in (stream(model, [1, 2, 3], 5, Sampling(greedy=True)), steps(model, [1, 2, 3], 5)):
        next(gen)
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        del gen
    w = torch.ones(2, requires_grad=True)
    assert (w * 2).sum().requires_grad


@pytest.mark.parametrize("s", [Sampling(greedy=True), Sampling(temperature=0.9, top_k=5, top_p=0.8),
                               Sampling(temperature=1.2, min_p=0.05, repetition_penalty=1.3)])
def test_untraced_steps_carry_the_chosen_tokens_numbers(model, s):
    """top=0 (the API without traces) skips candidates and stages, but the tokens and the
    chosen token's numbers are the full trace's."""
    full = list(steps(model, [3, 4], 12, s, seed=5, top=8))
    light = list(steps(model, [3, 4], 12, s, seed=5, top=0))
    assert [t.token for t in light] == [t.token for t in full] == list(stream(model, [3, 4], 12, s, seed=5))
    for a, b in zip(light, full):
        assert a.candidates == [] and a.stages == {}
        assert (a.rank, a.index) == (b.rank, b.index)
        for f in ("prob", "logprob", "entropy", "sampled_prob"):
            assert getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-5), f
