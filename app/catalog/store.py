"""The resident-model store: the loaded checkpoints, bounded by count and by bytes.

Owns: `ResidentStore`, an LRU of loaded `core.checkpoint.Checkpoint`s keyed by catalog key,
at most `max_resident` of them and at most `max_resident_bytes` together (the least recently
used goes first; the newest always stays); one load per key even when many requests ask at
once (a per-key gate); and a reload when a model's files change on disk (a run's `latest` is
rewritten while it trains), told apart by `stamp`.
Does not own: which keys exist (`app.catalog.entries`), nor how a folder is read
(`core.checkpoint.load`, passed in as `load`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from core import checkpoint
from core.checkpoint import CONFIG_FILE, MODEL_FILE, Checkpoint


def default_resident_bytes() -> int:
    """GLASSBOX_MODEL_MEMORY_MB (default 4096): the loaded models' budget."""
    raw = os.environ.get("GLASSBOX_MODEL_MEMORY_MB", "").strip()
    try:
        mb = float(raw) if raw else 4096.0
    except ValueError:
        raise ValueError(f"GLASSBOX_MODEL_MEMORY_MB={raw!r} is not a number of megabytes") from None
    return max(1, int(mb * 2**20))


def model_bytes(ck: Checkpoint) -> int:
    """What a resident model costs: its parameters (the tied embedding/head weight once) and,
    on CPU, the inference fast path's prepacked copy of them (core.model), built on first use."""
    params = sum(t.numel() * t.element_size() for t in ck.model.parameters())
    fast_copy = ck.model.decode_weight_cache and next(ck.model.parameters()).device.type == "cpu"
    return params * (2 if fast_copy else 1)


def stamp(folder: Path) -> tuple:
    """What identifies one version of a checkpoint's files (an atomic rewrite changes it)."""
    out = []
    weights = MODEL_FILE if (folder / MODEL_FILE).is_file() else checkpoint.INDEX_FILE  # sharded: the index
    for name in (weights, CONFIG_FILE):
        st = (folder / name).stat()
        out += [st.st_ino, st.st_size, st.st_mtime_ns]
    return tuple(out)


class ResidentStore:
    """The loaded models. Thread-safe: one lock over the table, one gate per key while it loads."""

    def __init__(self, max_resident: int = 3, max_resident_bytes: int | None = None):
        if isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1:
            raise ValueError(f"max_resident={max_resident!r} must be an integer >= 1")
        if max_resident_bytes is not None and max_resident_bytes < 1:
            raise ValueError(f"max_resident_bytes={max_resident_bytes!r} must be positive (None: the default budget)")
        self.max_resident = max_resident
        self.max_resident_bytes = default_resident_bytes() if max_resident_bytes is None else max_resident_bytes
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[tuple, Checkpoint]] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, folder: Path, load: Callable[[Path], Checkpoint]) -> Checkpoint:
        """The checkpoint for `key` (files in `folder`): from memory if its files are unchanged,
        else `load(folder)` once, remembered as the most recently used."""
        version = stamp(folder)  # OSError when the folder is gone: the caller words it
        with self._lock:
            hit = self._hit(key, version)
            if hit is not None:
                return hit
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per key; other keys load (or hit the cache) meanwhile
            with self._lock:
                hit = self._hit(key, version)
            if hit is not None:
                return hit
            ck = load(folder)
            self.put(key, version, ck)
        return ck

    def _hit(self, key: str, version: tuple) -> Checkpoint | None:
        cached = self._cache.get(key)
        if cached is None or cached[0] != version:
            return None
        self._cache.move_to_end(key)
        return cached[1]

    def put(self, key: str, version: tuple, ck: Checkpoint) -> None:
        """Keep `ck` (loaded by the caller) as the most recently used; evict beyond the bounds."""
        with self._lock:
            self._cache[key] = (version, ck)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_resident or (
                    len(self._cache) > 1 and self._bytes_locked() > self.max_resident_bytes):
                self._cache.popitem(last=False)  # least recently used; the newest always stays

    def drop(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def _bytes_locked(self) -> int:
        return sum(model_bytes(ck) for _, ck in self._cache.values())

    def resident_bytes(self) -> int:
        """Bytes of parameters held by the loaded models."""
        with self._lock:
            return self._bytes_locked()

    def resident(self) -> list[str]:
        """Keys of the loaded models, least recently used first."""
        with self._lock:
            return list(self._cache)
