"""The Train tab through a real server: the /train_* API with gradio_client, and a browser run."""

from __future__ import annotations

import re
import time

import pytest

from conftest import running_app

TINY = dict(corpus="arithmetic", n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=8, lr=1e-2, warmup=5,
            eval_batches=2, eval_interval=10)


@pytest.fixture(scope="module")
def train_app(tmp_path_factory, tiny_bpe_ckpt):
    from app import make_context

    base = tmp_path_factory.mktemp("train-app")
    ctx = make_context(runs_dir=base / "runs", bundled=tiny_bpe_ckpt, cache_dir=base / "cache", train_threads=1)
    with running_app(ctx) as url:
        yield url, ctx


@pytest.fixture(scope="module")
def train_client(train_app):
    from gradio_client import Client

    return Client(train_app[0], verbose=False)


def poll(client, until, job="", timeout=300.0) -> dict:
    t0 = time.monotonic()
    while True:
        st = client.predict(job=job, api_name="/train_status")
        if until(st):
            return st
        assert time.monotonic() - t0 < timeout, f"timed out: {st['state']} step {st['step']} {st['reason']}"
        time.sleep(0.3)


def test_api_start_status_busy_stop_and_the_run_is_offered(train_client, train_app):
    from gradio_client.exceptions import AppError

    c = train_client
    with pytest.raises(AppError, match="steps=0 is out of range"):
        c.predict(**TINY, steps=0, api_name="/train_start")
    with pytest.raises(AppError, match="not allowed"):
        c.predict(**TINY, name="../escape", api_name="/train_start")

    st = c.predict(**TINY, steps=100_000, name="api-run", api_name="/train_start")
    assert st["job"] == "api-run" and st["running"] and st["total"] == 100_000

    st = poll(c, lambda s: s["step"] >= 40 and len(s["evals"]) >= 3)
    assert st["job"] == "api-run" and st["state"] == "running"
    losses = [loss for _, loss in st["losses"]]
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.1  # the loss falls
    assert st["eta"] > 0 and st["tokens_per_s"] > 0 and st["vocab_size"] > 1

    with pytest.raises(AppError, match="already going on this server: 'api-run'"):
        c.predict(**TINY, steps=10, name="second", api_name="/train_start")

    st = c.predict(job="api-run", api_name="/train_stop")
    assert st["state"] in ("stopping", "stopped")
    st = poll(c, lambda s: not s["running"], job="api-run")
    assert st["state"] == "stopped" and st["kind"] == "stopped", st["reason"]

    keys = [m["key"] for m in c.predict(api_name="/models")]
    assert "run:api-run/latest" in keys and "run:api-run/best" in keys
    ck = train_app[1].catalog.get("run:api-run/latest")  # what the model picker loads
    assert ck.config.n_embd == 32 and ck.meta["step"] == st["step"]
    with pytest.raises(AppError, match="not allowed"):
        c.predict(job="../../etc", api_name="/train_status")


@pytest.mark.browser
def test_browser_run_shows_the_curve_and_user_text_stays_text(train_app, page):
    from playwright.sync_api import expect

    url, ctx = train_app
    if ctx.jobs.current() and ctx.jobs.status()["running"]:
        ctx.jobs.stop(wait=60)
    payload = "<script>alert(1)</script> & <img src=x onerror=alert(1)> 1+1=2\n"
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Corpus").click()
    page.get_by_role("option", name="text: your own pasted text").click()
    page.get_by_label("Your text").fill(payload * 40)
    page.get_by_label("Steps", exact=True).fill("30")
    page.get_by_label("Warmup steps").fill("5")
    page.get_by_label("Run name (optional)").fill("<img src=x onerror=alert(1)>")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("is not allowed").first).to_be_visible()  # the bad name is refused, escaped

    page.get_by_label("Run name (optional)").fill("browser-run")
    page.get_by_label("Preset").click()
    page.get_by_role("option", name="micro").click()
    expect(page.get_by_role("spinbutton", name="number input for Width (n_embd)")).to_have_value("64")
    page.evaluate("""() => { const el = document.querySelector('#train-status'); window.gbSeen = [];
      new MutationObserver(() => window.gbSeen.push(el.innerText)).observe(el, {subtree: true, childList: true,
                                                                                characterData: true}); }""")
    page.get_by_role("button", name="Start training").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("browser-run", timeout=30_000)
    expect(status).to_contain_text("done", timeout=300_000)
    expect(status).to_contain_text("30 / 30")
    expect(status).to_contain_text(re.compile(r"Chosen: .*(AdamW|Muon).*measured"))  # what the probe chose, and when
    seen = [t for t in page.evaluate("window.gbSeen") if "browser-run" in t]  # every text the status showed of
    # this run: first what it prepared, then the path it chose
    preparing = [i for i, t in enumerate(seen) if "⏳" in t]
    assert preparing and preparing[0] < min(i for i, t in enumerate(seen) if "Chosen:" in t), seen[:5]
    # the loss curve: a plotly line with points, and the ln(V) guess line's label
    loss = page.locator("#train-loss")
    expect(loss.locator(".scatterlayer .trace").first).to_be_visible()
    expect(loss).to_contain_text("random guess")
    sample = page.get_by_label("Latest sample (from the fixed prompt)")
    expect(sample).not_to_have_value("")
    expect(page.get_by_role("row", name=re.compile(r"^browser-run done 30 30 "))).to_be_visible()
    page.get_by_role("button", name="Download zip").click()
    expect(page.get_by_role("cell", name="browser-run.zip")).to_be_visible()  # its checkpoints, zipped

    # Resume: the finished run goes on from its last checkpoint to a new step count
    page.get_by_label("Steps", exact=True).fill("45")
    page.get_by_role("button", name="Resume").click()
    expect(status).to_contain_text("45", timeout=30_000)
    expect(status).to_contain_text("done", timeout=300_000)
    expect(status).to_contain_text("45 / 45")
    expect(page.get_by_role("row", name=re.compile(r"^browser-run done 45 45 "))).to_be_visible()
    st = ctx.jobs.status("browser-run")
    steps = [s for s, _ in st["losses"]]
    assert st["step"] == 45 and steps == sorted(set(steps)) and steps[-1] == 45  # one curve, continued
    loss = dict(st["losses"])
    assert loss[31] < (loss[1] + loss[30]) / 2  # from the trained weights: a restart would begin near loss[1]
    assert page.dialogs == []
    assert page.external_requests == []


# --- the pure parts: figures and the status text -------------------------------------------

def test_loss_curve_has_the_random_guess_line_and_skips_bad_points():
    import math

    from app.figures.train import loss_curve

    fig = loss_curve([[1, 4.0], [2, float("nan")], [3, 3.0]], [[2, 3.5, 3.6], [4, 2.5, None]], vocab_size=65,
                     total_steps=10)
    names = [t.name for t in fig.data]
    assert names == ["train loss (batch)", "train loss (eval)", "val loss"]
    assert list(fig.data[0].x) == [1, 3] and list(fig.data[2].x) == [2]
    (line,) = fig.layout.shapes
    assert line.y0 == line.y1 == pytest.approx(math.log(65))
    assert "random guess ln(65)" in fig.layout.annotations[0].text
    assert list(fig.layout.xaxis.range) == [0, 10]


def test_compare_and_config_diff_keep_user_text_as_data():
    from app.figures.train import compare_runs, config_diff

    evil = "<img src=x onerror=alert(1)> & run"
    fig = compare_runs([{"name": evil, "evals": [[10, 3.0, 3.1]], "losses": []},
                        {"name": "b", "evals": [], "losses": [[1, 4.0], [2, 3.9]]}])
    assert [t.name for t in fig.data] == [evil, "b"]
    assert [t.meta[0] for t in fig.data] == ["val", "train"]
    headers, rows = config_diff({"a": {"n_layer": 2, "lr": 0.001, "corpus": "x"},
                                 "b": {"n_layer": 4, "lr": 0.001, "corpus": "x"}})
    assert headers == ["setting", "a", "b"] and rows == [["n_layer", "2", "4"]]
    _, rows = config_diff({"a": {"n_layer": 2, "lr": 0.001}})
    assert [r[0] for r in rows] == ["n_layer", "lr"]


def test_status_text_escapes_names_and_reasons():
    from app.tabs.train import progress_html, status_markdown

    st = {"job": "run_1", "state": "failed", "reason": "bad <script>alert(1)</script> & *x*", "step": 5, "total": 10,
          "loss": 2.0, "val_loss": None, "lr": 1e-3, "tokens_per_s": 100.0, "elapsed": 61, "eta": 3, "running": False,
          "settings": {"n_layer": 1, "n_head": 2, "n_embd": 32, "corpus": "<b>", "tokenizer": "char"},
          "n_params": 1000, "vocab_size": 10, "device": "cpu", "dtype": "float32"}
    md = status_markdown(st)
    assert "<script>" not in md and "&lt;script&gt;" in md and "<b>" not in md
    assert "5 / 10" in md and "1:01" in md
    html = progress_html(st)
    assert 'width:50.0%' in html and 'aria-valuenow="5"' in html


def test_status_says_the_prepare_stage_then_what_was_chosen():
    from app.tabs.train import chosen_line, status_markdown

    st = {"job": "r", "state": "running", "running": True, "reason": None, "step": 0, "total": 10, "loss": None,
          "val_loss": None, "lr": None, "tokens_per_s": None, "elapsed": None, "eta": None, "settings": {},
          "n_params": None, "vocab_size": None, "device": None, "dtype": None, "stage": "training BPE tokenizer"}
    assert "Training BPE tokenizer…" in status_markdown(st)
    started = {**st, "stage": None, "device": "cpu", "dtype": "bfloat16", "sdpa": "math"}
    assert "Chosen: bfloat16 · attention kernel math" in status_markdown(started)
    choices = {"summary": "fp32 · Muon (fp32 orthogonalisation) · <b>math</b> attention", "measured_at": 1000.0,
               "cached": True}
    line = chosen_line({**started, "choices": choices}, now=1042.0)
    assert line.startswith("fp32 · Muon") and "<b>" not in line and "measured 42 s ago, from the cache" in line
    assert "measured 5 min ago)" in chosen_line({**started, "choices": {**choices, "cached": False}}, now=1300.0)


def test_the_sliders_read_their_ranges_from_the_server_limits(train_app):
    """The page the server sends offers exactly the ranges /train_start accepts."""
    import httpx

    from core.spec import SERVER_LIMITS

    config = httpx.get(f"{train_app[0]}config", timeout=30).json()
    sliders = {c["props"].get("label"): c["props"] for c in config["components"] if c.get("type") == "slider"}
    for label, key in (("Layers", "n_layer"), ("Heads", "n_head"), ("Width (n_embd)", "n_embd"),
                       ("Block size (context)", "block_size"), ("BPE vocabulary size", "vocab_size"),
                       ("Snapshots", "snapshots")):
        assert (sliders[label]["minimum"], sliders[label]["maximum"]) == SERVER_LIMITS[key], label
