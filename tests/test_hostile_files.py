"""Hostile files, each refused by bounded parsing *before* the library that reads it, with a
short message of its own that names the file and no server path; and memory that stays
flat when the worst of them is loaded again and again in one process."""

import json
import os
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from core import checkpoint
from core.checkpoint import CheckpointError
from core.safefile import MAX_HEADER_BYTES, json_depth
from core.tokenizer import MAX_LOAD_VOCAB, Tokenizer, TokenizerError

DEEP = "[" * 100_000 + "]" * 100_000


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _write_header(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _refused(folder, match, error=CheckpointError):
    with pytest.raises(error, match=match) as e:
        checkpoint.load(folder)
    msg = str(e.value)
    assert len(msg) < 400, msg  # short, whatever the input
    assert str(folder.parent) not in msg and "/tmp" not in msg, msg  # no server path
    return msg


# --- safetensors headers --------------------------------------------------------------------

@pytest.mark.parametrize("entry, match", [
    ({"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}, r"data_offsets must be two integers"),
    ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, r"dtype must be a string .*, got \[.F32.\]"),
    ({"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}, r"shape must be a list of at most 8 non-negative"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, r"shape must be a list"),
    ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, r"shape must be a list"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}, r"data_offsets must be two integers"),
    ({"dtype": "F32", "shape": [2 ** 39, 2 ** 39], "data_offsets": [0, 8]}, r"does not fit the file's 8 data bytes"),
    ({"dtype": "Q" * 100_000, "shape": [2], "data_offsets": [0, 8]}, r"unsupported dtype 'QQQQ"),
    ("not an object", r"malformed header entry \('not an object'\)"),
], ids=["offsets-strings", "dtype-list", "shape-negative", "shape-bool", "shape-string", "offsets-three",
        "shape-huge", "dtype-huge", "entry-string"])
def test_bad_header_entries(tiny_ckpt, tmp_path, entry, match):
    p = _copy(tiny_ckpt, tmp_path / "bad")
    _write_header(p / "model.safetensors", {"transformer.wte.weight": entry}, b"\0" * 8)
    msg = _refused(p, match)
    assert msg.startswith("model.safetensors")


def test_header_shapes_beyond_the_entries(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path / "bad")
    _write_header(p / "model.safetensors", [1, 2, 3])
    _refused(p, r"not a valid safetensors file \(bad or truncated header\)")
    _write_header(p / "model.safetensors", {"__metadata__": {"format": ["pt"]}})
    _refused(p, r"__metadata__ must map names to strings")
    _write_header(p / "model.safetensors", {"w" * 5000: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})
    _refused(p, r"a tensor name of 5,000 characters \('wwww")
    raw = b'{"a": ' + DEEP.encode() + b"}"
    (p / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    _refused(p, r"model\.safetensors's header nests 100,001 levels deep")
    _write_header(p / "model.safetensors", {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                                            for i in range(70_000)})
    _refused(p, r"lists 70,000 tensors; at most 65,536")


def test_a_90_mb_header_is_refused_before_it_is_read(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path / "bad")
    n = 90 * 2**20
    with open(p / "model.safetensors", "wb") as f:  # sparse: declares 90 MB, stores a few bytes
        f.write(struct.pack("<Q", n) + b'{"a": ')
        f.seek(8 + n + 16)
        f.write(b"\0")
    msg = _refused(p, rf"declares a {n:,}-byte safetensors header; at most {MAX_HEADER_BYTES:,} bytes are read")
    assert "94,371,840" in msg


def test_a_huge_header_in_a_small_file_is_truncation(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path / "bad")
    (p / "model.safetensors").write_bytes(struct.pack("<Q", 2**60) + b'{"a": 1}')
    _refused(p, r"not a valid safetensors file \(bad or truncated header\)")


# --- JSON nested 100,000 levels deep ----------------------------------------------------------

@pytest.mark.parametrize("name, error", [("config.json", CheckpointError), ("meta.json", CheckpointError),
                                         ("tokenizer.json", CheckpointError)])
def test_deep_json_is_refused_by_depth(tiny_ckpt, tmp_path, name, error):
    p = _copy(tiny_ckpt, tmp_path / "bad")
    (p / name).write_text('{"format": "glassbox", "x": ' + DEEP + "}")
    _refused(p, r"nests 100,00[01] levels deep; at most 64", error)


def test_deep_index_and_deep_vocab_json(tmp_path, char_tokenizer):
    from core.hf import read_index

    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": ' + DEEP + "}")
    with pytest.raises(CheckpointError, match="nests 100,001 levels deep"):
        read_index(tmp_path / "model.safetensors.index.json")
    (tmp_path / "vocab.json").write_text('{"a": ' + DEEP + "}")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(TokenizerError, match=r"vocab\.json nests 100,001 levels deep; at most 1"):
        Tokenizer.from_file(tmp_path)


def test_depth_scan_ignores_brackets_in_strings_and_escapes():
    assert json_depth(b'{"a": "[[[[", "b": "\\"[[", "c": [["\\\\"]]}') == 3
    assert json_depth(DEEP.encode()) == 100_000
    assert json_depth(b"") == 0
    doc = json.dumps({"k[": ['\\"{', {"x": [1, "]]]"]}]})
    for chunk in (1, 3, 7, 1 << 16):  # the carry from one chunk to the next is exact
        assert json_depth(doc.encode(), chunk=chunk) == 4


# --- tokenizer.json ---------------------------------------------------------------------------

def _tok_json(bpe_tokenizer) -> dict:
    return json.loads(bpe_tokenizer.to_str())


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [3]}),
     r"pre_tokenizer\.pretokenizers\[0\] must be an object, got 3"),
    (lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": 3}),
     r"pre_tokenizer\.pretokenizers must be a list, got 3"),
    (lambda d: d.update(decoder={"type": 7}), r"decoder has no string \"type\" \(got 7\)"),
    (lambda d: d.update(normalizer="lowercase"), r"normalizer must be an object, got 'lowercase'"),
    (lambda d: d["model"].update(merges=[["a", "b", "c"]]), r"a merge must be"),
    (lambda d: d["model"].update(merges={"a": "b"}), r"model\.merges must be a list"),
    (lambda d: d["model"].update(vocab={"x" * 10_000: 0}), r"a vocabulary entry of 10,000 characters"),
    (lambda d: d.update(added_tokens=[1, 2]), r"added_tokens must be a list of objects"),
    (lambda d: d["model"].update(type="Z" * 100_000), r"unsupported tokenizer: model 'ZZZ"),
], ids=["sequence-number", "sequence-not-list", "type-number", "normalizer-string", "merge-triple",
        "merges-object", "token-huge", "added-numbers", "type-huge"])
def test_bad_tokenizer_structure(bpe_tokenizer, edit, match):
    d = _tok_json(bpe_tokenizer)
    edit(d)
    with pytest.raises(TokenizerError, match=match) as e:
        Tokenizer.from_str(json.dumps(d))
    assert len(str(e.value)) < 300


def test_sequence_with_a_number_through_checkpoint_load(tiny_bpe_ckpt, tmp_path, bpe_tokenizer):
    p = _copy(tiny_bpe_ckpt, tmp_path / "bad")
    d = _tok_json(bpe_tokenizer)
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [3, d["pre_tokenizer"]]}
    (p / "tokenizer.json").write_text(json.dumps(d))
    _refused(p, r"invalid tokenizer \(tokenizer\.json\): .*pre_tokenizer\.pretokenizers\[0\] must be an object")


def _huge_vocab_json(bpe_tokenizer, n: int) -> str:
    d = _tok_json(bpe_tokenizer)
    d["model"]["vocab"] = {f"t{i}": i for i in range(n)}
    d["model"]["merges"] = []
    return json.dumps(d)


def test_a_valid_but_huge_tokenizer_is_bounded(bpe_tokenizer, tmp_path, monkeypatch):
    with pytest.raises(TokenizerError, match=rf"declares {MAX_LOAD_VOCAB + 1:,} tokens; at most {MAX_LOAD_VOCAB:,}"):
        Tokenizer.from_str(_huge_vocab_json(bpe_tokenizer, MAX_LOAD_VOCAB + 1))
    big = tmp_path / "tokenizer.json"
    with open(big, "wb") as f:  # sparse: 40 MB by its size, refused before it is read
        f.seek(40 * 2**20)
        f.write(b"}")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json is 41,943,041 bytes; tokenizer files over 16,777,216"):
        Tokenizer.from_file(big)
    big.unlink()
    # the same count check on the other declared lists (a lower limit keeps the files small)
    monkeypatch.setattr("core.tokenizer.MAX_LOAD_VOCAB", 1_000)
    d = _tok_json(bpe_tokenizer)
    d["model"]["merges"] = ["a b"] * 1_001
    with pytest.raises(TokenizerError, match=r"model\.merges declares 1,001 merges; at most 1,000"):
        Tokenizer.from_str(json.dumps(d))
    d = _tok_json(bpe_tokenizer)
    d["added_tokens"] = [{"id": i, "content": f"<{i}>"} for i in range(1_001)]
    with pytest.raises(TokenizerError, match=r"declares 1,001 added tokens"):
        Tokenizer.from_str(json.dumps(d))
    (tmp_path / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(1_001)}))
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(TokenizerError, match=r"vocab\.json declares 1,001 tokens"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "merges.txt").write_text("a b\n" * 1_001)
    with pytest.raises(TokenizerError, match=r"merges\.txt holds 1,001 merges"):
        Tokenizer.from_file(tmp_path)


# --- config values that would echo back ------------------------------------------------------

def test_config_values_are_never_echoed_whole(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path / "bad")
    base = json.loads((p / "config.json").read_text())
    for change, match in (({"n_layer": "x" * 1_000_000}, r"n_layer must be a number.*got 'xxx"),
                          ({"k" * 1_000_000: 1}, r"a key of 1,000,000 characters"),
                          ({"n_embd": [[1]] * 1000}, r"n_embd must be a number")):
        (p / "config.json").write_text(json.dumps({**base, **change}))
        _refused(p, match)


def test_transformers_config_values_are_bounded(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10, "n_positions": 8,
                                                      "n_layer": 1, "n_head": 1, "n_embd": 4,
                                                      "activation_function": "g" * 100_000}))
    save_file({"wte.weight": torch.zeros(10, 4)}, tmp_path / "model.safetensors")
    msg = _refused(tmp_path, r"activation_function must be a number, true/false or a short name")
    assert len(msg) < 200


# --- memory stays flat over repeated hostile files ------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_memory_stays_flat_over_50_hostile_loads(tiny_bpe_ckpt, tmp_path, bpe_tokenizer):
    """The hostile files that cost the most to refuse — a tokenizer.json declaring 262,145
    merges (parsed in full before its count is refused), meta.json nested 100,000 deep, a
    90 MB header, a header with string offsets — loaded 50 times in this process: RSS ends
    within 50 MB of where it was after the first round."""
    merges = _copy(tiny_bpe_ckpt, tmp_path / "merges")
    d = _tok_json(bpe_tokenizer)
    d["model"]["merges"] = ["a b"] * (MAX_LOAD_VOCAB + 1)
    (merges / "tokenizer.json").write_text(json.dumps(d))
    deep = _copy(tiny_bpe_ckpt, tmp_path / "deep")
    (deep / "meta.json").write_text(DEEP)
    header = _copy(tiny_bpe_ckpt, tmp_path / "header")
    with open(header / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", 90 * 2**20) + b"{")
        f.seek(90 * 2**20 + 64)
        f.write(b"\0")
    offsets = _copy(tiny_bpe_ckpt, tmp_path / "offsets")
    _write_header(offsets / "model.safetensors",
                  {"transformer.wte.weight": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, b"\0" * 8)

    def round_():
        for folder in (merges, deep, header, offsets):
            with pytest.raises(CheckpointError):
                checkpoint.load(folder)

    round_()
    start = _rss()
    for _ in range(49):
        round_()
    grew = _rss() - start
    assert grew < 50 * 2**20, f"RSS grew {grew / 2**20:.1f} MB over 50 hostile loads"
