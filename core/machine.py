"""What this machine is, and the speed choices measured on it, cached per machine.

Owns: a fingerprint of the CPU (model string, `get_cpu_capability()`, torch version, thread
count) and a small JSON cache of measured choices keyed by that fingerprint plus the shape
being measured, so a second run on the same machine starts without probing. Does not own:
what is measured (the trainer's probe, the inference path choice) — callers pass a
`measure()` that returns a JSON-able dict.

A different torch version, CPU model or capability gives a different fingerprint, so a
choice measured on one machine is never reused on another.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

_LOCK = threading.Lock()


def cpu_model() -> str:
    """The CPU's model string ('AMD EPYC 7B13', ...), or the platform's processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_capability() -> str:
    """torch's name for the vector ISA it dispatches to here: 'AVX512', 'AVX2', 'DEFAULT', ..."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older builds lack the call; the fingerprint still differs by CPU string
        return "unknown"


def fingerprint() -> dict:
    """What makes a measured choice valid: CPU, capability, torch version, threads, and the
    oneDNN and MKL ISA caps (ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS change the kernels
    without changing the CPU)."""
    return {
        "cpu": cpu_model(),
        "capability": cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "mkl_isa": os.environ.get("MKL_ENABLE_INSTRUCTIONS", ""),
    }


@lru_cache(maxsize=1)
def bf16_matmul_ratio() -> float:
    """How many times slower a bf16 matmul is than fp32 here (≈1 or below on AVX-512 with bf16,
    tens on AVX2-only CPUs). One 256×256 product chain each, best of three: a few ms."""
    a = torch.randn(256, 256)
    b = torch.randn(256, 256)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(4):
                x @ y
            best = min(best, time.perf_counter() - t0)
        out[dtype] = best
    return out[torch.bfloat16] / max(out[torch.float32], 1e-9)


def describe() -> dict:
    """The fingerprint plus whether bf16 matmul is fast here, for benchmarks and `start` events."""
    ratio = bf16_matmul_ratio()
    return {**fingerprint(), "bf16_matmul_vs_fp32": round(ratio, 2), "bf16_fast": ratio < 1.5}


def default_cache_dir() -> Path:
    """`$GLASSBOX_CACHE_DIR`, else `~/.cache/glassbox` (the same folder `core.data` uses)."""
    env = os.environ.get("GLASSBOX_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glassbox"


def _cache_file(kind: str, cache_dir: str | Path | None) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "speed" / f"{kind}.json"


def _entry_key(key: dict) -> str:
    blob = json.dumps({"machine": fingerprint(), "key": key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_choice(kind: str, key: dict, measure: Callable[[], dict], *,
                  cache_dir: str | Path | None = None, refresh: bool = False) -> tuple[dict, dict]:
    """The choice for `kind` (e.g. 'train', 'inference') and `key` (e.g. the model shape) on
    this machine: read from the cache, or measured now with `measure()` and stored.

    Returns (choice, info) where info says `cached` (bool), `measured_at` (unix time) and
    `machine` (the fingerprint). A cache that cannot be read or written is ignored: the
    choice is then measured every time, never wrong."""
    path = _cache_file(kind, cache_dir)
    ek = _entry_key(key)
    if not refresh:
        with _LOCK:
            try:
                table = json.loads(path.read_text(encoding="utf-8"))
                hit = table.get(ek) if isinstance(table, dict) else None
            except (OSError, ValueError):
                hit = None
        if isinstance(hit, dict) and isinstance(hit.get("choice"), dict):
            return hit["choice"], {"cached": True, "measured_at": hit.get("measured_at"), "machine": fingerprint()}
    choice = measure()
    now = time.time()
    with _LOCK:
        try:
            try:
                table = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(table, dict):
                    table = {}
            except (OSError, ValueError):
                table = {}
            table[ek] = {"choice": choice, "measured_at": now, "key": key, "machine": fingerprint()}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(table, default=str), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass
    return choice, {"cached": False, "measured_at": now, "machine": fingerprint()}


def clear_cache(kind: str | None = None, cache_dir: str | Path | None = None) -> None:
    """Forget measured choices (one kind, or all): the next run probes again."""
    base = _cache_file("x", cache_dir).parent
    for f in ([base / f"{kind}.json"] if kind else list(base.glob("*.json")) if base.is_dir() else []):
        try:
            f.unlink()
        except OSError:
            pass
