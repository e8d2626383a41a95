"""Bounded reading of the files a user can hand Glassbox, before any library parses them.

Owns: `CheckpointError`, reading a JSON file with a byte limit and a nesting-depth limit
checked by a flat scan *before* `json.loads` (Python's parser recurses, so 100,000 nested
brackets would end in a bare RecursionError), and checking a safetensors header — its size,
every entry's types, dtype, shape and byte range — without loading a tensor.

Messages name the file by its name (never a server folder) and quote at most a short
prefix of a bad value (`short`). Does not own: what the JSON must contain (the callers).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

MAX_JSON_DEPTH = 64  # GPT-2's tokenizer.json nests 6 deep, a config.json 2, a meta.json about 4
MAX_JSON_BYTES = 4 * 2**20  # config.json, meta.json, an index: a few KB in practice
MAX_HEADER_BYTES = 8 * 2**20  # GPT-2 124M's header is 15 KB; 8 MB fits some 50,000 tensors
MAX_TENSORS = 65_536
MAX_NAME_CHARS = 1_000
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
DTYPE_SIZES = {**FLOAT_DTYPES, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_STEP = np.zeros(256, np.int8)  # +1 for an opening bracket, -1 for a closing one
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or tensor at fault."""


def short(value, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, so a message never echoes a huge input."""
    r = repr(value) if not isinstance(value, str) else repr(value[: limit + 1])
    return r if len(r) <= limit else r[: limit - 1] + "…"


def json_depth(data: bytes, chunk: int = 1 << 18) -> int:
    """Deepest bracket nesting of JSON text, not counting brackets inside strings.

    A flat scan (numpy, in chunks so memory stays small): a quote opens or closes a string
    unless an odd run of backslashes precedes it. Exact up to the first syntax error, which is
    as far as `json.loads` can read, so a refusal here covers every nesting it would reach."""
    arr = np.frombuffer(data, dtype=np.uint8)
    depth = deepest = 0
    in_str, bs_run = 0, 0  # carried from one chunk to the next
    for start in range(0, arr.size, chunk):
        a = arr[start:start + chunk]
        n = a.size
        quote = a == 34
        is_bs = a == 92
        if bs_run or is_bs.any():
            idx = np.arange(n, dtype=np.int64)
            last = np.maximum.accumulate(np.where(is_bs, -1 - bs_run, idx))  # last non-backslash at or before i
            prev = np.empty(n, dtype=np.int64)
            prev[0], prev[1:] = -1 - bs_run, last[:-1]
            quote &= ((idx - 1 - prev) & 1) == 0  # an even run of backslashes before it
            bs_run = int(n - 1 - last[-1]) if is_bs[-1] else 0
        outside = (np.cumsum(quote, dtype=np.int64) + in_str) & 1 == 0
        levels = np.cumsum(_STEP[a] * outside, dtype=np.int64)
        levels += depth
        deepest = max(deepest, int(levels.max()))
        depth, in_str = int(levels[-1]), int(not outside[-1])
    return deepest


def loads_json(data: bytes | str, name: str, error: type[Exception] = CheckpointError,
               max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH, pairs_hook=None,
               not_json: str = "is not valid JSON"):
    """Parse JSON text after checking its size and nesting depth; `error` names `name`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise error(f"{name} is {len(raw):,} bytes; files over {max_bytes:,} bytes are refused here")
    depth = json_depth(raw)
    if depth > max_depth:
        raise error(f"{name} nests {depth:,} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs_hook)
    except UnicodeDecodeError as e:
        raise error(f"{name} is not UTF-8 text (bad byte at {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{name} {not_json}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:  # unreachable after the depth check; kept so no bare error escapes
        raise error(f"{name} nests too deeply") from None


def read_json(path: Path, error: type[Exception] = CheckpointError, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH, pairs_hook=None):
    """`loads_json` of a file; the size is checked from the file system before reading."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path.name} is missing")
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path.name} is {size:,} bytes; files over {max_bytes:,} bytes are refused here")
    return loads_json(path.read_bytes(), path.name, error, max_bytes, max_depth, pairs_hook)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_safetensors_file(path: Path, max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, dict]:
    """Read and check a safetensors header without loading tensors: {name: {dtype, shape}}.

    Refuses pickle and zip by their magic bytes, a header over `max_header_bytes` before
    reading it, and any entry whose types, dtype, shape or byte range do not hold."""
    path = Path(path)
    fname = path.name
    if not path.is_file():
        raise CheckpointError(f"{fname} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
        looks_right = head[8:9] == b"{" and 8 + n <= size
        if looks_right and n > max_header_bytes:
            raise CheckpointError(f"{fname} declares a {n:,}-byte safetensors header; at most "
                                  f"{max_header_bytes:,} bytes are read")
        if not looks_right:
            if head[:2] == b"PK":
                raise CheckpointError(f"{fname} is a zip archive (a torch.save file?), not safetensors: "
                                      "Glassbox only loads safetensors, never pickle or zip")
            if head[:1] == b"\x80":
                raise CheckpointError(f"{fname} is a Python pickle, not safetensors: Glassbox only loads "
                                      "safetensors files (a pickle can run code when it is loaded)")
            if size < 10:
                raise CheckpointError(f"{fname} is empty or truncated ({size} bytes)")
            raise CheckpointError(f"{fname} is not a valid safetensors file (bad or truncated header); "
                                  "only safetensors is loaded")
        f.seek(8)
        raw = f.read(n)
    header = loads_json(raw, f"{fname}'s header", max_bytes=max_header_bytes, max_depth=4)
    if not isinstance(header, dict):
        raise CheckpointError(f"{fname} has a corrupt safetensors header (not a JSON object)")
    if len(header) > MAX_TENSORS + 1:
        raise CheckpointError(f"{fname} lists {len(header):,} tensors; at most {MAX_TENSORS:,} are accepted")
    data_len = size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CheckpointError(f"{fname}: __metadata__ must map names to strings")
            continue
        if len(name) > MAX_NAME_CHARS:
            raise CheckpointError(f"{fname}: a tensor name of {len(name):,} characters ({short(name)})")
        out[name] = _check_entry(fname, name, info, data_len)
    return out


def _check_entry(fname: str, name: str, info, data_len: int) -> dict:
    where = f"{fname}: tensor {short(name)}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where} has a malformed header entry ({short(info)})")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise CheckpointError(f"{where}: dtype must be a string such as \"F32\", got {short(dtype)}")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{where} has unsupported dtype {short(dtype)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(d) and 0 <= d < 2**40 for d in shape):
        raise CheckpointError(f"{where}: shape must be a list of at most 8 non-negative integers, "
                              f"got {short(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointError(f"{where}: data_offsets must be two integers [begin, end], got {short(offsets)}")
    begin, end = offsets
    expect = math.prod(shape) * DTYPE_SIZES[dtype]
    if not (0 <= begin <= end <= data_len) or end - begin != expect:
        raise CheckpointError(f"{fname} is truncated or corrupt: tensor {short(name)} ({dtype} {shape}) "
                              f"does not fit the file's {data_len:,} data bytes")
    return {"dtype": dtype, "shape": shape}
