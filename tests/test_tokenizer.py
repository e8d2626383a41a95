"""Tests for core.tokenizer: round trips, offsets and display over tokenizers x hard strings."""
import json
import unicodedata
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers, processors

from core.tokenizer import (
    EOT,
    MAX_VOCAB_SIZE,
    MIN_BPE_VOCAB_SIZE,
    Encoding,
    Tokenizer,
    TokenizerError,
    byte_decoder,
    display_bytes,
    display_text,
)

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"

HARD_STRINGS = [
    "",
    "?",
    "hello world!!!? (안녕하세요!) lol123 😉",
    "   leading spaces and trailing  ",
    "FILE:\n\tindented\r\nwindows line\n\n\nend",
    "👨‍👩‍👧 family, 🏳️‍🌈 flag, 👍🏽 thumbs",
    "日本語のテキストと中文",
    "e\u0301 combining, n\u0303o, a\u0308\u0304",
    "controls \x00 \x07 \x1b[31m red \x7f \x85",
    "zero\u200bwidth\u00a0nbsp\ufeffbom",
    "a<|endoftext|>b",
]

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 20 + "\n".join(HARD_STRINGS) * 3


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """name -> Tokenizer, built once: char, byte-level BPE, BPE without merges, and the
    same BPE read back as a GPT-2 folder (vocab.json + merges.txt) and as a hub-style
    tokenizer.json whose post-processor trims offsets."""
    bpe = Tokenizer.train_bpe(CORPUS, 400)
    folder = tmp_path_factory.mktemp("gpt2")
    bpe._hf.model.save(str(folder))
    trimmed = json.loads(bpe.to_str())
    trimmed["post_processor"] = json.loads(processors.ByteLevel(trim_offsets=True).__getstate__())
    return {
        "char": Tokenizer.train_char(CORPUS),
        "bpe": bpe,
        "bpe257": Tokenizer.train_bpe(CORPUS, MIN_BPE_VOCAB_SIZE),
        "gpt2_folder": Tokenizer.from_file(folder),
        "hub_json": Tokenizer.from_str(json.dumps(trimmed)),
    }


NAMES = ["char", "bpe", "bpe257", "gpt2_folder", "hub_json"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", HARD_STRINGS)
def test_round_trip(toks, name, text):
    tok = toks[name]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", HARD_STRINGS)
def test_offsets_slice_back_and_cover(toks, name, text):
    tok = toks[name]
    enc = tok.encode_with_offsets(text)
    assert isinstance(enc, Encoding) and enc.ids == tok.encode(text) and len(enc.offsets) == len(enc)
    pieces, end = [], 0
    for k, (a, b) in enumerate(enc.offsets):
        assert 0 <= a <= b <= len(text)
        if k and (a, b) == enc.offsets[k - 1]:
            continue
        assert a == end, f"span {(a, b)} leaves a gap or overlaps after {end}"
        pieces.append(text[a:b])
        end = b
    assert "".join(pieces) == text
    # the tokens sharing a span hold exactly the bytes of that span
    groups: dict[tuple[int, int], bytes] = {}
    for i, span in zip(enc.ids, enc.offsets):
        groups[span] = groups.get(span, b"") + tok.token_bytes(i)
    for (a, b), raw in groups.items():
        assert raw == text[a:b].encode("utf-8")


def test_partial_characters_share_the_whole_character(toks):
    tok = toks["bpe257"]  # no merges: one token per byte
    enc = tok.encode_with_offsets("a😉b")
    assert enc.offsets == [(0, 1), (1, 2), (1, 2), (1, 2), (1, 2), (2, 3)]
    assert [tok.display(i) for i in enc.ids] == ["a", "<0xF0>", "<0x9F>", "<0x98>", "<0x89>", "b"]


def test_leading_spaces_belong_to_the_token(toks):
    for name in ("bpe", "hub_json"):
        enc = toks[name].encode_with_offsets("  hello")
        assert enc.offsets[0] == (0, 1) and enc.offsets[-1][1] == 7


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", HARD_STRINGS)
def test_display_is_visible_and_never_replacement_char(toks, name, text):
    tok = toks[name]
    for i in tok.encode(text):
        shown = tok.display(i)
        assert shown and "\ufffd" not in shown
        assert not any(unicodedata.category(ch)[0] in "CZ" for ch in shown), repr(shown)


def test_display_text_and_bytes():
    assert display_text("a b\n\t\r\x00\x07\x1b\x7f") == "a·b↵→␍␀␇␛␡"
    assert display_text("x\u200dy\u00a0\ufffd") == "x\\u200dy\\u00a0\\ufffd"
    assert display_text("\u0301") == "\u25cc\u0301"
    assert display_bytes("😉 ok".encode()) == "😉·ok"
    assert display_bytes(b"\xf0\x9f") == "<0xF0><0x9F>"
    assert display_bytes(b"a\xe6\x97") == "a<0xE6><0x97>"
    assert display_bytes(b"\x98\x89b") == "<0x98><0x89>b"


def test_vocab_and_token_lookup(toks):
    bpe = toks["bpe"]
    shown = bpe.vocab()
    assert len(shown) == bpe.vocab_size == 400
    assert all(s and "\ufffd" not in s for s in shown)
    assert shown[bpe.eot_id] == EOT and bpe.is_special(bpe.eot_id)
    assert bpe.token_to_id("Ġ") is not None and shown[bpe.token_to_id("Ġ")] == "·"
    assert bpe.id_to_token(bpe.token_to_id("Ġ")) == "Ġ"
    assert bpe.token_to_id("no such token") is None
    assert bpe.token_bytes(bpe.eot_id) == EOT.encode()


def test_byte_table_is_gpt2s():
    table = byte_decoder()
    assert sorted(table.values()) == list(range(256))
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table["Ġ"] == ord(" ") and table["Ċ"] == ord("\n") and table["A"] == ord("A")


def test_char_vocab_and_unknown():
    tok = Tokenizer.train_char("hello\n")
    assert tok.kind == "char" and tok.eot_id is None
    assert tok.vocab() == ["↵", "e", "h", "l", "o", "<unk>"] and tok.unk_id == 5 == tok.vocab_size - 1
    assert tok.encode("hole") == [2, 4, 3, 1]
    assert tok.encode("hZ😉") == [2, 5, 5] and tok.decode([2, 5]) == "h<unk>"
    assert tok.is_special(5) and not tok.is_special(2) and tok.token_bytes(3) == b"l"
    assert tok.encode("<unk>") == [5, 5, 5, 5, 5]  # the text "<unk>" is not the unk token


@pytest.mark.parametrize("name", ["char", "bpe", "gpt2_folder"])
def test_save_load_identical(toks, tmp_path, name):
    tok = toks[name]
    path = tok.save(tmp_path / "tokenizer.json")
    assert path.is_file()
    for back in (Tokenizer.from_file(path), Tokenizer.from_file(tmp_path), Tokenizer.from_str(tok.to_str())):
        assert back.kind == tok.kind and back.vocab_size == tok.vocab_size
        assert back.eot_id == tok.eot_id and back.vocab() == tok.vocab()
        for text in HARD_STRINGS:
            assert back.encode_with_offsets(text) == tok.encode_with_offsets(text)


def test_gpt2_folder_matches_trained_and_keeps_eot(toks):
    bpe, folder_tok = toks["bpe"], toks["gpt2_folder"]
    assert folder_tok.kind == "bpe" and folder_tok.vocab_size == bpe.vocab_size
    assert folder_tok.eot_id == bpe.eot_id == 0 and folder_tok.is_special(0)
    assert folder_tok.encode("a<|endoftext|>b") == [bpe.token_to_id("a"), 0, bpe.token_to_id("b")]
    assert not folder_tok.id_to_token(folder_tok.encode("hear")[0]).startswith("Ġ")  # no prefix space


def test_gpt2_folder_agrees_with_transformers_slow_tokenizer(toks, tmp_path):
    transformers = pytest.importorskip("transformers")
    toks["bpe"]._hf.model.save(str(tmp_path))
    ref = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    ours = Tokenizer.from_file(tmp_path)
    for text in HARD_STRINGS[1:-1]:
        assert ours.encode(text) == ref.encode(text), text


def test_shakespeare_bpe_compresses_and_round_trips():
    if not SHAKESPEARE.is_file():
        pytest.skip("Tiny Shakespeare not present")
    text = SHAKESPEARE.read_text(encoding="utf-8")[:50_000]
    tok = Tokenizer.train_bpe(text, 512)
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text) / 2


@pytest.mark.parametrize("bad", [0, 256, MIN_BPE_VOCAB_SIZE - 1, MAX_VOCAB_SIZE + 1, 300.5, True, "400"])
def test_bad_vocab_size(bad):
    with pytest.raises(TokenizerError, match=rf"vocab_size.*{MIN_BPE_VOCAB_SIZE}.*{MAX_VOCAB_SIZE}"):
        Tokenizer.train_bpe(CORPUS, bad)


def test_empty_or_bad_corpus():
    for train in (Tokenizer.train_char, lambda t: Tokenizer.train_bpe(t, 300)):
        with pytest.raises(TokenizerError, match="empty"):
            train("")
        with pytest.raises(TokenizerError, match="str"):
            train(b"bytes")
    assert issubclass(TokenizerError, ValueError)


@pytest.mark.parametrize("content, match", [
    ("not json at all", "not JSON"),
    ("[]", "no 'model'"),
    ('{"model": 3}', "no 'model'"),
    ('{"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": {"type": "BertPreTokenizer"}}',
     "unsupported tokenizer.*WordPiece"),
    ('{"model": {"type": "BPE", "vocab": "oops", "merges": []}, "pre_tokenizer": {"type": "ByteLevel"},'
     ' "decoder": {"type": "ByteLevel"}}', "not a valid tokenizer.json"),
])
def test_bad_tokenizer_json(tmp_path, content, match):
    (tmp_path / "tokenizer.json").write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=match):
        Tokenizer.from_file(tmp_path)


def test_bad_files_and_folders(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="merges.txt is missing"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (tmp_path / "vocab.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(TokenizerError, match="vocab.json is not JSON"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1}', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na c\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="could not read"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "t.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        Tokenizer.from_file(tmp_path / "t.json")


def test_bad_ids_and_text(toks):
    tok = toks["bpe"]
    for bad in ([400], [-1], [1, 2, 10**9]):
        with pytest.raises(TokenizerError, match="out of range.*0..399"):
            tok.decode(bad)
    with pytest.raises(TokenizerError, match="out of range"):
        tok.display(400)
    with pytest.raises(TokenizerError, match="integer"):
        tok.decode(["a"])
    with pytest.raises(TokenizerError, match="must be a str"):
        tok.encode(None)
    with pytest.raises(TokenizerError, match="not valid Unicode"):
        tok.encode("a\ud800b")
