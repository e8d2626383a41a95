"""The shared model picker through a real server and Chromium: a visitor's own upload stays in
their picker when the Train tab refreshes it after a run saves, and stays out of everyone else's."""

from __future__ import annotations

import re

import pytest

from conftest import running_app

TINY = dict(corpus="arithmetic", n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=8, lr=1e-2, warmup=2,
            eval_batches=1, eval_interval=5, steps=10)
WAIT = 60_000


@pytest.mark.browser
def test_an_upload_stays_in_its_visitors_picker_after_a_training_run(tmp_path, tiny_bpe_ckpt, browser):
    from gradio_client import Client
    from playwright.sync_api import expect

    from app import make_context

    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tiny_bpe_ckpt, cache_dir=tmp_path / "cache",
                       train_threads=1)
    with running_app(ctx) as url:
        visitor = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = visitor.new_page()
        page.set_default_timeout(WAIT)
        page.goto(url)
        page.get_by_role("tab", name="Model").click()  # the Walkthrough tab opens first
        page.get_by_text("Load another model").click()
        box = page.locator(".block", has=page.get_by_text("Checkpoint files", exact=True)).last
        files = [tiny_bpe_ckpt / n for n in ("model.safetensors", "config.json", "tokenizer.json")]
        box.locator("input[type=file]").set_input_files([str(f) for f in files])
        expect(box.get_by_role("row")).to_have_count(len(files))
        page.get_by_role("button", name="Load upload").click()
        picker = page.get_by_label("Model", exact=True)
        expect(picker).to_have_value(re.compile(r"^upload [0-9a-f]{6}: 2 layers"))
        upload_label = picker.input_value()

        # someone else starts a run; this visitor's page follows it on the Train tab
        Client(url, verbose=False).predict(**TINY, name="picker-run", api_name="/train_start")
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#train-status")).to_contain_text("done", timeout=90_000)

        picker.click()  # the options the Train tab's refresh left: the new run's and this visitor's own
        expect(page.get_by_role("option", name="run: picker-run/latest")).to_be_visible()
        expect(page.get_by_role("option", name=upload_label)).to_be_visible()
        visitor.close()

        stranger = browser.new_context().new_page()  # another visitor: the run, never the upload
        stranger.goto(url)
        stranger.get_by_label("Model", exact=True).click()
        expect(stranger.get_by_role("option", name="run: picker-run/latest")).to_be_visible(timeout=WAIT)
        expect(stranger.get_by_role("option", name=upload_label)).to_have_count(0)
        stranger.context.close()

