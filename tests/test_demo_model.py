"""The bundled demo model: present, small, loads, and writes Shakespeare-like text."""

import math

import torch

from core import checkpoint
from core.config import preset
from core.generate import generate
from tests.conftest import ROOT

DEMO = ROOT / "assets" / "demo"


def test_demo_model_is_bundled_small_and_loads():
    assert checkpoint.is_checkpoint(DEMO), "assets/demo must hold the bundled checkpoint"
    size = sum(f.stat().st_size for f in DEMO.iterdir())
    assert size <= 10 * 1024 * 1024
    ck = checkpoint.load(DEMO)
    assert ck.config == preset("demo", dropout=ck.config.dropout)
    assert ck.tokenizer.kind == "bpe" and ck.tokenizer.vocab_size == ck.config.vocab_size
    assert not (DEMO / "train_state.safetensors").exists()  # exported without optimizer state
    # it learned: its recorded val loss is far below a uniform guess over 2048 tokens
    assert ck.meta["best_val"] < math.log(ck.config.vocab_size) - 2.5


def test_demo_model_generates_text():
    ck = checkpoint.load(DEMO)
    ids = ck.tokenizer.encode("ROMEO:")
    out = generate(ck.model, ids, 80, temperature=0.8, top_k=50, seed=0)
    assert out == generate(ck.model, ids, 80, temperature=0.8, top_k=50, seed=0)
    text = ck.tokenizer.decode(out)
    words = text.split()
    assert len(words) > 20
    letters = sum(c.isalpha() for c in text) / max(1, len(text))
    assert letters > 0.6, text


def test_demo_model_predicts_shakespeare_better_than_chance(shakespeare_text):
    ck = checkpoint.load(DEMO)
    ids = ck.tokenizer.encode(shakespeare_text[-20_000:])  # the tail is in the validation split
    x = torch.tensor([ids[i:i + 128] for i in range(0, 128 * 8, 128)])
    y = torch.tensor([ids[i + 1:i + 129] for i in range(0, 128 * 8, 128)])
    with torch.no_grad():
        _, loss = ck.model(x, y)
    assert loss.item() < 5.0
