"""The Walkthrough tab end to end: `/walkthrough` through a real server (gradio_client) on the
bundled demo model (assets/demo), a character-level model and a GPT-2-layout folder saved by
Hugging Face `transformers`; its numbers against the model's own; the served model unchanged
by the training step; and a real Chromium walking every stage with the keyboard, opening a
stage from a link, and following "open in the Attention tab"."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

from app.catalog import BUNDLED_KEY
from core.inspect import walkthrough as W
from tests.conftest import running_app

ROOT = Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the"
WAIT = 60_000  # ms for retrying assertions: two shared CPU cores, other servers busy


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_ckpt, bpe_tokenizer):
    """One server: the real demo model bundled, plus a char model and a GPT-2-layout folder."""
    import transformers
    from gradio_client import Client

    from app import make_context

    base = tmp_path_factory.mktemp("walk")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=bpe_tokenizer.vocab_size, n_positions=48, n_embd=32, n_layer=2, n_head=4)
    hf_dir = base / "tiny-gpt2"
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(hf_dir, safe_serialization=True)
    bpe_tokenizer.save(hf_dir)
    ctx = make_context(runs_dir=base / "runs", bundled=ROOT / "assets" / "demo", cache_dir=base / "cache")
    keys = {"bundled": BUNDLED_KEY, "char": ctx.catalog.add_path(str(tiny_ckpt)),
            "gpt2": ctx.catalog.add_path(str(hf_dir))}
    with running_app(ctx) as url:
        client = Client(url, verbose=False)
        yield type("Env", (), dict(url=url, ctx=ctx, client=client, keys=keys))


def call(env, key, text=TEXT, query=-1):
    return env.client.predict(key, text, query, api_name="/walkthrough")


def test_walkthrough_is_the_one_public_event_of_the_tab(env):
    api = env.client.view_api(print_info=False, return_format="dict")
    assert [n for n in api["named_endpoints"] if "walk" in n] == ["/walkthrough"]
    assert [p["parameter_name"] for p in api["named_endpoints"]["/walkthrough"]["parameters"]] == ["key", "text",
                                                                                                    "query"]


@pytest.mark.parametrize("which", ["bundled", "char", "gpt2"])
def test_endpoint_answers_with_the_models_own_numbers(env, which):
    key = env.keys[which]
    ck = env.ctx.catalog.get(key)
    before = {k: v.clone() for k, v in ck.model.state_dict().items()}
    d = call(env, key, TEXT, 3)
    ids = ck.tokenizer.encode(TEXT)[: ck.config.block_size]
    assert d["tokens"]["ids"] == ids and d["query"] == 3 and d["model"]["key"] == key
    assert [s["key"] for s in d["stages"]] == list(W.STAGE_KEYS)
    with torch.no_grad():
        logits = ck.model(torch.tensor([ids]))[0][0]
    probs = torch.softmax(logits, -1)
    top = torch.topk(probs[3], 10)
    assert [t["id"] for t in d["output"]["top"]] == top.indices.tolist()
    assert [t["prob"] for t in d["output"]["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    wte, wpe = ck.model.transformer.wte.weight, ck.model.transformer.wpe.weight
    assert d["embedding"]["sum"] == pytest.approx((wte[ids[3]] + wpe[3]).tolist(), abs=1e-5)
    ce = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    assert d["learn"]["losses"] == pytest.approx(ce.tolist(), abs=1e-4)
    step = d["learn"]["step"]
    assert step["loss_after"] < step["loss_before"] == pytest.approx(float(ce.mean()), abs=1e-4)
    assert len(step["top_grads"]) == 8 and step["top_grads"][0]["grad_norm"] >= step["top_grads"][-1]["grad_norm"]
    # one training step was taken, on a copy: the served model is bit for bit what it was
    assert all(torch.equal(before[k], v) for k, v in ck.model.state_dict().items())
    assert d == call(env, key, TEXT, 3)  # deterministic


def test_endpoint_errors_say_what_is_wrong(env):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="at least one token"):
        call(env, BUNDLED_KEY, "")
    with pytest.raises(AppError, match="20,000"):
        call(env, BUNDLED_KEY, "x" * 20_001)
    with pytest.raises(AppError, match="out of range"):
        call(env, BUNDLED_KEY, TEXT, 500)
    with pytest.raises(AppError, match="unknown model"):
        call(env, "run:nope/latest")


def test_long_text_is_cut_to_the_block_with_a_notice(env):
    d = call(env, env.keys["char"], "First Citizen: speak. " * 10)  # 220 characters; the char model reads 32
    assert d["truncated"] and d["n_tokens"] == 32 and d["n_tokens_in_text"] == 220


@pytest.mark.browser
def test_walk_every_stage_with_the_keyboard(env, page):
    from playwright.sync_api import expect

    page.goto(env.url)
    heading, rail = page.locator("#wt-heading"), page.locator("#wt-rail")
    expect(heading).to_contain_text("1 / 7 · Text → tokens → ids", timeout=WAIT)
    expect(page.locator("#wt-plot .js-plotly-plot")).to_be_visible(timeout=WAIT)
    page.locator("#wt-prose").click()  # the focus on the page, not in a text box
    for i, (_key, title) in enumerate(W.STAGES[1:], start=2):
        page.keyboard.press("ArrowRight")
        expect(heading).to_contain_text(f"{i} / 7 · {title}", timeout=WAIT)
        expect(rail.get_by_role("radio", name=f"{i}. {title}")).to_be_checked()
    expect(page.locator("#wt-next")).to_be_disabled()
    expect(page.locator("#wt-code")).to_contain_text(".backward()")
    page.keyboard.press("ArrowLeft")
    expect(heading).to_contain_text("6 / 7 · Pick and repeat", timeout=WAIT)
    rail.get_by_text("2. ids → vectors").click()  # the rail jumps
    expect(heading).to_contain_text("2 / 7 · ids → vectors", timeout=WAIT)
    expect(page.locator("#wt-code")).to_contain_text("nn.Embedding(config.vocab_size, config.n_embd)")
    # arrows typed in the text box move its cursor, not the stage
    page.locator("#wt-text textarea").press("ArrowRight")
    expect(heading).to_contain_text("2 / 7", timeout=WAIT)
    assert page.dialogs == [] and page.external_requests == []


@pytest.mark.browser
def test_a_link_opens_a_stage_and_text_then_the_attention_tab(env, page):
    from playwright.sync_api import expect

    text = "Speak, <img src=x onerror=alert(1)> speak!"
    page.goto(f"{env.url}?step=attention&text={quote(text)}&token=2")
    expect(page.locator("#wt-heading")).to_contain_text("3 / 7 · Inside one block", timeout=WAIT)
    expect(page.locator("#wt-text textarea")).to_have_value(text, timeout=WAIT)
    n = len(env.ctx.catalog.get(BUNDLED_KEY).tokenizer.encode(text))
    expect(page.locator("#wt-info")).to_contain_text(f"{n} tokens", timeout=WAIT)
    expect(page.locator("#wt-info")).to_contain_text("following token 2", timeout=WAIT)
    expect(page.locator("#wt-prose")).to_contain_text("6 heads", timeout=WAIT)
    page.locator("#wt-explore").click()
    expect(page.get_by_role("tab", name="Attention", exact=True)).to_have_attribute("aria-selected", "true",
                                                                                    timeout=WAIT)
    expect(page.locator("#attn-text textarea")).to_have_value(text, timeout=WAIT)
    expect(page.locator("#attn-query input")).to_have_value("2", timeout=WAIT)
    expect(page.locator("#attn-notice")).to_contain_text("query token 2 ", timeout=WAIT)  # rendered, not only typed
    assert page.dialogs == [] and page.locator("img[src='x']").count() == 0
    assert json.dumps(page.dialogs) == "[]" and page.external_requests == []
