"""RunSpec: one validated description of a run; JSON round trips; every limit refused with its message."""

from __future__ import annotations

import json

import pytest

from core.config import RECIPE, TrainConfig
from core.spec import INTS, RANGES, SERVER_LIMITS, RunSpec


def test_round_trip_and_the_trainer_inputs(tmp_path):
    spec = RunSpec(corpus="arithmetic", tokenizer="bpe", vocab_size=300, preset="micro", n_embd=48, n_head=3,
                   dropout=0.1, steps=120, lr=3e-3, min_lr=1e-4, optimizer="adamw", sdpa="math",
                   sample_prompt="ROMEO:\n", out=str(tmp_path / "run"), name="my-run", resume=True)
    again = RunSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    assert RunSpec.load(spec.save(tmp_path / "run.json")) == spec
    assert RunSpec.from_json(RunSpec().to_json()) == RunSpec()

    m = spec.model_config(vocab_size=290)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size, m.dropout) == (2, 3, 48, 64, 290, 0.1)
    t = spec.train_config()
    assert (t.steps, t.lr, t.min_lr, t.warmup_steps, t.optimizer, t.extra["sdpa"]) == (120, 3e-3, 1e-4, 50, "adamw",
                                                                                       "math")


def test_the_recipe_is_written_once():
    d, t = RunSpec(), TrainConfig()
    assert (d.batch_size, d.lr, d.warmup, d.weight_decay, d.beta2, d.grad_clip, d.optimizer) == (
        RECIPE["batch_size"], RECIPE["lr"], RECIPE["warmup_steps"], RECIPE["weight_decay"], RECIPE["beta2"],
        RECIPE["grad_clip"], RECIPE["optimizer"])
    assert all(getattr(t, k) == v for k, v in RECIPE.items())
    from core.train import GLASSBOX_CPU_RECIPE

    assert GLASSBOX_CPU_RECIPE == RECIPE


def test_json_coerces_whole_floats_and_refuses_unknown_keys():
    d = json.loads(RunSpec().to_json())
    assert RunSpec.from_dict({**d, "steps": 30.0, "lr": 1}).steps == 30
    with pytest.raises(ValueError, match="unknown run spec keys: 'colour'"):
        RunSpec.from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match="spec_version=2 is not supported"):
        RunSpec.from_dict({**d, "spec_version": 2})
    with pytest.raises(ValueError, match="must be JSON"):
        RunSpec.from_json("{nope")
    with pytest.raises(ValueError, match="must be a JSON object"):
        RunSpec.from_json("[1, 2]")


@pytest.mark.parametrize("name", sorted(RANGES))
def test_every_range_is_refused_with_its_limit(name):
    hi = RANGES[name][1]
    over = hi + 1 if name in INTS else hi * 2
    with pytest.raises(ValueError) as e:
        RunSpec(**{name: over})
    assert str(e.value).startswith(f"{name}={over} is out of range: it must be between ")


@pytest.mark.parametrize("name", sorted(SERVER_LIMITS))
def test_every_server_limit_is_refused_naming_the_server_limit(name):
    hi = SERVER_LIMITS[name][1]
    over = hi + 1 if name in INTS else hi * 1.5
    with pytest.raises(ValueError) as e:
        RunSpec.for_server(tokenizer="bpe", **{name: over})
    assert str(e.value).startswith(f"{name}={over} is out of range: it must be between ")


@pytest.mark.parametrize("bad, message", [
    (dict(steps="10"), "steps must be a number, got '10'"),
    (dict(steps=True), "steps must be a number, got True"),
    (dict(batch_size=2.5), "batch_size must be a whole number, got 2.5"),
    (dict(lr=float("nan")), "lr=nan is not a finite number"),
    (dict(corpus="x" * 500), "corpus 'xxxxxxxx"),
    (dict(tokenizer="word"), "tokenizer 'word' is unknown: choose one of char, bpe"),
    (dict(optimizer="sgd"), "optimizer 'sgd' is unknown"),
    (dict(preset="huge"), "preset 'huge' is unknown"),
    (dict(preset="custom", n_layer=2), "preset 'custom' needs every model size: n_head, n_embd, block_size missing"),
    (dict(n_embd=100, n_head=3), "width n_embd=100 must be divisible by heads n_head=3"),
    (dict(corpus="text", text="hi"), "characters"),
    (dict(corpus="file"), "corpus 'file' needs text_file"),
    (dict(text_file="a.txt"), "text_file is only for corpus 'file'"),
    (dict(tokenizer="bpe", vocab_size=100), "vocab_size=100 is out of range: byte-level BPE needs between 257"),
    (dict(min_lr=0.1, lr=0.01), "min_lr=0.1 is above lr=0.01"),
    (dict(name="../evil"), "run name '../evil' is not allowed"),
    (dict(resume="yes"), "resume must be true or false"),
    (dict(device="tpu"), "device 'tpu' is unknown"),
])
def test_bad_values_name_the_field_the_value_and_the_limit(bad, message):
    with pytest.raises(ValueError) as e:
        RunSpec(**bad)
    assert message in str(e.value)
    assert len(str(e.value)) < 300  # a long bad value is quoted in part, not whole


@pytest.mark.parametrize("bad, message", [
    (dict(warmup=600, steps=500), "warmup=600 is longer than the run (steps=500)"),
    (dict(corpus="text", text="x" * 1_000_001), "over the limit of 1,000,000"),
    (dict(sample_prompt="p" * 201), "the sample prompt is 201 characters"),
    (dict(device="tpu"), "device 'tpu' is unknown: choose one of auto, cpu, cuda, mps"),
    (dict(n_layer=12, n_embd=1024, n_head=16, block_size=1024, batch_size=256), "GB to train"),
])
def test_the_servers_own_checks(bad, message):
    with pytest.raises(ValueError) as e:
        RunSpec.for_server(**bad)
    assert message in str(e.value)


@pytest.mark.parametrize("device, words", [("cuda", "no CUDA GPU"), ("mps", "no Apple GPU (MPS)")])
def test_a_device_the_machine_lacks_is_refused_in_words(monkeypatch, device, words):
    import torch

    from core.device import available_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert available_devices() == ("cpu",)
    with pytest.raises(ValueError) as e:
        RunSpec.for_server(device=device)
    assert str(e.value) == f"device '{device}' was chosen but this machine has {words}: choose auto or cpu"
    assert RunSpec.for_server(device="auto").device == "auto"


def test_the_devices_offered_are_the_ones_present(monkeypatch):
    import torch

    from core.device import available_devices, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert available_devices() == ("cuda", "cpu")
    assert RunSpec.for_server(device="cuda").device == "cuda"
    assert pick_device("auto").type == "cuda"
