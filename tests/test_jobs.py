"""The training job manager, driven directly: real child processes on a tiny synthetic corpus."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch

from app.jobs import FORM, JobBusy, JobManager, check_name, spec_from_form
from core import checkpoint

# a 1-layer, 32-dim model on the "arithmetic" corpus: a step takes milliseconds
TINY = dict(corpus="arithmetic", n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=8, lr=1e-2, warmup=5,
            eval_batches=2)


def wait(jm: JobManager, name: str, until, timeout: float = 300.0) -> dict:
    t0 = time.monotonic()
    while True:
        st = jm.status(name)
        if until(st):
            return st
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting; last status: {st['state']} step {st['step']} {st['reason']}")
        time.sleep(0.2)


@pytest.fixture
def jm(tmp_path):
    m = JobManager(tmp_path / "runs", threads=1)
    yield m
    m.close()


@pytest.mark.parametrize("bad, message", [
    (dict(steps=0), "steps=0 is out of range"),
    (dict(steps=10**9), "steps=1000000000 is out of range"),
    (dict(lr=float("nan")), "lr=nan"),
    (dict(batch_size=2.5), "batch_size must be a whole number"),
    (dict(n_layer="3"), "n_layer must be a number"),
    (dict(n_embd=100, n_head=3), "divisible by heads"),
    (dict(warmup=600, steps=500), "warmup=600 is longer"),
    (dict(corpus="nope"), "corpus 'nope' is unknown"),
    (dict(corpus="text", text="hi"), "characters"),
    (dict(corpus="text", text="x" * 1_000_001), "over the limit of 1,000,000"),
    (dict(tokenizer="word"), "tokenizer 'word' is unknown"),
    (dict(name="../evil"), "is not allowed"),
    (dict(n_layer=12, n_embd=1024, n_head=16, block_size=1024, batch_size=256), "GB to train"),
])
def test_settings_are_validated_with_clear_messages(bad, message):
    with pytest.raises(ValueError, match=None) as e:
        spec_from_form({**TINY, **bad})
    assert message in str(e.value)


def test_unknown_setting_and_names():
    with pytest.raises(ValueError, match="unknown training settings: colour"):
        spec_from_form({"colour": "red"})
    assert check_name("my-run_2") == "my-run_2"
    for bad in ("..", "a/b", "", "x" * 65, "a b", "ü", None, "/etc"):
        with pytest.raises(ValueError):
            check_name(bad)


def test_the_form_becomes_a_run_spec_with_the_recipe():
    from core.spec import RunSpec

    spec = spec_from_form({**TINY, "steps": 300, "preset": "micro"})
    d = RunSpec()
    assert (spec.batch_size, spec.lr, spec.warmup, spec.optimizer) == (8, 1e-2, 5, d.optimizer)
    assert (spec.n_layer, spec.n_head, spec.n_embd, spec.block_size, spec.preset) == (1, 2, 32, 32, "custom")
    assert spec.eval_interval == spec.ckpt_interval == 30 and spec.log_interval == 1  # about ten per run
    assert (FORM["lr"], FORM["weight_decay"], FORM["optimizer"]) == (d.lr, d.weight_decay, d.optimizer)
    assert RunSpec.from_json(spec.to_json()) == spec


def test_run_learns_writes_loadable_checkpoints_and_survives_restart(jm, tmp_path):
    st = jm.start({**TINY, "steps": 60, "eval_interval": 20, "name": "learn"})
    assert st["job"] == "learn" and st["running"]
    assert st["stage"] == "starting the trainer process"  # before its first event (torch takes a second to import)
    st = wait(jm, "learn", lambda s: not s["running"])
    assert st["state"] == "done", st["reason"]
    assert st["step"] == st["total"] == 60
    losses = [loss for _, loss in st["losses"]]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.1, losses  # it learned (batch noise is ~0.03)
    events = [json.loads(line) for line in (tmp_path / "runs" / "learn" / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    stages = [e["stage"] for e in events[:kinds.index("start")]]  # said while it prepares
    assert [s for s in stages if s != "probing CPU speed"] == ["reading corpus", "tokenizing", "building model"]
    assert st["stage"] is None and st["dtype"] in ("float32", "bfloat16")
    spec = json.loads((tmp_path / "runs" / "learn" / "run.json").read_text())  # what the child ran
    assert spec["steps"] == 60 and spec["out"] == str(tmp_path / "runs" / "learn") and spec["threads"] == 1
    assert [e[0] for e in st["evals"]] == [20, 40, 60]
    assert st["evals"][-1][2] < st["evals"][0][2]  # val loss fell too
    assert st["sample"] and {"latest", "best"} <= set(st["checkpoints"])
    ck = checkpoint.load(tmp_path / "runs" / "learn" / "latest")
    assert ck.meta["step"] == 60 and ck.config.n_embd == 32

    # a new manager (a restarted server) still shows the finished run and its curve
    again = JobManager(tmp_path / "runs", threads=1)
    try:
        runs = again.runs()
        assert [r["name"] for r in runs] == ["learn"] and runs[0]["state"] == "done"
        assert again.status("learn")["losses"] == st["losses"]
    finally:
        again.close()


def test_warm_start_runs_in_the_waiting_process_and_close_reaps_it(tmp_path, monkeypatch):
    jm = JobManager(tmp_path / "runs", threads=1, warm_start=True)
    try:
        spare = jm.spare._proc
        assert spare is not None and spare.poll() is None and "--spec-from-stdin" in spare.args
        jm.start({**TINY, "steps": 20, "eval_interval": 10, "name": "warm"})
        assert jm._jobs["warm"].proc is spare  # the run went to the waiting process
        st = wait(jm, "warm", lambda s: not s["running"])
        assert st["state"] == "done" and st["step"] == 20, st["reason"]
        assert checkpoint.load(tmp_path / "runs" / "warm" / "latest").meta["step"] == 20
        events = [json.loads(x) for x in (tmp_path / "runs" / "warm" / "events.jsonl").read_text().splitlines()]
        assert events[0]["kind"] == "prepare" and events[-1]["kind"] == "done"
        assert (tmp_path / "runs" / "warm" / "stderr.log").exists()  # its stderr went to the run's file
        nxt = jm.spare._proc  # a new one waits for the next run
        assert nxt is not None and nxt is not spare and nxt.poll() is None

        # the environment of the moment goes with the run: here its probe cache folder
        monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(tmp_path / "later-cache"))
        jm.start({**TINY, "steps": 5, "name": "handed"})
        assert jm._jobs["handed"].proc is nxt
        assert wait(jm, "handed", lambda s: not s["running"])["state"] == "done"
        assert list((tmp_path / "later-cache").rglob("*.json"))  # the run measured into the new folder
        # one read when torch starts cannot be handed over: that run starts fresh, the stale spare goes
        stale = jm.spare._proc
        monkeypatch.setenv("ONEDNN_VERBOSE", "0")
        jm.start({**TINY, "steps": 5, "name": "fresh"})
        assert jm._jobs["fresh"].proc is not stale and "--spec" in jm._jobs["fresh"].proc.args
        assert stale.wait(timeout=10) is not None
        assert wait(jm, "fresh", lambda s: not s["running"])["state"] == "done"
        last = jm.spare._proc
    finally:
        jm.close()
    assert last is not None and last.wait(timeout=10) is not None  # closing reaps the waiting process


def test_busy_stop_resume_zip(jm, tmp_path):
    jm.start({**TINY, "steps": 5000, "eval_interval": 10, "name": "long"})
    st = wait(jm, "long", lambda s: s["step"] >= 15 and s["evals"])
    pid = jm._jobs["long"].proc.pid  # the run yields the CPU to the server: niced, and so is its
    assert os.getpriority(os.PRIO_PROCESS, pid) >= os.getpriority(os.PRIO_PROCESS, 0) + jm.nice
    autogroup = Path(f"/proc/{pid}/autogroup")  # scheduling group (Linux with autogroups only)
    if autogroup.exists():
        assert autogroup.read_text().split()[-1] == str(jm.nice)
    with pytest.raises(JobBusy, match="'long'"):
        jm.start({**TINY, "steps": 10, "name": "second"})
    assert not (tmp_path / "runs" / "second").exists()

    st = jm.stop("long", wait=60)
    assert st["state"] == "stopped" and st["kind"] == "stopped", st["reason"]
    stopped_at = st["step"]
    assert stopped_at < 5000
    ck = checkpoint.load(tmp_path / "runs" / "long" / "latest")  # a valid checkpoint at the stop step
    assert ck.meta["step"] == stopped_at

    with pytest.raises(ValueError, match="no training run is going"):
        jm.stop()
    with pytest.raises(ValueError, match=f"more than the {stopped_at} steps"):
        jm.resume("long", steps=stopped_at)
    jm.resume("long", steps=stopped_at + 10)
    st = wait(jm, "long", lambda s: not s["running"])
    assert st["state"] == "done", st["reason"]
    assert st["step"] == stopped_at + 10
    assert [s for s, _ in st["losses"]] == list(range(1, stopped_at + 11))  # one curve across both parts

    path = jm.zip_run("long", tmp_path / "zips")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    assert {"long/latest/model.safetensors", "long/latest/config.json", "long/latest/tokenizer.json",
            "long/job.json"} <= names
    for bad in ("../runs", "..", "long/../../x", "/etc"):
        with pytest.raises(ValueError, match="not allowed"):
            jm.zip_run(bad, tmp_path / "zips")
        with pytest.raises(ValueError, match="not allowed"):
            jm.status(bad)


def test_close_reaps_the_child_and_interrupted_runs_show_on_restart(tmp_path):
    jm = JobManager(tmp_path / "runs", threads=1)
    jm.start({**TINY, "steps": 100_000, "eval_interval": 10, "name": "endless"})
    wait(jm, "endless", lambda s: s["step"] >= 2)
    proc = jm._jobs["endless"].proc
    jm.close(timeout=60)
    assert proc.poll() is not None  # reaped, not a zombie or an orphan
    assert jm.status("endless")["state"] == "stopped"
    with pytest.raises(ValueError, match="closed"):
        jm.start({**TINY, "steps": 5})

    # a run that was "running" when its server vanished is listed as interrupted, and resumable
    record = json.loads((tmp_path / "runs" / "endless" / "job.json").read_text())
    (tmp_path / "runs" / "endless" / "job.json").write_text(json.dumps({**record, "state": "running"}))
    again = JobManager(tmp_path / "runs", threads=1)
    try:
        st = again.status("endless")
        assert st["state"] == "interrupted" and "resume" in st["reason"]
    finally:
        again.close()


def test_thread_backend_runs_and_stops(tmp_path):
    """The in-process backend (used under ZeroGPU, where training must run in @spaces.GPU)."""
    threads = torch.get_num_threads()
    jm = JobManager(tmp_path / "runs", threads=1, backend="thread")
    try:
        jm.start({**TINY, "steps": 20, "eval_interval": 10, "name": "inproc"})
        st = wait(jm, "inproc", lambda s: not s["running"])
        assert st["state"] == "done" and st["step"] == 20, st["reason"]
        assert checkpoint.is_checkpoint(tmp_path / "runs" / "inproc" / "latest")
        jm.start({**TINY, "steps": 100_000, "eval_interval": 10, "name": "inproc2"})
        wait(jm, "inproc2", lambda s: s["step"] >= 12)
        st = jm.stop("inproc2", wait=60)
        assert st["state"] == "stopped"
        assert checkpoint.load(tmp_path / "runs" / "inproc2" / "latest").meta["step"] == st["step"]
    finally:
        jm.close()
        torch.set_num_threads(threads)


def test_concurrent_downloads_of_one_run_never_share_a_half_written_zip(jm, tmp_path):
    """Ten downloads at once (issue 20): each gets a whole, valid zip, and all ten are the same."""
    from concurrent.futures import ThreadPoolExecutor

    jm.start({**TINY, "steps": 10, "name": "zipped"})
    wait(jm, "zipped", lambda s: not s["running"])
    with ThreadPoolExecutor(10) as pool:
        paths = list(pool.map(lambda _: jm.zip_run("zipped", tmp_path / "zips"), range(10)))
    blobs = []
    for p in paths:
        with zipfile.ZipFile(p) as zf:
            assert zf.testzip() is None
            assert "zipped/latest/model.safetensors" in zf.namelist()
        blobs.append(Path(p).read_bytes())
    assert len(set(blobs)) == 1 and all(Path(p).name == "zipped.zip" for p in paths)
    assert not [f for f in (tmp_path / "zips").rglob("*.tmp")]  # no temporary file left behind
