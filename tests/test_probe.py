"""core.probe: the training path chosen by measurement, cached per machine, kept on resume."""

import json
import os
import subprocess
import sys

import pytest
import torch

from core import machine
from core import probe as probe_mod
from core.config import TrainConfig, preset
from core.data import split_tokens
from core.train import Trainer
from tests.conftest import ROOT, SAMPLE_TEXT

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(char_tokenizer):
    split = split_tokens(char_tokenizer.encode(SAMPLE_TEXT * 3), val_fraction=0.1)
    mcfg = preset("micro", vocab_size=char_tokenizer.vocab_size, block_size=16, n_embd=32)
    return mcfg, split, char_tokenizer


def tcfg(tmp_path, **kw):
    base = dict(steps=8, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=4, eval_batches=1, ckpt_interval=0,
                sample_tokens=0, dtype="auto", device="cpu", seed=11, optimizer="muon",
                extra={"cache_dir": str(tmp_path / "cache")})
    return TrainConfig(**{**base, **kw})


def test_probe_times_whole_steps_and_answers_a_candidate(setup, tmp_path):
    mcfg, _, _ = setup
    out = probe_mod.probe_cpu(mcfg, tcfg(tmp_path), 4)
    # bf16 as the probe judged it (it confirms the ratio at the model's shape: a second measurement here
    # could land on the other side of the threshold on a loaded machine)
    cands = probe_mod.candidates("muon", "bfloat16" not in out["timings"])
    assert (out["dtype"], out["sdpa"], out["ortho"]) in cands
    assert probe_mod._key(*cands[0]) in out["timings"]  # the plain path is always measured
    assert all(isinstance(v, str) or v > 0 for v in out["timings"].values())


def test_bf16_candidates_are_skipped_untimed_where_bf16_is_slow(setup, tmp_path):
    mcfg, _, _ = setup
    out = probe_mod.probe_cpu(mcfg, tcfg(tmp_path), 4, bf16_ratio=60.0)
    # float32 orthogonalisation in either form: the Gram form only where it measured clearly faster
    assert out["dtype"] == "float32" and out["ortho"] in ("float32", "gram")
    if out["ortho"] == "gram":
        assert out["timings"]["ortho gram"] * probe_mod.CLEARLY_FASTER <= out["timings"]["ortho float32"] + 2e-5  # rounded to 5 places
    assert out["timings"]["bfloat16"].startswith("skipped")
    assert not any(k.startswith("bfloat16/") or k.endswith("/bfloat16") for k in out["timings"])


def test_candidates_put_the_plain_path_first_and_respect_pins():
    assert probe_mod.candidates("muon", True)[0] == ("float32", None, "float32")
    assert probe_mod.candidates("muon", False) == [("float32", None, "float32"), ("float32", "math", "float32")]
    assert probe_mod.candidates("adamw", True)[0] == ("float32", None, None)
    assert {c[1] for c in probe_mod.candidates("muon", True, sdpa="flash")} == {"flash"}
    assert {c[2] for c in probe_mod.candidates("muon", True, ortho="bfloat16")} == {"bfloat16"}


def test_avx2_capability_avoids_bf16_orthogonalisation(setup, tmp_path):
    """A subprocess capped to AVX2 kernels (as on CPUs without native bf16) chooses fp32 Newton–Schulz."""
    mcfg, _, _ = setup
    code = ("import json, torch; from core.config import GPTConfig, TrainConfig; from core.probe import choose_path;"
            f"m = GPTConfig.from_dict({mcfg.to_dict()!r}); "
            f"c = TrainConfig(optimizer='muon', batch_size=4, extra={{'cache_dir': {str(tmp_path)!r}}}); "
            "print(json.dumps(choose_path(torch.device('cpu'), m, c)))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    choice = json.loads(proc.stdout.strip().splitlines()[-1])
    # float32 in either form (the Gram form where it measured faster), never torch's bf16
    assert choice["ortho"] in ("float32", "gram") and choice["dtype"] == "float32"
    assert choice["summary"].startswith(("fp32 · Muon (fp32 orthogonalisation)", "fp32 · Muon (fp32 Gram orthogonalisation)"))
    if choice["ortho"] == "gram":
        assert choice["timings"]["ortho gram"] * 1.1 <= choice["timings"]["ortho float32"]


def test_the_cached_choice_is_reused_and_invalidated_by_torch_or_cpu(setup, tmp_path, monkeypatch):
    mcfg, _, _ = setup
    calls = []

    def fake_probe(*a, **k):
        calls.append(1)
        return {"dtype": "float32", "sdpa": "math", "ortho": "float32", "timings": {"float32/math/float32": 0.01}}

    monkeypatch.setattr(probe_mod, "probe_cpu", fake_probe)
    cfg = tcfg(tmp_path)
    first = probe_mod.choose_path(CPU, mcfg, cfg, cache_dir=tmp_path)
    second = probe_mod.choose_path(CPU, mcfg, cfg, cache_dir=tmp_path)
    assert len(calls) == 1 and (first["cached"], second["cached"]) == (False, True)
    assert second["measured_at"] == first["measured_at"] and second["sdpa"] == "math"
    assert second["timings"] == first["timings"]
    probe_mod.choose_path(CPU, mcfg, cfg.__class__(**{**cfg.to_dict(), "batch_size": 2}), cache_dir=tmp_path)
    assert len(calls) == 2  # another batch is another shape: measured again
    monkeypatch.setattr(torch, "__version__", "99.0.0")
    assert probe_mod.choose_path(CPU, mcfg, cfg, cache_dir=tmp_path)["cached"] is False and len(calls) == 3
    monkeypatch.setattr(machine, "cpu_model", lambda: "Some Other CPU 9000")
    assert probe_mod.choose_path(CPU, mcfg, cfg, cache_dir=tmp_path)["cached"] is False and len(calls) == 4
    assert probe_mod.choose_path(CPU, mcfg, cfg, cache_dir=tmp_path)["cached"] is True and len(calls) == 4


def test_start_event_says_what_was_chosen_and_a_second_run_does_not_probe(setup, tmp_path, monkeypatch):
    mcfg, split, tok = setup
    cfg = tcfg(tmp_path, steps=2, eval_interval=0)
    starts = []
    Trainer(mcfg, cfg, split, tok, on_event=lambda e: starts.append(e) if e["kind"] == "start" else None).run()
    ch = starts[0]["choices"]
    assert set(ch) >= {"dtype", "sdpa", "ortho", "timings", "cached", "measured_at", "summary"}
    assert ch["cached"] is False and ch["timings"] and ch["summary"].count(" · ") == 2
    assert (starts[0]["dtype"], starts[0]["sdpa"]) == (ch["dtype"], ch["sdpa"])

    def no_probe(*a, **k):
        raise AssertionError("probed although the choice was cached")

    monkeypatch.setattr(probe_mod, "probe_cpu", no_probe)
    Trainer(mcfg, cfg, split, tok, on_event=lambda e: starts.append(e) if e["kind"] == "start" else None).run()
    again = starts[1]["choices"]
    assert again["cached"] is True and again["measured_at"] == ch["measured_at"]
    assert (again["dtype"], again["sdpa"], again["ortho"]) == (ch["dtype"], ch["sdpa"], ch["ortho"])


def _stop_resume_compare(mcfg, split, tok, cfg, tmp_path, monkeypatch, later_answer):
    full = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "a")
    assert full.run()["kind"] == "done"
    part = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "b")
    part.add_sink(lambda ev: part.stop() if ev["kind"] == "step" and ev["step"] == 3 else None)
    assert part.run()["kind"] == "stopped"
    # a fresh probe (or another machine's cache) would now answer otherwise: the resumed run must not ask
    monkeypatch.setattr(probe_mod, "probe_cpu", lambda *a, **k: later_answer)
    machine.clear_cache("train", cfg.extra["cache_dir"])
    resumed = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "b", resume_from=tmp_path / "b" / "latest")
    assert resumed.run()["kind"] == "done"
    assert resumed.choices["source"] == "resumed"
    a, b = full.raw_model.state_dict(), resumed.raw_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    return full, resumed


def test_resume_is_bit_identical_on_the_measured_path(setup, tmp_path, monkeypatch):
    mcfg, split, tok = setup
    cfg = tcfg(tmp_path)
    other = {"dtype": "bfloat16", "sdpa": "flash", "ortho": "bfloat16", "timings": {}}
    full, resumed = _stop_resume_compare(mcfg, split, tok, cfg, tmp_path, monkeypatch, other)
    assert (resumed.choices["dtype"], resumed.choices["sdpa"], resumed.choices["ortho"]) == \
        (full.choices["dtype"], full.choices["sdpa"], full.choices["ortho"])


def test_resume_keeps_a_bf16_path_with_bf16_orthogonalisation(setup, tmp_path, monkeypatch):
    """The path a bf16-fast CPU would choose (bf16 autocast, flash kernel, bf16 Newton–Schulz)
    survives a resume on a machine that would choose the plain path, bit for bit."""
    mcfg, split, tok = setup
    cfg = tcfg(tmp_path, steps=6)
    monkeypatch.setattr(probe_mod, "probe_cpu",
                        lambda *a, **k: {"dtype": "bfloat16", "sdpa": "flash", "ortho": "bfloat16", "timings": {}})
    plain = {"dtype": "float32", "sdpa": None, "ortho": "float32", "timings": {}}
    full, resumed = _stop_resume_compare(mcfg, split, tok, cfg, tmp_path, monkeypatch, plain)
    assert full.choices["summary"] == "bf16 autocast · Muon (bf16 orthogonalisation) · flash attention"
    assert resumed.place.dtype == torch.bfloat16 and resumed.place.sdpa == "flash"
    assert resumed.optimizers[1].ortho_dtype == "bfloat16"


def test_checkpoints_from_before_the_choice_resume_with_torchs_bf16_orthogonalisation():
    saved = {"device": "cpu", "dtype": "float32", "sdpa": None}  # no 'ortho': written by torch.optim.Muon
    ch = probe_mod.choose_path(CPU, preset("micro", vocab_size=40), TrainConfig(optimizer="muon"), saved)
    assert ch["ortho"] == "bfloat16" and ch["source"] == "resumed"


def test_explicit_settings_win_and_bad_ones_are_named():
    m = preset("micro", vocab_size=40)
    ch = probe_mod.choose_path(CPU, m, TrainConfig(dtype="float32", extra={"sdpa": "math", "ortho": "bfloat16"}))
    assert (ch["dtype"], ch["sdpa"], ch["ortho"], ch["source"]) == ("float32", "math", "bfloat16", "settings")
    with pytest.raises(ValueError, match="ortho='fp8'"):
        probe_mod.choose_path(CPU, m, TrainConfig(extra={"ortho": "fp8"}))
    with pytest.raises(ValueError, match="sdpa='fast'"):
        probe_mod.choose_path(CPU, m, TrainConfig(extra={"sdpa": "fast"}))
