"""The timeline (issue 18): a run's snapshots side by side. `/timeline` through a real server
gives, for every snapshot, the numbers each snapshot gives on its own (opened from the catalog
like any model); the figures draw what they are given, escaped; a small induction run's
best head rises on the timeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.figures import timeline as figures
from app.figures.attention import payload_bytes
from core import checkpoint, snapshots
from core.inspect import attention as A
from core.inspect import timeline as TL
from core.spec import RunSpec
from core.train import run
from tests.conftest import running_app

TINY = dict(corpus="induction", tokenizer="char", preset="custom", n_layer=2, n_head=2, n_embd=16, block_size=32,
            batch_size=4, lr=1e-2, warmup=2, eval_interval=10, eval_batches=2, sample_tokens=8, ckpt_interval=0,
            dtype="float32", device="cpu", threads=1)
TEXT = "ab kc | ab kc\nfg hij l | fg hij l\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("timeline") / "runs"
    assert run(RunSpec(**TINY, steps=24, snapshots=5, out=str(base / "tl")))["kind"] == "done"
    return base


def alone(ck, text: str) -> dict:
    """One snapshot's numbers, computed from it alone with the Attention tab's functions."""
    model, tok = ck.model.eval(), ck.tokenizer
    ids = tok.encode(text)[:model.config.block_size]
    with torch.no_grad():
        p = A.patterns(model, ids)
        probs = torch.softmax(model(torch.tensor([ids]))[0][0].float(), -1)
    # induction in context: weight on the token after an earlier copy of the query's last three tokens
    L, H, T = p.shape[0], p.shape[1], len(ids)
    total, rows = np.zeros((L, H)), 0
    for q in range(T):
        targets = [k for k in range(3, q) if q >= 2 and ids[k - 3:k] == ids[q - 2:q + 1]]
        if targets:
            total += p[:, :, q, targets].sum(-1).numpy()
            rows += 1
    assert rows >= TL.MIN_MATCHES  # TEXT repeats itself: no fallback to the random sequence
    return {"prev_token_score": A.prev_token_score(p), "entropy": A.normalised_entropy(p),
            "induction_score": total / rows,
            "true": probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy(),
            "top": [tok.display(int(i)) for i in probs[-1].topk(TL.TOP_K).indices]}


def test_timeline_api_equals_each_snapshot_on_its_own(runs, tmp_path):
    from gradio_client import Client

    from app import make_context

    ctx = make_context(runs_dir=runs, bundled=None, cache_dir=tmp_path / "cache")
    with running_app(ctx) as url:
        client = Client(url, verbose=False)
        out = client.predict("tl", TEXT, api_name="/timeline")
        default = client.predict("tl", "", api_name="/timeline")
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="there is no run named 'nope'"):
            client.predict("nope", TEXT, api_name="/timeline")
        with pytest.raises(AppError, match="is not allowed"):
            client.predict("../tl", TEXT, api_name="/timeline")
        # a snapshot opens in other tabs like any model
        keys = [m["key"] for m in client.predict(api_name="/models")]
        assert [k for k in keys if k.startswith("run:tl/step-")] == [f"run:tl/step-{s}" for s in
                                                                       snapshots.schedule(24, 5)]
        walk = client.predict("run:tl/step-0", TEXT, -1, api_name="/walkthrough")
        assert walk["tokens"]["ids"]
        assert client.predict("run:tl/step-24", api_name="/model_info")["source"] == "run"
    want = snapshots.schedule(24, 5)
    assert [s["step"] for s in out["snapshots"]] == want and out["induction_on"] == "text"
    meta = snapshots.read_meta(snapshots.folder(runs / "tl", 24))
    for snap in out["snapshots"]:
        ck = ctx.catalog.get(f"run:tl/step-{snap['step']}")  # the snapshot opened like any model
        mine = alone(ck, TEXT)
        for key in TL.TIMELINE_STATS:
            np.testing.assert_allclose(np.array(snap["stats"][key], dtype=float), mine[key], atol=1e-5)
        np.testing.assert_allclose(snap["true_token_probs"], mine["true"], atol=1e-5)
        assert [t["token"] for t in snap["top_next"]] == mine["top"]
        history = {h["step"]: h["loss"] for h in meta["history"]}
        assert snap["loss"] == history.get(snap["step"])  # None at step 0
        ev = min(meta["evals"], key=lambda e: (abs(e["step"] - snap["step"]), e["step"]))
        assert (snap["train_loss"], snap["val_loss"]) == (ev["train_loss"], ev["val_loss"])
    assert default["text"] == meta["excerpt"] and len(default["tokens"]) <= 32


def test_figures_draw_the_chosen_step_and_escape_token_labels(runs):
    tl = TL.build(TL.run_snapshots(runs / "tl"), TEXT)
    i = 2
    step = tl.steps[i]
    loss = figures.loss_at(tl, step, 16)
    assert any(s.x0 == step and s.line.dash == "dot" for s in loss.layout.shapes)
    heads = figures.head_stats(tl, step)
    assert len(heads.data) == 3 * 2 * 2  # three statistics × 2 layers × 2 heads
    assert list(heads.data[0].x) == tl.steps
    grid = figures.grid(tl, i)
    assert len([t for t in grid.data if t.type == "heatmap"]) == 4
    assert np.array_equal(np.asarray(grid.data[0].z), tl.views[i].thumbs[0, 0], equal_nan=True)
    probs = figures.true_token_probs(tl)
    assert np.asarray(probs.data[0].z).shape == (len(tl.steps), len(tl.labels) - 1)
    assert len(figures.embeddings(tl).data) >= len(tl.steps)
    v = tl.views[i]
    hostile = TL.StepView(**{**v.__dict__, "top": [("<script>alert(1)</script>&", 0.5)]})
    top = figures.top_next(hostile, "<b>")
    assert "<script>" not in top.to_json() and "&lt;script&gt;" in top.data[0].y[0]
    assert "Step" in figures.header(tl, i, 24) and payload_bytes(grid) < 200_000


def test_a_run_without_snapshots_says_how_to_get_them(tmp_path):
    with pytest.raises(ValueError, match="no snapshots"):
        TL.run_snapshots(tmp_path)


@pytest.mark.slow
def test_a_small_induction_run_grows_an_induction_head():
    """A 2-layer model on the induction corpus: its best head's induction score starts near 0 and
    rises on the timeline while the loss falls (the full preset is measured in bench/timeline.py)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        spec = RunSpec(corpus="induction", tokenizer="char", preset="custom", n_layer=2, n_head=4, n_embd=64,
                       block_size=64, steps=700, batch_size=32, lr=6e-3, min_lr=6e-3, warmup=20, optimizer="muon",
                       eval_interval=350, eval_batches=4, sample_tokens=0, ckpt_interval=0, snapshots=4, threads=1,
                       out=d)
        assert run(spec)["kind"] == "done"
        tl = TL.build(TL.run_snapshots(d), TL.default_text(d))
    best = figures.best_head(tl.views, "induction_score")
    assert best[0] < 0.15 and best[-1] > 0.3, best
    assert tl.views[-1].val_loss < tl.evals[0][2] - 0.2


def test_in_context_induction_targets_follow_an_earlier_copy_of_the_last_three_tokens():
    ids = [4, 5, 6, 7, 8, 4, 5, 6, 9]  # query 7 (…4 5 6) finds 4 5 6 at 0-2: target 3 (token 7)
    M = TL.context_targets(ids)
    assert M.nonzero().tolist() == [[7, 3]]
    assert TL.context_targets(ids, 2).nonzero().tolist() == [[6, 2], [7, 3]]
    p = torch.zeros(1, 2, 9, 9)
    p[0, 0, 7, 3], p[0, 1, 7, 6] = 0.75, 1.0
    scores, n = TL.context_induction(p, ids)
    assert n == 1 and scores.tolist() == [[0.75, 0.0]]


def test_a_text_that_does_not_repeat_falls_back_to_a_repeated_random_sequence(runs):
    snaps = TL.run_snapshots(runs / "tl")
    tl = TL.build(snaps, "abcdefghijkl")
    assert tl.induction_on == "a repeated random sequence"
    ck = checkpoint.load(snaps[-1][1])
    exclude = TL.induction_exclude(ck.tokenizer, ck.config.vocab_size)
    np.testing.assert_allclose(tl.views[-1].stats["induction_score"], A.measure_induction(ck.model, exclude=exclude))
