"""Shared fixtures: tiny real models and checkpoints made in tmp dirs (nothing downloads)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

# gradio_client reports analytics unless told not to: tests talk to 127.0.0.1 only.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# measured speed choices (core.machine) go to a fresh folder per test session, never ~/.cache
os.environ.setdefault("GLASSBOX_CACHE_DIR", tempfile.mkdtemp(prefix="glassbox-test-cache-"))
# app servers in tests start runs the plain way (tests/test_jobs.py covers the warm start on its own)
os.environ.setdefault("GLASSBOX_WARM_START", "0")

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

SAMPLE_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
) * 20


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip("Tiny Shakespeare is not at ../shared/data (fine on a fresh clone)")
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def char_tokenizer():
    from core.tokenizer import Tokenizer

    return Tokenizer.train_char(SAMPLE_TEXT)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from core.tokenizer import Tokenizer

    return Tokenizer.train_bpe(SAMPLE_TEXT * 3, 300)


def make_model(vocab_size: int, seed: int = 0, **overrides):
    from core.config import preset
    from core.model import GPT

    torch.manual_seed(seed)
    cfg = preset("micro", vocab_size=vocab_size, **{"block_size": 32, **overrides})
    return GPT(cfg).eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, char_tokenizer) -> Path:
    """A real Glassbox checkpoint folder: 2-layer GPT, char tokenizer, random weights."""
    from core import checkpoint

    model = make_model(char_tokenizer.vocab_size)
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "tiny", model, char_tokenizer, {"note": "test"})


@pytest.fixture(scope="session")
def tiny_bpe_ckpt(tmp_path_factory, bpe_tokenizer) -> Path:
    """A real checkpoint with a byte-level BPE tokenizer (more interesting token views)."""
    from core import checkpoint

    model = make_model(bpe_tokenizer.vocab_size, seed=1, block_size=64, n_head=4)
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "tiny-bpe", model, bpe_tokenizer, {"note": "test"})


# --- a real Gradio server on 127.0.0.1, and a real Chromium ---------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(ctx):
    """Launch the real app for `ctx` on a free port; yields its URL; closes it afterwards."""
    from app import build_app, launch_kwargs

    demo = build_app(ctx)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(ctx))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        if getattr(ctx, "jobs", None) is not None and hasattr(ctx.jobs, "close"):
            ctx.jobs.close()


@pytest.fixture(scope="session")
def app_ctx(tmp_path_factory, tiny_bpe_ckpt):
    """One app context for the session: the tiny BPE model as the bundled model, empty runs dir."""
    from app import make_context

    base = tmp_path_factory.mktemp("app")
    return make_context(runs_dir=base / "runs", bundled=tiny_bpe_ckpt, cache_dir=base / "cache")


@pytest.fixture(scope="session")
def app_url(app_ctx):
    """One real server shared by the app and browser tests that need no special context."""
    with running_app(app_ctx) as url:
        yield url


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page that records dialogs (an XSS would open one) and requests to other hosts."""
    from urllib.parse import urlparse

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.dialogs = []
    pg.external_requests = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))

    def on_request(req):
        host = urlparse(req.url).hostname
        if req.url.startswith(("http:", "https:", "ws:", "wss:")) and host not in ("127.0.0.1", "localhost"):
            pg.external_requests.append(req.url)

    pg.on("request", on_request)
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
