"""The catalog's key sources: which models exist, under which key, and who may see them listed.

Owns: `ModelEntry` (a stable key, a label, a source, a folder), turning a key back into its
entry, the rescans of the runs and uploads folders, the table of models added at run time
(typed folders and Hub models) and which browser sessions added what (`KeySources`).

    key                     source
    bundled:demo            the demo model shipped in assets/demo
    run:<run>/<name>        a checkpoint under the runs dir (rescanned on every listing,
                            so a run trained after start-up appears without a restart)
    run:<run>/step-<N>      a run's snapshot at step N (runs/<run>/snapshots/step-<N>)
    upload:<id>             safetensors files a user uploaded (copied into the uploads dir)
    path:/abs/folder        a Glassbox or GPT-2-layout folder a user typed
    hub:<repo>              a GPT-2-layout model from the Hugging Face Hub

Uploads and typed folders are listed only for the sessions that added them (`PRIVATE_SOURCES`)
and are reachable by others only through their unguessable key.
Does not own: loading (`app.catalog.store`), adding files (`app.catalog.acquire`, `app.catalog.hub`).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from core import checkpoint, snapshots
from core.checkpoint import MODEL_FILE

BUNDLED_KEY = "bundled:demo"
PRIVATE_SOURCES = ("upload", "path")  # listed only for the session that added them
UPLOAD_INFO = "upload.json"  # original file names, written beside an uploaded checkpoint
UPLOAD_ID = re.compile(r"^[0-9a-f]{12}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ModelEntry:
    key: str
    label: str
    source: str  # bundled, run, upload, path or hub: the part of `key` before the colon
    path: Path


def clean(text: str, limit: int = 60) -> str:
    """A user-supplied name made safe for a label: no control characters, bounded length."""
    text = CONTROL.sub("", text).strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


class KeySources:
    """Every key the catalog offers and the entry behind it. Thread-safe (one lock over the
    added-models and owners tables; the folders are rescanned without it)."""

    def __init__(self, bundled: Path | None, runs_dir: Path, uploads_dir: Path):
        self.bundled, self.runs_dir, self.uploads_dir = bundled, runs_dir, uploads_dir
        self._lock = threading.Lock()
        self._added: dict[str, ModelEntry] = {}  # path: and hub: entries, in the order added
        self._owners: dict[str, set[str]] = {}  # upload:/path: key -> the sessions that added it

    # ---- the listing --------------------------------------------------------------------
    def bundled_entry(self) -> ModelEntry | None:
        if self.bundled is None or not checkpoint.is_checkpoint(self.bundled):
            return None
        return ModelEntry(BUNDLED_KEY, "Demo model (bundled)", "bundled", self.bundled)

    def notice(self) -> str | None:
        """A message for the page when the bundled demo model is missing (else None)."""
        if self.bundled is None or self.bundled_entry() is not None:
            return None
        return (f"The bundled demo model is missing: there is no checkpoint at {self.bundled}. "
                "Train one (see the README), or load a model from a folder, an upload or the Hub.")

    def entries(self, owner: str | None = None) -> list[ModelEntry]:
        """Everyone's models (bundled, runs, Hub) plus the uploads and folders `owner` added."""
        out = [e for e in [self.bundled_entry()] if e is not None]
        out += self.scan_runs()
        with self._lock:
            mine = {k for k, sessions in self._owners.items() if owner is not None and owner in sessions}
            added = list(self._added.values())
        out += [e for e in self.scan_uploads() if e.key in mine]
        out += [e for e in added if e.source not in PRIVATE_SOURCES or e.key in mine]
        return out

    def entry(self, key: str) -> ModelEntry:
        """The entry for `key`; ValueError if the key is unknown or its folder is gone."""
        if not isinstance(key, str) or not key:
            raise ValueError("no model is selected: pick one from the model list")
        source, _, rest = key.partition(":")
        entry = None
        if key == BUNDLED_KEY:
            entry = self.bundled_entry()
            if entry is None:
                raise ValueError(self.notice() or "there is no bundled demo model")
        elif source == "run":  # runs are rescanned: a run folder that is gone is simply unknown now
            entry = self.run_entry(rest)
            if entry is not None and not checkpoint.is_checkpoint(entry.path):
                entry = None
        elif source == "upload" and UPLOAD_ID.match(rest):
            entry = self.upload_entry(self.uploads_dir / rest)
        else:
            with self._lock:
                entry = self._added.get(key)
        if entry is None:
            raise ValueError(f"unknown model {key!r}: pick one from the model list (refresh it if a run is new)")
        if not checkpoint.is_checkpoint(entry.path):
            raise ValueError(f"the model {entry.label!r} is gone: {entry.path} no longer holds "
                             "config.json and model.safetensors")
        return entry

    # ---- who added what -------------------------------------------------------------------
    def own(self, key: str, owner: str | None) -> None:
        """Record that session `owner` added `key` (an upload or a folder), so it is listed for it."""
        if owner:
            with self._lock:
                self._owners.setdefault(key, set()).add(owner)

    def add(self, entry: ModelEntry) -> None:
        """Remember a typed folder or a Hub model (the folders rescanned on each listing need not be)."""
        if entry.source in ("path", "hub"):
            with self._lock:
                self._added[entry.key] = entry

    def added(self, key: str) -> bool:
        with self._lock:
            return key in self._added

    def forget(self, key: str) -> None:
        """Drop what is known of `key` (an upload deleted for its age)."""
        with self._lock:
            self._added.pop(key, None)
            self._owners.pop(key, None)

    def key_for_folder(self, folder: Path) -> str | None:
        """The existing key of a folder already offered (bundled, a run, an upload, a typed folder)."""
        if self.bundled is not None and folder == self.bundled:
            return BUNDLED_KEY
        for base, make in ((self.runs_dir, self.run_entry),
                           (self.uploads_dir, lambda rel: self.upload_entry(self.uploads_dir / rel)
                            if UPLOAD_ID.match(rel) else None)):
            try:
                rel = folder.relative_to(base).as_posix()
            except ValueError:
                continue
            entry = make(rel)
            if entry is not None:
                return entry.key
        key = f"path:{folder}"
        return key if self.added(key) else None

    # ---- the folders, rescanned ---------------------------------------------------------------
    def run_entry(self, rel: str) -> ModelEntry | None:
        parts = rel.split("/")
        if not 1 <= len(parts) <= 2 or any(not p or p.startswith(".") or p in ("..", ".") for p in parts):
            return None
        if len(parts) == 2 and snapshots.STEP_NAME.match(parts[1]):  # a snapshot: kept apart from latest/ best/
            return ModelEntry(f"run:{rel}", f"run: {rel}", "run", self.runs_dir / parts[0] / snapshots.SNAPSHOTS_DIR
                              / parts[1])
        return ModelEntry(f"run:{rel}", f"run: {rel}", "run", self.runs_dir.joinpath(*parts))

    def scan_runs(self) -> list[ModelEntry]:
        """runs/<run> and runs/<run>/<name> folders that hold a checkpoint, then the run's snapshots
        by step; newest run first."""
        found = []
        try:
            runs = [d for d in self.runs_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
            runs.sort(key=lambda d: d.stat().st_mtime, reverse=True)
        except OSError:
            return []
        order = {"latest": 0, "best": 1}
        for run in runs:
            try:
                if checkpoint.is_checkpoint(run):
                    found.append(run.name)
                subs = [s for s in run.iterdir()
                        if s.is_dir() and not s.name.startswith(".") and checkpoint.is_checkpoint(s)]
            except OSError:  # a run folder removed while we look
                continue
            subs.sort(key=lambda s: (order.get(s.name, 2), s.name))
            found += [f"{run.name}/{s.name}" for s in subs if not snapshots.STEP_NAME.match(s.name)]
            found += [f"{run.name}/step-{step}" for step, _ in snapshots.listing(run)]
        return [e for e in (self.run_entry(rel) for rel in found) if e is not None]

    def upload_entry(self, folder: Path) -> ModelEntry:
        label = f"upload {folder.name[:6]}"
        try:
            info = json.loads((folder / UPLOAD_INFO).read_text(encoding="utf-8"))
            label += f": {clean(str(info['shape']), 40)}"
            if info["name"] != MODEL_FILE:
                label += f" ({clean(str(info['name']), 40)})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return ModelEntry(f"upload:{folder.name}", label, "upload", folder)

    def scan_uploads(self) -> list[ModelEntry]:
        try:
            folders = [d for d in self.uploads_dir.iterdir()
                       if UPLOAD_ID.match(d.name) and checkpoint.is_checkpoint(d)]
            folders.sort(key=lambda d: d.stat().st_mtime)
        except OSError:
            return []
        return [self.upload_entry(d) for d in folders]
