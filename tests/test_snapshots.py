"""Snapshots (issue 18): weight-only checkpoints on a dense-early schedule, within their bounds,
each loadable and listed in the catalog; a SIGKILL in the middle of a snapshot write leaves
no broken snapshot listed, and the resumed run completes the same schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from app.catalog import ModelCatalog
from core import checkpoint, snapshots
from core.cli import build_parser, spec_from_args
from core.spec import RunSpec
from core.train import run
from tests.conftest import ROOT

TINY = dict(corpus="counting", tokenizer="char", preset="custom", n_layer=1, n_head=2, n_embd=16, block_size=16,
            batch_size=4, warmup=2, eval_interval=10, eval_batches=2, sample_tokens=8, ckpt_interval=5,
            dtype="float32", device="cpu", threads=1)


def test_the_schedule_is_dense_early_sparse_late_and_includes_both_ends():
    steps = snapshots.schedule(500, 12)
    assert steps[0] == 0 and steps[-1] == 500 and len(steps) == 12
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1] / 5  # gaps only widen
    assert sum(s <= 50 for s in steps) >= 4  # a third of them in the first tenth
    assert snapshots.schedule(500, 12) == steps  # a pure function: a resumed run finds the same steps
    assert snapshots.schedule(5, 40) == [0, 1, 2, 3, 4, 5]  # no step twice
    assert snapshots.schedule(100, 0) == [] and snapshots.schedule(100, 1) == [100]
    assert len(snapshots.schedule(10**6, 10**6)) == snapshots.MAX_SNAPSHOTS


def test_the_count_shrinks_to_fit_the_byte_limit():
    assert snapshots.bounded_count(12, 1000, limit=12_000) == 12
    assert snapshots.bounded_count(12, 1000, limit=5_500) == 5
    assert snapshots.bounded_count(12, 10**9, limit=10**6) == 0


def test_the_flag_and_the_server_limit():
    a = build_parser().parse_args(["--out", "x", "--snapshots", "7"])
    assert spec_from_args(a).snapshots == 7 and spec_from_args(a).train_config().snapshots == 7
    assert RunSpec().snapshots == 0  # the CLI's default: off
    with pytest.raises(ValueError, match="snapshots=49 is out of range"):
        RunSpec.for_server(snapshots=49)
    with pytest.raises(ValueError, match="snapshots"):
        RunSpec(snapshots=-1)


def test_a_run_saves_weight_only_snapshots_at_the_schedule_listed_in_the_catalog(tmp_path):
    runs = tmp_path / "runs"
    events = []
    final = run(RunSpec(**TINY, steps=30, snapshots=6, out=str(runs / "r1")), events.append)
    assert final["kind"] == "done"
    want = snapshots.schedule(30, 6)
    found = snapshots.listing(runs / "r1")
    assert [s for s, _ in found] == want
    assert [e["step"] for e in events if e["kind"] == "snapshot"] == want
    weights = None
    for step, path in found:
        assert sorted(p.name for p in path.iterdir()) == ["config.json", "meta.json", "model.safetensors",
                                                          "tokenizer.json"]  # no optimizer state
        ck = checkpoint.load(path)
        assert ck.meta["step"] == step and ck.meta["snapshot"] is True
        assert all(h["step"] <= step for h in ck.meta["history"])
        weights = (path / "model.safetensors").stat().st_size
    assert weights <= ck.config.memory_bytes() + 4096  # fp32 weights and a header: within the byte bound
    last = checkpoint.load(found[-1][1])
    assert last.meta["excerpt"] and last.meta["samples"]  # the timeline's default text and its samples
    latest = checkpoint.load(runs / "r1" / "latest")
    assert all(t.equal(latest.model.state_dict()[k]) for k, t in last.model.state_dict().items())

    catalog = ModelCatalog(bundled=None, runs_dir=runs, uploads_dir=tmp_path / "uploads")
    keys = [e.key for e in catalog.entries()]
    assert keys == ["run:r1/latest", "run:r1/best", *[f"run:r1/step-{s}" for s in want]]
    assert catalog.get("run:r1/step-0").meta["step"] == 0


def test_the_byte_limit_bounds_a_run(tmp_path, monkeypatch):
    spec = RunSpec(**TINY, steps=20, snapshots=10, out=str(tmp_path / "r"))
    per = spec.model_config(14).memory_bytes()  # the counting corpus has 13 characters + <unk>
    monkeypatch.setenv("GLASSBOX_MAX_SNAPSHOT_BYTES", str(3 * per + per // 2))
    assert run(spec)["kind"] == "done"
    assert [s for s, _ in snapshots.listing(tmp_path / "r")] == snapshots.schedule(20, 3)


# A child that trains and SIGKILLs itself in the middle of writing one snapshot (after the weights,
# before meta.json): a kill at the worst moment, every time.
KILLER = """
import os, signal, sys
from core import checkpoint
from core.cli import main
from core.train import run
write, count = checkpoint._write_json, [0]
def killing_write(path, obj):
    if path.name == "meta.json" and ".step-" in path.parent.name:
        count[0] += 1
        if count[0] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
    write(path, obj)
checkpoint._write_json = killing_write
sys.exit(main(run, sys.argv[1:]))
"""


def _cli(out, steps, n, kill_at=None, resume=False):
    flags = ["--corpus", "counting", "--tokenizer", "char", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
             "--block-size", "16", "--batch-size", "4", "--warmup", "2", "--eval-interval", "0", "--sample-tokens",
             "0", "--dtype", "float32", "--device", "cpu", "--threads", "1", "--ckpt-interval", "3", "--json",
             "--steps", str(steps), "--snapshots", str(n), "--out", str(out), *(["--resume"] if resume else [])]
    code = ["-c", KILLER] if kill_at else ["-m", "core.train"]
    env = {**os.environ, "KILL_AT": str(kill_at or 0)}
    return subprocess.run([sys.executable, *code, *flags], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_sigkill_during_a_snapshot_write_lists_no_broken_snapshot_and_resume_keeps_the_schedule(tmp_path):
    runs = tmp_path / "runs"
    out = runs / "victim"
    steps, n = 40, 8
    killed = _cli(out, steps, n, kill_at=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    want = snapshots.schedule(steps, n)
    half = [d.name for d in (out / "snapshots").iterdir() if d.name.startswith(".")]
    assert len(half) == 1 and half[0].startswith(f".step-{want[4]}.tmp-")  # the fifth write, cut short
    listed = [s for s, _ in snapshots.listing(out)]
    assert listed == want[:4]
    catalog = ModelCatalog(bundled=None, runs_dir=runs, uploads_dir=tmp_path / "uploads")
    keys = [e.key for e in catalog.entries()]
    assert [k for k in keys if "/step-" in k] == [f"run:victim/step-{s}" for s in listed]
    for key in keys:  # everything listed loads
        catalog.get(key)

    resumed = _cli(out, steps, n, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    assert next(e for e in events if e["kind"] == "start")["resumed"] is True
    assert [s for s, _ in snapshots.listing(out)] == want  # the same schedule, completed
    assert not [d for d in (out / "snapshots").iterdir() if d.name.startswith(".")]  # the half write is gone
    saved = [e["step"] for e in events if e["kind"] == "snapshot"]
    assert saved == [s for s in want if s >= want[4]]  # nothing saved twice
    for _, path in snapshots.listing(out):
        checkpoint.load(path)
