"""The bad-input catalogue (issue 8), checkpoint uploads: every broken checkpoint is refused
with its own clear message (no server paths in it), nothing is left in the uploads dir, the
server keeps serving, and nothing already saved is lost.

Each case breaks one thing in a copy of a good checkpoint. All of them are checked at the
catalog level (fast, exact messages); a few go through the Model tab's private upload event
in Debian Chromium, read back from the error toast. The server (a runs dir with a saved run,
an earlier upload) is this module's own, made as tests/test_bad_input.py makes its own.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.bad_input_server import CKPT_FILES, serve_with_saved_things, still_serving
from tests.conftest import SAMPLE_TEXT

WAIT = 30_000  # ms for retrying assertions: two shared CPU cores, other servers busy


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_bpe_ckpt):
    with serve_with_saved_things(tmp_path_factory.mktemp("bad-uploads"), tiny_bpe_ckpt) as served:
        yield served


def _cfg(**changes):
    def edit(d: Path) -> None:
        c = json.loads((d / "config.json").read_text())
        c.update(changes)
        (d / "config.json").write_text(json.dumps(c))
    return edit


def _weights(change):
    def edit(d: Path) -> None:
        sd = load_file(d / "model.safetensors")
        change(sd)
        save_file(sd, d / "model.safetensors")
    return edit


def _write(name: str, data: bytes | str):
    def edit(d: Path) -> None:
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return edit


def _truncate(keep):
    def edit(d: Path) -> None:
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[:keep(len(data))])
    return edit


def _torch_zip(d: Path) -> None:
    torch.save({"w": torch.zeros(3)}, d / "model.safetensors")  # torch.save writes a zip


def _set(name, fn):
    def change(sd):
        sd[name] = fn(sd[name])
    return change


def _nan_at(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _bigger_tokenizer(d: Path) -> None:
    from core.tokenizer import Tokenizer

    Tokenizer.train_bpe(SAMPLE_TEXT * 3, 400).save(d / "tokenizer.json")


# (id, what to break in a copy of a good checkpoint, the message expected)
UPLOAD_CASES = [
    ("pickle-renamed", _write("model.safetensors", pickle.dumps({"w": [1, 2, 3]})),
     r"model\.safetensors is a Python pickle, not safetensors"),
    ("zip-renamed", _torch_zip, r"model\.safetensors is a zip archive .*never pickle or zip"),
    ("empty", _write("model.safetensors", b""), r"model\.safetensors is empty or truncated \(0 bytes\)"),
    ("truncated-data", _truncate(lambda n: n - 100), r"model\.safetensors is truncated or corrupt: tensor"),
    ("truncated-header", _truncate(lambda n: 40), r"not a valid safetensors file \(bad or truncated header\)"),
    ("header-not-an-object", _write("model.safetensors", struct.pack("<Q", 2) + b"[]"),
     r"not a valid safetensors file"),
    ("header-size-absurd", _write("model.safetensors", struct.pack("<Q", 10**15) + b"{}" + b" " * 20),
     r"not a valid safetensors file"),
    ("shape-vs-config", _cfg(n_embd=128), r"tensor transformer\.wte\.weight has shape \[\d+, 64\], "
                                          r"config\.json implies \[\d+, 128\]"),
    ("layers-vs-config", _cfg(n_layer=3), r"does not match config\.json: missing tensor\(s\) transformer\.h\.2\."),
    ("extra-tensor", _weights(lambda sd: sd.update(extra=torch.zeros(3))),
     r"does not match config\.json: unexpected tensor\(s\) extra"),
    ("int-weights", _weights(_set("transformer.h.1.mlp.c_fc.weight", lambda t: t.to(torch.int32))),
     r"transformer\.h\.1\.mlp\.c_fc\.weight has dtype I32; weights must be floating point"),
    ("bool-weights", _weights(_set("transformer.ln_f.weight", lambda t: t > 0)),
     r"transformer\.ln_f\.weight has dtype BOOL; weights must be floating point"),
    ("nan-weights", _weights(_set("transformer.h.0.attn.c_proj.weight", _nan_at)),
     r"transformer\.h\.0\.attn\.c_proj\.weight contains NaN or infinite values"),
    ("inf-weights", _weights(_set("transformer.ln_f.weight", lambda t: torch.full_like(t, float("inf")))),
     r"transformer\.ln_f\.weight contains NaN or infinite values"),
    ("absurd-size", _cfg(n_layer=200, n_embd=16384, n_head=128),
     r"config\.json asks for [\d,]+ parameters \([\d.]+ GB in float32\), over this server's limit of"),
    ("absurd-vocab", _cfg(vocab_size=10**12), r"vocab_size=1000000000000 is out of range"),
    ("negative-layers", _cfg(n_layer=-1), r"config\.json: n_layer=-1"),
    ("non-integer-layers", _cfg(n_layer=2.5), r"n_layer must be an integer, got 2\.5"),
    ("nan-dropout", _write("config.json", '{"format": "glassbox", "vocab_size": 300, "block_size": 64, '
                                          '"n_layer": 2, "n_head": 4, "n_embd": 64, "dropout": NaN}'),
     r"dropout=nan is out of range"),
    ("config-not-json", _write("config.json", "{not json"), r"config\.json is not valid JSON"),
    ("config-not-ours", _write("config.json", '{"hello": 1}'), r"neither a Glassbox config .* nor a GPT-2 config"),
    ("config-unknown-key", _cfg(evil=1), r"unknown config keys: evil"),
    ("config-future-version", _cfg(format_version=99), r"format_version=99 is not supported"),
    ("tokenizer-not-json", _write("tokenizer.json", ""),
     r"invalid tokenizer \(tokenizer\.json\): tokenizer file is not JSON"),
    ("tokenizer-wrong-json", _write("tokenizer.json", '{"model": 3}'),
     r"invalid tokenizer \(tokenizer\.json\): tokenizer file has no 'model' object"),
    ("tokenizer-binary", _write("tokenizer.json", b"\xff\xfe\x00garbage"),
     r"invalid tokenizer \(tokenizer\.json\): tokenizer\.json is not UTF-8 text"),
    ("tokenizer-too-big", _bigger_tokenizer, r"tokenizer has 3[1-9]\d tokens but the model's vocab_size is 300"),
]


def _bad_copy(src: Path, folder: Path, edit) -> list[Path]:
    folder.mkdir(parents=True)
    for n in CKPT_FILES:
        shutil.copy(src / n, folder / n)
    edit(folder)
    return [folder / n for n in CKPT_FILES]


@pytest.mark.parametrize("edit, match", [c[1:] for c in UPLOAD_CASES], ids=[c[0] for c in UPLOAD_CASES])
def test_bad_checkpoint_upload_is_refused_with_its_message(env, tmp_path, tiny_bpe_ckpt, edit, match):
    files = _bad_copy(tiny_bpe_ckpt, tmp_path / "browser", edit)
    with pytest.raises(ValueError, match=match) as e:
        env.ctx.catalog.add_upload(files, owner="visitor")
    assert str(tmp_path) not in str(e.value) and ".tmp-" not in str(e.value)  # no server paths in the message
    assert not any(k.startswith("upload:") for _, k in env.ctx.catalog.choices("visitor"))
    still_serving(env)


@pytest.mark.browser
def test_bad_uploads_through_the_model_tab_in_chromium(env, page, tmp_path, tiny_bpe_ckpt):
    """The upload is a private event: drive it as a person does, read the error toast."""
    from playwright.sync_api import expect

    page.goto(env.url)
    page.get_by_role("tab", name="Model", exact=True).click()  # the Walkthrough tab comes first
    page.get_by_text("Load another model").click()
    box = page.locator(".block", has=page.get_by_text("Checkpoint files", exact=True)).last  # the gr.File
    chosen = {c[0]: c for c in UPLOAD_CASES}
    for name in ("pickle-renamed", "truncated-data", "nan-weights", "absurd-size", "tokenizer-wrong-json"):
        _, edit, match = chosen[name]
        files = _bad_copy(tiny_bpe_ckpt, tmp_path / name, edit)
        box.locator("input[type=file]").set_input_files([str(f) for f in files])
        expect(box.get_by_role("cell", name="tokenizer.json", exact=True)).to_be_visible(timeout=WAIT)  # uploaded
        expect(box.get_by_role("row")).to_have_count(len(files), timeout=WAIT)
        page.get_by_role("button", name="Load upload").click()
        expect(page.locator(".toast-body").filter(has_text=re.compile(match)).first).to_be_visible(timeout=WAIT)
        for close in page.locator(".toast-close").all():  # dismiss, so the next toast is the next case's
            close.click()
        # the file box keeps its files after a failed load (and would add the next ones): empty it
        box.get_by_role("button", name="Clear").last.click()
        expect(box.get_by_role("row")).to_have_count(0, timeout=WAIT)
    # the page still works: the picker still holds the demo model, and the server still serves
    expect(page.get_by_label("Model", exact=True)).to_have_value("Demo model (bundled)", timeout=WAIT)
    still_serving(env)
    assert page.dialogs == [] and page.external_requests == []

