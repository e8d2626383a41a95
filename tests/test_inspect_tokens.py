"""Tests for core.inspect.tokens: groups, offsets and counts on hard strings; surprise
against a direct computation; the BPE lab's pair counts against an independent recount."""
import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers

from conftest import SAMPLE_TEXT, make_model
from core.inspect.tokens import (
    MAX_LAB_VOCAB,
    MAX_TEXT_CHARS,
    bpe_merges,
    byte_level_display,
    check_lab_vocab,
    check_text,
    code_points,
    fetch_gpt2_tokenizer,
    find_gpt2_tokenizer,
    grapheme_bounds,
    group_surprise,
    group_tokens,
    replay_merges,
    text_counts,
    token_surprise,
    tokenize,
    train_bpe_lab,
    truncated_bpe,
    visible,
)
from core.tokenizer import Tokenizer

HARD_STRINGS = [
    "",
    "a",
    "hello world!!!? (안녕하세요!) lol123 😉",
    "   leading spaces and trailing  ",
    "FILE:\n\tindented\r\nwindows line\n\n\nend",
    "👨‍👩‍👧 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🇫🇷🇩🇪 flags",
    "日本語のテキストと中文",
    "e\u0301 combining, n\u0303o, a\u0308\u0304",
    "controls \x00 \x07 \x1b[31m red \x7f \x85",
    "zero\u200bwidth\u00a0nbsp\ufeffbom",
    "a<|endoftext|>b",
    "<img src=x onerror=alert(1)> & <script>alert('x')</script>",
]

CORPUS = SAMPLE_TEXT * 2 + "\n".join(HARD_STRINGS[1:]) * 2


@pytest.fixture(scope="module")
def toks(char_tokenizer):
    return {"char": char_tokenizer, "bpe": Tokenizer.train_bpe(CORPUS, 320),
            "bytes": Tokenizer.train_bpe(CORPUS, 257)}


@pytest.mark.parametrize("name", ["char", "bpe", "bytes"])
@pytest.mark.parametrize("text", HARD_STRINGS)
def test_groups_cover_text_on_visible_character_boundaries(toks, name, text):
    tok = toks[name]
    v = tokenize(tok, text)
    assert v.ids == tok.encode(text)
    # groups partition the tokens, in order
    assert [i for g in v.groups for i in range(*g)] == list(range(len(v.ids)))
    # and their spans partition the text, on grapheme boundaries
    assert "".join(v.group_text(g) for g in range(len(v.groups))) == text
    bounds = set(grapheme_bounds(text))
    for g in range(len(v.groups)):
        a, b = v.group_span(g)
        assert a in bounds and b in bounds and a < b
        assert "\ufffd" not in visible(v.group_text(g))  # never a bare replacement character
    assert all("\ufffd" not in t for t in v.tokens)
    c = v.counts
    assert c["tokens"] == len(v.ids) and c["chars"] == len(text) and c["bytes"] == len(text.encode("utf-8"))
    assert c["chars_per_token"] == (len(text) / len(v.ids) if v.ids else None)
    d = v.to_dict()
    json.dumps(d)  # JSON-able
    assert [g["text"] for g in d["groups"]] == [v.group_text(g) for g in range(len(v.groups))]
    assert [i for g in d["groups"] for i in g["ids"]] == v.ids


def test_one_span_per_visible_character(toks):
    bpe = toks["bytes"]  # no merges: every byte is a token
    for s in ["👍🏽", "👨‍👩‍👧", "🏳️‍🌈", "🇫🇷", "e\u0301", "日"]:
        v = tokenize(bpe, s)
        assert len(v.groups) == 1 and v.group_text(0) == s
        assert len(v.ids) == len(s.encode("utf-8")) > 1  # one span carries all the ids
        assert visible(s) == s  # drawn whole, so it renders as one glyph
    v = tokenize(bpe, "日本語")
    assert [v.group_text(g) for g in range(3)] == ["日", "本", "語"] and v.groups == [(0, 3), (3, 6), (6, 9)]
    assert v.bytes_hex[:3] == ["e6", "97", "a5"] and v.tokens[0] == "<0xE6>"
    assert v.byte_level[0] == "æ" and byte_level_display("Ġthe") == "·the"
    v = tokenize(bpe, "🇫🇷🇩🇪")
    assert [v.group_text(g) for g in range(len(v.groups))] == ["🇫🇷", "🇩🇪"]
    v = tokenize(toks["char"], "a\r\nb")
    assert [v.group_text(g) for g in range(len(v.groups))] == ["a", "\r\n", "b"]


def test_grapheme_bounds_and_visible():
    assert grapheme_bounds("") == [0]
    assert grapheme_bounds("ab") == [0, 1, 2]
    assert grapheme_bounds("e\u0301x") == [0, 2, 3]
    assert grapheme_bounds("a\u200db") == [0, 2, 3]  # ZWJ extends "a", but joins only emoji after it
    assert grapheme_bounds("\n\u0301") == [0, 1, 2]  # a mark after a control starts a new character
    assert visible(" \t\n") == "·→↵\n"
    assert visible("x\u200by\u00a0") == "x\\u200by\\u00a0"
    assert visible("<img src=x onerror=alert(1)>") == "<img·src=x·onerror=alert(1)>"  # data, untouched
    assert code_points("A👍") == "U+0041 U+1F44D"


def test_group_tokens_joins_overlapping_spans():
    assert group_tokens([(0, 1), (0, 1), (1, 2)], "éx") == [(0, 2), (2, 3)]
    assert group_tokens([(0, 2), (2, 3)], "e\u0301x") == [(0, 1), (1, 2)]
    assert group_tokens([(0, 1), (1, 2), (2, 3)], "e\u0301x") == [(0, 2), (2, 3)]  # mark split from its letter


def test_counts():
    c = text_counts("hello  world\n", 4)
    assert c == {"tokens": 4, "chars": 13, "visible_chars": 13, "bytes": 13, "words": 2, "chars_per_token": 3.25,
                 "bytes_per_token": 3.25, "tokens_per_word": 2.0}
    c = text_counts("日本", 6)
    assert c["bytes"] == 6 and c["chars"] == 2 and c["words"] == 1 and c["tokens_per_word"] == 6
    assert text_counts("", 0)["chars_per_token"] is None and text_counts("", 0)["tokens_per_word"] is None


def test_length_cap():
    assert check_text(None) == ""
    with pytest.raises(ValueError, match="20,001 characters, over the limit of 20,000"):
        check_text("x" * (MAX_TEXT_CHARS + 1))
    with pytest.raises(ValueError, match="must be a string"):
        check_text(12)


# ---- surprise --------------------------------------------------------------------------
def _direct(model, ids):
    x = torch.tensor([ids])
    logits, _ = model(x)
    return F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="none").tolist()


def test_surprise_matches_direct_cross_entropy(char_tokenizer):
    model = make_model(char_tokenizer.vocab_size, block_size=32)
    ids = char_tokenizer.encode(SAMPLE_TEXT[:20])
    s = token_surprise(model, ids)
    assert s[0] is None and len(s) == len(ids)
    assert s[1:] == pytest.approx(_direct(model, ids), abs=1e-5)
    # the mean is the model's loss on the text
    _, loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    assert sum(s[1:]) / (len(ids) - 1) == pytest.approx(loss.item(), abs=1e-5)
    assert token_surprise(model, ids[:1]) == [None] and token_surprise(model, []) == []
    capped = token_surprise(model, ids, max_tokens=5)
    assert capped[1:5] == pytest.approx(s[1:5], abs=1e-5) and capped[5:] == [None] * (len(ids) - 5)
    with pytest.raises(ValueError, match="out of range"):
        token_surprise(model, [0, char_tokenizer.vocab_size])


def test_surprise_beyond_the_block_uses_windows_of_context(char_tokenizer):
    T = 16
    model = make_model(char_tokenizer.vocab_size, block_size=T)
    ids = char_tokenizer.encode(SAMPLE_TEXT[:45])
    s = token_surprise(model, ids, batch_size=2)
    assert s[0] is None and all(v is not None for v in s[1:])
    assert s[1:T] == pytest.approx(_direct(model, ids[:T]), abs=1e-5)
    for j in range(T, len(ids)):  # each target is scored with one window's context of >= T/2 tokens
        ctx_losses = {n: _direct(model, ids[j - n:j + 1])[-1] for n in range(T // 2, T)}
        assert any(math.isclose(s[j], v, abs_tol=1e-5) for v in ctx_losses.values()), j


def test_group_surprise_sums_tokens(toks):
    v = tokenize(toks["bytes"], "a日")
    s = [None, 1.0, 2.0, 0.5]
    assert group_surprise(v, s) == [None, 3.5]


# ---- BPE lab --------------------------------------------------------------------------
def _recount(tok, corpus, k):
    """Independent reference: the corpus' words segmented by `tokenizers` itself with the first
    k merges, adjacent pairs counted."""
    tk = truncated_bpe(tok, k)
    words = Counter(p for p, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(corpus))
    pairs = Counter()
    for w, f in words.items():
        parts = [t.value for t in tk._hf.model.tokenize(w)]  # the BPE model on one pre-tokenized word
        for p in zip(parts, parts[1:]):
            pairs[p] += f
    return pairs


def test_lab_pair_counts_are_the_counts_that_chose_each_merge():
    lab = train_bpe_lab(CORPUS, 300)
    merges = lab.merges
    assert len(merges) == 300 - 257 == len(bpe_merges(lab.tokenizer))
    assert [m.rank for m in merges] == list(range(len(merges)))
    assert all(a.count >= b.count for a, b in zip(merges, merges[1:]))  # the best count never rises
    assert merges[-1].count >= 2  # min_frequency
    for k in (0, 1, 7, 25, len(merges) - 1):
        pairs = _recount(lab.tokenizer, CORPUS, k)
        m = merges[k]
        assert pairs[(m.left, m.right)] == m.count == max(pairs.values()), k
    # the corpus' length in tokens after every merge, and characters per token against vocab size
    assert lab.corpus_tokens[0] == len(CORPUS.encode("utf-8")) and len(lab.corpus_tokens) == len(merges) + 1
    assert all(a > b for a, b in zip(lab.corpus_tokens, lab.corpus_tokens[1:]))
    corpus_no_eot = CORPUS.replace("<|endoftext|>", "")
    lab2 = train_bpe_lab(corpus_no_eot, 300)
    assert lab2.corpus_tokens[-1] == len(lab2.tokenizer.encode(corpus_no_eot))
    assert lab.vocab_sizes[0] == 257 and lab.vocab_sizes[-1] == lab.tokenizer.vocab_size == 300
    assert lab.chars_per_token[0] == len(CORPUS) / len(CORPUS.encode("utf-8"))


def test_replay_counts_overlapping_pairs_like_the_trainer():
    counts, tokens = replay_merges("aaaa aaa", [("a", "a"), ("aa", "aa")])
    # words 'aaaa' and 'Ġaaa': (a, a) stands 3 + 2 times; after it, 'aa aa' once
    assert counts == [5, 1] and tokens == [8, 5, 4]


def test_truncated_bpe_replays_training(toks):
    tok = toks["bpe"]
    n = len(bpe_merges(tok))
    full = truncated_bpe(tok, n)
    prev = None
    for s in HARD_STRINGS:
        assert [full.id_to_token(i) for i in full.encode(s)] == [tok.id_to_token(i) for i in tok.encode(s)]
        assert full.decode(full.encode(s)) == s
    t0 = truncated_bpe(tok, 0)
    s = "First Citizen: 日本 😉"
    assert len(t0.encode(s)) == len(s.encode("utf-8")) and t0.vocab_size == 257
    for k in range(0, n + 1, 5):
        count = len(truncated_bpe(tok, k).encode(SAMPLE_TEXT[:300]))
        assert prev is None or count <= prev
        prev = count
    with pytest.raises(ValueError, match="out of range"):
        truncated_bpe(tok, n + 1)
    with pytest.raises(ValueError, match="no merges"):
        bpe_merges(toks["char"])


def test_lab_validation():
    assert check_lab_vocab(512) == 512 and check_lab_vocab(512.0) == 512
    for bad in (256, MAX_LAB_VOCAB + 1, "300", True, 300.5):
        with pytest.raises(ValueError, match="vocab size"):
            check_lab_vocab(bad)
    with pytest.raises(ValueError, match="empty"):
        train_bpe_lab("   ", 300)
    with pytest.raises(ValueError, match="over the limit of 50"):
        train_bpe_lab("x" * 51, 300, max_chars=50)


def test_find_gpt2_tokenizer_reads_only_the_local_cache(tmp_path, toks):
    assert find_gpt2_tokenizer(tmp_path) is None
    repo = tmp_path / "models--openai-community--gpt2"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    toks["bpe"].save(snap / "tokenizer.json")
    found = find_gpt2_tokenizer(tmp_path)
    assert found is not None and found.encode("hello 日本") == toks["bpe"].encode("hello 日本")


def test_fetch_gpt2_tokenizer_offline_or_unreachable_says_unavailable_at_once(tmp_path, monkeypatch):
    import socket

    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a) or 1 / 0)

    def unreachable(address, timeout=None, *a, **k):
        calls.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ValueError, match="unavailable: the app is offline"):
        fetch_gpt2_tokenizer(tmp_path, offline=True)
    assert calls == []  # offline: not even a test connection
    with pytest.raises(ValueError, match="unavailable: .* cannot be reached"):
        fetch_gpt2_tokenizer(tmp_path, timeout=1)
    assert len(calls) == 1 and isinstance(calls[0], tuple)  # one connection attempt, no download


def test_fetch_gpt2_tokenizer_prefers_the_local_cache(tmp_path, toks, monkeypatch):
    import socket

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: 1 / 0)
    snap = tmp_path / "models--gpt2" / "snapshots" / ("1" * 40)
    snap.mkdir(parents=True)
    (tmp_path / "models--gpt2" / "refs").mkdir()
    (tmp_path / "models--gpt2" / "refs" / "main").write_text("1" * 40)
    toks["bpe"].save(snap / "tokenizer.json")
    assert fetch_gpt2_tokenizer(tmp_path).encode("hi 👍") == toks["bpe"].encode("hi 👍")
