"""Checkpoints: round trip, atomic writes, GPT-2 import/export parity with `transformers`,
and the bad-file catalogue (each case raises CheckpointError naming what is wrong)."""

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core import checkpoint
from core.checkpoint import CheckpointError
from core.generate import generate
from tests.conftest import make_model

transformers = pytest.importorskip("transformers")


# --- Glassbox folders ----------------------------------------------------------------------

def test_round_trip(tmp_path, char_tokenizer):
    model = make_model(char_tokenizer.vocab_size, seed=3)
    path = checkpoint.save(tmp_path / "run", model, char_tokenizer, {"step": 7, "val_loss": 1.5})
    assert sorted(os.listdir(path)) == ["config.json", "meta.json", "model.safetensors", "tokenizer.json"]
    assert "lm_head.weight" not in load_file(path / "model.safetensors")  # tied head written once
    ck = checkpoint.load(path)
    assert ck.kind == "glassbox" and ck.config == model.config and ck.meta["step"] == 7
    assert ck.model.lm_head.weight is ck.model.transformer.wte.weight
    idx = torch.randint(0, char_tokenizer.vocab_size, (2, 16))
    assert torch.equal(ck.model(idx)[0], model(idx)[0])
    assert ck.tokenizer.encode("Speak, speak.") == char_tokenizer.encode("Speak, speak.")
    assert json.loads((path / "config.json").read_text())["format_version"] == 1


def test_atomic_overwrite_keeps_old_on_failure(tmp_path, char_tokenizer, monkeypatch):
    model = make_model(char_tokenizer.vocab_size)
    path = checkpoint.save(tmp_path / "run", model, char_tokenizer, {"step": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "run", model, char_tokenizer, {"step": 2})
    monkeypatch.undo()
    assert checkpoint.load(path).meta["step"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["run"]  # no temp folder left behind
    checkpoint.save(tmp_path / "run", model, char_tokenizer, {"step": 3})
    assert checkpoint.load(path).meta["step"] == 3 and os.listdir(tmp_path) == ["run"]


# --- the bad-file catalogue ---------------------------------------------------------------

def _copy(tiny_ckpt, tmp_path):
    dst = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, dst)
    return dst


def _edit_config(path, **changes):
    d = json.loads((path / "config.json").read_text())
    d.update(changes)
    (path / "config.json").write_text(json.dumps(d))


def test_pickle_renamed_safetensors(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path)
    (p / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="pickle.*only loads safetensors"):
        checkpoint.load(p)


def test_zip_renamed_safetensors(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path)
    torch.save({"w": torch.zeros(3)}, p / "model.safetensors")  # torch.save writes a zip
    with pytest.raises(CheckpointError, match="zip.*only loads safetensors"):
        checkpoint.load(p)


def test_empty_and_truncated(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path)
    data = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        checkpoint.load(p)
    (p / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load(p)
    (p / "model.safetensors").write_bytes(data[:40])
    with pytest.raises(CheckpointError, match="safetensors"):
        checkpoint.load(p)


def test_header_does_not_match_config(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path)
    _edit_config(p, n_embd=128)
    with pytest.raises(CheckpointError, match=r"transformer\.wte\.weight has shape"):
        checkpoint.load(p)
    p2 = _copy(tiny_ckpt, tmp_path / "x")
    _edit_config(p2, n_layer=3)
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) transformer\.h\.2\."):
        checkpoint.load(p2)


def test_non_float_and_non_finite_weights(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path)
    sd = load_file(p / "model.safetensors")
    bad = dict(sd)
    bad["transformer.h.1.mlp.c_fc.weight"] = bad["transformer.h.1.mlp.c_fc.weight"].to(torch.int32)
    save_file(bad, p / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"h\.1\.mlp\.c_fc\.weight has dtype I32"):
        checkpoint.load(p)
    bad = dict(sd)
    bad["transformer.h.0.attn.c_proj.weight"] = bad["transformer.h.0.attn.c_proj.weight"].clone()
    bad["transformer.h.0.attn.c_proj.weight"][0, 0] = float("nan")
    save_file(bad, p / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"h\.0\.attn\.c_proj\.weight contains NaN"):
        checkpoint.load(p)


def test_absurd_config_refused_from_estimate(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path)
    _edit_config(p, n_layer=200, n_embd=16384, n_head=128)
    with pytest.raises(CheckpointError, match="parameters .* over this server's limit"):
        checkpoint.load(p)
    _edit_config(p, n_layer=-1)
    with pytest.raises(CheckpointError, match="n_layer=-1"):
        checkpoint.load(p)
    _edit_config(p, n_layer="two")
    with pytest.raises(CheckpointError, match="integer"):
        checkpoint.load(p)


def test_bad_json_and_bad_tokenizer(tiny_ckpt, tmp_path):
    p = _copy(tiny_ckpt, tmp_path)
    (p / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(p)
    p2 = _copy(tiny_ckpt, tmp_path / "t")
    (p2 / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(CheckpointError, match="tokenizer"):
        checkpoint.load(p2)
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        checkpoint.load(tmp_path / "nowhere")


def test_nothing_calls_torch_load():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for sub in ("core", "app"):
        for f in (root / sub).rglob("*.py"):
            assert "torch.load(" not in f.read_text(), f


# --- GPT-2 layout: parity with Hugging Face transformers (offline, tiny random model) -------

@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    hf.save_pretrained(folder, safe_serialization=True)
    return hf, folder


def test_import_hf_gpt2_logits_and_greedy_match(hf_tiny):
    hf, folder = hf_tiny
    ck = checkpoint.load(folder)
    assert ck.kind == "hf-gpt2" and ck.config.n_layer == 2 and ck.config.block_size == 40
    idx = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        ref = hf(idx).logits
    ours, _ = ck.model(idx)
    assert (ours - ref).abs().max().item() < 1e-4
    prompt = idx[0, :5].tolist()
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=25, do_sample=False,
                             pad_token_id=0, attention_mask=torch.ones(1, 5, dtype=torch.long))[0, 5:].tolist()
    assert generate(ck.model, prompt, 25, greedy=True) == hf_out


def test_import_without_transformer_prefix(hf_tiny, tmp_path):
    hf, folder = hf_tiny
    dst = tmp_path / "hub-style"
    shutil.copytree(folder, dst)
    sd = load_file(dst / "model.safetensors")
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
    sd["h.0.attn.bias"] = torch.ones(1, 1, 40, 40)  # old files carry the causal-mask buffer
    save_file(sd, dst / "model.safetensors")
    ck = checkpoint.load(dst)
    idx = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        assert (ck.model(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4


def test_export_to_hf_layout_loads_in_transformers(tmp_path, bpe_tokenizer):
    model = make_model(bpe_tokenizer.vocab_size, seed=5)
    folder = checkpoint.export_hf_gpt2(model, bpe_tokenizer, tmp_path / "export")
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = torch.randint(0, bpe_tokenizer.vocab_size, (2, 20))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)[0]).abs().max().item() < 1e-4
    back = checkpoint.load(folder)  # and our own loader reads the export back
    assert back.kind == "hf-gpt2" and torch.allclose(back.model(idx)[0], model(idx)[0], atol=1e-5)
