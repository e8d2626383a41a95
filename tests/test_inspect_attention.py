"""core.inspect.attention: statistics on synthetic heads with known answers, pooling,
aggregations, the equation against the model, the logit lens against the fast path,
comparing and ablating — on tiny real models."""

import math

import numpy as np
import pytest
import torch

from core import checkpoint
from core.inspect import attention as A
from tests.conftest import make_model

T = 12


def uniform(T: int) -> torch.Tensor:
    """Every query spreads its weight evenly over the keys it can see."""
    p = torch.ones(T, T).tril()
    return p / p.sum(-1, keepdim=True)


def first_token(T: int) -> torch.Tensor:
    p = torch.zeros(T, T)
    p[:, 0] = 1.0
    return p


def shifted_identity(T: int) -> torch.Tensor:
    """Query i looks only at i−1 (query 0 at itself)."""
    p = torch.zeros(T, T)
    p[0, 0] = 1.0
    p[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return p


def induction_head(n: int) -> torch.Tensor:
    """On a sequence repeating with period n: the query at i ≥ n attends to i − n + 1 (with
    a little weight left on itself), earlier queries attend to themselves."""
    T = 2 * n
    p = torch.eye(T)
    for i in range(n, T):
        p[i] = 0.0
        p[i, i - n + 1] = 0.995
        p[i, i] += 0.005
    return p


def test_statistics_of_synthetic_heads():
    stats = A.head_stats(torch.stack([uniform(T), first_token(T), shifted_identity(T), torch.eye(T)]))
    assert stats["entropy"] == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-6)
    assert stats["max_weight"] == pytest.approx([np.mean([1 / (i + 1) for i in range(1, T)]), 1, 1, 1], abs=1e-6)
    assert stats["mean_distance"] == pytest.approx([np.mean([i / 2 for i in range(1, T)]), (T) / 2, 1, 0], abs=1e-5)
    assert stats["first_token_mass"] == pytest.approx([np.mean([1 / (i + 1) for i in range(1, T)]), 1, 1 / (T - 1), 0],
                                                      abs=1e-6)
    assert stats["prev_token_score"] == pytest.approx([np.mean([1 / (i + 1) for i in range(1, T)]), 1 / (T - 1), 1, 0],
                                                      abs=1e-6)
    for s in stats.values():
        assert s.shape == (4,)
    # one token: nothing to average, NaN rather than a made-up number
    assert np.isnan(A.head_stats(torch.ones(1, 1))["entropy"]).all()


def test_induction_score():
    n = 10
    assert A.induction_score(induction_head(n), n) >= 0.99
    assert A.induction_score(shifted_identity(2 * n), n) < 0.01
    assert A.induction_score(uniform(2 * n), n) == pytest.approx(np.mean([1 / (i + 1) for i in range(n, 2 * n)]))
    with pytest.raises(ValueError, match="period 20"):
        A.induction_score(uniform(20), 20)
    ids = A.repeated_random_tokens(100, n=10, seed=3, exclude=(0,))
    assert ids.shape == (1, 20) and torch.equal(ids[0, :10], ids[0, 10:])
    assert len(set(ids[0, :10].tolist())) == 10 and 0 not in ids
    assert torch.equal(ids, A.repeated_random_tokens(100, n=10, seed=3, exclude=(0,)))  # seeded
    scores = A.measure_induction(make_model(50, n_layer=2, n_head=2))
    assert scores.shape == (2, 2) and np.all((scores >= 0) & (scores <= 1))


def test_pooling_keeps_the_mask_and_the_peaks():
    p = shifted_identity(10)
    full, f = A.pool(p, 64)
    assert f == 1 and np.isnan(full[np.triu_indices(10, 1)]).all()
    assert np.nan_to_num(full) == pytest.approx(p.numpy())
    pooled, f = A.pool(p, 4)  # 10 tokens → 3 tokens per cell → 4 cells (the last one partial)
    assert f == 3 and pooled.shape == (4, 4)
    assert np.isnan(pooled[np.triu_indices(4, 1)]).all() and not np.isnan(np.diag(pooled)).any()
    assert pooled[1, 0] == 1.0 and pooled[1, 1] == 1.0 and pooled[3, 3] == 0.0  # the diagonal's 1s survive
    big, f = A.pool(uniform(1024).expand(2, 3, 1024, 1024), A.THUMB_SIDE)
    assert f == 16 and big.shape == (2, 3, 64, 64) and big.dtype == np.float32


def test_aggregations_and_rollout():
    eye = torch.eye(T).expand(3, 4, T, T)
    assert torch.allclose(A.rollout(eye.mean(1)), torch.eye(T))
    assert torch.allclose(A.aggregate(eye, "rollout", 0), torch.eye(T))
    p = torch.stack([torch.stack([uniform(T), first_token(T)]), torch.stack([shifted_identity(T), torch.eye(T)])])
    assert torch.allclose(A.aggregate(p, "head_mean", 0), (uniform(T) + first_token(T)) / 2)
    assert torch.allclose(A.aggregate(p, "head_max", 1), torch.maximum(shifted_identity(T), torch.eye(T)))
    assert torch.allclose(A.aggregate(p, "layer_mean", 0), p.mean((0, 1)))
    r = A.aggregate(p, "rollout", 0)
    assert torch.allclose(r.sum(-1), torch.ones(T)) and torch.all(r.triu(1) == 0)  # still causal, rows sum to 1
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        A.aggregate(p, "median", 0)


def test_js_divergence():
    assert A.js_divergence(uniform(T), uniform(T)) == pytest.approx(0.0, abs=1e-7)
    assert A.js_divergence(first_token(T), torch.eye(T)) == pytest.approx(1.0, abs=1e-6)  # disjoint rows: 1 bit
    d = A.js_divergence(uniform(T), shifted_identity(T))
    assert 0 < d < 1
    with pytest.raises(ValueError, match="differ in shape"):
        A.js_divergence(uniform(T), uniform(T + 1))


def test_prepare_text(char_tokenizer):
    prep = A.prepare_text(char_tokenizer, "Speak, speak.\n", block_size=8)
    assert prep.ids == char_tokenizer.encode("Speak, s") and prep.n_total == 14 and prep.truncated
    assert prep.labels[6] == "·"  # whitespace made visible
    assert not A.prepare_text(char_tokenizer, "Speak", 8).truncated
    with pytest.raises(ValueError, match="at least one token"):
        A.prepare_text(char_tokenizer, "", 8)
    with pytest.raises(ValueError, match="limit is 10"):
        A.prepare_text(char_tokenizer, "a" * 11, 8, max_chars=10)
    with pytest.raises(ValueError, match="no tokenizer"):
        A.prepare_text(None, "a", 8)
    with pytest.raises(ValueError, match="layer 2 is out of range: this model has layers 0..1"):
        A.check_head(make_model(20).config, 2, 0)
    with pytest.raises(ValueError, match="head -1 is out of range"):
        A.check_head(make_model(20).config, 0, -1)
    assert A.check_query(-1, 5) == 4 and A.check_query(2, 5) == 2
    with pytest.raises(ValueError, match="query position 5 is out of range"):
        A.check_query(5, 5)


@pytest.fixture(scope="module")
def model():
    return make_model(60, n_layer=3, n_head=4, block_size=48)


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 60, (40,), generator=g).tolist()


def test_analysis_is_the_models_own_numbers(model, ids):
    a = A.analyse(model, ids, layer=2, head=1, query=25, aggregate_how="rollout")
    tr = model.trace(torch.tensor([ids]), keep="blocks.*.attn.pattern")
    p = tr.patterns()[:, 0]  # (L, nh, T, T)
    assert (a.n_layer, a.n_head, a.T, a.query) == (3, 4, 40, 25)
    assert torch.allclose(p.sum(-1), torch.ones(3, 4, 40))  # rows are probabilities
    assert np.allclose(a.query_rows, p[:, :, 25].numpy()) and np.allclose(a.query_rows.sum(-1), 1, atol=1e-5)
    assert np.allclose(np.nan_to_num(a.focus), p[2, 1].numpy()) and np.isnan(a.focus[0, 1])
    assert a.thumb_factor == 1 and a.thumbs.shape == (3, 4, 40, 40)
    assert np.allclose(a.stats["entropy"], A.normalised_entropy(p))
    assert set(a.stats) == set(A.STATS)
    assert np.allclose(np.nan_to_num(a.aggregate), A.rollout(p.mean(1)).numpy(), atol=1e-6)
    # the equation, recomputed from q, k, v, matches the model's pattern row and head output
    eq = a.equation
    assert eq.weights_err < 1e-6 and eq.z_err < 1e-5 and eq.weights.sum() == pytest.approx(1.0)
    assert np.all(eq.weights[26:] == 0) and np.all(np.isneginf(eq.scores[26:]))
    assert np.allclose(eq.scores[:26], eq.dots[:26] / math.sqrt(eq.head_size))
    assert np.allclose(eq.model_weights, p[2, 1, 25].numpy())
    # the logit lens' last row is the fast path's prediction
    lens = a.lens
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    probs = torch.softmax(logits[0], -1)
    assert lens.rows == ["embed", "L0", "L1", "L2"] and lens.positions == list(range(8, 40))  # 32 around the query, inside the text
    assert np.allclose(lens.top_probs[-1], probs[lens.positions].max(-1).values.numpy(), atol=1e-6)
    assert np.array_equal(lens.top_ids[-1], probs[lens.positions].argmax(-1).numpy())
    assert lens.next_ids[0] == ids[9] and lens.next_probs[-1, 0] == pytest.approx(probs[8, ids[9]].item(), abs=1e-6)
    assert lens.next_ids[-1] == -1 and np.isnan(lens.next_probs[:, -1]).all()  # nothing follows the last token


def test_long_text_is_pooled(model):
    big = make_model(60, n_layer=1, n_head=2, block_size=1024)
    a = A.analyse(big, list(range(60)) * 17, 0, 1, induction=False)
    assert a.T == 1020 and a.query == 1019
    assert a.thumb_factor == 16 and a.thumbs.shape == (1, 2, 64, 64)
    assert a.focus_factor == 3 and a.focus.shape == (340, 340)
    assert "induction_score" not in a.stats and a.lens.positions[-1] == 1019


def test_induction_scores_can_be_given(model, ids):
    scores = A.measure_induction(model)
    a = A.analyse(model, ids[:10], induction_scores=scores)
    assert a.stats["induction_score"] is scores or np.array_equal(a.stats["induction_score"], scores)
    with pytest.raises(ValueError, match="this model has 3 layers × 4 heads"):
        A.analyse(model, ids[:10], induction_scores=np.zeros((2, 2)))


def test_lens_window():
    assert A.lens_positions(10, 9, 32) == list(range(10))
    assert A.lens_positions(100, 50, 10) == list(range(45, 55))
    assert A.lens_positions(100, 99, 10) == list(range(90, 100))


def test_compare_identical_checkpoints_is_zero(tmp_path, char_tokenizer, ids):
    m = make_model(char_tokenizer.vocab_size, seed=3)
    for name in ("a", "b"):
        checkpoint.save(tmp_path / name, m, char_tokenizer, {})
    ma, mb = checkpoint.load(tmp_path / "a").model, checkpoint.load(tmp_path / "b").model
    ids = [i % char_tokenizer.vocab_size for i in ids[:20]]
    js, pa, pb = A.compare(ma, mb, ids)
    assert js.shape == (2, 2) and np.abs(js).max() < 1e-6 and torch.equal(pa, pb)
    other = make_model(char_tokenizer.vocab_size, seed=4)
    assert A.compare(ma, other, ids)[0].min() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        A.compare(ma, make_model(char_tokenizer.vocab_size, n_head=4), ids)


def test_ablation(model, ids):
    ab = A.ablate(model, ids, [(1, 2)], position=-1)
    mask = torch.ones(3, 4)
    mask[1, 2] = 0
    logits, loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]), head_mask=mask)
    full, _ = model(torch.tensor([ids]), head_mask=mask)
    assert ab.loss_after == pytest.approx(loss.item(), abs=1e-5)  # same as the fast path with the mask
    assert np.allclose(ab.probs_after, torch.softmax(full[0, -1], -1).detach().numpy(), atol=1e-6)
    assert ab.loss_before != pytest.approx(ab.loss_after, abs=1e-7) and ab.kl > 0
    assert ab.probs_before.sum() == pytest.approx(1.0, abs=1e-5) and ab.position == 39
    one = A.ablate(model, ids[:1], [(0, 0)])
    assert one.loss_before is None and one.loss_after is None
    with pytest.raises(ValueError, match="at least one head"):
        A.ablate(model, ids, [])
    with pytest.raises(ValueError, match="head 4 is out of range"):
        A.ablate(model, ids, [(0, 4)])
