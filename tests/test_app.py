"""The app through a real server: launch on 127.0.0.1 with `prevent_thread_lock=True`,
call the named endpoints with `gradio_client.Client`, close in `finally`. Plus the pure
pieces of the Model tab (rendering, escaping, the figure)."""

import shutil
import socket

import pytest

from app import build_app, make_context
from app.catalog import BUNDLED_KEY
from app.figures import model as figures
from app.tabs import fmt_bytes, md_escape
from app.tabs.model import model_info, module_kind, render, summary_markdown
from core import checkpoint
from tests.conftest import running_app

# The stable, documented API (README); every other event is private.
PUBLIC_ENDPOINTS = {"/models", "/model_info", "/tokenize", "/embeddings", "/attention", "/decode",
                    "/train_start", "/train_status", "/train_stop", "/walkthrough", "/timeline"}
CONFIG_ROW_MEANING = "numbers per token vector: the width of the residual stream"


@pytest.fixture
def server(tmp_path, tiny_ckpt, monkeypatch):
    """A real server for a context of its own (runs dir in tmp_path, tiny_ckpt as the bundled
    model) and a client; only 127.0.0.1 may be reached."""
    from gradio_client import Client

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # Client ignores analytics_enabled=False without it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real_connect = socket.socket.connect

    def local_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"the app test tried to reach {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tiny_ckpt, cache_dir=tmp_path / "cache")
    with running_app(ctx) as url:  # launches with prevent_thread_lock=True, closes in finally
        yield Client(url, verbose=False, analytics_enabled=False, download_files=False), ctx


def test_endpoints_through_a_real_server(server, tiny_ckpt):
    client, ctx = server
    api = client.view_api(print_info=False, return_format="dict")
    named = set(api["named_endpoints"])
    assert {"/models", "/model_info"} <= named
    assert named <= PUBLIC_ENDPOINTS, f"undocumented public endpoints: {named - PUBLIC_ENDPOINTS}"

    models = client.predict(api_name="/models")
    assert models == [{"key": BUNDLED_KEY, "label": "Demo model (bundled)", "source": "bundled"}]

    info = client.predict(BUNDLED_KEY, api_name="/model_info")
    ck = checkpoint.load(tiny_ckpt)
    assert info["params"]["total"] == ck.model.num_params() == ck.config.n_params()
    assert info["params"]["without_embeddings"] == ck.model.num_params(include_embeddings=False)
    assert info["config"]["n_layer"] == 2 and info["format"] == "glassbox"
    rows = ck.model.describe_modules()
    assert [r["module"] for r in info["modules"]] == [r["module"] for r in rows]
    assert [r["shape"] for r in info["modules"]] == [r["shape"] for r in rows]
    assert sum(r["params"] for r in info["modules"]) == info["params"]["total"]
    assert sum(info["params_by_kind"].values()) == info["params"]["total"]
    assert info["memory"]["weights_bytes"] == 4 * info["params"]["total"]
    assert info["tokenizer"]["kind"] == "char" and info["meta"] == {"note": "test"}

    # a run saved while the server is up is offered at once
    shutil.copytree(tiny_ckpt, ctx.runs_dir / "fresh" / "latest")
    assert "run:fresh/latest" in [m["key"] for m in client.predict(api_name="/models")]
    assert client.predict("run:fresh/latest", api_name="/model_info")["source"] == "run"

    with pytest.raises(Exception, match="unknown model"):
        client.predict("run:nope/latest", api_name="/model_info")


def test_render_and_escaping(tiny_ckpt):
    from app.catalog import ModelEntry

    ck = checkpoint.load(tiny_ckpt)
    ck.meta = {"step": 1200, "best_val": 1.5, "evals": [{"step": 1200, "val_loss": 1.6, "train_loss": float("nan")}],
               "history": list(range(500)), "note": "<script>alert(1)</script> & co"}
    entry = ModelEntry("upload:abc", "upload: <img src=x onerror=alert(1)> & *bold*", "upload", tiny_ckpt)
    info = model_info(entry, ck)
    assert info["training"] == {"step": 1200, "best_val_loss": 1.5, "val_loss": 1.6, "train_loss": None}
    assert "history" not in info["meta"] and info["meta"]["note"].startswith("<script>")  # JSON shows text as text
    summary, config_rows, module_rows, fig, meta = render(info)
    assert "<img" not in summary and "&lt;img" in summary and "&amp;" in summary and r"\*bold\*" in summary
    assert "trained 1,200 steps · val loss 1.6000 · best val loss 1.5000" in summary
    assert f"| {ck.model.num_params():,} |" in summary
    assert ["n_embd", "64", CONFIG_ROW_MEANING] == config_rows[[r[0] for r in config_rows].index("n_embd")]
    assert module_rows[0][:4] == ["transformer.wte", "embedding", f"{ck.config.vocab_size} × 64",
                                  f"{ck.config.vocab_size * 64:,}"]
    assert fig.data[0].y == ("embedding", "attention", "feed-forward", "layer norm")
    assert render(None)[0] == "No model selected."
    assert summary_markdown(info).startswith("### upload: ")



def test_small_helpers():
    assert md_escape("<b>a_b</b> [x](y)") == r"&lt;b&gt;a\_b&lt;/b&gt; \[x\]\(y\)"
    assert fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(12) == "12 B" and fmt_bytes(3 * 1024**3) == "3.0 GiB"
    assert [module_kind(n) for n in ("transformer.wpe", "transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc",
                                     "transformer.h.0.ln_1", "transformer.ln_f", "lm_head")] == [
        "embedding", "attention", "feed-forward", "layer norm", "layer norm", "output head"]
    fig = figures.params_by_kind({"embedding": 300, "attention": 100, "norms": 0})
    assert list(fig.data[0].x) == [300, 100] and fig.data[0].text[0] == "300 (75.0%)"


def test_builds_without_any_model(tmp_path):
    """No bundled demo and no runs yet: the page still builds, says why, and opens the loaders."""
    import json

    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tmp_path / "missing", cache_dir=tmp_path / "cache")
    demo = build_app(ctx)
    assert ctx.catalog.default_key() is None
    config = json.dumps(demo.get_config_file(), default=repr)  # some props are callables
    assert "The bundled demo model is missing" in config and "No model selected." in config
