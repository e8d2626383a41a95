"""A trainer killed at any moment (SIGKILL: no clean-up runs) never leaves a broken checkpoint
in the catalog, loses at most one checkpoint interval, and resumes from what it left."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from app.catalog import ModelCatalog
from core import checkpoint
from tests.conftest import ROOT

INTERVAL = 2
FLAGS = ["--corpus", "arithmetic", "--tokenizer", "char", "--preset", "micro", "--block-size", "32",
         "--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--batch-size", "4", "--warmup", "2",
         "--eval-interval", "0", "--sample-tokens", "0", "--dtype", "float32", "--device", "cpu",
         "--threads", "1", "--ckpt-interval", str(INTERVAL), "--log-interval", "1", "--json"]


def test_recover_puts_back_a_checkpoint_set_aside_by_an_interrupted_save(tmp_path, tiny_ckpt):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tiny_ckpt, run / ".latest.old-1234abcd")  # killed between the two renames
    (run / ".latest.tmp-9999ffff").mkdir()  # and a half-written new one
    assert checkpoint.recover(run / "latest") is True
    assert checkpoint.is_checkpoint(run / "latest") and sorted(p.name for p in run.iterdir()) == ["latest"]
    assert checkpoint.recover(run / "latest") is False  # nothing to do


def test_save_without_atomic_exchange_still_replaces(tmp_path, tiny_ckpt, monkeypatch):
    ck = checkpoint.load(tiny_ckpt)
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)  # e.g. a file system without it
    for step in (1, 2):
        checkpoint.save(tmp_path / "latest", ck.model, ck.tokenizer, {"step": step})
    assert checkpoint.load(tmp_path / "latest").meta == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def _run(out, steps, resume=False):
    args = [sys.executable, "-m", "core.train", *FLAGS, "--steps", str(steps), "--out", str(out)]
    proc = subprocess.Popen(args + (["--resume"] if resume else []), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    events: list[dict] = []

    def read():
        for line in proc.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, events, reader


def _assert_catalog_sound(runs):
    catalog = ModelCatalog(bundled=None, runs_dir=runs, uploads_dir=runs.parent / "uploads")
    keys = [e.key for e in catalog.entries()]
    for key in keys:  # everything listed loads
        catalog.get(key)
    return keys


@pytest.mark.slow
def test_sigkill_at_random_moments_never_breaks_a_checkpoint(tmp_path):
    rng = random.Random(7)
    runs = tmp_path / "runs"
    out = runs / "victim"
    steps = 100_000  # far more than it will reach: the test ends every run itself
    resume = False
    for _cycle in range(3):
        proc, events, reader = _run(out, steps, resume=resume)
        deadline = time.time() + 120
        while not any(e["kind"] == "checkpoint" for e in events[-50:]) and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the middle of steps and saves
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {events[-1:]}"
        reached = max(e["step"] for e in events if e["kind"] == "step")

        keys = _assert_catalog_sound(runs)
        assert "run:victim/latest" in keys
        saved = checkpoint.load(out / "latest").meta["step"]
        # at most one interval lost (plus the step in flight when the kill came)
        assert reached - saved <= INTERVAL + 1, (reached, saved)
        resume = True

    # resumes from exactly the step it saved; then a clean stop (SIGTERM) ends it
    saved = checkpoint.load(out / "latest").meta["step"]
    proc, events, reader = _run(out, steps, resume=True)
    deadline = time.time() + 120
    while not any(e["kind"] == "step" for e in events) and proc.poll() is None:
        assert time.time() < deadline, "the resumed run made no step within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    reader.join(timeout=10)
    start = next(e for e in events if e["kind"] == "start")
    first = next(e for e in events if e["kind"] == "step")
    assert start["resumed"] is True and first["step"] == saved + 1
    assert events[-1]["kind"] == "stopped"
    assert checkpoint.load(out / "latest").meta["step"] == events[-1]["step"]
    assert "run:victim/latest" in _assert_catalog_sound(runs)
