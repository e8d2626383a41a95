"""GPT-2-layout folders as `transformers` writes them: untied heads, sharded safetensors,
n_inner, gelu_accurate, reorder_and_upcast_attn — each against `transformers` itself on a
tiny random model saved to tmp_path — and the refusals (pickle-only, a missing shard, a bad
shard header), each naming the file, the key as the file has it, and the config field."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core import checkpoint
from core.checkpoint import CheckpointError
from core.generate import generate
from core.train import Trainer

transformers = pytest.importorskip("transformers")
V, T = 97, 32


def _hf(folder, seed=0, shard=None, **cfg):
    torch.manual_seed(seed)
    conf = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=4,
                                   bos_token_id=0, eos_token_id=0, **cfg)
    model = transformers.GPT2LMHeadModel(conf).eval()
    with torch.no_grad():  # randomise every parameter, so a dropped or mixed-up tensor shows in the logits
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    return model


def _parity(hf, ck, atol=1e-4):
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
        ours = ck.model(idx)[0]
    assert (ours - ref).abs().max().item() < atol
    prompt = idx[0, :4].tolist()
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                           attention_mask=torch.ones(1, 4, dtype=torch.long))[0, 4:].tolist()
    assert generate(ck.model, prompt, 12, greedy=True) == want


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "untied"
    return _hf(folder, tie_word_embeddings=False), folder


def test_untied_head_loads_with_its_own_weights(untied):
    hf, folder = untied
    assert "lm_head.weight" in load_file(folder / "model.safetensors")
    ck = checkpoint.load(folder)
    assert ck.config.tie_word_embeddings is False and not ck.notes
    assert ck.model.lm_head.weight is not ck.model.transformer.wte.weight
    _parity(hf, ck)
    rows = {r["module"]: r for r in ck.model.describe_modules()}
    assert rows["lm_head"]["params"] == V * 32
    from app.tabs.model import module_role
    assert "untied" in module_role("lm_head", ck.config, tied=False)
    assert ck.model.num_params() == ck.config.n_params() == sum(p.numel() for p in hf.parameters())


def test_untied_export_round_trip_through_transformers(untied, tmp_path):
    hf, folder = untied
    ck = checkpoint.load(folder)
    out = checkpoint.export_hf_gpt2(ck.model, None, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert back.lm_head.weight.data_ptr() != back.transformer.wte.weight.data_ptr()
    _parity(back, ck)


def test_untied_glassbox_save_train_and_load(untied, tmp_path, char_tokenizer):
    hf, folder = untied
    ck = checkpoint.load(folder)
    path = checkpoint.save(tmp_path / "gb", ck.model, None, {})
    sd = load_file(path / "model.safetensors")
    assert "lm_head.weight" in sd and not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is False
    back = checkpoint.load(path)
    assert back.config == ck.config and back.model.lm_head.weight is not back.model.transformer.wte.weight
    _parity(hf, back)
    # an untied model trains: both the head and the embedding move, separately
    from core.config import TrainConfig, preset
    from core.data import TokenSplit

    cfg = preset("micro", vocab_size=char_tokenizer.vocab_size, block_size=16, tie_word_embeddings=False)
    ids = torch.tensor(char_tokenizer.encode("To be, or not to be, that is the question. " * 20))
    data = TokenSplit(train=ids[:700], val=ids[700:])
    tr = Trainer(cfg, TrainConfig(steps=3, batch_size=2, eval_interval=0, ckpt_interval=0, optimizer="adamw",
                                  device="cpu", dtype="float32"), data, out_dir=tmp_path / "run")
    tr.run()
    m = tr.raw_model
    assert m.lm_head.weight is not m.transformer.wte.weight
    trained = [p for opt in tr.optimizers for g in opt.param_groups for p in g["params"]]
    assert any(p is m.lm_head.weight for p in trained) and any(p is m.transformer.wte.weight for p in trained)
    saved = checkpoint.load(tmp_path / "run" / "latest")
    assert saved.config.tie_word_embeddings is False
    assert torch.equal(saved.model.lm_head.weight, m.lm_head.weight.detach().cpu())


def test_tied_config_with_a_differing_head_follows_transformers(tmp_path):
    folder = tmp_path / "ambiguous"
    _hf(folder)
    sd = load_file(folder / "model.safetensors")
    sd["lm_head.weight"] = torch.randn(V, 32)  # config.json still says tie_word_embeddings: true
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()  # transformers keeps them apart
    ck = checkpoint.load(folder)
    assert ck.config.tie_word_embeddings is False
    assert ck.notes and "tie_word_embeddings=true" in ck.notes[0] and "lm_head.weight" in ck.notes[0]
    _parity(hf, ck)
    # the same head as wte (some writers store both): one tied tensor, no note
    sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    ck = checkpoint.load(folder)
    assert ck.config.tie_word_embeddings and not ck.notes
    assert ck.model.lm_head.weight is ck.model.transformer.wte.weight


def test_untied_config_without_a_head_is_refused_by_name(untied, tmp_path):
    _, folder = untied
    dst = shutil.copytree(folder, tmp_path / "nohead")
    sd = load_file(dst / "model.safetensors")
    del sd["lm_head.weight"]
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) lm_head\.weight"):
        checkpoint.load(dst)


@pytest.mark.parametrize("untie", [True, False])
def test_sharded_safetensors(tmp_path, untie):
    folder = tmp_path / "sharded"
    hf = _hf(folder, shard="60KB", tie_word_embeddings=not untie)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert 2 <= len(shards) <= 3 and not (folder / "model.safetensors").exists()
    assert checkpoint.is_checkpoint(folder)
    ck = checkpoint.load(folder)
    assert ck.config.tie_word_embeddings is (not untie)
    _parity(hf, ck)


@pytest.mark.parametrize("cfg", [{"n_inner": 72}, {"activation_function": "gelu_accurate"},
                                 {"reorder_and_upcast_attn": True}], ids=lambda c: next(iter(c)))
def test_harmless_options_load_with_their_logits(tmp_path, cfg):
    hf = _hf(tmp_path / "m", **cfg)
    ck = checkpoint.load(tmp_path / "m")
    _parity(hf, ck)
    if "n_inner" in cfg:
        assert ck.config.n_inner == 72 and ck.model.transformer.h[0].mlp.c_fc.weight.shape == (72, 32)
        assert ck.model.num_params() == ck.config.n_params() == sum(p.numel() for p in hf.parameters())
        out = checkpoint.export_hf_gpt2(ck.model, None, tmp_path / "export")
        assert transformers.GPT2Config.from_pretrained(out).n_inner == 72
        path = checkpoint.save(tmp_path / "gb", ck.model, None, {})
        assert json.loads((path / "config.json").read_text())["n_inner"] == 72
        _parity(hf, checkpoint.load(path))


def test_unsupported_options_are_refused_by_field(tmp_path):
    _hf(tmp_path / "m")
    base = json.loads((tmp_path / "m" / "config.json").read_text())
    for change, field in (({"activation_function": "relu"}, "activation_function"),
                          ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
                          ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
                          ({"n_inner": -3}, "n_inner"), ({"n_positions": 0}, "n_positions")):
        (tmp_path / "m" / "config.json").write_text(json.dumps({**base, **change}))
        with pytest.raises(CheckpointError, match=field):
            checkpoint.load(tmp_path / "m")


def test_shape_mismatch_names_the_files_key_and_the_config_fields(tmp_path):
    _hf(tmp_path / "m", n_inner=72)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "n_inner": 64}))
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(tmp_path / "m")
    msg = str(e.value)
    assert "model.safetensors" in msg and "transformer.h.0.mlp.c_fc.weight" in msg and "n_inner" in msg
    assert "[32, 72]" in msg and "[32, 64]" in msg  # the file's own [in, out] orientation
    # a file without the prefix is quoted without it; an extra tensor by its own name
    sd = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "m" / "model.safetensors").items()}
    sd["score.weight"] = torch.zeros(2, 32)
    save_file(sd, tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) score\.weight") as e:
        checkpoint.load(tmp_path / "m")
    assert "transformer.score" not in str(e.value)


# --- refusals -----------------------------------------------------------------------------

def test_pickle_only_folder_names_the_pickle(tmp_path):
    folder = tmp_path / "pickled"
    hf = _hf(folder)
    (folder / "model.safetensors").unlink()
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin \(a Python pickle\).*never pickle"):
        checkpoint.load(folder)


def test_missing_shard_is_named(tmp_path):
    folder = tmp_path / "sharded"
    _hf(folder, shard="60KB")
    last = sorted(folder.glob("model-*.safetensors"))[-1]
    last.unlink()
    with pytest.raises(CheckpointError, match=rf"{last.name} is missing: model\.safetensors\.index\.json lists it"):
        checkpoint.load(folder)


def test_bad_shard_header_is_named_before_anything_loads(tmp_path):
    folder = tmp_path / "sharded"
    _hf(folder, shard="60KB")
    first = sorted(folder.glob("model-*.safetensors"))[0]
    data = bytearray(first.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [str(o) for o in header[name]["data_offsets"]]
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    first.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    with pytest.raises(CheckpointError, match=rf"{first.name}: tensor '{name}': data_offsets must be two integers"):
        checkpoint.load(folder)


def test_tensor_in_two_shards_and_a_traversing_index_are_refused(tmp_path):
    folder = tmp_path / "sharded"
    _hf(folder, shard="60KB")
    a, b = sorted(folder.glob("model-*.safetensors"))[:2]
    sa, sb = load_file(a), load_file(b)
    dup = next(iter(sa))
    save_file({**sb, dup: sa[dup]}, b, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"tensor '{dup}' is in two shards: {a.name} and {b.name}"):
        checkpoint.load(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"][dup] = "../../etc/passwd.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a .safetensors file beside the index"):
        checkpoint.load(folder)


# --- through the app: the Model tab's table, a sharded folder, a sharded Hub repo ----------

def test_model_tab_shows_the_untied_head(untied, tiny_ckpt):
    from app.catalog import ModelEntry
    from app.tabs.model import model_info, render

    hf, folder = untied
    info = model_info(ModelEntry("path:x", "untied", "path", folder), checkpoint.load(folder))
    assert info["config"]["tie_word_embeddings"] is False and info["params_by_kind"]["output head"] == V * 32
    assert sum(info["params_by_kind"].values()) == info["params"]["total"] == sum(p.numel() for p in hf.parameters())
    rows = {r[0]: r for r in render(info)[2]}
    assert rows["lm_head"][3] == f"{V * 32:,}" and "untied" in rows["lm_head"][4]
    tied = render(model_info(ModelEntry("path:y", "tied", "path", tiny_ckpt), checkpoint.load(tiny_ckpt)))[2]
    assert {r[0]: r for r in tied}["lm_head"][3] == "shared with wte"


def _fake_hub_cache(cache, repo, src):
    """The layout huggingface_hub's cache keeps (refs/main -> snapshots/<commit>/files), filled
    from a local folder, so an offline `snapshot_download` finds the repo without a network."""
    commit = "0" * 40
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(src, base / "snapshots" / commit)


def test_sharded_folder_and_hub_repo_load_in_the_catalog(tmp_path, monkeypatch, tiny_ckpt):
    from app.catalog import ModelCatalog

    folder = tmp_path / "sharded"
    hf = _hf(folder, shard="60KB")
    shutil.copy(tiny_ckpt / "tokenizer.json", folder / "tokenizer.json")  # a char tokenizer of 34 < V tokens
    catalog = ModelCatalog(bundled=None, runs_dir=tmp_path / "runs", uploads_dir=tmp_path / "uploads",
                           hub_cache_dir=tmp_path / "hub", allow_paths=True)
    key = catalog.add_path(str(folder))
    _parity(hf, catalog.get(key))
    _fake_hub_cache(tmp_path / "hub", "someone/tiny-sharded", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    key = catalog.add_hub("someone/tiny-sharded")
    _parity(hf, catalog.get(key))
