"""The model catalog: every model the app can offer, loaded lazily and kept within a memory budget.

`ModelCatalog` is the one object the tabs use (create one per app); it joins three parts:

    entries.py   the keys and their entries: bundled, runs (rescanned), uploads, typed
                 folders, the Hub; which browser session added which upload or folder
    store.py     the loaded checkpoints: an LRU bounded by count (`max_resident`) and by
                 bytes (`max_resident_bytes`), one load per key, reloaded when files change
    acquire.py   adding a typed folder or uploaded files (safetensors only, pickle refused)
    hub.py       adding a GPT-2-layout model from the Hugging Face Hub

Many people share one server, so what one visitor adds is theirs: uploads and typed folders
are listed only for the browser session that added them (`owner`, Gradio's session hash) and
are reachable by others only through their unguessable key. Uploads older than `upload_ttl_s`
are deleted. Typing a server folder can be switched off (`allow_paths`; off by default on
Hugging Face Spaces). Thread-safe.

Does not own: the checkpoint format or its validation (`core.checkpoint`: only safetensors
is read, pickle is refused), nor which model a visitor picked (that is per browser session,
in the model picker, `app.ui`). Errors are `ValueError`s with messages meant for the user.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from app.catalog.acquire import clean_uploads, folder_from_text, paths_allowed_by_default, stage_upload
from app.catalog.entries import BUNDLED_KEY, PRIVATE_SOURCES, KeySources, ModelEntry, clean
from app.catalog.hub import download, hub_offline, repo_name
from app.catalog.store import ResidentStore, default_resident_bytes, stamp
from core import checkpoint
from core.checkpoint import Checkpoint

__all__ = ["BUNDLED_KEY", "PRIVATE_SOURCES", "ModelCatalog", "ModelEntry", "default_resident_bytes",
           "hub_offline", "paths_allowed_by_default"]


class ModelCatalog:
    """All models the app offers, and the few that are loaded. Create one per app."""

    def __init__(self, bundled: str | Path | None, runs_dir: str | Path, uploads_dir: str | Path,
                 hub_cache_dir: str | Path | None = None, max_resident: int = 3, device: str = "cpu",
                 max_bytes: int = checkpoint.DEFAULT_MAX_BYTES, max_resident_bytes: int | None = None,
                 allow_paths: bool | None = None, upload_ttl_s: float = 24 * 3600):
        self._store = ResidentStore(max_resident, max_resident_bytes)
        self.bundled = Path(bundled).resolve() if bundled is not None else None
        self.runs_dir = Path(runs_dir).resolve()
        self.uploads_dir = Path(uploads_dir).resolve()
        self.hub_cache_dir = Path(hub_cache_dir) if hub_cache_dir is not None else None
        self.device = device
        self.max_bytes = max_bytes
        self.allow_paths = paths_allowed_by_default() if allow_paths is None else bool(allow_paths)
        self.upload_ttl_s = upload_ttl_s
        self._keys = KeySources(self.bundled, self.runs_dir, self.uploads_dir)

    @property
    def max_resident(self) -> int:
        return self._store.max_resident

    @property
    def max_resident_bytes(self) -> int:
        return self._store.max_resident_bytes

    # ---- listing ----------------------------------------------------------------------
    def notice(self) -> str | None:
        """A message for the page when the bundled demo model is missing (else None)."""
        return self._keys.notice()

    def entries(self, owner: str | None = None) -> list[ModelEntry]:
        """The models on offer, rescanning the runs and uploads folders now: everyone's (bundled,
        runs, Hub) plus the uploads and folders that session `owner` added."""
        return self._keys.entries(owner)

    def choices(self, owner: str | None = None, current: str | None = None) -> list[tuple[str, str]]:
        """(label, key) pairs for a `gr.Dropdown`: `entries(owner)`, plus `current` if it is a valid
        key not listed (a private model opened by its key)."""
        entries = self.entries(owner)
        out = [(e.label, e.key) for e in entries]
        if current and current not in {e.key for e in entries}:
            try:
                e = self.entry(current)
            except ValueError:
                pass
            else:
                out.append((e.label, e.key))
        return out

    def own(self, key: str, owner: str | None) -> None:
        """Record that session `owner` added `key` (an upload or a folder), so it is listed for it."""
        self._keys.own(key, owner)

    def default_key(self) -> str | None:
        """The bundled model if present, else the newest run, else any model, else None."""
        entries = self.entries()
        return entries[0].key if entries else None

    def entry(self, key: str) -> ModelEntry:
        """The entry for `key`; ValueError if the key is unknown or its folder is gone."""
        return self._keys.entry(key)

    # ---- loading ----------------------------------------------------------------------
    def _load(self, folder: Path) -> Checkpoint:
        return checkpoint.load(folder, device=self.device, max_bytes=self.max_bytes)

    def get(self, key: str) -> Checkpoint:
        """The loaded checkpoint for `key`: loaded once, then served from memory while it is
        among the most recently used (within `max_resident` and `max_resident_bytes`)."""
        entry = self.entry(key)
        try:
            return self._store.get(key, entry.path, self._load)
        except OSError:
            raise ValueError(f"the model {entry.label!r} is gone: {entry.path} cannot be read") from None

    def resident_bytes(self) -> int:
        """Bytes of parameters held by the loaded models."""
        return self._store.resident_bytes()

    def resident(self) -> list[str]:
        """Keys of the loaded models, least recently used first."""
        return self._store.resident()

    def _register(self, entry: ModelEntry, ck: Checkpoint, owner: str | None = None) -> str:
        self._keys.add(entry)
        self.own(entry.key, owner)
        self._store.put(entry.key, stamp(entry.path), ck)
        return entry.key

    # ---- adding models ----------------------------------------------------------------
    def add_path(self, text: str, owner: str | None = None) -> str:
        """Offer the checkpoint folder at a typed path (Glassbox or GPT-2 layout); returns its key."""
        if not self.allow_paths:
            raise ValueError("loading a folder from the server's disk is turned off on this server "
                             "(GLASSBOX_ALLOW_PATHS=0): upload the checkpoint's files instead")
        folder = folder_from_text(text)
        known = self._keys.key_for_folder(folder)
        if known is not None:
            self.get(known)
            self.own(known, owner)
            return known
        entry = ModelEntry(f"path:{folder}", f"folder: {clean(str(folder))}", "path", folder)
        return self._register(entry, self._load(folder), owner)

    def add_upload(self, files: Iterable | None, owner: str | None = None) -> str:
        """Copy uploaded checkpoint files into a fresh uploads folder, validate, return the key
        (see `app.catalog.acquire.stage_upload` for what is accepted)."""
        self.clean_uploads()
        folder, ck = stage_upload(files, self.uploads_dir, self.max_bytes, self._load)
        return self._register(self._keys.upload_entry(folder), ck, owner)

    def clean_uploads(self, now: float | None = None) -> list[str]:
        """Delete uploads (and half-written ones) older than `upload_ttl_s`; returns their names."""
        gone = clean_uploads(self.uploads_dir, self.upload_ttl_s, now)
        for name in gone:
            self._store.drop(f"upload:{name}")
            self._keys.forget(f"upload:{name}")
        return gone

    def add_hub(self, repo: str) -> str:
        """Download a GPT-2-layout model from the Hugging Face Hub (safetensors only); returns its key.

        Offline (HF_HUB_OFFLINE=1) only the local Hugging Face cache is used, so this fails at
        once with a clear message when the model was never downloaded.
        """
        repo = repo_name(repo)
        key = f"hub:{repo}"
        if self._keys.added(key):
            self.get(key)
            return key
        folder = download(repo, self.hub_cache_dir, self.max_bytes)
        return self._register(ModelEntry(key, f"Hub: {repo}", "hub", folder), self._load(folder))
