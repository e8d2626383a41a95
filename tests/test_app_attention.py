"""The Attention tab end to end: `/attention` through a real server (gradio_client), the
compare and ablate handlers on a real catalog, the payload budget through the whole view at
GPT-2's shape, the newest render of a session winning (renders run two at a time), and a real
Chromium (type, open a head, go back, no script in a token runs)."""

import copy
import json
import re
import shutil
import threading

import gradio as gr
import numpy as np
import pytest
import torch

from app import build_app, make_context
from app.catalog import BUNDLED_KEY
from app.figures.attention import payload_bytes
from app.tabs import attention as tab
from core import checkpoint
from core.inspect import attention as A
from tests.conftest import free_port, make_model

TEXT = "First Citizen: speak, speak. All: speak!"
XSS_TEXT = "say <script>alert(1)</script> & <img src=x onerror=alert(1)> now"


def call(client, text, key=BUNDLED_KEY, layer=1, head=2, query=-1, view="grid", aggregate="rollout", color="entropy"):
    out = client.predict(key, text, layer, head, query, view, aggregate, color, api_name="/attention")
    assert len(out) == len(tab.OUTPUT_NAMES)
    return dict(zip(tab.OUTPUT_NAMES, out))


def test_attention_endpoint_through_a_real_server(client, tiny_bpe_ckpt):
    api = client.view_api(print_info=False, return_format="dict")
    assert [n for n in api["named_endpoints"] if "attention" in n] == ["/attention"]  # everything else is private
    params = api["named_endpoints"]["/attention"]["parameters"]  # users' scripts rely on these 8, in this order
    assert [p["label"] for p in params] == ["Model", "Text", "Layer", "Head", "Query token position (−1 = the last)",
                                            "Show", "Aggregation", "Colour the grid by"]
    assert len(api["named_endpoints"]["/attention"]["returns"]) == len(tab.OUTPUT_NAMES)

    ck = checkpoint.load(tiny_bpe_ckpt)
    ids = ck.tokenizer.encode(TEXT)
    r = call(client, TEXT)
    data = r["data"]
    assert (r["view"], r["layer"], r["head"], r["query"]) == ("grid", 1, 2, len(ids) - 1)
    assert data["tokens"] == [ck.tokenizer.display(i) for i in ids] and not data["truncated"]
    # the weights are the model's own attention probabilities (a row of the pattern: sums to 1)
    p = ck.model.trace(torch.tensor([ids]), keep="blocks.*.attn.pattern")["blocks.1.attn.pattern"][0, 2, -1]
    assert np.allclose(data["weights"], p.numpy(), atol=1e-6) and sum(data["weights"]) == pytest.approx(1.0)
    assert data["equation"]["weights"] == pytest.approx(data["weights"], abs=1e-6)
    assert data["equation"]["weights_err"] < 1e-5
    assert len(data["heads"]) == 2 * 4 and set(A.STATS) <= set(data["heads"][0])
    # the logit lens' last row is the model's own next-token prediction
    with torch.no_grad():
        probs = torch.softmax(ck.model(torch.tensor([ids]))[0][0], -1)
    lens = data["logit_lens"]
    assert lens["top_ids"][-1] == probs[lens["positions"]].argmax(-1).tolist()
    main = json.loads(r["main"]["plot"])
    assert [t["name"] for t in main["data"] if t["type"] == "heatmap"] == [f"L{l} H{h}" for l in range(2) for h in range(4)]

    head = call(client, TEXT, layer=0, head=3, query=2, view="head", aggregate="head_mean", color="none")
    assert (head["view"], head["query"], head["data"]["query"]) == ("head", 2, 2)
    assert json.loads(head["main"]["plot"])["layout"]["meta"] == {"view": "head"}

    long = call(client, TEXT * 40)  # longer than the block size (64 tokens): truncated, and it says so
    assert long["data"]["truncated"] and long["data"]["n_tokens"] == 64
    assert "only the first 64 are shown" in long["notice"]

    xss = call(client, XSS_TEXT)
    assert "".join(ck.tokenizer.token_bytes(i).decode("utf-8", "replace")
                   for i in ck.tokenizer.encode(XSS_TEXT)) == XSS_TEXT  # tokens come back as data
    assert "<script" not in xss["notice"] and "<img" not in xss["notice"]
    assert "<script" not in xss["eq_md"] and "<img" not in xss["eq_md"]

    with pytest.raises(Exception, match="at least one token"):
        call(client, "")
    with pytest.raises(Exception, match="unknown model"):
        call(client, TEXT, key="run:nope/latest")
    with pytest.raises(Exception, match="head 9 is out of range"):
        call(client, TEXT, head=9)


def test_compare_identical_checkpoints_and_ablate(tmp_path, tiny_bpe_ckpt):
    shutil.copytree(tiny_bpe_ckpt, tmp_path / "runs" / "twin" / "latest")
    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tiny_bpe_ckpt, cache_dir=tmp_path / "cache")
    md, grid, pair = tab.compare_view(ctx.catalog, BUNDLED_KEY, "run:twin/latest", TEXT, 1, 2)
    assert "**0.0000 bits**" in md and np.abs(np.asarray(grid.data[0].z)).max() < 1e-6
    assert np.array_equal(np.asarray(pair.data[0].z), np.asarray(pair.data[1].z), equal_nan=True)
    md, bars = tab.ablate_view(ctx.catalog, BUNDLED_KEY, TEXT, ["L1 H2", "L0 H0"], -1)
    assert "Ablated L1 H2, L0 H0: loss on the text" in md and len(bars.data[0].y) == 10
    with pytest.raises(ValueError, match="cannot read head 'H2'"):
        tab.ablate_view(ctx.catalog, BUNDLED_KEY, TEXT, ["H2"], -1)
    cache = tab.InductionCache()
    model = ctx.catalog.get(BUNDLED_KEY).model
    first = cache.get(model)
    assert cache.get(model) is first and np.array_equal(first, A.measure_induction(model))  # measured once
    assert tab.click_target("L3 H1") == ("head", 3, 1) and tab.click_target("back") == ("grid", None, None)


@pytest.mark.slow
def test_payload_budget_of_the_whole_view_at_gpt2_shape():
    """12 layers × 12 heads at 1024 tokens (narrow, so it is quick): the grid the tab sends
    is ≤ 2 MB, the focused head ≤ 1.5 MB, and the notice says both are pooled."""
    model = make_model(64, n_layer=12, n_head=12, n_embd=48, block_size=1024)

    class Labels:
        eot_id = None

        def display(self, i):
            return f"<t{i}>"

    ids = torch.randint(0, 64, (1024,), generator=torch.Generator().manual_seed(0)).tolist()
    prep = A.PreparedText(ids, [Labels().display(i) for i in ids], n_total=1500)
    r = tab.render_view(model, Labels(), prep, "k", 5, 7, -1, "grid", "head_mean", "entropy")
    assert payload_bytes(r["main"]) <= 2_000_000
    assert "Pooled to keep the page fast: the grid" in r["notice"] and "1,500 tokens" in r["notice"]
    an_focus = tab.figs.focused_head(*_focus(model, ids), "L5 H7")
    assert payload_bytes(an_focus) <= 1_500_000


def _focus(model, ids):
    p = model.trace(torch.tensor([ids]), keep="blocks.5.attn.pattern")["blocks.5.attn.pattern"][0, 7]
    z, f = A.pool(p, A.FOCUS_SIDE)
    return z, [f"<t{i}>" for i in ids], f


# --- the newest render a session started wins -----------------------------------------------

SKIPS = (gr.skip(),) * 3


def _render_in_thread(seen, values, fail=False):
    """Start a render that holds until released: (started, release, result holder, thread)."""
    started, release, out = threading.Event(), threading.Event(), {}

    def compute():
        started.set()
        assert release.wait(10)
        if fail:
            raise ValueError("stale error")
        return values

    def run():
        try:
            out["value"] = seen.newest_only(compute, 3)
        except ValueError as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(10)
    return release, out, t


def test_an_older_render_that_finishes_last_is_skipped():
    seen = copy.deepcopy(tab.RenderTickets())  # as Gradio makes each session's State
    release, typing, t = _render_in_thread(seen, ("grid",) * 3)  # the typing render starts first …
    assert seen.newest_only(lambda: ("head",) * 3, 3) == ("head",) * 3  # … a head click starts and lands
    release.set()
    t.join(10)
    assert typing["value"] == SKIPS  # … and the stale grid lands last: skipped, it redraws nothing

    # in order, each render keeps its values; a stale render's error is dropped, a current one's raised
    assert seen.newest_only(lambda: ("a",) * 3, 3) == ("a",) * 3
    release, failing, t = _render_in_thread(seen, None, fail=True)
    seen.newest_only(lambda: ("b",) * 3, 3)
    release.set()
    t.join(10)
    assert failing == {"value": SKIPS}
    with pytest.raises(ValueError, match="current error"):
        seen.newest_only(lambda: (_ for _ in ()).throw(ValueError("current error")), 3)


def test_a_typing_render_of_text_already_shown_is_skipped():
    """Gradio sends a deferred keystroke's render ~350 ms after the previous one lands, with the
    view it read before: it must not close a head clicked meanwhile with the same text."""
    seen = tab.RenderTickets()
    assert seen.newest_only(lambda: ("grid",) * 3, 3, text="abc", typing=True) == ("grid",) * 3
    assert seen.newest_only(lambda: ("head",) * 3, 3, text="abc") == ("head",) * 3  # a head click
    computed = []
    assert seen.newest_only(lambda: computed.append(1), 3, text="abc", typing=True) == SKIPS and not computed
    assert seen.is_newest(2)  # it took no ticket: the head click's render is still the newest
    assert seen.newest_only(lambda: ("new",) * 3, 3, text="abcd", typing=True) == ("new",) * 3  # new text: shown
    assert seen.newest_only(lambda: ("same",) * 3, 3, text="abcd") == ("same",) * 3  # others always render


def test_sessions_do_not_interfere_and_tickets_are_unique_across_threads():
    default = tab.RenderTickets()
    mine, theirs = copy.deepcopy(default), copy.deepcopy(default)
    assert mine is not theirs and mine.take() == 1 and theirs.take() == 1
    release, slow, t = _render_in_thread(mine, ("mine",) * 3)
    assert theirs.newest_only(lambda: ("theirs",) * 3, 3) == ("theirs",) * 3  # another session's render
    release.set()
    t.join(10)
    assert slow["value"] == ("mine",) * 3  # does not make mine stale

    taken, lock = [], threading.Lock()

    def take_many():
        got = [mine.take() for _ in range(2000)]
        with lock:
            taken.extend(got)

    threads = [threading.Thread(target=take_many) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(taken) == list(range(3, 3 + 8000))  # tickets 1, 2 went above: none lost, none repeated
    assert mine.is_newest(8002) and not mine.is_newest(8001)


def test_every_render_event_takes_a_ticket_and_the_api_always_answers(app_ctx, monkeypatch):
    """The tab's real handlers: a newer render starting while one computes makes the private
    renders return skips, never /attention (API callers get the full answer)."""
    demo = build_app(app_ctx)
    n = len(tab.OUTPUT_NAMES)
    renders = [f for f in demo.fns.values() if any(getattr(o, "elem_id", None) == "attn-main" for o in f.outputs)]
    assert len(renders) == 9  # submit, typing, its settle check, layer/head, view & co, head click, token click, back,
    # model
    assert all(len(f.outputs) == n and isinstance(f.inputs[-1], gr.State) for f in renders)  # all take tickets
    by_name = {f.fn.__name__: f for f in renders}
    assert {"answer", "live", "render", "clicked", "plot_clicked"} <= set(by_name)
    assert [f.fn.__name__ for f in renders if f.api_name == "attention"] == ["answer"]

    seen = tab.RenderTickets()
    real = tab.attention_view

    def newer_render_starts_meanwhile(*a, **k):
        seen.take()
        return real(*a, **k)

    monkeypatch.setattr(tab, "attention_view", newer_render_starts_meanwhile)
    args = (BUNDLED_KEY, TEXT, 1, 2, -1, "grid", "head_mean", "none", seen)
    full = by_name["answer"].fn(*args)
    assert len(full) == n and full[0] == "grid" and full[-1]["layer"] == 1  # the API: the full answer
    for f in renders:
        if f.fn.__name__ in ("render", "live"):
            assert f.fn(*args) == (gr.skip(),) * n, f.fn.__name__
    monkeypatch.setattr(tab, "attention_view", real)
    assert by_name["live"].fn(*args)[-1]["layer"] == 1  # nothing newer started: its values land
    head = (*args[:5], "head", *args[6:])
    assert by_name["plot_clicked"].fn(*head, gr.EventData(None, {"head": "L0 H1"}))[:3] == ("head", 0, 1)
    assert by_name["live"].fn(*args) == (gr.skip(),) * n  # typing, but the same text: the head stays open
    assert by_name["live"].fn(args[0], "", *args[2:])[3].startswith("⚠️")  # an empty text is a notice


def test_gradio_passes_a_sessions_own_state_object_to_each_call():
    """What `RenderTickets` relies on: one object per session, the same one on every call, and
    a State input is not an API parameter."""
    from gradio_client import Client

    with gr.Blocks() as demo:
        box, seen, out = gr.Textbox(), gr.State(tab.RenderTickets()), gr.Number()
        box.submit(lambda _text, s: s.take(), [box, seen], out, api_name="take")
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        one, two = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
        assert [one.predict("x", api_name="/take") for _ in range(3)] == [1, 2, 3]
        assert two.predict("x", api_name="/take") == 1  # another session: its own counter
        assert len(one.view_api(print_info=False, return_format="dict")["named_endpoints"]["/take"]["parameters"]) == 1
    finally:
        demo.close()


# --- a real browser -------------------------------------------------------------------------

POINT_JS = """([name, fx, fy]) => {
  const gd = document.querySelector('#attn-main .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  if (!name) return [r.left + xa._offset + fx * xa._length, r.top + ya._offset + fy * ya._length];
  const t = gd._fullData.find((d) => d.name === name), n = t.z.length;
  return [r.left + xa._offset + xa.l2p(t.x0 + fx * n), r.top + ya._offset + ya.l2p(t.y0 + fy * n)];
}"""


WAIT = 30_000  # ms: two shared CPU cores recompute every head on each change


def click_plot(page, name=None, fx=0.2, fy=0.8, tries=6):
    """Click a head's tile in the grid (by name) or a point of the large head (name None).
    Plotly redraws the plot element after an update lands, so locate it again until it holds still."""
    from playwright.sync_api import Error

    for attempt in range(tries):
        try:
            page.wait_for_timeout(250)  # let a redraw that is under way finish
            page.locator("#attn-main .js-plotly-plot").scroll_into_view_if_needed(timeout=5_000)
            x, y = page.evaluate(POINT_JS, [name, fx, fy])
            page.mouse.move(x, y)
            page.mouse.click(x, y)
            return
        except (Error, TypeError):  # detached mid-redraw, or the trace is not drawn yet
            if attempt == tries - 1:
                raise


@pytest.mark.browser
def test_browser_type_open_a_head_and_go_back(page, app_url, tiny_bpe_ckpt):
    from playwright.sync_api import expect

    n = len(checkpoint.load(tiny_bpe_ckpt).tokenizer.encode(XSS_TEXT))
    page.goto(app_url)
    page.get_by_role("tab", name="Attention").click()
    notice = page.locator("#attn-notice")
    expect(notice).to_contain_text("tokens", timeout=WAIT)
    box = page.locator("#attn-text").get_by_role("textbox")
    box.fill("")
    box.press_sequentially(XSS_TEXT, delay=5)  # typing updates the view (debounced)
    expect(notice).to_contain_text(f"{n} tokens", timeout=WAIT)
    grid_radio = page.get_by_role("radio", name="All heads (grid)")
    head_radio = page.get_by_role("radio", name="Selected head, large")
    expect(grid_radio).to_be_checked(timeout=WAIT)

    # a click on a thumbnail opens that head large, once, even right after a keystroke: the
    # keystroke's grid render (sent after DEBOUNCE_JS's 350 ms, so after the click's) shows the
    # same text and is skipped (`RenderTickets`; before it, that grid closed the head again)
    page.wait_for_timeout(1_000)  # the typing's last renders land: the grid holds still
    page.locator("#attn-main .js-plotly-plot").scroll_into_view_if_needed()
    x, y = page.evaluate(POINT_JS, ["L1 H2", 0.2, 0.8])
    page.keyboard.type(" ")  # the text box still has the focus
    page.mouse.click(x, y)
    expect(page.locator("#attn-main")).to_contain_text("L1 H2 on", timeout=WAIT)
    expect(head_radio).to_be_checked(timeout=WAIT)
    page.wait_for_timeout(1_500)  # time for a stale render to land, if one were let through …
    expect(head_radio).to_be_checked()  # … it is not: the head stays open
    expect(notice).to_contain_text("head L1 H2", timeout=WAIT)
    expect(page.locator("#attn-main")).to_contain_text(re.compile(r"\d+ <"), timeout=WAIT)  # token labels: text
    expect(page.locator("#attn-strip")).to_contain_text("<", timeout=WAIT)
    click_plot(page)  # a click on the large head goes back to the grid
    expect(grid_radio).to_be_checked(timeout=WAIT)
    expect(page.locator("#attn-main")).to_contain_text("Every head", timeout=WAIT)

    click_plot(page, "L0 H3")
    expect(notice).to_contain_text("head L0 H3", timeout=WAIT)
    page.get_by_role("button", name="← Back to the grid").click()
    expect(grid_radio).to_be_checked(timeout=WAIT)
    expect(notice).to_contain_text("head L0 H3", timeout=WAIT)  # the grid frames the head it came back from
    expect(page.locator("#attn-main")).to_contain_text("Every head", timeout=WAIT)

    box.press("Control+a")
    box.press("Backspace")  # no text: the view says what to do (a notice, not an error)
    expect(notice).to_contain_text("type some text", timeout=WAIT)

    assert page.locator('img[src="x"]').count() == 0
    assert page.dialogs == [] and page.external_requests == []

