"""The trainer: loss falls, stop + resume is bit-identical, NaN fails cleanly, the CLI works."""

import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from core import checkpoint
from core.config import TrainConfig, preset
from core.data import split_tokens
from core.train import Trainer, build_optimizers
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
    cfg = tcfg(steps=14, eval_interval=4, eval_batches=2, sample_tokens=0, optimizer=optimizer)
    full = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "a")
    full.run()

    part = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "b")
    part.add_sink(lambda ev: part.stop() if ev["kind"] == "step" and ev["step"] == 7 else None)
    assert part.run()["kind"] == "stopped"
    assert checkpoint.load(tmp_path / "b" / "latest").meta["step"] == 7
    resumed = Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "b", resume_from=tmp_path / "b" / "latest")
    assert resumed.run()["kind"] == "done"

    a, b = full.raw_model.state_dict(), resumed.raw_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_a_probed_run_says_what_it_is_doing_before_the_first_step(setup, tmp_path):
    """dtype=auto on CPU: `prepare` events name the probe and the model build before `start`
    (the resumed path's bit-identity is tests/test_probe.py's)."""
    mcfg, split, tok = setup
    cfg = tcfg(steps=2, eval_interval=0, sample_tokens=0, dtype="auto", extra={"cache_dir": str(tmp_path / "c")})
    events = []
    Trainer(mcfg, cfg, split, tok, out_dir=tmp_path / "a", on_event=events.append).run()
    kinds = [e["kind"] for e in events]
    assert [e["stage"] for e in events if e["kind"] == "prepare"][:2] == ["probing CPU speed", "building model"]
    assert kinds.index("start") > kinds.index("prepare")
    assert "summary" in next(e for e in events if e["kind"] == "start")["choices"]


def test_a_cpu_run_flushes_denormals_in_its_own_thread(setup):
    """Denormal floats (attention weights that training has sharpened) are tens of times slower
    on x86; the trainer's thread flushes them to zero, and only its thread."""
    import threading

    mcfg, split, tok = setup
    seen = {}

    def sink(ev):
        if ev["kind"] == "start":
            seen["in_run"] = float(torch.tensor([1e-39]) * 0.5)

    def run():
        Trainer(mcfg, tcfg(steps=2, eval_interval=0, sample_tokens=0), split, tok, on_event=sink).run()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen["in_run"] == 0.0  # flushed inside the run's thread
    assert float(torch.tensor([1e-39]) * 0.5) > 0.0  # this thread was left as it was


def test_bf16_loss_stays_close_to_fp32(setup):
    mcfg, split, tok = setup
    runs = {d: Trainer(mcfg, tcfg(steps=25, eval_interval=0, sample_tokens=0, dtype=d), split, tok).run()
            for d in ("float32", "bfloat16")}
    assert runs["float32"]["kind"] == runs["bfloat16"]["kind"] == "done"
    assert abs(runs["float32"]["best_val"] - runs["bfloat16"]["best_val"]) < 0.1


def test_optimizer_groups(setup):
    mcfg, _, _ = setup
    from core.model import GPT

    model = GPT(mcfg)
    names = {id(p): n for n, p in model.named_parameters()}
    (adamw,) = build_optimizers(model, tcfg(optimizer="adamw", weight_decay=0.1))
    decayed = {names[id(p)] for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed and all(model.get_parameter(n).dim() == 2 for n in decayed)
    assert "transformer.wte.weight" in decayed and not any(n.endswith(".bias") for n in decayed)
    adamw2, muon = build_optimizers(model, tcfg(optimizer="muon"))
    assert isinstance(muon, torch.optim.Muon)
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n}
    in_adamw = {names[id(p)] for g in adamw2.param_groups for p in g["params"]}
    assert in_adamw.isdisjoint(in_muon) and len(in_adamw | in_muon) == len(names)


def test_warmup_cosine_and_grad_norm_in_step_events(setup):
    mcfg, split, tok = setup
    events = []
    Trainer(mcfg, tcfg(steps=20, warmup_steps=5, eval_interval=0, sample_tokens=0, lr=1e-3, grad_clip=0.5),
            split, tok, on_event=events.append).run()
    lrs = [e["lr"] for e in events if e["kind"] == "step"]
    assert lrs[:5] == sorted(lrs[:5]) and lrs[4] == pytest.approx(1e-3)
    assert lrs[5:] == sorted(lrs[5:], reverse=True) and lrs[-1] >= 1e-4
    assert all(e["grad_norm"] > 0 for e in events if e["kind"] == "step")


def test_out_of_memory_fails_with_reason(setup, tmp_path, monkeypatch):
    mcfg, split, tok = setup
    tr = Trainer(mcfg, tcfg(steps=10, eval_interval=0, ckpt_interval=3), split, tok, out_dir=tmp_path)
    real = tr.train_step

    def step():
        if tr.step == 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real()

    monkeypatch.setattr(tr, "train_step", step)
    final = tr.run()
    assert final["kind"] == "failed" and "out of memory at step 4" in final["reason"]
    assert final["last_checkpoint"] and checkpoint.load(tmp_path / "latest").meta["step"] == 3


def test_nan_loss_fails_with_reason_and_keeps_last_good_checkpoint(setup, tmp_path):
    mcfg, split, tok = setup
    tr = Trainer(mcfg, tcfg(steps=20, ckpt_interval=5, eval_interval=0, sample_tokens=0), split, tok, out_dir=tmp_path)

    def poison(ev):
        if ev["kind"] == "checkpoint" and ev["step"] == 10:
            with torch.no_grad():
                tr.raw_model.transformer.wte.weight.fill_(float("nan"))

    tr.add_sink(poison)
    final = tr.run()
    assert final["kind"] == "failed" and "nan" in final["reason"].lower() and "step 10" in final["reason"]
    assert final["last_checkpoint"] == str(tmp_path / "latest")
    ck = checkpoint.load(tmp_path / "latest")  # still loads: finite weights from step 10
    assert ck.meta["step"] == 10 and all(torch.isfinite(v).all() for v in ck.model.state_dict().values())


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
    assert [ev["step"] for ev in steps] == [1, 5, 10, 15, 20]  # the first step, then every 5th
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


def test_cli_text_file_shorter_than_block_is_a_clear_error(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("to be or not to be, that is the question. " * 3, encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", "core.train", "--text-file", str(f), "--preset", "micro",
                          "--block-size", "256", "--out", str(tmp_path / "run"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    ev = json.loads(res.stdout.splitlines()[-1])
    assert ev["kind"] == "failed" and ev["step"] == 0 and "block" in ev["reason"]
    assert not (tmp_path / "run" / "latest").exists()


def test_cli_help_documents_the_contract():
    res = subprocess.run([sys.executable, "-m", "core.train", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0
    for flag in ("--json", "--resume", "--threads", "--device", "--optimizer", "--seed", "--weight-decay",
                 "--dropout", "--warmup", "--sample-interval", "--sample-prompt", "--eval-interval",
                 "--ckpt-interval", "--corpus", "--text-file", "SIGTERM"):
        assert flag in res.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_signal_stops_saves_latest_and_resumes(tmp_path, sig):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "core.train", "--corpus", "arithmetic", "--preset", "micro", "--block-size", "32",
            "--steps", "100000", "--batch-size", "4", "--eval-interval", "0", "--eval-batches", "2",
            "--sample-tokens", "0", "--log-interval", "1", "--dtype", "float32", "--threads", "1",
            "--out", str(out), "--json"]
    proc = subprocess.Popen(base, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(json.loads(line))
            if seen[-1]["kind"] == "step":
                proc.send_signal(sig)
                break
        rest = [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    stopped = rest[-1]
    assert stopped["kind"] == "stopped" and stopped["step"] <= seen[-1]["step"] + 1
    assert sum(ev["kind"] == "step" for ev in rest) <= 1  # within one step of the signal
    ck = checkpoint.load(out / "latest")
    assert ck.meta["step"] == stopped["step"]
    state, meta = checkpoint.load_train_state(out / "latest")
    assert meta["step"] == stopped["step"] and any(k.startswith("optim.") for k in state)
    if sig == signal.SIGTERM:  # --resume continues from OUT/latest
        stop_at = stopped["step"]
        resumed = subprocess.run([a if a != "100000" else str(stop_at + 3) for a in base] + ["--resume"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        evs = [json.loads(line) for line in resumed.stdout.splitlines()]
        starts = [e for e in evs if e["kind"] == "start"]
        assert [e["kind"] for e in evs[:evs.index(starts[0])]] == ["prepare"] * 3  # corpus, tokens, model
        assert len(starts) == 1 and starts[0]["resumed"] is True
        assert [e["step"] for e in evs if e["kind"] == "step"] == [stop_at + 1, stop_at + 2, stop_at + 3]
        assert evs[-1]["kind"] == "done"


# --- one run spec: the flags and a spec file start the same run; resume is a field ---------

TINY_FLAGS = ["--corpus", "arithmetic", "--preset", "micro", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
              "--block-size", "32", "--steps", "12", "--batch-size", "4", "--warmup", "2", "--eval-interval", "6",
              "--eval-batches", "2", "--sample-tokens", "8", "--log-interval", "1", "--dtype", "float32",
              "--device", "cpu", "--threads", "1", "--json"]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_a_spec_file_runs_the_same_as_the_flags(tmp_path):
    from core.cli import build_parser, spec_from_args
    from core.spec import RunSpec

    flags = subprocess.run([sys.executable, "-m", "core.train", *TINY_FLAGS, "--out", str(tmp_path / "flags")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert flags.returncode == 0, flags.stderr
    spec = spec_from_args(build_parser().parse_args([*TINY_FLAGS, "--out", str(tmp_path / "spec")]))
    assert (spec.corpus, spec.n_embd, spec.steps, spec.dtype, spec.lr) == ("arithmetic", 32, 12, "float32", 6e-3)
    path = spec.save(tmp_path / "run.json")
    assert RunSpec.load(path) == spec
    from_file = subprocess.run([sys.executable, "-m", "core.train", "--spec", str(path), "--json"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert from_file.returncode == 0, from_file.stderr

    a, b = _events(flags.stdout), _events(from_file.stdout)
    assert [e["kind"] for e in a] == [e["kind"] for e in b]
    assert [e["stage"] for e in a if e["kind"] == "prepare"] == ["reading corpus", "tokenizing", "building model"]
    same = ("step", "loss", "lr", "grad_norm", "val_loss", "train_loss", "text", "name")
    assert [{k: e.get(k) for k in same} for e in a] == [{k: e.get(k) for k in same} for e in b]
    ca, cb = checkpoint.load(tmp_path / "flags" / "latest"), checkpoint.load(tmp_path / "spec" / "latest")
    assert ca.config == cb.config and ca.meta["step"] == cb.meta["step"] == 12
    sa, sb = ca.model.state_dict(), cb.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert cb.meta["spec"]["steps"] == 12 and cb.meta["command"].endswith(f"--spec {path} --json")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**spec.to_dict(), "colour": "red"}))
    res = subprocess.run([sys.executable, "-m", "core.train", "--spec", str(bad), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown run spec keys: 'colour'" in _events(res.stdout)[-1]["reason"]
    res = subprocess.run([sys.executable, "-m", "core.train", "--spec", str(path), "--steps", "5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "drop --steps" in res.stderr


def test_resume_is_a_field_of_the_spec_and_continues_bit_identically(tmp_path):
    import threading

    from core import train as train_mod
    from core.spec import RunSpec

    base = RunSpec(corpus="arithmetic", preset="micro", n_layer=1, n_embd=32, n_head=2, block_size=32, dropout=0.1,
                   steps=12, batch_size=4, warmup=2, eval_interval=4, eval_batches=2, sample_tokens=0, log_interval=1,
                   dtype="float32", device="cpu", seed=3)
    full_events: list[dict] = []
    assert train_mod.run(base.replace(out=str(tmp_path / "a")), full_events.append)["kind"] == "done"

    stop = threading.Event()
    part = base.replace(out=str(tmp_path / "b"))
    final = train_mod.run(part, lambda ev: stop.set() if ev.get("step") == 5 and ev["kind"] == "step" else None,
                          stop)
    assert final["kind"] == "stopped" and final["step"] == 5
    resumed: list[dict] = []
    assert train_mod.run(part.replace(resume=True), resumed.append)["kind"] == "done"
    assert [e for e in resumed if e["kind"] == "start"][0]["resumed"] is True
    assert [e["step"] for e in resumed if e["kind"] == "step"] == list(range(6, 13))

    a, b = checkpoint.load(tmp_path / "a" / "latest"), checkpoint.load(tmp_path / "b" / "latest")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["loss"] for h in a.meta["history"]] == [h["loss"] for h in b.meta["history"]]

    nothing = train_mod.run(base.replace(out=str(tmp_path / "none"), resume=True))
    assert nothing["kind"] == "failed" and nothing["stage"] == "checking" and "no checkpoint" in nothing["reason"]
