import math

import pytest

from core.config import PRESETS, GPTConfig, TrainConfig, lr_at, preset


def test_presets_build_and_counts():
    assert preset("gpt2").n_params() == 124_439_808  # GPT-2 small, tied head counted once
    assert preset("nano", vocab_size=65).n_layer == 4
    for name, d in PRESETS.items():
        cfg = preset(name, vocab_size=d.get("vocab_size", 100))
        assert cfg.memory_bytes() == cfg.n_params() * 4


def test_param_count_matches_real_model():
    from core.model import GPT

    for bias in (True, False):
        cfg = GPTConfig(vocab_size=77, block_size=16, n_layer=3, n_head=2, n_embd=32, bias=bias)
        assert GPT(cfg).num_params() == cfg.n_params()


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_embd=130, n_head=4), "divisible"),
    (dict(n_layer=0), "n_layer=0"),
    (dict(n_layer=10_000), "between"),
    (dict(vocab_size=2.5), "integer"),
    (dict(dropout=1.5), "dropout"),
    (dict(block_size=True), "integer"),
])
def test_validation_names_the_value(kwargs, words):
    base = dict(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)
    with pytest.raises(ValueError, match=words):
        GPTConfig(**{**base, **kwargs})


def test_from_dict_round_trip_and_unknown_keys():
    cfg = preset("nano", vocab_size=65)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config keys: n_ctx"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_ctx": 3})
    with pytest.raises(ValueError, match="format_version"):
        GPTConfig.from_dict({**cfg.to_dict(), "format_version": 99})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt5")


def test_lr_schedule_warmup_then_cosine():
    c = TrainConfig(steps=1000, lr=1e-3, min_lr=1e-4, warmup_steps=100)
    assert lr_at(0, c) == pytest.approx(1e-5)
    assert lr_at(99, c) == pytest.approx(1e-3)
    assert lr_at(550, c) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(1000, c) == pytest.approx(1e-4)
    vals = [lr_at(s, c) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_train_config_validation():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    assert math.isclose(TrainConfig(lr=1e-3).final_lr, 1e-4)
