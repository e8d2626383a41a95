"""What runs before a training run's first step: the char-level encode of a whole corpus."""

import pytest

from core.tokenizer import Tokenizer
from tests.conftest import SAMPLE_TEXT

HARD = "emoji 🙂👩‍👩‍👧, CJK 漢字, tabs\tand\r\nCRLF, control \x00\x1b, combining é, <unk> literally"


@pytest.mark.parametrize("corpus", ["sample", "shakespeare"])
def test_vectorised_char_encode_equals_the_tokenizers_library(corpus, request):
    text = SAMPLE_TEXT if corpus == "sample" else request.getfixturevalue("shakespeare_text")
    tok = Tokenizer.train_char(text[: len(text) // 2])  # some characters of the rest are unknown
    probe = (text + HARD) * (4096 // len(text) + 1)
    assert len(probe) >= 4096  # long enough for the vectorised path
    fast = tok.encode(probe)
    assert fast == tok._encode(probe).ids
    assert tok.unk_id in fast
    full = Tokenizer.train_char(text)
    assert full.decode(full.encode(text)) == text


def test_char_encode_of_a_reloaded_tokenizer_and_lone_surrogates(tmp_path):
    tok = Tokenizer.train_char(SAMPLE_TEXT)
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(tmp_path / "tokenizer.json")
    long = SAMPLE_TEXT * 10
    assert again.encode(long) == tok.encode(long) == tok._encode(long).ids
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode(long + "\ud800")
