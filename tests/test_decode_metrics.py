"""The decoding lab's core (`core.decoding`: methods, columns, metrics, samples, sweep) and its
figures (`app.figures.decode`), on a tiny real model."""

import math

import pytest
import torch

from app.figures import decode as figs
from core import decoding as D
from core.beam import beam_search
from core.generate import generate
from tests.conftest import make_model


@pytest.fixture(scope="module")
def model():
    return make_model(40, seed=2, block_size=48)


def test_distinct_and_repetition():
    assert D.distinct_n([1, 2, 3, 4], 1) == 1.0
    assert D.distinct_n([1, 1, 1, 1], 1) == 0.25
    assert D.distinct_n([1, 2, 1, 2, 1], 2) == 0.5  # (1,2) (2,1) (1,2) (2,1)
    assert D.distinct_n([7], 2) == 0.0
    assert D.repeated_ngram_rate([1, 2, 3, 1, 2, 3], 3) == 0.25  # 4 trigrams, (1,2,3) seen again
    assert D.repeated_ngram_rate([5, 5, 5, 5, 5], 3) == 2 / 3
    assert D.repeated_ngram_rate([1, 2], 3) == 0.0


def test_metrics_numbers():
    m = D.metrics([1, 2, 3, 4], [math.log(0.5)] * 4, [0.1, 0.2, 0.3, 0.4])
    assert m["length"] == 4 and math.isclose(m["tokens_per_s"], 10.0) and m["ttft_s"] == 0.1
    assert math.isclose(m["perplexity"], 2.0) and math.isclose(m["mean_logprob"], math.log(0.5))
    empty = D.metrics([], [], [])
    assert empty["length"] == 0 and math.isnan(empty["perplexity"])


def test_method_from_dict_and_labels():
    m = D.Method.from_dict({"method": "top_k", "top_k": 5.0, "temperature": 0.7, "top_p": 0.5})
    assert m.used() == {"kind": "top_k", "temperature": 0.7, "top_k": 5}  # top_p does not belong to top-k
    assert m.sampling().top_p is None and m.label() == "Top-k (T=0.7, k=5)"
    assert D.Method.from_dict({"kind": "greedy"}).sampling().is_greedy
    assert D.Method("sample", temperature=0.5).used() == {"kind": "sample", "temperature": 0.5}  # plain sampling
    assert D.Method("beam", num_beams=3, length_penalty=0.5).label() == "Beam search (width=3, lp=0.5)"
    with pytest.raises(ValueError, match="unknown method"):
        D.Method.from_dict({"kind": "magic"})
    with pytest.raises(ValueError, match="unknown setting"):
        D.Method.from_dict({"kind": "greedy", "warmth": 3})
    with pytest.raises(ValueError, match="temperature"):
        D.Method.from_dict({"kind": "sample", "temperature": -1})
    with pytest.raises(ValueError, match="num_beams"):
        D.Method.from_dict({"kind": "beam", "num_beams": 0})


def test_columns_reproduce_the_plain_decoders(model):
    prompt = [1, 2, 3]
    greedy = D.Column(model, prompt, D.Method("greedy"), 12).run()
    assert greedy.tokens == generate(model, prompt, 12, greedy=True)
    top_p = D.Method("top_p", temperature=0.9, top_p=0.8)
    a = D.Column(model, prompt, top_p, 12, seed=5).run()
    b = D.Column(model, prompt, top_p, 12, seed=5).run()
    assert a.tokens == b.tokens == generate(model, prompt, 12, temperature=0.9, top_p=0.8, seed=5)
    beam = D.Column(model, prompt, D.Method("beam", num_beams=3), 12).run()
    assert beam.tokens == beam_search(model, prompt, 12, num_beams=3).tokens
    assert len(beam.trace) == 12 and all(s.token in s.candidates for s in beam.trace)
    m = beam.metrics()
    assert m["length"] == 12 and m["perplexity"] > 1 and m["tokens_per_s"] > 0


def test_column_metrics_are_under_the_model(model):
    col = D.Column(model, [4, 5], D.Method("sample", temperature=1.5, top_k=None, top_p=None, min_p=None), 10,
                   seed=1).run()
    seq = [4, 5] + col.tokens
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq[:-1]]))
    logp = torch.log_softmax(logits[0, 1:], -1).gather(-1, torch.tensor(seq[2:])[:, None])[:, 0]
    m = col.metrics()
    assert math.isclose(m["mean_logprob"], float(logp.mean()), abs_tol=1e-4)
    assert math.isclose(m["perplexity"], math.exp(-float(logp.mean())), rel_tol=1e-4)


def test_columns_advance_in_step_and_stop(model):
    cols = [D.Column(model, [1], D.Method("greedy"), 5), D.Column(model, [1], D.Method("beam", num_beams=2), 3)]
    rounds = 0
    while any([c.advance() for c in cols]):
        rounds += 1
    assert rounds == 5 and len(cols[0].tokens) == 5 and len(cols[1].tokens) == 3
    assert not cols[0].advance()


def test_sample_n_and_sweep(model):
    s = D.sample_n(model, [1, 2], D.Method("sample", temperature=1.2, top_k=None, top_p=None, min_p=None), 4, 8,
                   seed=0)
    assert len(s.texts) == 4 and s.summary["unique"] >= 2 and 0 < s.summary["distinct_2"] <= 1
    again = D.sample_n(model, [1, 2], D.Method("sample", temperature=1.2, top_k=None, top_p=None, min_p=None), 4, 8,
                       seed=0)
    assert again.texts == s.texts
    g = D.sample_n(model, [1, 2], D.Method("greedy"), 3, 8)
    assert g.summary["unique"] == 1
    pts = D.sweep(model, [1, 2], [D.Method("greedy"), D.Method("top_k", top_k=5)], [0.5, 1.5], n=2, max_new_tokens=6)
    assert [(p["method"], p["temperature"]) for p in pts] == [("greedy", None), ("top_k", 0.5), ("top_k", 1.5)]
    hot, cold = pts[2], pts[1]
    assert hot["distinct_2"] >= cold["distinct_2"] - 0.5 and all(p["perplexity"] > 1 for p in pts)
    with pytest.raises(ValueError, match="samples"):
        D.sample_n(model, [1], D.Method("greedy"), D.MAX_SAMPLES + 1, 4)
    with pytest.raises(ValueError, match="limit"):
        D.sweep(model, [1], [D.Method("sample")], [1.0] * 30, n=8)


# --- figures -------------------------------------------------------------------------------

EVIL = ["<script>alert(1)</script>", "&amp;", "<img src=x onerror=alert(1)>"]


def test_token_spans_bucket_by_probability():
    spans = figs.token_spans(EVIL, [0.95, 0.3, 0.01])
    assert spans == [(EVIL[0], "p ≥ 0.9"), (EVIL[1], "0.2–0.5"), (EVIL[2], "p < 0.05")]  # text stays data
    assert set(figs.COLOR_MAP) == {b[0] for b in figs.BUCKETS}


def test_candidates_figure_shows_cuts_and_the_chosen_one():
    stages = {"model": [0.5, 0.3, 0.2], "top_k": [0.625, 0.375, 0.0]}
    fig = figs.candidates_figure(EVIL, stages, {"model": 40, "top_k": 2}, 1, "step 1")
    assert len(fig.data) == 2 and fig.layout.barmode == "group"
    assert list(fig.data[1].y) == [0.625, 0.375, 0.0] and fig.data[1].text[2] == "cut"
    assert "2 kept" in fig.data[1].name
    assert "★" in fig.data[0].x[1] and "★" not in fig.data[0].x[0]
    assert all("<script" not in x and "<img" not in x for x in fig.data[0].x)


def test_entropy_beam_tree_and_sweep_figures(model):
    fig = figs.entropy_figure([("greedy", [1.0, 2.0], [0.5, 0.4]), ("beam", [3.0], [0.2])])
    assert [list(t.y) for t in fig.data] == [[1.0, 2.0], [3.0]]
    col = D.Column(model, [1], D.Method("beam", num_beams=2), 4).run()
    res = col.beam.result()
    nodes = [dict(id=n.id, step=n.step, parent=n.parent, score=n.score, final_score=n.final_score,
                  label="<b>x</b>") for n in col.beam.nodes]
    tree = figs.beam_tree_figure(nodes, res.path)
    marks = tree.data[2]
    assert len(marks.x) == len(nodes) and "<b>" not in marks.text[0]
    assert sum(1 for s in marks.marker.symbol if s == "square") == sum(n["final_score"] is not None for n in nodes)
    assert len([v for v in tree.data[1].x if v is None]) == len(res.path) - 1  # the best path, edge by edge
    pts = [dict(label="Top-k", method="top_k", temperature=0.5, perplexity=3.0, distinct_2=0.4),
           dict(label="Top-k", method="top_k", temperature=1.5, perplexity=9.0, distinct_2=0.9),
           dict(label="Greedy", method="greedy", temperature=None, perplexity=2.0, distinct_2=0.1)]
    sw = figs.sweep_figure(pts)
    assert [t.name for t in sw.data] == ["Top-k", "Greedy"] and list(sw.data[0].x) == [0.4, 0.9]
    assert list(sw.data[0].text) == ["T=0.5", "T=1.5"]


def test_columns_decoded_together_pick_as_they_would_alone(model):
    """`D.columns` decodes the sampling columns as one batch (one forward per step for all of
    them): each picks the same tokens as it does alone (same seed), a column that stops at the
    end-of-text token stops while the others go on, and a beam column runs on its own."""
    prompt = [1, 2, 3]
    methods = [D.Method("greedy"), D.Method("top_p", temperature=0.9, top_p=0.8), D.Method("sample", temperature=1.3),
               D.Method("min_p", min_p=0.05, repetition_penalty=1.3), D.Method("beam", num_beams=2)]
    alone = [D.Column(model, prompt, m, 16, seed=7, top=5).run() for m in methods]
    eot = alone[2].tokens[4]  # the plain sampler meets it by its fifth token; the others may not
    alone_eot = [D.Column(model, prompt, m, 16, seed=7, eot_id=eot, top=5).run() for m in methods]
    for want, eot_id in ((alone, None), (alone_eot, eot)):
        together = D.columns(model, prompt, methods, 16, seeds=[7] * 5, eot_id=eot_id, top=5)
        assert [c._row is not None for c in together] == [True] * 4 + [False]
        rounds = 0
        while any([c.advance() for c in together]):  # the lab's loop: one step of each per round
            rounds += 1
        for a, b in zip(want, together):
            assert b.tokens == a.tokens and b.done
            assert [s.candidates for s in b.trace] == [s.candidates for s in a.trace]
            assert b.times == sorted(b.times) and (b.beam is not None or all(s.dt > 0 for s in b.trace))
        assert rounds == max(len(c.tokens) for c in together)
    assert len(alone_eot[2].tokens) == 5 and alone_eot[2].tokens[-1] == eot
    assert any(len(c.tokens) > 5 for c in alone_eot[:4])  # the batch went on after a row stopped
    with pytest.raises(ValueError, match="one seed per method"):
        D.columns(model, prompt, methods, 4, seeds=[1])


def test_sample_n_decodes_its_samples_together(model):
    m = D.Method("top_k", temperature=1.2, top_k=8)
    s = D.sample_n(model, [4, 5], m, 5, 10, seed=3)
    assert s.texts == [D.Column(model, [4, 5], m, 10, seed=3 + i, top=1).run().tokens for i in range(5)]
