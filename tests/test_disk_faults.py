"""Disk faults during training (issue 20): a disk that fills up during a checkpoint save, an
output folder on a read-only mount, and a folder the server may not write. Each ends the run
`failed` with a reason in words (no traceback, no server path), and what was saved before
stays loadable.

The full and read-only disks are real: small tmpfs mounts made for the test (as root; the tests
skip where mounting is not allowed). A `chmod 555` folder stops nobody as root, so that case runs
only as another user.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from core import checkpoint
from core.config import TrainConfig, preset
from core.data import split_tokens
from core.train import Trainer
from tests.conftest import SAMPLE_TEXT

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


@contextmanager
def tmpfs(where: Path, size_bytes: int, read_only: bool = False):
    """A real, small file system at `where` (removed afterwards); skips the test if mounting fails."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={max(size_bytes, 4096)}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:100]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def setup(char_tokenizer):
    split = split_tokens(char_tokenizer.encode(SAMPLE_TEXT * 3), val_fraction=0.1)
    mcfg = preset("micro", vocab_size=char_tokenizer.vocab_size, block_size=32)
    return mcfg, split, char_tokenizer


def cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=2, lr=3e-3, warmup_steps=0, eval_interval=0, eval_batches=1, ckpt_interval=2,
                sample_tokens=0, dtype="float32", device="cpu", seed=3, log_interval=1)
    return TrainConfig(**{**base, **kw})


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def assert_readable(reason: str) -> None:
    assert "Traceback" not in reason and "/" not in reason.replace("latest/", "").replace("best/", ""), reason
    assert len(reason) < 300, reason


def test_a_disk_that_fills_during_a_later_save(setup, tmp_path):
    mcfg, split, tok = setup
    one = Trainer(mcfg, cfg(steps=1, ckpt_interval=1), split, tok, out_dir=tmp_path / "size").run()
    assert one["kind"] == "done"
    size = folder_bytes(tmp_path / "size" / "latest")
    # room for one `latest/` and part of a second: the save at step 4 writes its copy beside it
    with tmpfs(tmp_path / "disk", int(size * 1.5)) as disk:
        events = []
        final = Trainer(mcfg, cfg(), split, tok, out_dir=disk / "run", on_event=events.append).run()
        assert final["kind"] == "failed"
        assert final["reason"] == ("no space left on device while saving step 4 (latest/); the last good checkpoint "
                                   "is step 2 (latest/)")
        assert_readable(final["reason"])
        assert [e["kind"] for e in events][-1] == "failed"
        ck = checkpoint.load(disk / "run" / "latest")
        assert ck.meta["step"] == 2  # what was saved before is whole and loads
        assert not list((disk / "run").glob(".latest.tmp-*"))  # the half-written copy is gone


def test_a_disk_that_is_full_at_the_first_save(setup, tmp_path):
    mcfg, split, tok = setup
    with tmpfs(tmp_path / "disk", 64 * 1024) as disk:  # the model's weights alone do not fit
        final = Trainer(mcfg, cfg(steps=3), split, tok, out_dir=disk / "run").run()
        assert final["kind"] == "failed"
        assert final["reason"] == ("no space left on device while saving step 2 (latest/); no checkpoint was saved "
                                   "before")
        assert not checkpoint.is_checkpoint(disk / "run" / "latest")


def test_a_read_only_output_folder_fails_at_the_start(setup, tmp_path):
    mcfg, split, tok = setup
    with tmpfs(tmp_path / "disk", 4 * 1024 * 1024) as disk:
        first = Trainer(mcfg, cfg(steps=2), split, tok, out_dir=disk / "run").run()
        assert first["kind"] == "done"
        remount_read_only(disk)
        again = Trainer(mcfg, cfg(steps=4), split, tok, out_dir=disk / "run",
                        resume_from=disk / "run" / "latest").run()
        assert again["kind"] == "failed" and again["step"] == 2  # before any training step
        assert again["reason"] == "could not start: the output folder is on a read-only file system"
        assert checkpoint.load(disk / "run" / "latest").meta["step"] == 2


@pytest.mark.skipif(ROOT_USER, reason="chmod 555 does not stop root from writing; the read-only mount covers it")
def test_a_folder_without_write_permission(setup, tmp_path):
    mcfg, split, tok = setup
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        final = Trainer(mcfg, cfg(steps=5), split, tok, out_dir=out / "run").run()
        assert final["kind"] == "failed"
        assert final["reason"] == "could not start: no permission to write to the output folder"
    finally:
        out.chmod(0o755)


def test_the_app_reports_a_full_disk_in_words(tmp_path, char_tokenizer):
    """Through the job manager (a real training process) and the real /train_status: the run ends
    `failed` with the reason, the Train tab's status shows it, and nothing names a server path."""
    from gradio_client import Client

    from app import make_context
    from app.tabs.train import status_markdown
    from tests.conftest import running_app

    model = preset("micro", vocab_size=char_tokenizer.vocab_size, block_size=32)
    probe = Trainer(model, cfg(steps=1, ckpt_interval=1), split_tokens(char_tokenizer.encode(SAMPLE_TEXT * 3), 0.1),
                    char_tokenizer, out_dir=tmp_path / "size").run()
    assert probe["kind"] == "done"
    with tmpfs(tmp_path / "runs", 3 * 1024 * 1024) as runs:
        ctx = make_context(runs_dir=runs, bundled=tmp_path / "size" / "latest", cache_dir=tmp_path / "cache")
        with running_app(ctx) as url:
            c = Client(url, verbose=False)
            # a model whose checkpoint (weights + optimizer state, ~3 MB) cannot fit next to the first
            st = c.predict(api_name="/train_start", corpus="counting", tokenizer="char", n_layer=2, n_head=2,
                           n_embd=128, block_size=16, steps=400, batch_size=2, lr=0.001, warmup=0,
                           optimizer="adamw", device="cpu", eval_interval=100, name="full")
            for _ in range(600):
                st = c.predict("full", api_name="/train_status")
                if not st["running"]:
                    break
                time.sleep(0.5)
            assert st["state"] == "failed", st
            reason = st["reason"]
            assert "no space left on device while saving step" in reason, reason
            assert_readable(reason)
            assert str(runs) not in str(st) and "Traceback" not in str(st)
            assert reason.replace("/", "") in status_markdown(st).replace("\\", "").replace("/", "")
