"""The Embeddings tab: `/embeddings` through a real server (gradio_client), the private
views' handlers in process (neighbours, positions, contextual, over training), and a
browser check that a search typed as markup stays text."""

import base64
import csv
import json

import numpy as np
import pytest
import torch

from app import build_app, make_context
from app.catalog import BUNDLED_KEY
from core import checkpoint
from core.inspect import embeddings as emb
from tests.conftest import make_model

XSS = "<img src=x onerror=alert(1)>"


def handler(demo, name: str):
    fns = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]
    assert len(fns) == 1, f"expected one event running {name}, found {len(fns)}"
    return fns[0]


def arr(v) -> np.ndarray:
    """A plotly JSON array (a list, or a base64 typed array) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


@pytest.fixture(scope="module")
def bpe_ck(tiny_bpe_ckpt):
    return checkpoint.load(tiny_bpe_ckpt)


def test_embeddings_endpoint_draws_every_token(client, bpe_ck):
    V = bpe_ck.config.vocab_size
    plot, summary, csv_file = client.predict(BUNDLED_KEY, "2D", "", api_name="/embeddings")
    fig = json.loads(plot["plot"])
    traces = [t for t in fig["data"] if t.get("customdata") is not None]
    assert {t["type"] for t in traces} == {"scattergl"}  # WebGL
    ids = np.concatenate([arr(t["customdata"]) for t in traces])
    assert sorted(ids.tolist()) == list(range(V))  # every token once: nothing sampled
    assert "every token drawn" in summary and "recall@10" in summary
    p = emb.pca(bpe_ck.model.transformer.wte.weight, 3)
    assert f"PC1 {100 * p.explained[0]:.1f}%" in summary
    assert "PC1 (" in fig["layout"]["xaxis"]["title"]["text"]
    # the CSV holds the same coordinates for every id
    with open(csv_file, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "token", "class", "pc1", "pc2", "pc3"] and len(rows) == V + 1
    got = np.array([[float(x) for x in r[3:]] for r in rows[1:]])
    np.testing.assert_allclose(got, p.coords, rtol=1e-3, atol=1e-4)
    assert {r[2] for r in rows[1:]} <= set(emb.CLASS_NAMES)


def test_embeddings_endpoint_3d_and_search(client, bpe_ck):
    plot, summary, _ = client.predict(BUNDLED_KEY, "3D", "th", api_name="/embeddings")
    fig = json.loads(plot["plot"])
    assert {t["type"] for t in fig["data"]} == {"scatter3d"}
    labels = emb.token_labels(bpe_ck.tokenizer, bpe_ck.config.vocab_size)
    want = [i for i, s in enumerate(labels) if "th" in s.casefold()]
    match = next(t for t in fig["data"] if t["name"].startswith("matches"))
    assert sorted(arr(match["customdata"]).tolist()) == want and want
    assert f"{len(want):,} tokens contain" in summary
    # markup in the search is echoed as text (escaped for Markdown), and the server keeps serving
    _, summary, _ = client.predict(BUNDLED_KEY, "2D", XSS, api_name="/embeddings")
    assert "<img" not in summary and "&lt;img" in summary


def test_neighbours_positions_and_contextual_handlers(tiny_bpe_ckpt, bpe_ck, tmp_path):
    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tiny_bpe_ckpt, cache_dir=tmp_path / "cache")
    demo = build_app(ctx)
    E = bpe_ck.model.transformer.wte.weight.detach()
    rows, note = handler(demo, "neighbours")(BUNDLED_KEY, "#5 - #6 + #7", 10)
    q = E[5] - E[6] + E[7]
    cos = (E @ q) / (E.norm(dim=1) * q.norm())
    cos[[5, 6, 7]] = -2
    top = torch.topk(cos, 10)
    assert [r[2] for r in rows] == top.indices.tolist()  # the brute force, in order
    assert [r[3] for r in rows] == pytest.approx(top.values.tolist(), abs=1e-4)
    heat, curve = handler(demo, "positional")(BUNDLED_KEY, "2D")
    T = bpe_ck.config.block_size
    assert arr(heat.data[0].z).reshape(-1).size == T * T
    assert len(arr(curve.data[0].x)) == T
    layer_fig, paths_fig, slider, text, csv_path = handler(demo, "contextual")(BUNDLED_KEY, "to be or not", 1)
    n, L = len(bpe_ck.tokenizer.encode("to be or not")), bpe_ck.config.n_layer
    assert len(layer_fig.data[0].x) == n and slider["maximum"] == L
    assert sum(x is not None for x in paths_fig.data[0].x) == n * (L + 1)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n * (L + 1)
    at_layer = [r for r in rows if r["layer"] == "1"]
    np.testing.assert_allclose([float(r["layer_pc1"]) for r in at_layer], arr(layer_fig.data[0].x), rtol=1e-4,
                               atol=1e-5)
    import gradio as gr

    with pytest.raises(gr.Error, match="2,000"):
        handler(demo, "contextual")(BUNDLED_KEY, "x" * 2001, 1)


def test_over_training_aligns_a_runs_checkpoints(tmp_path, bpe_tokenizer):
    V = bpe_tokenizer.vocab_size
    runs = tmp_path / "runs"
    early, late = make_model(V, seed=3), make_model(V, seed=3)
    with torch.no_grad():
        late.transformer.wte.weight.add_(0.5 * torch.randn_like(late.transformer.wte.weight))
    checkpoint.save(runs / "r1" / "best", early, bpe_tokenizer, {"step": 100})
    checkpoint.save(runs / "r1" / "latest", late, bpe_tokenizer, {"step": 200})
    checkpoint.save(runs / "r2" / "best", late, bpe_tokenizer, {"step": 50})
    checkpoint.save(runs / "r2" / "latest", late, bpe_tokenizer, {"step": 50})
    ctx = make_context(runs_dir=runs, bundled=tmp_path / "none", cache_dir=tmp_path / "cache")
    over = handler(build_app(ctx), "over_training")
    fig, note = over("run:r1/latest")
    traces = [t for t in fig.data if t.customdata is not None]
    assert [t.name for t in traces] == ["best · step 100", "latest · step 200"]
    assert [s["label"] for s in fig.layout.sliders[0].steps] == [t.name for t in traces]
    assert len(arr(traces[0].x)) == V and "2 distinct" in note
    fig, note = over("run:r2/best")  # latest and best are the same weights: fewer than two to compare
    assert "Fewer than two distinct checkpoints" in note and "best = latest · step 50" in note
    fig, note = over("run:r1/best")  # any checkpoint of a run shows the whole run
    assert "2 distinct" in note


@pytest.mark.browser
def test_search_markup_stays_text(page, app_url):
    from playwright.sync_api import expect

    page.goto(app_url)
    page.get_by_role("tab", name="Embeddings").click()
    expect(page.locator("#emb-vocab-summary")).to_contain_text("every token drawn")
    box = page.get_by_label("Highlight tokens containing")
    box.fill(XSS)
    box.press("Enter")
    expect(page.locator("#emb-vocab-summary")).to_contain_text(f"contains “{XSS}”")
    expect(page.locator("#emb-vocab-summary img")).to_have_count(0)
    page.locator("#emb-vocab-plot").hover()  # plotly's own PNG download stays in the mode bar
    expect(page.locator('#emb-vocab-plot .modebar-btn[data-title="Download plot as a PNG"]')).to_have_count(1)
    assert page.dialogs == []
    assert page.external_requests == []


def test_over_training_loads_through_the_catalog_within_its_budget(tmp_path, bpe_tokenizer):
    V = bpe_tokenizer.vocab_size
    runs = tmp_path / "runs"
    for i, name in enumerate(("snapshots/step-100", "snapshots/step-200", "best", "latest")):  # where runs keep them
        checkpoint.save(runs / "r1" / name, make_model(V, seed=i), bpe_tokenizer, {"step": 100 * (i + 1)})
    ctx = make_context(runs_dir=runs, bundled=tmp_path / "none", cache_dir=tmp_path / "cache", max_resident=2)
    over = handler(build_app(ctx), "over_training")
    ctx.catalog.get("run:r1/latest")  # what the picker would have loaded; then the other three are read
    fig, note = over("run:r1/latest")
    assert "4 distinct" in note
    resident = ctx.catalog.resident()  # the run's checkpoints came through the catalog, two at most at once
    assert len(resident) == 2 and all(k.startswith("run:r1/") for k in resident)
