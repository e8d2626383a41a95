"""core.data: text validation, Tiny Shakespeare (offline: file:// downloads), synthetic corpora,
the token split and the batch sampler (shapes, shift, seeding, exact resume)."""

import hashlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core import data
from core.data import (
    CORPUS_CHOICES,
    SYNTHETIC_CORPORA,
    TINY_SHAKESPEARE_SHA256,
    BatchSampler,
    DataError,
    corpus_stats,
    download_file,
    find_tiny_shakespeare,
    fixed_batches,
    load_corpus,
    read_text_file,
    split_tokens,
    synthetic_corpus,
    tiny_shakespeare,
    validate_text,
)
from tests.conftest import SAMPLE_TEXT, SHAKESPEARE

needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="no ../shared/data/tinyshakespeare.txt")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("GLASSBOX_DATA_DIR", raising=False)
    monkeypatch.setenv("GLASSBOX_CACHE_DIR", str(tmp_path / "default-cache"))


# --- text files and pasted text ----------------------------------------------------------
def test_read_text_file_ok_strips_bom_keeps_line_endings(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xef\xbb\xbf" + "héllo wörld ✓\r\n".encode() * 20)
    text = read_text_file(p)
    assert text.startswith("héllo") and "\r\n" in text and len(text) == 15 * 20


def test_read_text_file_rejects_latin1_naming_offset(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes(("a" * 150 + "café").encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8.*0xe9.*byte offset 153"):
        read_text_file(p)


def test_read_text_file_too_large_names_size_and_limit(tmp_path):
    p = tmp_path / "big.txt"
    p.write_text("x" * 500)
    with pytest.raises(DataError, match=r"500 bytes, over the limit of 400 bytes"):
        read_text_file(p, max_bytes=400)


@pytest.mark.parametrize("content, match", [(b"", "is empty"), (b"  \n\n", "is empty"),
                                            (b"too short", "has 9 characters.*at least 100"),
                                            ("hi".encode("utf-16-le") * 80, "NUL")])
def test_read_text_file_empty_short_or_binary(tmp_path, content, match):
    p = tmp_path / "f.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_text_file(p)


def test_read_text_file_missing_or_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_text_file(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="not a regular file"):
        read_text_file(tmp_path)


def test_validate_text():
    assert validate_text("\ufeff" + SAMPLE_TEXT) == SAMPLE_TEXT
    assert validate_text("short", min_chars=1) == "short"
    with pytest.raises(DataError, match="lone surrogate U\\+D800 at character 3"):
        validate_text("abc\ud800" + "x" * 200)
    with pytest.raises(DataError, match="is empty"):
        validate_text("   \n")
    with pytest.raises(DataError, match="no text"):
        validate_text(None)
    with pytest.raises(DataError, match="has 5 characters.*at least 10"):
        validate_text("hello", min_chars=10)
    with pytest.raises(DataError, match="300 characters, over the limit of 200"):
        validate_text("y" * 300, max_chars=200)


def test_corpus_stats():
    s = corpus_stats("ab\ncd\né")
    assert s == {"chars": 7, "bytes": 8, "lines": 3, "words": 3, "distinct_chars": 6}


# --- Tiny Shakespeare and downloads (file:// URLs only: nothing touches the network) -----
def test_download_file_right_and_wrong_checksum(tmp_path):
    src = tmp_path / "src.txt"
    src.write_bytes(b"to be or not to be\n" * 100)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    out = download_file(src.as_uri(), cache / "x.txt", good)
    assert out.read_bytes() == src.read_bytes() and [p.name for p in cache.iterdir()] == ["x.txt"]
    with pytest.raises(DataError, match="checksum mismatch.*deleted"):
        download_file(src.as_uri(), cache / "y.txt", "0" * 64)
    with pytest.raises(DataError, match="larger than"):
        download_file(src.as_uri(), cache / "z.txt", good, max_bytes=100)
    assert [p.name for p in cache.iterdir()] == ["x.txt"]  # no temp files, no bad file


def test_tiny_shakespeare_wrong_checksum_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("not shakespeare\n" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="cannot be downloaded.*checksum mismatch.*GLASSBOX_DATA_DIR"):
        tiny_shakespeare(cache_dir=cache, search_paths=[], url=bad.as_uri())
    assert list(cache.iterdir()) == []


def test_tiny_shakespeare_no_network_or_no_download(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="cannot be downloaded.*sha256 " + TINY_SHAKESPEARE_SHA256):
        tiny_shakespeare(cache_dir=cache, search_paths=[], url=(tmp_path / "missing.txt").as_uri(), timeout=1)
    with pytest.raises(DataError, match="not available offline"):
        tiny_shakespeare(cache_dir=cache, search_paths=[], download=False)
    assert not any(cache.iterdir())


@needs_shakespeare
def test_find_local_tiny_shakespeare():
    found = find_tiny_shakespeare()
    assert found is not None and found.resolve() == SHAKESPEARE.resolve()
    assert data.sha256_file(found) == TINY_SHAKESPEARE_SHA256


@needs_shakespeare
def test_tiny_shakespeare_download_once_then_cached(tmp_path, monkeypatch):
    src = tmp_path / "served" / "input.txt"
    src.parent.mkdir()
    shutil.copy(SHAKESPEARE, src)
    cache = tmp_path / "cache"
    text = tiny_shakespeare(cache_dir=cache, search_paths=[], url=src.as_uri())
    assert text.startswith("First Citizen:") and len(text.encode()) == data.TINY_SHAKESPEARE_BYTES
    assert [p.name for p in cache.iterdir()] == ["tinyshakespeare.txt"]
    src.unlink()  # second call must not download again
    assert tiny_shakespeare(cache_dir=cache, search_paths=[], url=src.as_uri()) == text
    monkeypatch.setenv("GLASSBOX_DATA_DIR", str(cache))  # a folder holding the file
    assert find_tiny_shakespeare() == cache / "tinyshakespeare.txt"


def test_find_skips_copies_with_wrong_checksum(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("x" * 100)
    assert find_tiny_shakespeare([tmp_path, tmp_path / "nope"]) is None


# --- synthetic corpora and dispatch ------------------------------------------------------
@pytest.mark.parametrize("name", list(SYNTHETIC_CORPORA))
def test_synthetic_deterministic_and_sized(name):
    a = synthetic_corpus(name, n_chars=5000, seed=1)
    assert len(a) == 5000 and a == synthetic_corpus(name, n_chars=5000, seed=1)
    assert a != synthetic_corpus(name, n_chars=5000, seed=2)
    assert len(synthetic_corpus(name)) == data.SYNTHETIC_CHARS
    assert SYNTHETIC_CORPORA[name].description


def test_induction_lines_repeat():
    lines = synthetic_corpus("induction", n_chars=20_000, seed=0).split("\n")[:-1]  # last may be cut
    assert len(lines) > 100
    for line in lines:
        left, right = line.split(" | ")
        assert left == right and left
    assert len(set(lines)) > 0.9 * len(lines)  # random, not a few memorisable lines


def test_arithmetic_is_correct():
    for line in synthetic_corpus("arithmetic", n_chars=3000).split("\n")[:-1]:
        lhs, rhs = line.split("=")
        a, b = lhs.split("+")
        assert int(a) + int(b) == int(rhs)


def test_synthetic_bad_args():
    with pytest.raises(DataError, match="unknown synthetic corpus 'nope'.*induction"):
        synthetic_corpus("nope")
    with pytest.raises(DataError, match="n_chars=0 must be at least 1"):
        synthetic_corpus("counting", n_chars=0)


def test_load_corpus_dispatch(tmp_path):
    assert set(CORPUS_CHOICES) == {"shakespeare", *SYNTHETIC_CORPORA, "text", "file"}
    assert load_corpus("arithmetic", seed=3, n_chars=1000) == synthetic_corpus("arithmetic", 1000, seed=3)
    assert load_corpus("text", text=SAMPLE_TEXT) == SAMPLE_TEXT
    p = tmp_path / "c.txt"
    p.write_text(SAMPLE_TEXT, encoding="utf-8")
    assert load_corpus("file", path=p) == SAMPLE_TEXT
    with pytest.raises(ValueError, match="unknown corpus 'poems'.*shakespeare.*induction.*file"):
        load_corpus("poems")
    with pytest.raises(DataError, match="needs a path"):
        load_corpus("file")
    with pytest.raises(DataError, match="no text"):
        load_corpus("text")


# --- split and batches -------------------------------------------------------------------
def test_split_tokens_sizes_and_inputs():
    s = split_tokens(list(range(1000)))
    assert s.train.dtype == s.val.dtype == torch.long and s.train.dim() == 1
    assert (s.train.numel(), s.val.numel()) == (900, 100)
    assert s.train[-1] == 899 and s.val[0] == 900  # contiguous: train first, val last
    import numpy as np

    s2 = split_tokens(np.arange(50, dtype=np.int32), val_fraction=0.2)
    assert (s2.train.numel(), s2.val.numel()) == (40, 10) and s2.train.dtype == torch.long


@pytest.mark.parametrize("ids, frac, match", [([1], 0.1, "1 tokens.*0 train and 1 val"),
                                              ([1, 2, 3], 1e-20, "3 train and 0 val"),
                                              ([], 0.1, "no tokens"),
                                              ([1, 2, 3], 0.0, "val_fraction=0.0"),
                                              ([[1, 2], [3, 4]], 0.1, "1-D"),
                                              ([0.5, 1.5], 0.1, "integer"),
                                              ([1, -2, 3], 0.1, "negative token id -2")])
def test_split_tokens_errors(ids, frac, match):
    with pytest.raises(DataError, match=match):
        split_tokens(ids, val_fraction=frac)


def test_sampler_shapes_shift_and_seed():
    tokens = torch.arange(500)
    s = BatchSampler(tokens, block_size=16, batch_size=4, seed=7)
    x, y = s.next()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.long and x.device.type == "cpu"
    assert torch.equal(y, x + 1)  # data is arange: shifted by one token
    assert torch.equal(x[:, 1:], y[:, :-1])
    torch.manual_seed(0)  # the global RNG plays no part
    a = [BatchSampler(tokens, 16, 4, seed=7).next() for _ in range(2)]
    torch.manual_seed(123)
    b = BatchSampler(tokens, 16, 4, seed=7).next()
    assert torch.equal(a[0][0], x) and torch.equal(a[1][0], x) and torch.equal(b[0], x)
    assert not torch.equal(BatchSampler(tokens, 16, 4, seed=8).next()[0], x)


def test_sampler_covers_edges_exactly():
    s = BatchSampler(torch.arange(9), block_size=8, batch_size=3, seed=0)  # only one window fits
    x, y = s.next()
    assert torch.equal(x, torch.arange(8).expand(3, 8)) and torch.equal(y, torch.arange(1, 9).expand(3, 8))


def test_sampler_state_round_trip_through_safetensors(tmp_path):
    tokens = torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(0))
    s = BatchSampler(tokens, 32, 8, seed=3)
    for _ in range(5):
        s.next()
    state = s.state_dict()
    assert set(state) == {"generator_state", "step"} and all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["generator_state"].dtype == torch.uint8 and state["step"].dtype == torch.int64
    save_file(state, tmp_path / "sampler.safetensors")
    expected = [s.next() for _ in range(3)]

    r = BatchSampler(tokens, 32, 8, seed=999)
    r.load_state_dict(load_file(tmp_path / "sampler.safetensors"))
    assert r.step == 5
    for (ex, ey), (gx, gy) in zip(expected, [r.next() for _ in range(3)]):
        assert torch.equal(ex, gx) and torch.equal(ey, gy)
    with pytest.raises(DataError, match="missing step"):
        r.load_state_dict({"generator_state": state["generator_state"]})
    with pytest.raises(DataError, match="uint8"):
        r.load_state_dict({"generator_state": state["generator_state"].long(), "step": state["step"]})


def test_sampler_too_short_names_both_numbers():
    with pytest.raises(DataError, match=r"data has 10 tokens; .*block_size=10 .*at least 11"):
        BatchSampler(torch.arange(10), block_size=10, batch_size=2, seed=0)
    with pytest.raises(DataError, match="batch_size=0"):
        BatchSampler(torch.arange(100), block_size=10, batch_size=0, seed=0)


def test_fixed_batches_same_every_call():
    tokens = torch.arange(300)
    a = fixed_batches(tokens, 8, 4, n_batches=3, seed=1)
    b = fixed_batches(tokens, 8, 4, n_batches=3, seed=1)
    assert len(a) == 3 and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], a[1][0])
    with pytest.raises(DataError, match="n_batches=0"):
        fixed_batches(tokens, 8, 4, n_batches=0, seed=1)
