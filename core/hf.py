"""The Hugging Face GPT-2 layout: its config.json, its tensor names, sharded weights, export.

Owns: turning a `transformers` GPT-2 `config.json` into a `GPTConfig` (refusing by name
every option whose maths Glassbox does not compute), finding a folder's weight files
(`model.safetensors`, or `model.safetensors.index.json` and the shards it lists, each
header checked before anything is allocated), mapping the file's tensor names to ours
(with or without `transformer.`), and writing a model back in that layout.

Follows `transformers` where a file is ambiguous: a config that says
`tie_word_embeddings: true` beside an `lm_head.weight` that differs from `wte.weight` is
loaded untied, as `GPT2LMHeadModel.from_pretrained` does (5.x: "both are present in the
checkpoints with different values, so we will NOT tie them"), and a note says so.
Does not own: the Glassbox folder format and the load sequence (`core.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import GPTConfig
from .safefile import CheckpointError, check_safetensors_file, read_json, short

MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")
MAX_SHARDS = 1_000
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")  # one formula, float rounding apart
CONFIG_KEYS = ("vocab_size", "n_positions", "n_ctx", "n_layer", "n_head", "n_embd", "n_inner", "activation_function",
               "layer_norm_epsilon", "scale_attn_by_inverse_layer_idx", "add_cross_attention", "scale_attn_weights",
               "tie_word_embeddings", "reorder_and_upcast_attn", "model_type")  # what hf_config reads
HF_FIELDS = {"block_size": "n_positions"}  # our config field -> the name in a transformers config.json


# --------------------------------------------------------------------------------------
# config.json


def hf_config(d: dict) -> GPTConfig:
    """A `transformers` GPT-2 config.json → `GPTConfig`; refuses options we do not compute."""
    act = d.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        raise CheckpointError(f"config.json: activation_function={short(act)} is not supported (Glassbox computes "
                              f"GPT-2's tanh GELU: {', '.join(TANH_GELUS)})")
    eps = d.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or abs(eps - 1e-5) > 1e-9:
        raise CheckpointError(f"config.json: layer_norm_epsilon={short(eps)} is not supported (GPT-2 uses 1e-5)")
    # reorder_and_upcast_attn only computes the scores in float32: Glassbox's weights are float32 already
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if d.get(flag, False) is not False:
            raise CheckpointError(f"config.json: {flag}={short(d[flag])} is not supported")
    if d.get("scale_attn_weights", True) is not True:
        raise CheckpointError(f"config.json: scale_attn_weights={short(d['scale_attn_weights'])} is not supported "
                              "(GPT-2 scales attention scores by 1/sqrt(head size))")
    tie = d.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        raise CheckpointError(f"config.json: tie_word_embeddings must be true or false, got {short(tie)}")
    for key in ("vocab_size", "n_layer", "n_head", "n_embd"):
        if key not in d:
            raise CheckpointError(f"config.json is missing GPT-2 key {key!r}")
    block = d.get("n_positions", d.get("n_ctx"))
    if block is None:
        raise CheckpointError("config.json is missing GPT-2 key 'n_positions'")
    try:
        return GPTConfig(vocab_size=d["vocab_size"], block_size=block, n_layer=d["n_layer"], n_head=d["n_head"],
                         n_embd=d["n_embd"], dropout=0.0, bias=True, n_inner=d.get("n_inner"),
                         tie_word_embeddings=tie)
    except ValueError as e:
        why = str(e)
        for ours, theirs in HF_FIELDS.items():
            why = why.replace(ours, theirs)
        raise CheckpointError(f"config.json: {why[:300]}") from None


def is_hf_config(d: dict) -> bool:
    return d.get("model_type") == "gpt2" or "n_positions" in d


# --------------------------------------------------------------------------------------
# Weight files: one model.safetensors, or an index and its shards


def _no_weights(folder: Path) -> CheckpointError:
    pickles = [n for n in PICKLE_FILES if (folder / n).is_file()]
    if pickles:
        return CheckpointError(f"the folder has {pickles[0]} (a Python pickle) but no model.safetensors: Glassbox "
                               "only loads safetensors, never pickle (it can run code when loaded); convert it "
                               "with transformers' save_pretrained(..., safe_serialization=True)")
    return CheckpointError(f"{MODEL_FILE} is missing (nor is there a sharded {INDEX_FILE})")


def weight_headers(folder: Path) -> dict[str, dict]:
    """Every tensor of the folder's weights, as named in its file: {name: {dtype, shape, file}}.

    `model.safetensors` when present, else the shards `model.safetensors.index.json` lists.
    Every shard's header is checked before any tensor is read; a missing shard, a shard
    name that is not a plain file name, a tensor in two shards and a tensor the index puts
    in a shard that does not hold it are refused, naming the file."""
    folder = Path(folder)
    if (folder / MODEL_FILE).is_file():
        return {k: {**v, "file": MODEL_FILE} for k, v in check_safetensors_file(folder / MODEL_FILE).items()}
    if not (folder / INDEX_FILE).is_file():
        raise _no_weights(folder)
    weight_map = read_index(folder / INDEX_FILE)
    out: dict[str, dict] = {}
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise CheckpointError(f"{shard} is missing: {INDEX_FILE} lists it as a shard of the weights")
        for name, info in check_safetensors_file(folder / shard).items():
            if name in out:
                raise CheckpointError(f"tensor {short(name)} is in two shards: {out[name]['file']} and {shard}")
            if weight_map.get(name, shard) != shard:
                raise CheckpointError(f"{shard} holds tensor {short(name)}, which {INDEX_FILE} puts in "
                                      f"{weight_map[name]}")
            out[name] = {**info, "file": shard}
    absent = [n for n in weight_map if n not in out]
    if absent:
        raise CheckpointError(f"{weight_map[absent[0]]} has no tensor {short(absent[0])}, which {INDEX_FILE} "
                              "puts there")
    return out


def read_index(path: Path) -> dict[str, str]:
    """`weight_map` of a sharded index: {tensor: shard file name}, names checked."""
    def pairs(items):
        seen = {}
        for k, v in items:
            if k in seen:
                raise CheckpointError(f"{INDEX_FILE} lists {short(k)} twice")
            seen[k] = v
        return seen

    d = read_json(path, pairs_hook=pairs)
    wm = d.get("weight_map") if isinstance(d, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{INDEX_FILE} has no weight_map object (tensor name → shard file)")
    shards = set()
    for name, shard in wm.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).name != shard \
                or shard.startswith("."):
            raise CheckpointError(f"{INDEX_FILE}: tensor {short(name)} points at {short(shard)}, not a .safetensors "
                                  "file beside the index")
        shards.add(shard)
    if len(shards) > MAX_SHARDS:
        raise CheckpointError(f"{INDEX_FILE} lists {len(shards):,} shards; at most {MAX_SHARDS:,} are accepted")
    return wm


def has_weights(folder: Path) -> bool:
    return (Path(folder) / MODEL_FILE).is_file() or (Path(folder) / INDEX_FILE).is_file()


def shard_files(index_path: Path) -> list[str]:
    """The shard file names an index lists (to download them)."""
    return sorted(set(read_index(Path(index_path)).values()))


# --------------------------------------------------------------------------------------
# Names: the file's → ours


def key_map(header: dict[str, dict]) -> dict[str, str]:
    """Map the file's GPT-2 names to ours (with or without `transformer.`); drop the causal-mask
    buffers. `lm_head.weight` is kept: the caller decides whether the head is tied."""
    out = {}
    for k in header:
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        ours = k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k
        out[ours] = k
    return out


def file_name_for(ours: str, header: dict[str, dict]) -> str:
    """How a tensor we expect would be named in this file (its prefix convention)."""
    if ours.startswith("lm_head.") or any(k.startswith("transformer.") for k in header):
        return ours
    return ours.removeprefix("transformer.")


# --------------------------------------------------------------------------------------
# Export


def export_hf_gpt2(model, tokenizer, folder: str | Path, state_dict: dict[str, torch.Tensor],
                   write_folder, write_json) -> Path:
    """Write `model` as a Hugging Face GPT-2 folder (GPT2LMHeadModel.from_pretrained reads it).
    `state_dict` is what Glassbox saves (the tied head once); `write_folder` writes atomically."""
    cfg: GPTConfig = model.config
    if not cfg.bias:
        raise CheckpointError("GPT-2's layout has biases everywhere; a bias=false model cannot be exported to it")
    sd = {k: (v.t().contiguous() if k.endswith(CONV1D) else v) for k, v in state_dict.items()}
    hf_cfg = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.n_inner,
        "layer_norm_epsilon": 1e-5, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout, "initializer_range": 0.02, "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tie_word_embeddings, "use_cache": True,
    }
    if tokenizer is not None and tokenizer.eot_id is not None:
        hf_cfg["bos_token_id"] = hf_cfg["eos_token_id"] = tokenizer.eot_id

    def write(tmp: Path) -> None:
        save_file(sd, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        write_json(tmp / CONFIG_FILE, hf_cfg)
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
    return write_folder(Path(folder), write)

