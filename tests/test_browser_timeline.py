"""The Timeline tab in a real Chromium (issue 18): opening it shows the newest run's last
snapshot with the induction explanation; moving the slider to the first snapshot changes the
step shown, the attention grid and the sample
(the one nearest the step). The Train tab's "Scrub in Timeline" opens the run it shows, not the
newest. Role and label locators, retrying `expect`."""

from __future__ import annotations

import contextlib
import json
import re
import time

import pytest

from core.spec import RunSpec
from core.train import run
from tests.conftest import running_app

pytestmark = pytest.mark.browser
WAIT = 60_000
GRID_JS = "() => JSON.stringify(document.querySelector('#timeline-grid .js-plotly-plot').data.map((t) => t.z))"


@pytest.fixture(scope="module")
def url(tmp_path_factory, tiny_ckpt):
    from playwright.sync_api import expect

    from app import make_context

    base = tmp_path_factory.mktemp("browser-timeline")
    spec = RunSpec(corpus="induction", tokenizer="char", preset="custom", n_layer=2, n_head=2, n_embd=16,
                   block_size=32, batch_size=4, lr=1e-2, warmup=2, eval_interval=10, eval_batches=2, sample_tokens=16,
                   ckpt_interval=0, dtype="float32", device="cpu", threads=1, steps=24, snapshots=5,
                   out=str(base / "runs" / "ind"))
    assert run(spec)["kind"] == "done"
    ctx = make_context(runs_dir=base / "runs", bundled=tiny_ckpt, cache_dir=base / "cache")
    expect.set_options(timeout=WAIT)
    try:
        with running_app(ctx) as u:
            SERVED["ctx"] = ctx
            yield u
    finally:
        expect.set_options(timeout=5_000)


SERVED: dict = {}  # the module's app context, for the tests that start runs through its job manager


@contextlib.contextmanager
def tab_page(browser, url: str, tab: str):
    """A fresh page on `url` with `tab` open; closed afterwards."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT)
    try:
        page.goto(url)
        page.get_by_role("tab", name=tab, exact=True).click()
        yield page
    finally:
        page.close()


def test_moving_the_slider_changes_the_step_and_the_grid(browser, url):
    from playwright.sync_api import expect

    with tab_page(browser, url, "Timeline") as page:
        step = page.locator("#timeline-step")
        expect(step).to_contain_text("Step 24 of 24")  # opens on the newest run's last snapshot
        expect(step).to_contain_text("snapshot 5 of 5")
        expect(page.get_by_text("Watch an induction head form.")).to_be_visible()
        expect(page.get_by_role("combobox", name="Run")).to_have_value("ind")
        expect(page.locator("#timeline-grid")).to_contain_text("Every head")
        expect(page.get_by_label("Text to look at")).not_to_have_value("")  # the run's held-out excerpt
        before = json.loads(page.evaluate(GRID_JS))
        expect(page.get_by_label("Sample from the fixed prompt at step 24")).to_be_visible()

        slider = page.get_by_role("slider", name="Snapshot (move to scrub through training)")
        slider.focus()
        page.keyboard.press("Home")  # the first snapshot: step 0, untrained
        expect(step).to_contain_text("Step 0 of 24")
        expect(step).to_contain_text("snapshot 1 of 5")
        page.wait_for_function(f"() => {GRID_JS}() !== {json.dumps(json.dumps(before))}")
        after = json.loads(page.evaluate(GRID_JS))
        assert len(after) == len(before) and after != before
        expect(page.get_by_label("Sample from the fixed prompt at step 10")).to_be_visible()  # the nearest one
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)


def test_the_induction_preset_fills_the_train_form(browser, url):
    from playwright.sync_api import expect

    from app.jobs.form import INDUCTION_PRESET

    with tab_page(browser, url, "Train") as page:
        snaps = page.get_by_role("spinbutton", name="number input for Snapshots")
        expect(snaps).to_have_value("12")  # on by default
        page.get_by_role("button", name="Preset: watch an induction head form").click()
        expect(page.get_by_label("Steps", exact=True)).to_have_value(str(INDUCTION_PRESET["steps"]))
        expect(snaps).to_have_value(str(INDUCTION_PRESET["snapshots"]))
        expect(page.get_by_role("combobox", name="Corpus")).to_have_value(re.compile("^induction"))
        expect(page.get_by_label("Preset", exact=True)).to_have_value("custom")


def test_scrub_in_timeline_opens_the_run_the_train_tab_shows(browser, url):
    """Two runs made in the Train tab's job manager; the Timeline, opened first, shows its default run;
    the Train tab then shows another run, and the link must open that one."""
    from playwright.sync_api import expect

    jobs = SERVED["ctx"].jobs
    tiny = dict(corpus="arithmetic", n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, lr=1e-2, warmup=2,
                eval_batches=1, steps=12, snapshots=3)
    steps = {"older": 12, "newer": 14, "none": 10}
    for name in steps:
        jobs.start({**tiny, "name": name, "steps": steps[name], "snapshots": 0 if name == "none" else 3})
        t0 = time.monotonic()
        while jobs.status(name)["running"]:
            assert time.monotonic() - t0 < 300, jobs.status(name)
            time.sleep(0.2)
        assert jobs.status(name)["state"] == "done", jobs.status(name)["reason"]
    with tab_page(browser, url, "Timeline") as page:
        expect(page.locator("#timeline-step")).to_contain_text("Step ")  # loaded its default run
        shown = page.get_by_role("combobox", name="Run").input_value()
        target = "older" if shown != "older" else "newer"
        page.get_by_role("tab", name="Train", exact=True).click()
        show = page.get_by_role("combobox", name="Show run")
        show.click()
        page.get_by_role("option", name=target, exact=True).click()
        expect(show).to_have_value(target)
        page.get_by_role("button", name="Scrub in Timeline ›").click()
        expect(page.get_by_role("tab", name="Timeline", exact=True)).to_have_attribute("aria-selected", "true")
        expect(page.get_by_role("combobox", name="Run")).to_have_value(target)
        expect(page.locator("#timeline-step")).to_contain_text(f"Step {steps[target]} of {steps[target]}")
        expect(page.get_by_text("Error", exact=True)).to_have_count(0)

        page.get_by_role("tab", name="Train", exact=True).click()  # a run without snapshots: told why, stays
        show.click()
        page.get_by_role("option", name="none", exact=True).click()
        page.get_by_role("button", name="Scrub in Timeline ›").click()
        expect(page.get_by_text("run none has no snapshots yet")).to_be_visible()
        expect(page.get_by_role("tab", name="Train", exact=True)).to_have_attribute("aria-selected", "true")
        page.get_by_role("tab", name="Timeline", exact=True).click()  # still on the run it showed
        expect(page.get_by_role("combobox", name="Run")).to_have_value(target)
