"""Checkpoints: the one folder format every part of Glassbox reads and writes.

A Glassbox checkpoint is a folder:
    model.safetensors   our state dict (GPT-2 names; a tied head written once, an untied
                        one as `lm_head.weight`)
    config.json         {"format": "glassbox", "format_version": 1, ...GPTConfig}
    tokenizer.json      the `tokenizers` file (char-level or byte-level BPE)
    meta.json           training args, step, losses, anything the trainer records
    train_state.safetensors + train_state.json   (optional) optimizer, RNG, data position
It is written to a temporary sibling folder and renamed into place, so a reader never
sees half a checkpoint.

`load(path)` also reads Hugging Face GPT-2-layout folders (`core.hf`: config.json with
model_type gpt2, and model.safetensors or a sharded index, keys with or without
`transformer.`) and validates *before* it allocates: every JSON file's size and depth and
every safetensors header (`core.safefile`), file magic (pickle and zip are refused: only
safetensors is loaded), config types and ranges, a memory estimate, and every tensor's
name, shape, dtype and size; then finiteness once loaded. A refusal names the file, the
tensor as the file names it and the config field. Nothing here calls `torch.load`.
`disk_error` says why a write failed in words a visitor understands (no paths), for the
trainer's `SaveFailed`. Does not own: the tokenizer format (`core.tokenizer`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import hf
from .config import FORMAT_VERSION, GPTConfig  # noqa: F401 (kept importable from here)
from .model import GPT
from .safefile import (  # noqa: F401 (public names)
    DTYPE_SIZES,
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    CheckpointError,
    check_safetensors_file,
    read_json,
    short,
)
from .tokenizer import Tokenizer

MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, META_FILE = "model.safetensors", "config.json", "tokenizer.json", "meta.json"
INDEX_FILE = hf.INDEX_FILE
shard_files = hf.shard_files  # the shard names a sharded index lists (what to download)
STATE_FILE, STATE_META_FILE = "train_state.safetensors", "train_state.json"
DEFAULT_MAX_BYTES = int(os.environ.get("GLASSBOX_MAX_MODEL_BYTES", 4 * 1024**3))
MAX_META_BYTES = 16 * 2**20  # meta.json holds the loss history of a long run
CONV1D = hf.CONV1D


# A failed write, in words a visitor understands (no path: the reason is shown to everyone).
DISK_WORDS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "the disk quota is used up",
              errno.EROFS: "the output folder is on a read-only file system",
              errno.EACCES: "no permission to write to the output folder",
              errno.EPERM: "no permission to write to the output folder"}
_OS_ERROR = re.compile(r"(?:os error|code:)\s*(\d+)")  # safetensors' and tokenizers' (Rust) IO errors


def disk_error(e: BaseException) -> str | None:
    """What went wrong with a write, in words (None when `e` is not a failed write)."""
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if code is None:
        m = _OS_ERROR.search(str(e))
        code = int(m.group(1)) if m else None
    if code is None:
        return None
    return DISK_WORDS.get(code, f"the disk refused a write ({os.strerror(code).lower()})")


class SaveFailed(Exception):
    """A checkpoint could not be written; the message says why and which step, without paths."""


@dataclass
class Checkpoint:
    model: GPT
    tokenizer: Tokenizer | None
    config: GPTConfig
    meta: dict = field(default_factory=dict)
    kind: str = "glassbox"  # "glassbox" | "hf-gpt2"
    path: Path | None = None
    notes: list[str] = field(default_factory=list)  # what loading decided for an ambiguous file


# --------------------------------------------------------------------------------------
# Saving


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def _state_dict_for_save(model: GPT) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # tied to transformer.wte.weight: written once
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE). False where the
    kernel, libc or file system cannot (the caller then falls back to two renames)."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _atomic_folder(folder: Path, write) -> Path:
    """Run `write(tmp)` into a temporary sibling folder, then put it in place of `folder`.

    An existing folder is swapped out in one atomic step where the system allows, so a process
    killed at any moment leaves either the old or the new checkpoint at `folder`, never neither.
    Elsewhere the old folder is first renamed to `.<name>.old-*`; `recover()` puts it back if
    the process died between the two renames."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        if folder.exists():
            if _exchange(tmp, folder):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old checkpoint
            else:
                old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(folder, old)
                os.rename(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def recover(folder: str | Path) -> bool:
    """After a crash: if `folder` is missing but a previous version was set aside by an
    interrupted save (`.<name>.old-*`), put the newest one back; remove half-written
    `.<name>.tmp-*` folders. Only the process that writes `folder` may call this (a trainer
    about to resume). Returns True if a checkpoint was put back."""
    folder = Path(folder)
    parent = folder.parent
    if not parent.is_dir():
        return False
    restored = False
    olds = sorted(parent.glob(f".{folder.name}.old-*"), key=lambda d: d.stat().st_mtime, reverse=True)
    if not folder.exists():
        for d in olds:
            if is_checkpoint(d):
                os.rename(d, folder)
                restored = True
                break
    for d in [*parent.glob(f".{folder.name}.old-*"), *parent.glob(f".{folder.name}.tmp-*")]:
        shutil.rmtree(d, ignore_errors=True)
    return restored


def save(folder: str | Path, model: GPT, tokenizer: Tokenizer | None, meta: dict | None = None,
         train_state: dict[str, torch.Tensor] | None = None, train_state_meta: dict | None = None) -> Path:
    """Write a Glassbox checkpoint folder atomically; returns its path."""
    def write(tmp: Path) -> None:
        save_file(_state_dict_for_save(model), str(tmp / MODEL_FILE), metadata={"format": "glassbox"})
        _write_json(tmp / CONFIG_FILE, {"format": "glassbox", **model.config.to_dict()})
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        _write_json(tmp / META_FILE, meta or {})
        if train_state is not None:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in train_state.items()}, str(tmp / STATE_FILE))
            _write_json(tmp / STATE_META_FILE, train_state_meta or {})
    return _atomic_folder(Path(folder), write)


# --------------------------------------------------------------------------------------
# Validation before allocation


def _expected_shapes(cfg: GPTConfig) -> dict[str, tuple[list[int], str]]:
    """Every tensor the config implies: {our name: (shape, the config fields behind it)}."""
    C, V, T, H = cfg.n_embd, cfg.vocab_size, cfg.block_size, cfg.mlp_width
    shapes = {"transformer.wte.weight": ([V, C], "vocab_size, n_embd"),
              "transformer.wpe.weight": ([T, C], "block_size, n_embd"), "transformer.ln_f.weight": ([C], "n_embd")}
    if cfg.bias:
        shapes["transformer.ln_f.bias"] = ([C], "n_embd")
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = ([V, C], "vocab_size, n_embd")
    mlp = "n_embd, n_inner" if cfg.n_inner is not None else "n_embd (n_inner unset: 4 × n_embd)"
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        layer = {"ln_1.weight": [C], "ln_2.weight": [C], "attn.c_attn.weight": [3 * C, C],
                 "attn.c_proj.weight": [C, C], "mlp.c_fc.weight": [H, C], "mlp.c_proj.weight": [C, H]}
        if cfg.bias:
            layer.update({"ln_1.bias": [C], "ln_2.bias": [C], "attn.c_attn.bias": [3 * C],
                          "attn.c_proj.bias": [C], "mlp.c_fc.bias": [H], "mlp.c_proj.bias": [C]})
        shapes.update({p + k: (v, mlp if ".mlp." in "." + k else "n_embd") for k, v in layer.items()})
    return shapes


def _check_tensors(header: dict[str, dict], names: dict[str, str], cfg: GPTConfig, kind: str) -> None:
    """Compare the file's tensors (`names`: ours -> the file's) with what config.json implies.
    Messages use the file's names, its [in, out] Conv1D shapes and its config field names."""
    expected = _expected_shapes(cfg)
    hf_layout = kind == "hf-gpt2"

    def fields(desc: str) -> str:
        return desc.replace("block_size", "n_positions") if hf_layout else desc

    missing = [hf.file_name_for(k, header) for k in expected if k not in names]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        files = {v["file"] for v in header.values()} or {MODEL_FILE}
        source = files.pop() if len(files) == 1 else INDEX_FILE + " and its shards"
        raise CheckpointError(f"{source} does not match config.json: missing tensor(s) "
                              f"{', '.join(missing[:3])}{more}")
    unexpected = [theirs for ours, theirs in names.items() if ours not in expected]
    if unexpected:
        why = ""
        if any(n.endswith("lm_head.weight") for n in unexpected):
            why = " (an output head, but config.json ties it to the token embedding)"
        raise CheckpointError(f"{header[unexpected[0]]['file']} does not match config.json: unexpected tensor(s) "
                              f"{', '.join(n if len(n) <= 60 else short(n) for n in unexpected[:3])}{why}")
    for ours, (shape, desc) in expected.items():
        theirs = names[ours]
        info = header[theirs]
        if hf_layout and ours.endswith(CONV1D):
            shape = shape[::-1]  # Conv1D stores [in, out]
        if info["shape"] != shape:
            raise CheckpointError(f"{info['file']}: tensor {theirs} has shape {info['shape']}, config.json implies "
                                  f"{shape} (from its {fields(desc)})")
        if info["dtype"] not in FLOAT_DTYPES:
            raise CheckpointError(f"{info['file']}: tensor {theirs} has dtype {info['dtype']}; weights must be "
                                  "floating point")


def _read_json(path: Path, what: str, max_bytes: int | None = None) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{what} is missing: expected {path.name} in the checkpoint folder")
    d = read_json(path, **({} if max_bytes is None else {"max_bytes": max_bytes}))
    if not isinstance(d, dict):
        raise CheckpointError(f"{path.name} must hold a JSON object")
    return d


def _load_tokenizer(folder: Path) -> Tokenizer | None:
    if (folder / TOKENIZER_FILE).is_file() or (folder / "vocab.json").is_file():
        files = TOKENIZER_FILE if (folder / TOKENIZER_FILE).is_file() else "vocab.json + merges.txt"
        try:
            return Tokenizer.from_file(folder)
        except ValueError as e:
            # name the files, not the server's folders (an upload is checked in a temp folder)
            why = str(e).replace(f"{folder}{os.sep}", "").replace(str(folder), "the checkpoint folder")
            raise CheckpointError(f"invalid tokenizer ({files}): {why}") from None
    return None


# --------------------------------------------------------------------------------------
# Loading


def detect_kind(folder: str | Path) -> str:
    d = _read_json(Path(folder) / CONFIG_FILE, "config.json")
    if d.get("format") == "glassbox":
        return "glassbox"
    if hf.is_hf_config(d):
        return "hf-gpt2"
    raise CheckpointError("config.json is neither a Glassbox config (format: glassbox) nor a GPT-2 config "
                          "(model_type: gpt2)")


def read_config(folder: str | Path) -> GPTConfig:
    """The architecture in a Glassbox or GPT-2-layout folder's config.json, read without the weights."""
    path = Path(folder)
    kind = detect_kind(path)
    cfg_d = _read_json(path / CONFIG_FILE, "config.json")
    _check_config_values(cfg_d, None if kind == "glassbox" else hf.CONFIG_KEYS)
    if kind != "glassbox":
        return hf.hf_config(cfg_d)
    cfg_d.pop("format")
    try:
        return GPTConfig.from_dict(cfg_d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"config.json: {str(e)[:300]}") from None


def _check_config_values(d: dict, keys) -> None:
    """config.json's values are numbers, booleans, null or short strings (all of them for a
    Glassbox config, the `keys` read from a transformers one), and its keys are short: so no
    message built from them can echo a huge value."""
    for k, v in d.items():
        if len(k) > 64:
            raise CheckpointError(f"config.json has a key of {len(k):,} characters ({short(k)})")
        if keys is not None and k not in keys:
            continue
        if isinstance(v, (list, dict)) or (isinstance(v, str) and len(v) > 64):
            raise CheckpointError(f"config.json: {k} must be a number, true/false or a short name, got {short(v)}")


def _read_tensors(folder: Path, header: dict[str, dict], names: dict[str, str], kind: str) -> dict[str, torch.Tensor]:
    state = {}
    by_file: dict[str, list[str]] = {}
    for ours, theirs in names.items():
        by_file.setdefault(header[theirs]["file"], []).append(ours)
    for fname, ours_list in by_file.items():
        try:
            with safe_open(str(folder / fname), framework="pt") as f:
                for ours in ours_list:
                    t = f.get_tensor(names[ours])
                    if kind == "hf-gpt2" and ours.endswith(CONV1D):
                        t = t.t()
                    if not torch.isfinite(t).all():
                        raise CheckpointError(f"{fname}: tensor {names[ours]} contains NaN or infinite values")
                    state[ours] = t.to(torch.float32).contiguous()
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt data
            raise CheckpointError(f"{fname} could not be read: {str(e)[:200]}") from None
    return state


def load(path: str | Path, device: str | torch.device = "cpu", max_bytes: int = DEFAULT_MAX_BYTES) -> Checkpoint:
    """Load a Glassbox or Hugging Face GPT-2-layout folder (or its model.safetensors file)."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint folder at {path}")
    kind = detect_kind(path)
    cfg = read_config(path)
    need = cfg.memory_bytes(4)
    if need > max_bytes:
        raise CheckpointError(f"config.json asks for {cfg.n_params():,} parameters ({need / 1e9:.1f} GB in "
                              f"float32), over this server's limit of {max_bytes / 1e9:.1f} GB")

    header = hf.weight_headers(path)
    names = {k: k for k in header} if kind == "glassbox" else hf.key_map(header)
    notes = []
    head = names.get("lm_head.weight")
    if kind == "hf-gpt2" and head is not None and cfg.tie_word_embeddings:
        # transformers keeps a head that differs from wte untied whatever the config says: so do we
        if _differs(path, header, head, names.get("transformer.wte.weight")):
            cfg = cfg.replace(tie_word_embeddings=False)
            notes.append(f"config.json says tie_word_embeddings=true, but {header[head]['file']} holds its own "
                         f"{head} that differs from the token embedding: loaded untied, as transformers does")
        else:
            names.pop("lm_head.weight")  # the same values: one tied tensor
    _check_tensors(header, names, cfg, kind)

    tokenizer = _load_tokenizer(path)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                              f"{cfg.vocab_size}")
    meta = _read_json(path / META_FILE, "meta.json", MAX_META_BYTES) if (path / META_FILE).is_file() else {}

    state = _read_tensors(path, header, names, kind)
    with torch.device("meta"):
        model = GPT(cfg)
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
    model = model.to(device).eval()
    return Checkpoint(model=model, tokenizer=tokenizer, config=cfg, meta=meta, kind=kind, path=path, notes=notes)


def _differs(folder: Path, header: dict, head: str, wte: str | None) -> bool:
    """Whether the file's lm_head.weight holds other values than its wte.weight."""
    a, b = header[head], header.get(wte) if wte else None
    if b is None or a["shape"] != b["shape"]:
        return True  # not a copy of wte: _check_tensors then reports what is wrong
    try:
        with safe_open(str(folder / a["file"]), framework="pt") as fa, \
                safe_open(str(folder / b["file"]), framework="pt") as fb:
            return not torch.equal(fa.get_tensor(head).float(), fb.get_tensor(wte).float())
    except Exception as e:
        raise CheckpointError(f"{a['file']} could not be read: {str(e)[:200]}") from None


def load_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainer's resume state saved beside a checkpoint: (tensors, json)."""
    path = Path(path)
    check_safetensors_file(path / STATE_FILE)
    tensors = {}
    with safe_open(str(path / STATE_FILE), framework="pt") as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, _read_json(path / STATE_META_FILE, STATE_META_FILE, MAX_META_BYTES)


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and hf.has_weights(path)


# --------------------------------------------------------------------------------------
# Export to the Hugging Face GPT-2 layout


def export_hf_gpt2(model: GPT, tokenizer: Tokenizer | None, folder: str | Path) -> Path:
    """Write `model` as a Hugging Face GPT-2 folder (GPT2LMHeadModel.from_pretrained reads it),
    with `tie_word_embeddings` and `n_inner` as the model has them."""
    return hf.export_hf_gpt2(model, tokenizer, folder, _state_dict_for_save(model), _atomic_folder, _write_json)
