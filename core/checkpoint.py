"""Checkpoints: the one folder format every part of Glassbox reads and writes.

A Glassbox checkpoint is a folder:
    model.safetensors   our state dict (GPT-2 names, the tied head written once)
    config.json         {"format": "glassbox", "format_version": 1, ...GPTConfig}
    tokenizer.json      the `tokenizers` file (char-level or byte-level BPE)
    meta.json           training args, step, losses, anything the trainer records
    train_state.safetensors + train_state.json   (optional) optimizer, RNG, data position
It is written to a temporary sibling folder and renamed into place, so a reader never
sees half a checkpoint.

`load(path)` also reads Hugging Face GPT-2-layout folders (config.json with
model_type gpt2 + model.safetensors, keys with or without `transformer.`) and
validates *before* it allocates: file magic (pickle and zip are refused: only
safetensors is loaded), config types and ranges, a memory estimate, and every tensor's
name, shape, dtype and size from the header; then finiteness once loaded. Nothing here
calls `torch.load`. Does not own: the tokenizer format (`core.tokenizer`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import FORMAT_VERSION, GPTConfig
from .model import GPT
from .tokenizer import Tokenizer

MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, META_FILE = "model.safetensors", "config.json", "tokenizer.json", "meta.json"
STATE_FILE, STATE_META_FILE = "train_state.safetensors", "train_state.json"
DEFAULT_MAX_BYTES = int(os.environ.get("GLASSBOX_MAX_MODEL_BYTES", 4 * 1024**3))
MAX_HEADER_BYTES = 100 * 1024 * 1024
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
DTYPE_SIZES = {**FLOAT_DTYPES, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or tensor at fault."""


@dataclass
class Checkpoint:
    model: GPT
    tokenizer: Tokenizer | None
    config: GPTConfig
    meta: dict = field(default_factory=dict)
    kind: str = "glassbox"  # "glassbox" | "hf-gpt2"
    path: Path | None = None


# --------------------------------------------------------------------------------------
# Saving


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def _state_dict_for_save(model: GPT) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
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


def check_safetensors_file(path: Path) -> dict[str, dict]:
    """Read and check a safetensors header without loading tensors: {name: {dtype, shape}}."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.name} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
        if not (len(head) >= 9 and head[8:9] == b"{" and 8 + n <= size and n <= MAX_HEADER_BYTES):
            if head[:2] == b"PK":
                raise CheckpointError(f"{path.name} is a zip archive (a torch.save file?), not safetensors: "
                                      "Glassbox only loads safetensors, never pickle or zip")
            if head[:1] == b"\x80":
                raise CheckpointError(f"{path.name} is a Python pickle, not safetensors: Glassbox only loads "
                                      "safetensors files (a pickle can run code when it is loaded)")
            if size < 10:
                raise CheckpointError(f"{path.name} is empty or truncated ({size} bytes)")
            raise CheckpointError(f"{path.name} is not a valid safetensors file (bad or truncated header); "
                                  "only safetensors is loaded")
        f.seek(8)
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path.name} has a corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a corrupt safetensors header")
    data_len = size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name}: tensor {name!r} has a malformed header entry") from None
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{path.name}: tensor {name!r} has unsupported dtype {dtype}")
        expect = math.prod(shape) * DTYPE_SIZES[dtype]
        if not (0 <= begin <= end <= data_len) or end - begin != expect:
            raise CheckpointError(f"{path.name} is truncated or corrupt: tensor {name!r} "
                                  f"({dtype} {shape}) does not fit the file's {data_len} data bytes")
        out[name] = {"dtype": dtype, "shape": shape}
    return out


def _expected_shapes(cfg: GPTConfig) -> dict[str, list[int]]:
    C, V, T = cfg.n_embd, cfg.vocab_size, cfg.block_size
    shapes = {"transformer.wte.weight": [V, C], "transformer.wpe.weight": [T, C],
              "transformer.ln_f.weight": [C]}
    if cfg.bias:
        shapes["transformer.ln_f.bias"] = [C]
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        layer = {"ln_1.weight": [C], "ln_2.weight": [C], "attn.c_attn.weight": [3 * C, C],
                 "attn.c_proj.weight": [C, C], "mlp.c_fc.weight": [4 * C, C], "mlp.c_proj.weight": [C, 4 * C]}
        if cfg.bias:
            layer.update({"ln_1.bias": [C], "ln_2.bias": [C], "attn.c_attn.bias": [3 * C],
                          "attn.c_proj.bias": [C], "mlp.c_fc.bias": [4 * C], "mlp.c_proj.bias": [C]})
        shapes.update({p + k: v for k, v in layer.items()})
    return shapes


def _check_tensors(header: dict[str, dict], expected: dict[str, list[int]], fname: str) -> None:
    missing = [k for k in expected if k not in header]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{fname} does not match config.json: missing tensor(s) {', '.join(missing[:3])}{more}")
    unexpected = [k for k in header if k not in expected]
    if unexpected:
        raise CheckpointError(f"{fname} does not match config.json: unexpected tensor(s) {', '.join(unexpected[:3])}")
    for name, shape in expected.items():
        info = header[name]
        if info["shape"] != shape:
            raise CheckpointError(f"{fname}: tensor {name} has shape {info['shape']}, config.json implies {shape}")
        if info["dtype"] not in FLOAT_DTYPES:
            raise CheckpointError(f"{fname}: tensor {name} has dtype {info['dtype']}; weights must be floating point")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{what} is missing: expected {path.name} in {path.parent}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path.name} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path.name} must hold a JSON object")
    return d


def _hf_config(d: dict) -> GPTConfig:
    act = d.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise CheckpointError(f"config.json: activation_function={act!r} is not GPT-2's tanh GELU")
    eps = d.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or abs(eps - 1e-5) > 1e-9:
        raise CheckpointError(f"config.json: layer_norm_epsilon={eps!r} is not supported (GPT-2 uses 1e-5)")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if d.get(flag):
            raise CheckpointError(f"config.json: {flag}=true is not supported")
    if d.get("scale_attn_weights", True) is not True:
        raise CheckpointError("config.json: scale_attn_weights=false is not supported")
    try:
        return GPTConfig(vocab_size=d["vocab_size"], block_size=d.get("n_positions", d.get("n_ctx")),
                         n_layer=d["n_layer"], n_head=d["n_head"], n_embd=d["n_embd"], dropout=0.0, bias=True)
    except KeyError as e:
        raise CheckpointError(f"config.json is missing GPT-2 key {e.args[0]!r}") from None
    except ValueError as e:
        raise CheckpointError(f"config.json: {e}") from None


def _hf_key_map(header: dict[str, dict]) -> dict[str, str]:
    """Map HF GPT-2 names to ours (accepting both prefixes); drop buffers and the tied head."""
    out = {}
    for k in header:
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue
        ours = k if k.startswith("transformer.") else "transformer." + k
        out[ours] = k
    return out


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
    if d.get("model_type") == "gpt2" or "n_positions" in d:
        return "hf-gpt2"
    raise CheckpointError("config.json is neither a Glassbox config (format: glassbox) nor a GPT-2 config "
                          "(model_type: gpt2)")


def read_config(folder: str | Path) -> GPTConfig:
    """The architecture in a Glassbox or GPT-2-layout folder's config.json, read without the weights."""
    path = Path(folder)
    kind = detect_kind(path)
    cfg_d = _read_json(path / CONFIG_FILE, "config.json")
    if kind == "hf-gpt2":
        return _hf_config(cfg_d)
    cfg_d.pop("format")
    try:
        return GPTConfig.from_dict(cfg_d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"config.json: {e}") from None


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

    header = check_safetensors_file(path / MODEL_FILE)
    expected = _expected_shapes(cfg)
    if kind == "glassbox":
        names = {k: k for k in header}
        _check_tensors(header, expected, MODEL_FILE)
    else:
        names = _hf_key_map(header)
        hf_shapes = {}
        for ours, theirs in names.items():
            shape = header[theirs]["shape"]
            if ours.endswith(CONV1D) and len(shape) == 2:
                shape = shape[::-1]  # Conv1D stores [in, out]
            hf_shapes[ours] = {"dtype": header[theirs]["dtype"], "shape": shape}
        _check_tensors(hf_shapes, expected, MODEL_FILE)

    tokenizer = _load_tokenizer(path)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                              f"{cfg.vocab_size}")
    meta = _read_json(path / META_FILE, "meta.json") if (path / META_FILE).is_file() else {}

    state = {}
    try:
        with safe_open(str(path / MODEL_FILE), framework="pt") as f:
            for ours, theirs in names.items():
                t = f.get_tensor(theirs)
                if kind == "hf-gpt2" and ours.endswith(CONV1D):
                    t = t.t()
                if not torch.isfinite(t).all():
                    raise CheckpointError(f"{MODEL_FILE}: tensor {ours} contains NaN or infinite values")
                state[ours] = t.to(torch.float32).contiguous()
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"{MODEL_FILE} could not be read: {e}") from None

    with torch.device("meta"):
        model = GPT(cfg)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
    model = model.to(device).eval()
    return Checkpoint(model=model, tokenizer=tokenizer, config=cfg, meta=meta, kind=kind, path=path)


def load_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainer's resume state saved beside a checkpoint: (tensors, json)."""
    path = Path(path)
    check_safetensors_file(path / STATE_FILE)
    tensors = {}
    with safe_open(str(path / STATE_FILE), framework="pt") as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, _read_json(path / STATE_META_FILE, STATE_META_FILE)


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file()


# --------------------------------------------------------------------------------------
# Export to the Hugging Face GPT-2 layout


def export_hf_gpt2(model: GPT, tokenizer: Tokenizer | None, folder: str | Path) -> Path:
    """Write `model` as a Hugging Face GPT-2 folder (GPT2LMHeadModel.from_pretrained reads it)."""
    cfg = model.config
    if not cfg.bias:
        raise CheckpointError("GPT-2's layout has biases everywhere; a bias=false model cannot be exported to it")
    sd = {}
    for k, v in _state_dict_for_save(model).items():
        sd[k] = v.t().contiguous() if k.endswith(CONV1D) else v
    hf_cfg = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "layer_norm_epsilon": 1e-5, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout, "initializer_range": 0.02, "scale_attn_weights": True,
        "tie_word_embeddings": True, "use_cache": True,
    }
    if tokenizer is not None and tokenizer.eot_id is not None:
        hf_cfg["bos_token_id"] = hf_cfg["eos_token_id"] = tokenizer.eot_id

    def write(tmp: Path) -> None:
        save_file(sd, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        _write_json(tmp / CONFIG_FILE, hf_cfg)
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
    return _atomic_folder(Path(folder), write)
