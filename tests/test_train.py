"""The trainer: loss falls, stop + resume is bit-identical, NaN fails cleanly, the CLI works."""

import json
import math
import subprocess
import sys

import pytest
import torch

from core import checkpoint
from core.config import TrainConfig, preset
from core.data import split_tokens
from core.train import Trainer
from tests.conftest import ROOT, SAMPLE_TEXT


@pytest.fixture(scope="module")
def setup(char_tokenizer):
    split = split_tokens(char_tokenizer.encode(SAMPLE_TEXT * 3), val_fraction=0.1)
    mcfg = preset("micro", vocab_size=char_tokenizer.vocab_size, block_size=32)
    return mcfg, split, char_tokenizer


def tcfg(**kw):
    base = dict(steps=50, batch_size=8, lr=3e-3, warmup_steps=5, eval_interval=25, eval_batches=4,
                ckpt_interval=0, sample_tokens=20, dtype="float32", device="cpu", seed=11, log_interval=1)
    return TrainConfig(**{**base, **kw})


def test_loss_falls_and_events_flow(setup, tmp_path):
    mcfg, split, tok = setup
    events = []
    final = Trainer(mcfg, tcfg(), split, tok, out_dir=tmp_path, on_event=events.append).run()
    assert final["kind"] == "done"
    steps = [e for e in events if e["kind"] == "step"]
    evals = [e for e in events if e["kind"] == "eval"]
    assert len(steps) == 50 and len(evals) == 2
    assert steps[0]["loss"] > math.log(tok.vocab_size) * 0.8
    assert evals[-1]["val_loss"] < steps[0]["loss"] - 0.5
    assert all(e["tokens_per_s"] > 0 and e["grad_norm"] >= 0 for e in steps)
    assert any(e["kind"] == "sample" and e["text"] for e in events)
    ck = checkpoint.load(tmp_path / "latest")
    assert ck.meta["step"] == 50 and len(ck.meta["history"]) == 50
    assert checkpoint.is_checkpoint(tmp_path / "best")


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_stop_then_resume_is_bit_identical(setup, tmp_path, optimizer):
    mcfg, split, tok = setup
    mcfg = mcfg.replace(dropout=0.1)  # dropout uses the global RNG: resume must restore it
    cfg = tcfg(steps=24, eval_interval=8, optimizer=optimizer)
    full = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "a")
    full.run()

    part = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "b")
    part.add_sink(lambda ev: part.stop() if ev["kind"] == "step" and ev["step"] == 11 else None)
    assert part.run()["kind"] == "stopped"
    assert checkpoint.load(tmp_path / "b" / "latest").meta["step"] == 11
    resumed = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "b", resume_from=tmp_path / "b" / "latest")
    assert resumed.run()["kind"] == "done"

    a, b = full.raw_model.state_dict(), resumed.raw_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_nan_loss_fails_with_reason_and_keeps_last_good_checkpoint(setup, tmp_path):
    mcfg, split, tok = setup
    tr = Trainer(mcfg, tcfg(steps=40, ckpt_interval=10, eval_interval=0), split, tok, out_dir=tmp_path)

    def poison(ev):
        if ev["kind"] == "checkpoint" and ev["step"] == 20:
            with torch.no_grad():
                tr.raw_model.transformer.wte.weight.fill_(float("nan"))

    tr.add_sink(poison)
    final = tr.run()
    assert final["kind"] == "failed" and "nan" in final["reason"].lower() and "step 20" in final["reason"]
    ck = checkpoint.load(tmp_path / "latest")  # still loads: finite weights from step 20
    assert ck.meta["step"] == 20


def test_too_little_data_is_a_clear_error(char_tokenizer):
    split = split_tokens(char_tokenizer.encode(SAMPLE_TEXT[:400]), val_fraction=0.1)
    mcfg = preset("micro", vocab_size=char_tokenizer.vocab_size, block_size=64)
    with pytest.raises(ValueError, match="val split has .* tokens"):
        Trainer(mcfg, tcfg(), split, char_tokenizer)


def test_cli_json_lines(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "core.train", "--corpus", "arithmetic", "--tokenizer", "char", "--preset", "micro",
           "--block-size", "32", "--steps", "20", "--batch-size", "4", "--eval-interval", "10", "--eval-batches", "2",
           "--log-interval", "5", "--dtype", "float32", "--threads", "1", "--out", str(out), "--json",
           "--export", str(tmp_path / "exported")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    steps = [ev for ev in lines if ev["kind"] == "step"]
    assert [ev["step"] for ev in steps] == [5, 10, 15, 20]
    assert all({"step", "loss", "tokens_per_s"} <= ev.keys() for ev in steps)
    assert any("val_loss" in ev for ev in lines)
    assert lines[-1]["kind"] == "done"
    ck = checkpoint.load(tmp_path / "exported")
    assert ck.tokenizer is not None and not (tmp_path / "exported" / "train_state.safetensors").exists()

    gen = subprocess.run([sys.executable, "-m", "core.generate", str(tmp_path / "exported"), "--prompt", "1+",
                          "--max-new-tokens", "10", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr
    assert len(json.loads(gen.stdout)["ids"]) <= 10


def test_cli_reports_bad_flags_clearly(tmp_path):
    res = subprocess.run([sys.executable, "-m", "core.train", "--corpus", "arithmetic", "--preset", "micro",
                          "--n-embd", "30", "--n-head", "4", "--out", str(tmp_path), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "divisible" in json.loads(res.stdout.splitlines()[-1])["reason"]
