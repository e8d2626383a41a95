"""Shared fixtures: tiny real models and checkpoints made in tmp dirs (nothing downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

SAMPLE_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
) * 20


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip("Tiny Shakespeare is not at ../shared/data (fine on a fresh clone)")
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def char_tokenizer():
    from core.tokenizer import Tokenizer

    return Tokenizer.train_char(SAMPLE_TEXT)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from core.tokenizer import Tokenizer

    return Tokenizer.train_bpe(SAMPLE_TEXT * 3, 300)


def make_model(vocab_size: int, seed: int = 0, **overrides):
    from core.config import preset
    from core.model import GPT

    torch.manual_seed(seed)
    cfg = preset("micro", vocab_size=vocab_size, **{"block_size": 32, **overrides})
    return GPT(cfg).eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, char_tokenizer) -> Path:
    """A real Glassbox checkpoint folder: 2-layer GPT, char tokenizer, random weights."""
    from core import checkpoint

    model = make_model(char_tokenizer.vocab_size)
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "tiny", model, char_tokenizer, {"note": "test"})
