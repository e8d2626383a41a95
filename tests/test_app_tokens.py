"""The Tokens tab: `/tokenize` through a real server (gradio_client), the BPE lab's
handlers in process, and what a person sees in Debian Chromium (spans appear as you type;
markup typed into the box is shown as text and never runs)."""

import math

import pytest

from app import build_app, make_context
from app.catalog import BUNDLED_KEY
from app.tabs import tokens as tab
from core import checkpoint
from core.inspect.tokens import MAX_TEXT_CHARS, token_surprise

XSS = "<img src=x onerror=alert(1)>"
HARD = f"Hi  there\tyou\n👍🏽 日本語 & {XSS} <script>alert('x')</script>"


def handler(demo, name: str):
    """An event's function by name (private events have no API route to call)."""
    fns = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]
    assert len(fns) == 1, f"expected one event running {name}, found {len(fns)}"
    return fns[0]


@pytest.fixture(scope="module")
def bpe_ck(tiny_bpe_ckpt):
    return checkpoint.load(tiny_bpe_ckpt)


def test_tokenize_endpoint_on_hard_text(client, bpe_ck):
    d, spans, counts_md, ids_text, compare, *rows = client.predict(BUNDLED_KEY, HARD, "tokens",
                                                                   api_name="/tokenize")
    assert d["ids"] == bpe_ck.tokenizer.encode(HARD)
    assert ids_text == "[" + ", ".join(map(str, d["ids"])) + "]"
    c = d["counts"]
    assert (c["tokens"], c["chars"], c["bytes"]) == (len(d["ids"]), len(HARD), len(HARD.encode("utf-8")))
    assert c["words"] == len(HARD.split()) and math.isclose(c["chars_per_token"], len(HARD) / len(d["ids"]))
    # groups tile the text in order, each on real characters; none is a bare replacement character
    assert d["groups"][0]["start"] == 0 and d["groups"][-1]["end"] == len(HARD)
    for a, b in zip(d["groups"], d["groups"][1:]):
        assert a["end"] == b["start"] and a["tokens"][1] == b["tokens"][0]
    assert "".join(g["text"] for g in d["groups"]) == HARD
    assert all("\ufffd" not in g["shown"] for g in d["groups"])
    # the thumbs-up with its skin tone is one span carrying every id of its bytes
    thumb = next(g for g in d["groups"] if "👍" in g["text"])
    assert thumb["text"].strip("·") in ("👍🏽", " 👍🏽") and len(thumb["ids"]) >= 2
    # the page's spans: whitespace as glyphs, the markup as plain text
    shown = [s["token"] for s in spans]
    assert any("→" in s for s in shown) and any("↵" in s for s in shown) and any("·" in s for s in shown)
    assert XSS.replace(" ", "·") in "".join(shown)
    assert "| tokens |" in counts_md and f"{len(d['ids']):,}" in counts_md
    names = [r[0] for r in compare["data"]]
    assert names == list(tab.ROW_NAMES)
    char_row = compare["data"][1]
    assert char_row[2] == f"{len(HARD):,}"  # one token per code point
    assert len(rows) == 4 and [s["token"] for s in rows[0]] == shown  # values, not component updates
    gpt2 = d["compare"][3]
    assert gpt2["available"] or "unavailable" in gpt2["note"]


def test_surprise_overlay_is_the_models_loss(client, bpe_ck):
    text = "Speak, speak. You are all resolved rather to die than to famish?"
    d, spans, counts_md, *_ = client.predict(BUNDLED_KEY, text, "surprise", api_name="/tokenize")
    want = token_surprise(bpe_ck.model, bpe_ck.tokenizer.encode(text))
    assert d["surprise"][0] is None and want[0] is None
    assert d["surprise"][1:] == pytest.approx(want[1:], rel=1e-4, abs=1e-5)
    labels = [s["class_or_confidence"] for s in spans]
    assert labels[0] is None and all(0 <= x <= 1 for x in labels[1:])  # a 0..1 scale: red = surprised
    assert "perplexity" in counts_md


def test_bad_input_is_a_message_and_the_server_keeps_serving(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=f"{MAX_TEXT_CHARS:,}"):
        client.predict(BUNDLED_KEY, "x" * (MAX_TEXT_CHARS + 1), "tokens", api_name="/tokenize")
    with pytest.raises(AppError, match="unknown model"):
        client.predict("run:nope", "hi", "tokens", api_name="/tokenize")
    d, *_ = client.predict(BUNDLED_KEY, "still here", "tokens", api_name="/tokenize")
    assert d["counts"]["chars"] == len("still here")


def test_render_and_details_escape_nothing_and_show_every_token(tiny_bpe_ckpt, tmp_path):
    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tiny_bpe_ckpt, cache_dir=tmp_path / "cache")
    d = tab.analyze(ctx, BUNDLED_KEY, "a 👍🏽 b", "surprise")
    g = next(i for i, g in enumerate(d["groups"]) if "👍" in g["text"])
    head, rows = tab.details(d, g)
    i, j = d["groups"][g]["tokens"]
    assert [r[0] for r in rows] == d["ids"][i:j] and len(rows) >= 2  # one row per token of the character
    hexes = " ".join(r[2] for r in rows).split()
    assert bytes.fromhex("".join(hexes)).decode("utf-8") == d["text"][d["offsets"][i][0]:d["offsets"][j - 1][1]]
    assert r"U\+1F44D U\+1F3FD" in head  # the code points, markdown-escaped
    assert tab.details(d, 10**6)[1] == [] and tab.details(None, 0)[1] == []


def test_bpe_lab_handlers(tiny_bpe_ckpt, tmp_path, shakespeare_text):
    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tiny_bpe_ckpt, cache_dir=tmp_path / "cache")
    demo = build_app(ctx)
    train, step = handler(demo, "train_lab"), handler(demo, "step_view")
    corpus = shakespeare_text[:20_000]
    state, head, cpt, counts, merges, slider, spans, note = train("text", corpus, 300, "To be, or not to be")
    n = 300 - 257
    assert len(merges) == n == len(state["counts"]) and "300" in head
    assert [m[0] for m in merges] == list(range(1, n + 1))
    assert all(a >= 1 for a in state["counts"]) and state["counts"][0] == max(state["counts"])
    xs = list(cpt.data[0].x)
    assert xs[0] == 257 and xs[-1] == 300 and list(cpt.data[0].y) == sorted(cpt.data[0].y)  # more merges, longer tokens
    spans0, _ = step(state, "To be, or not to be", 0)
    spans_n, text_n = step(state, "To be, or not to be", n)
    assert len(spans0) == len(b"To be, or not to be") > len(spans_n)  # bytes, then merged
    assert f"After **{n:,}**" in text_n
    # the trained BPE joins the side-by-side rows
    d = tab.analyze(ctx, BUNDLED_KEY, "to be or not", lab=state)
    assert d["compare"][2]["available"] and d["compare"][2]["vocab_size"] == 300


def test_offline_gpt2_row_says_unavailable_without_touching_the_network(tiny_bpe_ckpt, tmp_path, monkeypatch):
    import socket

    def no_network(sock, address):
        raise AssertionError(f"tried to reach {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tiny_bpe_ckpt, cache_dir=tmp_path / "cache",
                       hub_cache_dir=tmp_path / "hf")
    d = tab.analyze(ctx, BUNDLED_KEY, "hello")
    assert d["compare"][3]["available"] is False and "unavailable" in d["compare"][3]["note"]


@pytest.mark.browser
def test_typing_shows_spans_and_markup_stays_text(page, app_url, bpe_ck):
    from playwright.sync_api import expect

    from core.inspect import tokens as T

    def expected(text):
        v = T.tokenize(bpe_ck.tokenizer, text)
        return [T.visible(v.group_text(g)) for g in range(len(v.groups))]

    page.goto(app_url)
    page.get_by_role("tab", name="Tokens").click()
    box = page.get_by_label("Text", exact=True)
    spans = page.locator("#tokens-spans").get_by_role("button")
    box.fill("hello world")
    expect(spans).to_have_text(expected("hello world"))  # one button per span, whitespace as ·
    expect(page.locator("#tokens-counts")).to_contain_text("11")  # characters
    box.fill(XSS)
    expect(spans).to_have_text(expected(XSS))  # the markup, drawn as text
    assert "".join(spans.all_inner_texts()) == XSS.replace(" ", "·")
    expect(page.locator("#tokens-spans img")).to_have_count(0)
    spans.first.click()  # details of the first token: its id is in the table
    expect(page.get_by_text("Span 1 of")).to_be_visible()
    assert page.dialogs == []
    assert page.external_requests == []
