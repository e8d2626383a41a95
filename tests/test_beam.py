"""Beam search: width 1 is greedy, the tree is consistent, and the text equals Hugging Face
`transformers` beam search on a tiny random GPT-2 saved to tmp_path (offline)."""

import math

import pytest
import torch

from core import checkpoint
from core.beam import BeamSearch, beam_search
from core.generate import generate
from tests.conftest import make_model


@pytest.fixture(scope="module")
def model():
    return make_model(40, seed=3, block_size=48)


def test_width_one_is_greedy(model):
    for prompt in ([1, 2, 3], [9]):
        assert beam_search(model, prompt, 25, num_beams=1).tokens == generate(model, prompt, 25, greedy=True)


def test_max_new_tokens_and_eot(model):
    for n in (1, 5, 12):
        r = beam_search(model, [4, 5], n, num_beams=3)
        assert len(r.tokens) == n and all(len(t) == n for t, _ in r.hypotheses)
    assert beam_search(model, [4], 0, num_beams=2).tokens == []
    eot = beam_search(model, [4, 5], 6, num_beams=3).tokens[2]
    r = beam_search(model, [4, 5], 30, num_beams=3, eot_id=eot)
    hyps = [t for t, _ in r.hypotheses]
    met = [n for n in r.nodes[1:] if n.token == eot]
    assert met  # the search met end-of-text ...
    assert all(r.nodes[n.parent].token != eot for n in r.nodes[1:])  # no beam runs on past end-of-text
    assert all(eot not in t[:-1] for t in hyps)
    assert all(t[-1] == eot or len(t) == 30 for t in hyps)


def test_cache_and_recompute_agree_past_the_block(model):
    a = beam_search(model, list(range(20)), 32, num_beams=2, use_cache=True).tokens  # 52 > block_size 48
    b = beam_search(model, list(range(20)), 32, num_beams=2, use_cache=False).tokens
    assert a == b and len(a) == 32


def test_tree_is_consistent_and_scores_add_up(model):
    bs = BeamSearch(model, [1, 2], 8, num_beams=3, length_penalty=0.5)
    events = list(bs.run())
    res = bs.result()
    assert len(events) == 8 and all(len(e.running) == 3 for e in events)
    nodes = res.nodes
    for n in nodes[1:]:
        parent = nodes[n.parent]
        assert n.step == parent.step + 1
        assert math.isclose(n.score, parent.score + n.logprob, abs_tol=1e-4)
        assert 1 <= n.rank <= 40 and n.logprob <= 0
    best = nodes[res.path[-1]]
    assert math.isclose(res.score, best.score / 8 ** 0.5, abs_tol=1e-4)
    assert [s for _, s in res.hypotheses] == sorted((s for _, s in res.hypotheses), reverse=True)
    assert nodes[0].candidates and len(nodes[0].candidates) == 10  # what the model offered at the root


def test_validation(model):
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(model, [1], 5, num_beams=0)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, [1], 5, length_penalty=99)
    with pytest.raises(ValueError, match="empty"):
        beam_search(model, [], 5)


transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    hf.save_pretrained(folder, safe_serialization=True)
    return hf, checkpoint.load(folder)


@pytest.mark.parametrize("width,length_penalty,early", [(3, 1.0, False), (4, 0.5, True), (2, 2.0, "never")])
def test_beam_equals_transformers(hf_tiny, width, length_penalty, early):
    hf, ck = hf_tiny
    g = torch.Generator().manual_seed(width)
    for trial in range(2):
        prompt = torch.randint(0, 97, (6,), generator=g).tolist()
        eos = generate(ck.model, prompt, 8, greedy=True)[2 + 2 * trial]  # a token the search is likely to meet
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, num_beams=width,
                              length_penalty=length_penalty, early_stopping=early, eos_token_id=eos,
                              pad_token_id=eos, attention_mask=torch.ones(1, 6, dtype=torch.long))[0, 6:].tolist()
        if eos in ref:
            ref = ref[: ref.index(eos) + 1]  # the rest is padding
        ours = beam_search(ck.model, prompt, 16, num_beams=width, length_penalty=length_penalty,
                           early_stopping=early, eot_id=eos).tokens
        assert ours == ref
    no_eos = beam_search(ck.model, prompt, 12, num_beams=width, length_penalty=length_penalty).tokens
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, num_beams=width,
                          length_penalty=length_penalty, pad_token_id=0,
                          attention_mask=torch.ones(1, 6, dtype=torch.long))[0, 6:].tolist()
    assert no_eos == ref


def test_greedy_equals_transformers(hf_tiny):
    hf, ck = hf_tiny
    prompt = [5, 17, 33, 2]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, pad_token_id=0,
                          attention_mask=torch.ones(1, 4, dtype=torch.long))[0, 4:].tolist()
    assert generate(ck.model, prompt, 30, greedy=True) == ref
