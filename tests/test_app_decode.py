"""The Decode tab through a real server (`/decode` with gradio_client), its handlers, and one
comparison in a real browser."""

import pytest

from app.tabs import decode as tab
from core.beam import beam_search
from core.generate import generate

XSS = "<script>alert(1)</script> & <img src=x onerror=alert(1)>"
COLUMNS = [{"kind": "greedy"}, {"kind": "top_k", "top_k": 3, "temperature": 0.9},
           {"kind": "beam", "num_beams": 3, "length_penalty": 1.0}]


@pytest.fixture(scope="module")
def key(app_ctx):
    return app_ctx.catalog.default_key()


def test_decode_endpoint(client, app_ctx, key):
    out = client.predict(key, "First Citizen:", COLUMNS, 12, 7, True, api_name="/decode")
    again = client.predict(key, "First Citizen:", COLUMNS, 12, 7, False, api_name="/decode")
    assert [c["ids"] for c in out["columns"]] == [c["ids"] for c in again["columns"]]  # same seed, same tokens
    ck = app_ctx.catalog.get(key)
    prompt = ck.tokenizer.encode("First Citizen:")
    greedy, top_k, beam = out["columns"]
    assert greedy["ids"] == generate(ck.model, prompt, 12, greedy=True, eot_id=ck.tokenizer.eot_id)
    assert beam["ids"] == beam_search(ck.model, prompt, 12, num_beams=3, eot_id=ck.tokenizer.eot_id).tokens
    assert top_k["method"] == {"kind": "top_k", "temperature": 0.9, "top_k": 3}
    for c in out["columns"]:
        assert 1 <= len(c["ids"]) <= 12 and c["text"] == ck.tokenizer.decode(c["ids"])
        assert len(c["tokens"]) == len(c["probs"]) == len(c["steps"]) == c["metrics"]["length"]
        assert set(c["metrics"]) == {"length", "tokens_per_s", "ttft_s", "mean_logprob", "perplexity", "distinct_1",
                                     "distinct_2", "repeat_3gram"}
    assert all(s["rank"] <= 3 for s in top_k["steps"])  # top-k never leaves the 3 best
    assert all(s["stages"]["top_k"][3:] == [0.0] * (len(s["stages"]["top_k"]) - 3) for s in top_k["steps"])
    assert beam["beam"]["path"][0] == 0 and len(beam["beam"]["nodes"]) > 12
    assert "steps" not in again["columns"][0]
    # a different seed changes the sampled column, never greedy
    other = client.predict(key, "First Citizen:", COLUMNS[:2], 12, 8, False, api_name="/decode")
    assert other["columns"][0]["ids"] == greedy["ids"]


def test_decode_endpoint_errors_and_caps(client, key):
    from gradio_client.exceptions import AppError

    bad = [([{"kind": "magic"}], 5, "x", "unknown method"),
           ([{"kind": "greedy"}] * 5, 5, "x", "between 1 and 4 columns"),
           ([{"kind": "greedy"}], tab.MAX_NEW_TOKENS + 1, "x", "max_new_tokens"),
           ([{"kind": "greedy"}], 5, "x" * (tab.MAX_PROMPT_CHARS + 1), "limit is"),
           ([{"kind": "beam", "num_beams": tab.MAX_BEAMS + 1}], 5, "x", "num_beams"),
           ([{"kind": "top_p", "top_p": 2}], 5, "x", "top_p")]
    for cols, n, prompt, msg in bad:
        with pytest.raises(AppError, match=msg):
            client.predict(key, prompt, cols, n, 0, False, api_name="/decode")
    out = client.predict(key, XSS, [{"kind": "greedy"}], 3, 0, False, api_name="/decode")  # still serving
    assert len(out["columns"][0]["ids"]) == 3


def test_views_sample_and_sweep(app_ctx, key):
    r = tab.decode(app_ctx.catalog, key, XSS, COLUMNS, 6, 0, trace=True)
    cols = r["columns"]
    rows, ent, tree = tab.views(cols)
    assert [row[1] for row in rows] == [c["label"] for c in cols] and len(ent.data) == 3 and tree is not None
    md, fig = tab.step_view(cols[1], 2)
    assert "step 3" in md and len(fig.data) == len(cols[1]["steps"][2]["stages"])
    flat = []
    for c in COLUMNS:
        d = tab.SETTINGS_DEFAULTS | c
        flat += [d[k] for k in tab.SETTINGS]
    md, rows = tab.sample_view(app_ctx.catalog, key, "First", 5, 0, 1, 4, 3, *flat)
    assert len(rows) == 4 and [r[0] for r in rows] == [0, 1, 2, 3] and "× 4:" in md and "Top" in md
    with pytest.raises(ValueError, match="not shown"):
        tab.sample_view(app_ctx.catalog, key, "First", 5, 0, 3, 4, 3, *flat)
    fig, rows = tab.sweep_view(app_ctx.catalog, key, "First", 5, 0, ["greedy", "top_p"], "0.5, 1.5", 2)
    assert [(r[0], r[1]) for r in rows] == [("Greedy", None), ("Top-p (nucleus)", 0.5), ("Top-p (nucleus)", 1.5)]
    assert len(fig.data) == 2
    with pytest.raises(ValueError, match="temperatures"):
        tab.sweep_view(app_ctx.catalog, key, "First", 5, 0, ["top_p"], "hot", 2)


@pytest.mark.browser
def test_compare_in_the_browser(page, app_url):
    from playwright.sync_api import expect

    page.goto(app_url)
    page.get_by_role("tab", name="Decode").click()
    prompt = page.get_by_label("Prompt")
    prompt.fill(XSS)
    max_new = page.get_by_label("number input for Max new tokens")
    max_new.fill("8")
    max_new.press("Enter")
    page.get_by_role("button", name="Generate").click()
    metrics = page.locator("#dec-metrics")
    expect(metrics).to_contain_text("Greedy", timeout=60_000)
    expect(metrics).to_contain_text("Beam search", timeout=30_000)
    expect(page.locator("#dec-notice")).to_contain_text("column 3: ", timeout=30_000)
    tokens = page.locator("#dec-out-0 .token")
    expect(tokens.first).to_be_visible(timeout=30_000)
    assert 1 <= tokens.count() <= 8  # the max-new-tokens setting reached the server
    tokens.nth(1).click()
    expect(page.locator("#dec-step")).to_contain_text("Greedy, step", timeout=30_000)
    expect(page.locator("#dec-step")).to_contain_text("rank 1", timeout=30_000)
    expect(page.locator("#dec-step-plot .js-plotly-plot")).to_be_visible(timeout=30_000)
    expect(page.locator("#dec-tree .js-plotly-plot")).to_be_visible(timeout=30_000)
    assert page.dialogs == [] and page.external_requests == []
