"""app.figures.attention: what the figures hold (read from fig.data / fig.layout), that user
text stays text, and the payload budgets at GPT-2 size (12 layers × 12 heads, 1024 tokens)."""

import base64
import json

import numpy as np
import pytest
import torch

from app.figures import attention as F
from core.inspect import attention as A
from tests.conftest import make_model

XSS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "&amp;", "<b>b</b>"]


def causal(T: int, seed: int = 0) -> torch.Tensor:
    """A random causal attention pattern (T, T): rows sum to 1, zeros above the diagonal."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(T, T, generator=g).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1)


def no_raw_tags(fig) -> None:
    text = fig.to_json()
    for bad in ("<script", "<img", "\\u003cscript", "\\u003cimg"):
        assert bad not in text


def test_grid_labels_masks_and_clicks():
    p = torch.stack([torch.stack([causal(10, l * 3 + h) for h in range(3)]) for l in range(2)])
    thumbs, f = A.pool(p, 64)
    stat = np.arange(6, dtype=np.float32).reshape(2, 3)
    fig = F.attention_grid(thumbs, f, 10, stat, "entropy", focus=(1, 2))
    heads = [t for t in fig.data if t.type == "heatmap"]
    assert [t.name for t in heads] == [f"L{l} H{h}" for l in range(2) for h in range(3)]
    # the click hook finds the head under any point of a tile (its masked half and title too) from this geometry
    assert fig.layout.meta == {"view": "grid", "step": 13.0, "P": 10, "gap": 3.0, "L": 2, "nh": 3}
    z = np.asarray(heads[5].z)
    upper = np.triu_indices(10, 1)
    assert np.isnan(z[upper]).all()  # the future is masked (a gap), not a zero weight
    assert np.allclose(z[np.tril_indices(10)], p[1, 2].numpy()[np.tril_indices(10)])
    assert [a.text for a in fig.layout.annotations][:2] == ["L0 H0 · 0.00", "L0 H1 · 1.00"]
    assert "grey = masked" in fig.layout.title.text and "pooled" not in fig.layout.title.text
    assert any(s.line.color == "#f59e0b" for s in fig.layout.shapes)  # the focused head is framed
    assert fig.data[-1].marker.colorbar.title.text == "entropy (range 0–5)"  # no fixed scale: the range is said
    fixed = F.attention_grid(thumbs, f, 10, stat / 100, "induction", stat_range=(0.0, 1.0))
    bar = fixed.data[-1].marker
    assert (bar.cmin, bar.cmax) == (0.0, 1.0) and bar.colorbar.title.text == "induction"  # noise near 0 stays dark


def test_focused_head_and_token_labels_are_text():
    labels = ["a"] + XSS + ["z"]
    T = len(labels)
    fig = F.focused_head(np.where(np.triu(np.ones((T, T), bool), 1), np.nan, causal(T).numpy()), labels, 1, "L0 H1")
    hm = fig.data[0]
    assert fig.layout.meta == {"view": "head"}
    assert list(hm.x) == list(hm.y) and hm.x[1] == "1 &lt;script&gt;alert(1)&lt;/script&gt;"
    assert hm.x[3] == "3 &amp;amp;"  # plotly shows the entity literally: the user sees "&amp;"
    assert "%{z:.6f}" in hm.hovertemplate  # the exact weight on hover
    assert np.isnan(np.asarray(hm.z)[0, 1]) and "click it" in fig.layout.title.text
    no_raw_tags(fig)
    strip = F.token_strip(labels, causal(T).numpy()[3], 3)
    assert [t for t, _ in strip] == labels and strip[4][1] is None and max(w for _, w in strip[:4]) == 1.0
    no_raw_tags(F.query_heads(np.tile(causal(T).numpy()[None, None], (2, 2, 1, 1))[:, :, 3], labels, 3, (0, 1)))


def test_equation_lens_compare_and_ablation_figures():
    model = make_model(40, n_layer=2, n_head=2)
    ids = [1, 5, 7, 1, 5, 9, 3]
    labels = ["<script>", "b", "c&d", "<img src=x onerror=alert(1)>", "e", "f", "g"]
    an = A.analyse(model, ids, 1, 0, 3, induction=False)
    eq_fig = F.equation_figure(an.equation, labels)
    assert list(eq_fig.data[1].y) == pytest.approx(an.equation.weights[:4].tolist())  # softmax over the 4 visible keys
    assert "3 later keys masked" in eq_fig.layout.title.text
    md = F.equation_markdown(an.equation, labels)
    assert "<img" not in md and "&lt;img" in md and "softmax(QKᵀ / √d)" in md
    rows = F.equation_rows(an.equation, labels)
    assert len(rows) == 4 and sum(r[4] for r in rows) == pytest.approx(1.0, abs=1e-5) and rows[3][1] == labels[3]
    lens = F.logit_lens(an.lens, labels, lambda i: labels[i % len(labels)])
    assert list(lens.data[0].y) == ["embedding", "after L0", "after L1"]
    no_raw_tags(eq_fig), no_raw_tags(lens)
    js = F.divergence_grid(np.zeros((2, 2)), "<b>a</b>", "b")
    assert np.asarray(js.data[0].z).max() == 0 and "&lt;b&gt;" in js.layout.title.text
    bars = F.ablation_bars(labels[:3], np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5]), "t")
    assert [b.name for b in bars.data] == ["model", "head(s) ablated"] and bars.data[1].y[2] == 0.5
    no_raw_tags(bars)


def test_payload_budgets_at_gpt2_size():
    """12 layers × 12 heads at 1024 tokens: grid ≤ 2 MB, focused head ≤ 1.5 MB, both say they are pooled."""
    L = nh = 12
    T = 1024
    p = causal(T)
    side = A.grid_side(L, nh)
    one, f = A.pool(p, side)
    # every head's thumbnail, each a little different (so the payload is not one repeated block)
    rng = np.random.default_rng(0)
    thumbs = np.clip(one[None, None] * rng.uniform(0.5, 1.5, (L, nh, 1, 1)), 0, 1).astype(np.float32)
    grid = F.attention_grid(thumbs, f, T, rng.random((L, nh)), "entropy", (3, 4))
    size = F.payload_bytes(grid)
    assert size <= 2_000_000, size
    assert f > 1 and f"pooled: each cell is the max of {f}×{f} tokens" in grid.layout.title.text
    assert np.isnan(np.asarray(grid.data[0].z)[0, 1])
    focus, ff = A.pool(p, A.FOCUS_SIDE)
    labels = [f"<t{i}>" for i in range(T)]
    head = F.focused_head(focus, labels, ff, "L3 H4 on 1024 tokens")
    assert F.payload_bytes(head) <= 1_500_000
    assert ff == 3 and "pooled" in head.layout.title.text and head.data[0].x[0] == "0–2"
    # payload_bytes is what Gradio sends: the figure's JSON, itself sent as a JSON string
    assert F.payload_bytes(head) == len(json.dumps(head.to_json()).encode())


def test_unvalidated_figures_carry_what_validation_used_to_add():
    """The builders skip plotly's validation: titles must be {"text": ...}, named colour scales
    plotly.py's own stops (plotly.js has other scales under those names), every axis must make
    room for its labels, NaN (masked) cells must reach the browser as null."""
    from app.figures import colorscale, figure

    fig = figure([dict(type="bar", x=[1], y=[2], xaxis="x2", yaxis="y2")], "t", 300,
                 xaxis=dict(domain=[0, 0.4]), xaxis2=dict(domain=[0.6, 1], anchor="y2"), yaxis2=dict(anchor="x2"))
    lay = json.loads(fig.to_json())["layout"]
    assert all(lay[a]["automargin"] is True for a in ("xaxis", "yaxis", "xaxis2", "yaxis2"))
    assert lay["xaxis"]["domain"] == [0, 0.4] and lay["xaxis2"]["anchor"] == "y2" and lay["title"]["text"] == "t"
    greens = colorscale("Greens")
    assert greens[0] == [0.0, "rgb(247,252,245)"] and greens[-1] == [1.0, "rgb(0,68,27)"]  # light → dark
    assert colorscale(F.ATTN_SCALE) is F.ATTN_SCALE

    labels = ["a", "<b>", "c"]
    p = np.where(np.triu(np.ones((3, 3), bool), 1), np.nan, causal(3).numpy())
    side = json.loads(F.side_by_side(p, p, labels, 1, "x<i>", "y", "both").to_json())
    assert side["layout"]["xaxis2"]["domain"] == [0.54, 1.0] and side["layout"]["xaxis2"]["automargin"]
    assert [t["xaxis"] for t in side["data"]] == ["x", "x2"]
    assert side["data"][1]["colorbar"]["title"]["text"] == "weight"
    assert side["layout"]["annotations"][0]["text"] == "x&lt;i&gt;"
    head = F.focused_head(p, labels, 1, "L0 H0")
    z = json.loads(head.to_json())["data"][0]["z"]  # a typed array on the wire; NaN stays NaN (a gap)
    cells = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.float32).reshape(3, 3)
    assert z["dtype"] == "f4" and np.isnan(cells[0, 1]) and cells[1, 0] == np.float32(p[1, 0])
    assert head.layout.xaxis.title.text == "key (attended to)" and head.layout.yaxis.automargin is True

    model = make_model(40, n_layer=2, n_head=2)
    an = A.analyse(model, [1, 5, 7, 1, 5], 0, 1, 3, induction=False)
    eq = json.loads(F.equation_figure(an.equation, labels + ["d", "e"]).to_json())["layout"]
    assert eq["xaxis"]["matches"] == "x2" and eq["yaxis"]["domain"] == [0.56, 1.0]
    assert eq["yaxis2"]["domain"] == [0.0, 0.44]
    lens = json.loads(F.logit_lens(an.lens, labels + ["d", "e"], str).to_json())["data"][0]
    assert lens["colorscale"] == greens and lens["colorbar"]["title"]["text"] == "p(top)"
    js = json.loads(F.divergence_grid(np.full((2, 2), 0.5), "a", "b").to_json())["data"][0]
    assert js["colorscale"][-1] == [1.0, "rgb(103,0,13)"]


# --------------------------------------------------------------------------------------
# Fig: what gr.Plot sends is what plotly.py would have sent


def _strict(text: str):
    """JSON as the browser's JSON.parse reads it: NaN or Infinity would be an error."""
    def bad(token):
        raise AssertionError(f"{token} in the JSON: JSON.parse would fail")
    return json.loads(text, parse_constant=bad)


def _meaning(v):
    """A figure's JSON with typed arrays decoded to lists and NaN/±inf as null (a gap), so that
    a typed array and the plain list of the same numbers compare equal."""
    if isinstance(v, dict):
        if "bdata" in v and set(v) <= {"dtype", "bdata", "shape"}:
            a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
            if "shape" in v:
                a = a.reshape([int(s) for s in v["shape"].split(",")])
            return _meaning(a.tolist())
        return {k: _meaning(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_meaning(x) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _every_figure() -> dict:
    """Every builder of every tab, on small realistic inputs (user text with markup, NaN
    masked cells, an infinite perplexity, pooled and unpooled patterns, 2-D and 3-D maps)."""
    from app.figures import decode as D
    from app.figures import embeddings as E
    from app.figures import model as M
    from app.figures import tokens as K
    from app.figures import train as R
    from core.inspect.embeddings import CLASS_NAMES

    rng = np.random.default_rng(0)
    figs = {}
    # attention
    p = torch.stack([torch.stack([causal(10, l * 3 + h) for h in range(3)]) for l in range(2)])
    thumbs, f = A.pool(p, 64)
    figs["grid"] = F.attention_grid(thumbs, f, 10, rng.random((2, 3)), "entropy <b>", focus=(1, 2))
    figs["grid plain"] = F.attention_grid(thumbs, f, 10)
    big, bf = A.pool(causal(40), 16)
    labels = ["a"] + XSS + ["z"]
    T = len(labels)
    pat = np.where(np.triu(np.ones((T, T), bool), 1), np.nan, causal(T).numpy())
    figs["head"] = F.focused_head(pat, labels, 1, "L0 H1")
    figs["head pooled"] = F.attention_heatmap(big, [f"t{i}" for i in range(40)], bf, "pooled", colorscale="Viridis")
    figs["side"] = F.side_by_side(pat, pat, labels, 1, "x<i>", "y", "both")
    figs["query"] = F.query_heads(np.tile(causal(T).numpy()[None, None], (2, 2, 1, 1))[:, :, 3], labels, 3, (0, 1))
    model = make_model(40, n_layer=2, n_head=2)
    an = A.analyse(model, [1, 5, 7, 1, 5, 9], 1, 0, 3, induction=False)  # one id per label
    figs["equation"] = F.equation_figure(an.equation, labels)
    figs["lens"] = F.logit_lens(an.lens, labels, lambda i: labels[i % T])
    figs["divergence"] = F.divergence_grid(rng.random((2, 2)), "<b>a</b>", "b")
    figs["ablation"] = F.ablation_bars(labels[:3], np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5]), "t")
    # decode
    figs["candidates"] = D.candidates_figure(XSS[:3], {"model": [0.5, 0.3, 0.2], "top_k": [0.625, 0.375, 0.0]},
                                             {"model": 40, "top_k": 2}, 1, "step 1")
    figs["entropy"] = D.entropy_figure([("greedy", [1.0, 2.0], [0.5, 0.4]), ("<b>beam</b>", [3.0], [0.2])])
    nodes = [dict(id=0, step=0, parent=-1, label="<s>", score=0.0, final_score=None),
             dict(id=1, step=1, parent=0, label="a", score=-0.5, final_score=None),
             dict(id=2, step=1, parent=0, label="&b", score=-1.0, final_score=-0.9),
             dict(id=3, step=2, parent=1, label="c", score=-1.25, final_score=-0.8)]
    figs["beam"] = D.beam_tree_figure(nodes, [0, 1, 3])
    figs["sweep"] = D.sweep_figure([
        dict(label="Top-k", temperature=0.5, perplexity=3.0, distinct_2=0.4),
        dict(label="Top-k", temperature=1.5, perplexity=float("inf"), distinct_2=0.9),
        dict(label="Greedy", temperature=None, perplexity=2.0, distinct_2=0.1)])
    # embeddings
    V = 50
    coords = rng.standard_normal((V, 3)).astype(np.float32)
    classes = rng.integers(0, len(CLASS_NAMES), V)
    words = [f"w{i}" for i in range(V - len(XSS))] + XSS
    for dims in (2, 3):
        figs[f"token map {dims}d"] = E.token_map(coords, classes, words, [0.3, 0.2, 0.1], dims=dims, highlight=[1, 7])
        figs[f"positional curve {dims}d"] = E.positional_curve(coords[:20], [0.5, 0.2, 0.1], dims=dims)
    figs["positional heatmap"] = E.positional_heatmap(np.corrcoef(rng.random((12, 5))), factor=2)
    figs["layer"] = E.layer_scatter(coords[:T, :2], labels, [0.4, 0.3], 1)
    figs["paths"] = E.layer_paths(rng.standard_normal((3, T, 2)), labels, [0.4, 0.3], layer=1)
    figs["over training"] = E.training_steps(rng.standard_normal((2, V, 2)), words, classes, ["best", "<b>late</b>"],
                                             [0.5, 0.0], [0.4, 0.3])
    # model, tokens, train
    figs["params"] = M.params_by_kind({"embedding": 300, "attention": 100, "norms": 0, "<b>odd</b>": 7})
    figs["chars per token"] = K.chars_per_token_curve(list(range(257, 1257)), np.linspace(1, 3, 1000).tolist())
    figs["merge counts"] = K.merge_counts([50, 20, 5], ["·t + h → ·th", "<a> + b", "&"])
    figs["loss"] = R.loss_curve([[1, 4.0], [2, float("nan")], [3, 3.0]], [[2, 3.5, 3.6], [4, 2.5, None]],
                                vocab_size=65, total_steps=10)
    figs["lr"] = R.lr_curve([[1, 1e-4], [2, 3e-4]], total_steps=10)
    figs["runs"] = R.compare_runs([{"name": "<img>", "evals": [[10, 3.0, 3.1]]}, {"name": "b", "losses": [[1, 4.0]]}])
    figs["no runs"] = R.compare_runs([])
    return figs


def test_every_figure_sends_what_plotly_would():
    """For every builder, the JSON gr.Plot sends (`Fig.to_json`) means what plotly.py's own
    `go.Figure(data, layout).to_json()` sends for the same input: same traces and layout, the
    template expanded as plotly expands it, NaN gaps and typed arrays included; and it is
    strict JSON (NaN or inf would break JSON.parse in the browser)."""
    from app.figures import Fig

    figs = _every_figure()
    for name, fig in figs.items():
        assert isinstance(fig, Fig), name
        ours = _strict(fig.to_json())
        theirs = _strict(fig.to_plotly().to_json())  # validated: a misspelt property would raise here
        assert _meaning(ours) == _meaning(theirs), name
    # the NaN (masked) cells arrive as gaps, and the big arrays as typed arrays (compact)
    z = json.loads(figs["grid"].to_json())["data"][5]["z"]
    cells = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.float32)
    assert z["dtype"] == "f4" and np.isnan(cells).any()
    sweep = json.loads(figs["sweep"].to_json())["data"][0]
    assert sweep["y"] == [3.0, None]  # an infinite perplexity is null, as plotly writes it
    # "none" is expanded the way plotly.py expands it; a figure without one gets plotly's default
    assert json.loads(figs["head"].to_json())["layout"]["template"] == json.loads(
        figs["head"].to_plotly().to_json())["layout"]["template"] != "none"
    assert "colorway" in json.loads(figs["params"].to_json())["layout"]["template"]["layout"]


def test_gradio_sends_a_fig_as_a_plotly_plot():
    import gradio as gr

    fig = _every_figure()["head"]
    out = gr.Plot().postprocess(fig)
    assert out.type == "plotly" and out.plot == fig.to_json()
    sent = _strict(out.plot)
    assert sent["layout"]["meta"] == {"view": "head"} and sent["data"][0]["type"] == "heatmap"


def test_fig_reads_like_a_plotly_figure():
    fig = F.focused_head(np.eye(3, dtype=np.float32), ["a", "b", "c"], 1, "t")
    assert fig.layout.meta == {"view": "head"} and fig.layout.meta.view == "head"
    assert fig.layout.xaxis.title.text == "key (attended to)" and fig.layout.xaxis["type"] == "category"
    assert fig.data[0].x == ("0 a", "1 b", "2 c")  # lists read as tuples, as plotly's do
    assert fig.layout.sliders is None and fig.data[0].marker is None  # unset: None
    assert isinstance(fig.data[0].z, np.ndarray) and fig.to_dict()["data"][0]["type"] == "heatmap"
    plotly_fig = fig.to_plotly()
    assert plotly_fig.layout.meta == fig.layout.meta and plotly_fig.data[0].x == fig.data[0].x
