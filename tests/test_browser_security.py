"""What a visitor types is data, never code: XSS payloads typed into every text surface of
every tab, in one Debian Chromium page, execute nothing, inject no element, and the page asks
nothing of any host but its own (issue 8).

One page visits the tabs in turn (role and label locators, Playwright's retrying `expect`);
each payload is submitted where the tab submits text, so it travels to the server and comes
back in whatever the tab draws (token spans, plots, tables, toasts). At the end: no dialog
opened (`page.dialogs`), no `<img src=x>`, `<svg onload>` or payload `<script>` in the DOM,
the payload is visible as text, and `page.external_requests` is empty for the whole session.
"""

from __future__ import annotations

import pytest

from tests.conftest import running_app

PAYLOADS = ('<img src=x onerror=alert(1)>', '<script>alert(2)</script>', '"><svg onload=alert(3)>')
XSS = " ".join(PAYLOADS)  # 72 characters: fits every box (the embeddings search takes 100)
WAIT = 30_000  # ms for retrying assertions: two shared CPU cores, other servers busy
INJECTED_JS = """() => ({
  img: document.querySelectorAll('img[src="x"], img[onerror]').length,
  svg: document.querySelectorAll('svg[onload]').length,
  script: [...document.querySelectorAll('script')].filter(s => /alert\\([123]\\)/.test(s.textContent)).length,
  handlers: [...document.querySelectorAll('*')]
    .filter(e => e.getAttribute('onerror') || e.getAttribute('onload')).length,
})"""


@pytest.fixture(scope="module")
def xss_url(tmp_path_factory, tiny_bpe_ckpt):
    """A server of our own: the payloads start (refused) training runs and add folders."""
    import os

    from app import make_context

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # the Hub box must never reach out, even with a valid-looking name
    base = tmp_path_factory.mktemp("xss")
    try:
        with running_app(make_context(runs_dir=base / "runs", bundled=tiny_bpe_ckpt, cache_dir=base / "cache")) as url:
            yield url
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def visible(locator):
    return locator.locator("visible=true").first


@pytest.mark.browser
def test_xss_typed_everywhere_runs_nothing_and_nothing_leaves_127_0_0_1(page, xss_url):
    from playwright.sync_api import expect

    def tab(name: str) -> None:
        page.get_by_role("tab", name=name, exact=True).click()
        expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true", timeout=WAIT)

    def box(label: str):
        return visible(page.get_by_label(label, exact=True))

    def toast(text: str, quoted: str = "<img src=x") -> None:
        """An error toast saying `text` and quoting (part of) the payload as text."""
        found = page.locator(".toast-body").filter(has_text=text).filter(has_text=quoted)
        expect(found.first).to_be_visible(timeout=WAIT)
        for close in page.locator(".toast-close").all():
            close.click()

    page.goto(xss_url)
    expect(page.get_by_role("tab", name="Model", exact=True)).to_be_visible(timeout=WAIT)

    # Model: the folder box and the Hub box (both refuse the text, and say so in a toast, as text)
    tab("Model")
    page.get_by_text("Load another model").click()
    box("Folder path").fill(XSS)
    box("Folder path").press("Enter")
    toast("no such folder")
    box("Model name").fill(XSS)
    box("Model name").press("Enter")
    toast("is not a Hugging Face model name", "<svg onload=alert(3)>")  # long names are cut to their end

    # Train: pasted text and the run name, then Start (refused: too short, bad name)
    tab("Train")
    corpus = box("Corpus")
    corpus.click()
    page.get_by_role("option", name="text:", exact=False).first.click()
    box("Your text").fill(XSS)
    box("Run name (optional)").fill(XSS)
    visible(page.get_by_role("button", name="Start training")).click()
    expect(page.locator(".toast-body").first).to_be_visible(timeout=WAIT)
    for close in page.locator(".toast-close").all():
        close.click()

    # Tokens: the live text (spans show the markup as text), the BPE lab's corpus and sentence
    tab("Tokens")
    box("Text").fill(XSS)
    spans = page.locator("#tokens-spans")  # every character of the markup is a token, shown as text
    expect(spans.get_by_role("button", name="<", exact=True)).to_have_count(XSS.count("<"), timeout=WAIT)
    expect(spans.get_by_role("button", name=">", exact=True)).to_have_count(XSS.count(">"), timeout=WAIT)
    page.get_by_text("BPE lab: train a byte-level BPE").click()
    box("Your corpus (when Corpus is 'text')").fill(XSS)
    box("Sample sentence").fill(XSS)

    # Embeddings: the search, the neighbour expression, the contextual text
    tab("Embeddings")
    box("Highlight tokens containing").fill(XSS[:100])
    box("Highlight tokens containing").press("Enter")
    expect(page.locator("#emb-vocab-summary")).to_contain_text("<img src=x", timeout=WAIT)  # shown as text
    box("Nearest neighbours of a token or an expression").fill(XSS)
    box("Nearest neighbours of a token or an expression").press("Enter")
    page.get_by_role("tab", name="Contextual embeddings").click()
    box("Text").fill(XSS)
    box("Text").press("Enter")

    # Attention: the text (live), and the query box
    tab("Attention")
    box("Text").fill(XSS)
    expect(page.locator("#attn-notice")).to_contain_text("tokens", timeout=WAIT)
    box("Query token position (−1 = the last)").fill("-1")

    # Decode: the prompt, then Generate; the sweep's temperatures box
    tab("Decode")
    box("Prompt").fill(XSS)
    visible(page.get_by_role("button", name="Generate")).click()
    expect(page.locator("#dec-metrics")).to_contain_text("Greedy", timeout=WAIT)  # the columns ran on the payload
    page.get_by_text("Sweep: temperature × method").click()
    box("Temperatures").fill(XSS)
    visible(page.get_by_role("button", name="Sweep", exact=True)).click()
    toast("cannot read temperatures")

    # back to the first tabs: everything drawn from the payloads is still inert
    tab("Tokens")
    expect(spans.get_by_role("button", name="<", exact=True)).to_have_count(XSS.count("<"), timeout=WAIT)

    # the shared model picker takes typed keys too (API callers pass any key): every tab refuses it
    picker = page.get_by_role("combobox", name="Model", exact=True)
    picker.fill(XSS)
    picker.press("Enter")
    toast("unknown model")
    found = page.evaluate(INJECTED_JS)
    assert found == {"img": 0, "svg": 0, "script": 0, "handlers": 0}, f"markup was injected: {found}"
    assert page.dialogs == [], f"a payload ran: {page.dialogs}"
    assert page.external_requests == [], f"the page reached other hosts: {page.external_requests}"
