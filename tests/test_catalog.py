"""The model catalog: sources and keys, rescans, the LRU, and the clear refusals
(bad paths, offline Hub, pickle uploads). Everything happens in tmp_path; nothing downloads."""

import pickle
import shutil
import socket
from pathlib import Path

import pytest

from app.catalog import BUNDLED_KEY, ModelCatalog
from core import checkpoint


@pytest.fixture
def runs(tmp_path, tiny_ckpt):
    runs = tmp_path / "runs"
    for name in ("latest", "best"):
        shutil.copytree(tiny_ckpt, runs / "r1" / name)
    (runs / "r1" / ".latest.tmp-1234").mkdir()  # a checkpoint being written: never listed
    return runs


@pytest.fixture
def catalog(tmp_path, tiny_ckpt, runs):
    return ModelCatalog(bundled=tiny_ckpt, runs_dir=runs, uploads_dir=tmp_path / "uploads",
                        hub_cache_dir=tmp_path / "hub")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def keys(catalog, owner=None):
    return [k for _, k in catalog.choices(owner)]


def test_lists_bundled_then_runs(catalog):
    assert keys(catalog) == [BUNDLED_KEY, "run:r1/latest", "run:r1/best"]
    assert catalog.default_key() == BUNDLED_KEY
    assert catalog.notice() is None
    labels = dict((k, label) for label, k in catalog.choices())
    assert labels[BUNDLED_KEY] == "Demo model (bundled)" and labels["run:r1/best"] == "run: r1/best"


def test_new_run_appears_on_rescan(catalog, runs, tiny_ckpt):
    assert "run:r2/latest" not in keys(catalog)
    shutil.copytree(tiny_ckpt, runs / "r2" / "latest")
    shutil.copytree(tiny_ckpt, runs / "flat")  # a run folder that is itself a checkpoint
    assert {"run:r2/latest", "run:flat"} <= set(keys(catalog))
    assert catalog.get("run:r2/latest").config.n_layer == 2


def test_missing_bundled_model_is_reported(tmp_path, runs):
    cat = ModelCatalog(bundled=tmp_path / "nowhere", runs_dir=runs, uploads_dir=tmp_path / "up")
    assert BUNDLED_KEY not in keys(cat)
    assert "bundled demo model is missing" in cat.notice()
    assert cat.default_key() == "run:r1/latest"
    with pytest.raises(ValueError, match="missing"):
        cat.get(BUNDLED_KEY)
    empty = ModelCatalog(bundled=tmp_path / "nowhere", runs_dir=tmp_path / "no-runs", uploads_dir=tmp_path / "up")
    assert empty.choices() == [] and empty.default_key() is None


def test_loads_once_and_evicts_least_recently_used(tmp_path, tiny_ckpt, runs, monkeypatch):
    calls = []
    real_load = checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    cat = ModelCatalog(bundled=tiny_ckpt, runs_dir=runs, uploads_dir=tmp_path / "up", max_resident=2)
    first = cat.get(BUNDLED_KEY)
    assert cat.get(BUNDLED_KEY) is first and len(calls) == 1  # loaded once, not per event
    cat.get("run:r1/latest")
    cat.get(BUNDLED_KEY)  # now the most recently used
    cat.get("run:r1/best")  # evicts run:r1/latest
    assert cat.resident() == [BUNDLED_KEY, "run:r1/best"]
    assert len(calls) == 3
    cat.get("run:r1/latest")
    assert len(calls) == 4 and cat.resident() == ["run:r1/best", "run:r1/latest"]
    with pytest.raises(ValueError, match="max_resident"):
        ModelCatalog(bundled=None, runs_dir=runs, uploads_dir=tmp_path, max_resident=0)


def test_reloads_a_run_rewritten_on_disk(catalog, runs):
    old = catalog.get("run:r1/latest")
    ck = checkpoint.load(runs / "r1" / "latest")
    checkpoint.save(runs / "r1" / "latest", ck.model, ck.tokenizer, {"step": 99})
    new = catalog.get("run:r1/latest")
    assert new is not old and new.meta["step"] == 99


def test_unknown_and_vanished_keys(catalog, runs):
    for bad in ("nope", "run:../etc", "run:r1/../../x", "upload:zz", "path:/tmp", "hub:gpt2", ""):
        with pytest.raises(ValueError, match="unknown model|no model is selected"):
            catalog.get(bad)
    catalog.get("run:r1/best")
    shutil.rmtree(runs / "r1" / "best")
    with pytest.raises(ValueError, match="unknown model 'run:r1/best'"):
        catalog.get("run:r1/best")
    assert "run:r1/best" not in keys(catalog)
    other = shutil.copytree(runs / "r1" / "latest", runs.parent / "other")
    key = catalog.add_path(str(other))
    shutil.rmtree(other)
    with pytest.raises(ValueError, match="is gone"):
        catalog.get(key)


def test_add_path(catalog, tmp_path, tiny_ckpt):
    with pytest.raises(ValueError, match="no such folder"):
        catalog.add_path(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="type the path"):
        catalog.add_path("   ")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        catalog.add_path(str(tmp_path / "file.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint folder: config.json and model.safetensors missing"):
        catalog.add_path(str(tmp_path / "empty"))
    other = shutil.copytree(tiny_ckpt, tmp_path / "elsewhere" / "model")
    key = catalog.add_path(f"  '{other}' ", owner="alice")
    assert key == f"path:{other.resolve()}" and key in keys(catalog, "alice")
    assert key not in keys(catalog, "bob") and key not in keys(catalog)  # another visitor does not see it
    assert catalog.get(key).config.n_layer == 2  # but its key works
    assert key in [k for _, k in catalog.choices("bob", current=key)]
    with pytest.raises(ValueError, match="the limit is 1,000"):
        catalog.add_path("/x" * 600)
    assert catalog.get(key).config.n_layer == 2
    assert catalog.add_path(str(tiny_ckpt)) == BUNDLED_KEY  # a folder already offered keeps its key
    assert catalog.add_path(str(tiny_ckpt / "model.safetensors")) == BUNDLED_KEY


def test_hub_offline_fails_fast_with_a_clear_message(catalog, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"offline \(HF_HUB_OFFLINE=1\).*not in the local Hugging Face cache"):
        catalog.add_hub("gpt2")
    for bad in ("", "../../etc/passwd", "a b", "x" * 200):
        with pytest.raises(ValueError, match="Hugging Face model name"):
            catalog.add_hub(bad)


def _hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """`folder` laid out as the Hugging Face cache keeps a downloaded model (refs/main -> a snapshot)."""
    base, commit = cache / f"models--{repo.replace('/', '--')}", "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(folder, base / "snapshots" / commit)


def test_hub_model_in_the_local_cache_loads_offline_and_its_size_is_checked_first(catalog, tmp_path, tiny_bpe_ckpt,
                                                                                   runs, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ck = checkpoint.load(tiny_bpe_ckpt)
    _hub_cache(tmp_path / "hub", "someone/tiny-gpt2", checkpoint.export_hf_gpt2(ck.model, ck.tokenizer,
                                                                                tmp_path / "export"))
    key = catalog.add_hub("https://huggingface.co/someone/tiny-gpt2")
    assert key == "hub:someone/tiny-gpt2" and key in keys(catalog) and key in keys(catalog, "anyone")
    assert catalog.get(key).kind == "hf-gpt2" and catalog.add_hub("someone/tiny-gpt2") == key
    small = ModelCatalog(bundled=None, runs_dir=runs, uploads_dir=tmp_path / "up", hub_cache_dir=tmp_path / "hub",
                         max_bytes=ck.config.memory_bytes(4) - 1)
    with pytest.raises(ValueError, match=r"someone/tiny-gpt2 has [\d,]+ parameters .* over this server's limit"):
        small.add_hub("someone/tiny-gpt2")  # refused from config.json, before any weights are read


def _upload_files(tmp_path, tiny_ckpt, names=("model.safetensors", "config.json", "tokenizer.json", "meta.json")):
    src = tmp_path / "browser"
    src.mkdir(exist_ok=True)
    return [Path(shutil.copy(tiny_ckpt / n, src / n)) for n in names]


def test_upload_is_copied_validated_and_listed_for_its_owner(catalog, tmp_path, tiny_ckpt):
    key = catalog.add_upload(_upload_files(tmp_path, tiny_ckpt), owner="alice")
    assert key.startswith("upload:") and key in keys(catalog, "alice")
    assert key not in keys(catalog, "bob") and key not in keys(catalog)  # uploads are not shown to others
    label = dict((k, label) for label, k in catalog.choices("alice"))[key]
    assert label == f"upload {key[7:13]}: 2 layers × 64 dims, 0.1M parameters"
    ck = catalog.get(key)
    assert ck.path.parent == tmp_path / "uploads" and ck.meta == {"note": "test"}
    # it survives a restart: a new catalog over the same folders still opens it by its key
    again = ModelCatalog(bundled=None, runs_dir=tmp_path / "runs", uploads_dir=tmp_path / "uploads")
    assert again.get(key).config.n_layer == 2 and key not in keys(again)


def test_old_uploads_are_cleaned(catalog, tmp_path, tiny_ckpt):
    import os
    import time

    key = catalog.add_upload(_upload_files(tmp_path, tiny_ckpt), owner="alice")
    folder = tmp_path / "uploads" / key[len("upload:"):]
    stale = tmp_path / "uploads" / ".tmp-deadbeef0000"  # a half-written upload from a crash
    stale.mkdir()
    assert catalog.clean_uploads() == []  # young: kept
    old = time.time() - catalog.upload_ttl_s - 60
    for d in (folder, stale):
        os.utime(d, (old, old))
    assert sorted(catalog.clean_uploads()) == sorted([folder.name, stale.name])
    assert not folder.exists() and key not in keys(catalog, "alice")
    with pytest.raises(ValueError, match="is gone"):
        catalog.get(key)


def test_folder_paths_can_be_switched_off(tmp_path, tiny_ckpt, runs, monkeypatch):
    off = ModelCatalog(bundled=None, runs_dir=runs, uploads_dir=tmp_path / "up", allow_paths=False)
    with pytest.raises(ValueError, match="turned off on this server"):
        off.add_path(str(tiny_ckpt))
    monkeypatch.delenv("GLASSBOX_ALLOW_PATHS", raising=False)
    monkeypatch.setenv("SPACE_ID", "someone/glassbox")  # on Hugging Face Spaces: off unless asked for
    assert ModelCatalog(bundled=None, runs_dir=runs, uploads_dir=tmp_path / "up").allow_paths is False
    monkeypatch.setenv("GLASSBOX_ALLOW_PATHS", "1")
    assert ModelCatalog(bundled=None, runs_dir=runs, uploads_dir=tmp_path / "up").allow_paths is True


def test_resident_models_stay_within_the_memory_budget(tmp_path, tiny_ckpt, runs):
    one = 2 * sum(p.numel() * 4 for p in checkpoint.load(tiny_ckpt).model.parameters())  # + the prepacked copy
    cat = ModelCatalog(bundled=tiny_ckpt, runs_dir=runs, uploads_dir=tmp_path / "up", max_resident=5,
                       max_resident_bytes=int(one * 1.5))
    for key in ("bundled:demo", "run:r1/latest", "run:r1/best"):
        cat.get(key)
    assert cat.resident() == ["run:r1/best"] and cat.resident_bytes() == one  # the newest one stays


def test_upload_refuses_pickle_and_strangers(catalog, tmp_path, tiny_ckpt):
    files = _upload_files(tmp_path, tiny_ckpt)
    files[0].write_bytes(pickle.dumps({"weights": [1, 2, 3]}))  # a pickle renamed model.safetensors
    with pytest.raises(ValueError, match="pickle"):
        catalog.add_upload(files)
    bin_file = tmp_path / "browser" / "pytorch_model.bin"
    bin_file.write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="never loads pickle"):
        catalog.add_upload([bin_file, *files[1:]])
    evil = tmp_path / "browser" / "evil.py"
    evil.write_text("import os")
    with pytest.raises(ValueError, match="evil.py is not part of a checkpoint"):
        catalog.add_upload([*files, evil])
    good = _upload_files(tmp_path, tiny_ckpt, names=("model.safetensors", "config.json"))
    with pytest.raises(ValueError, match="tokenizer.json missing"):
        catalog.add_upload(good)
    with pytest.raises(ValueError, match="choose the checkpoint's files"):
        catalog.add_upload([])
    # a corrupt config is refused by core.checkpoint.load and leaves nothing behind
    files = _upload_files(tmp_path, tiny_ckpt)
    files[1].write_text('{"format": "glassbox", "n_layer": 2}')
    with pytest.raises(ValueError, match="config.json"):
        catalog.add_upload(files)
    assert not (tmp_path / "uploads").exists() or list((tmp_path / "uploads").iterdir()) == []
    assert not any(k.startswith("upload:") for k in keys(catalog))
