"""The server the bad-input tests (tests/test_bad_input.py, tests/test_bad_uploads.py) check
against: it has things already saved, and `still_serving` checks that none of them was lost.

Not a test module (no `test_` prefix): each of those modules makes its own module-scoped
`env` fixture from `serve_with_saved_things`, so neither depends on what the other did.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from app import build_app, launch_kwargs, make_context
from app.catalog import BUNDLED_KEY
from tests.conftest import free_port

K = BUNDLED_KEY
CKPT_FILES = ("model.safetensors", "config.json", "tokenizer.json", "meta.json")


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@contextmanager
def serve_with_saved_things(base: Path, tiny_bpe_ckpt: Path) -> Iterator[SimpleNamespace]:
    """A server with things already saved: a run's checkpoint and an earlier upload."""
    from gradio_client import Client

    ctx = make_context(runs_dir=base / "runs", bundled=tiny_bpe_ckpt, cache_dir=base / "cache")
    kept = shutil.copytree(tiny_bpe_ckpt, base / "runs" / "kept" / "latest")
    src = base / "first-upload"
    src.mkdir()
    upload_key = ctx.catalog.add_upload([shutil.copy(tiny_bpe_ckpt / n, src / n) for n in CKPT_FILES])
    demo = build_app(ctx)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(ctx))
    url = f"http://127.0.0.1:{port}/"
    try:
        yield SimpleNamespace(ctx=ctx, demo=demo, url=url, client=Client(url, verbose=False, download_files=False),
                              kept=kept, kept_digest=digest(kept), upload_key=upload_key, base=base)
    finally:
        demo.close()
        ctx.jobs.close()


def still_serving(env) -> None:
    """The server answers, and what was saved before is all there, unchanged."""
    keys = [m["key"] for m in env.client.predict(api_name="/models")]
    assert keys[0] == K and "run:kept/latest" in keys
    d, *_ = env.client.predict(K, "still here", "tokens", api_name="/tokenize")
    assert d["counts"]["chars"] == len("still here")
    assert digest(env.kept) == env.kept_digest
    assert env.ctx.catalog.get(env.upload_key).config.n_layer == 2
    uploads = sorted(p.name for p in env.ctx.uploads_dir.iterdir())
    assert uploads == [env.upload_key.removeprefix("upload:")], f"leftovers in the uploads dir: {uploads}"
