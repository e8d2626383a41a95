"""The model catalog: every model the app can offer, loaded lazily and kept in a small LRU.

Owns: the list of models (`ModelEntry`: a stable key, a dropdown label, a folder) from
five sources, and the loaded `core.checkpoint.Checkpoint`s (at most `max_resident`).

    key                     source
    bundled:demo            the demo model shipped in assets/demo
    run:<run>/<name>        a checkpoint under the runs dir (rescanned on every listing,
                            so a run trained after start-up appears without a restart)
    upload:<id>             safetensors files a user uploaded (copied into the uploads dir)
    path:/abs/folder        a Glassbox or GPT-2-layout folder a user typed
    hub:<repo>              a GPT-2-layout model from the Hugging Face Hub

Many people share one server, so what one visitor adds is theirs: uploads and typed folders
are listed only for the browser session that added them (`owner`, Gradio's session hash) and
are reachable by others only through their unguessable key. Uploads older than `upload_ttl_s`
are deleted. Typing a server folder can be switched off (`allow_paths`; off by default on
Hugging Face Spaces, where the folder box would let anyone read the server's disk). Loaded
models are bounded by count (`max_resident`) and by bytes (`max_resident_bytes`): the least
recently used one is evicted first.

Thread-safe: one lock guards the tables, and a per-key lock makes a model load once even
when many requests ask for it at the same time. A cached model is reloaded when its files
change on disk (a run's `latest` is rewritten while it trains).

Does not own: the checkpoint format or its validation (`core.checkpoint`: only safetensors
is read, pickle is refused), nor which model a visitor picked (that is per browser session,
in the model picker). Errors are `ValueError`s with messages meant for the user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from core import checkpoint
from core.checkpoint import CONFIG_FILE, MODEL_FILE, Checkpoint, CheckpointError
from core.config import GPTConfig

BUNDLED_KEY = "bundled:demo"
SOURCES = ("bundled", "run", "upload", "path", "hub")
HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]
HUB_TIMEOUT_S = float(os.environ.get("GLASSBOX_HUB_TIMEOUT", 10))
UPLOAD_FILES = ("config.json", "tokenizer.json", "meta.json", "vocab.json", "merges.txt")
UPLOAD_INFO = "upload.json"  # original file names, written beside an uploaded checkpoint
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".zip")
_HUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{12}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME_CHARS = 1000  # a typed folder path or Hub name


PRIVATE_SOURCES = ("upload", "path")  # listed only for the session that added them


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in {"0", "false", "no", "off"}


def paths_allowed_by_default() -> bool:
    """GLASSBOX_ALLOW_PATHS if set; otherwise on, except on Hugging Face Spaces (SPACE_ID is set)."""
    return _env_flag("GLASSBOX_ALLOW_PATHS", default=not os.environ.get("SPACE_ID"))


@dataclass(frozen=True)
class ModelEntry:
    key: str
    label: str
    source: str  # one of SOURCES
    path: Path


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE, read now)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub ships with gradio
        return True
    return bool(constants.HF_HUB_OFFLINE)


def _clean(text: str, limit: int = 60) -> str:
    """A user-supplied name made safe for a label: no control characters, bounded length."""
    text = _CONTROL.sub("", text).strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _model_bytes(ck: Checkpoint) -> int:
    """What a resident model costs: its parameters (the tied embedding/head weight once) and,
    on CPU, the inference fast path's prepacked copy of them (core.model), built on first use."""
    params = sum(t.numel() * t.element_size() for t in ck.model.parameters())
    fast_copy = ck.model.decode_weight_cache and next(ck.model.parameters()).device.type == "cpu"
    return params * (2 if fast_copy else 1)


def default_resident_bytes() -> int:
    """GLASSBOX_MODEL_MEMORY_MB (default 4096): the loaded models' budget."""
    raw = os.environ.get("GLASSBOX_MODEL_MEMORY_MB", "").strip()
    try:
        mb = float(raw) if raw else 4096.0
    except ValueError:
        raise ValueError(f"GLASSBOX_MODEL_MEMORY_MB={raw!r} is not a number of megabytes") from None
    return max(1, int(mb * 2**20))


def _stamp(folder: Path) -> tuple:
    """What identifies one version of a checkpoint's files (an atomic rewrite changes it)."""
    out = []
    weights = MODEL_FILE if (folder / MODEL_FILE).is_file() else checkpoint.INDEX_FILE  # sharded: the index
    for name in (weights, CONFIG_FILE):
        st = (folder / name).stat()
        out += [st.st_ino, st.st_size, st.st_mtime_ns]
    return tuple(out)


def _config_of(folder: Path) -> GPTConfig | None:
    """Best-effort architecture from a config.json (to refuse huge models before downloading)."""
    try:
        d = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if d.get("format") == "glassbox":
            d.pop("format")
            return GPTConfig.from_dict(d)
        return GPTConfig(vocab_size=d["vocab_size"], block_size=d.get("n_positions", d.get("n_ctx")),
                         n_layer=d["n_layer"], n_head=d["n_head"], n_embd=d["n_embd"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # checkpoint.load reports the exact problem later


class ModelCatalog:
    """All models the app offers, and the few that are loaded. Create one per app."""

    def __init__(self, bundled: str | Path | None, runs_dir: str | Path, uploads_dir: str | Path,
                 hub_cache_dir: str | Path | None = None, max_resident: int = 3, device: str = "cpu",
                 max_bytes: int = checkpoint.DEFAULT_MAX_BYTES, max_resident_bytes: int | None = None,
                 allow_paths: bool | None = None, upload_ttl_s: float = 24 * 3600):
        if isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1:
            raise ValueError(f"max_resident={max_resident!r} must be an integer >= 1")
        if max_resident_bytes is not None and max_resident_bytes < 1:
            raise ValueError(f"max_resident_bytes={max_resident_bytes!r} must be positive (None: the default budget)")
        self.bundled = Path(bundled).resolve() if bundled is not None else None
        self.runs_dir = Path(runs_dir).resolve()
        self.uploads_dir = Path(uploads_dir).resolve()
        self.hub_cache_dir = Path(hub_cache_dir) if hub_cache_dir is not None else None
        self.max_resident = max_resident
        self.device = device
        self.max_bytes = max_bytes
        self.max_resident_bytes = default_resident_bytes() if max_resident_bytes is None else max_resident_bytes
        self.allow_paths = paths_allowed_by_default() if allow_paths is None else bool(allow_paths)
        self.upload_ttl_s = upload_ttl_s
        self._lock = threading.Lock()
        self._added: dict[str, ModelEntry] = {}  # path: and hub: entries, in the order added
        self._owners: dict[str, set[str]] = {}  # upload:/path: key -> the sessions that added it
        self._cache: OrderedDict[str, tuple[tuple, Checkpoint]] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

    # ---- listing ----------------------------------------------------------------------
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
        """The models on offer, rescanning the runs and uploads folders now: everyone's (bundled,
        runs, Hub) plus the uploads and folders that session `owner` added."""
        out = [e for e in [self.bundled_entry()] if e is not None]
        out += self._scan_runs()
        with self._lock:
            mine = {k for k, sessions in self._owners.items() if owner is not None and owner in sessions}
            added = list(self._added.values())
        out += [e for e in self._scan_uploads() if e.key in mine]
        out += [e for e in added if e.source not in PRIVATE_SOURCES or e.key in mine]
        return out

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
        if owner:
            with self._lock:
                self._owners.setdefault(key, set()).add(owner)

    def default_key(self) -> str | None:
        """The bundled model if present, else the newest run, else any model, else None."""
        entries = self.entries()
        return entries[0].key if entries else None

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
            entry = self._run_entry(rest)
            if entry is not None and not checkpoint.is_checkpoint(entry.path):
                entry = None
        elif source == "upload" and _UPLOAD_ID.match(rest):
            entry = self._upload_entry(self.uploads_dir / rest)
        else:
            with self._lock:
                entry = self._added.get(key)
        if entry is None:
            raise ValueError(f"unknown model {key!r}: pick one from the model list (refresh it if a run is new)")
        if not checkpoint.is_checkpoint(entry.path):
            raise ValueError(f"the model {entry.label!r} is gone: {entry.path} no longer holds "
                             "config.json and model.safetensors")
        return entry

    def _run_entry(self, rel: str) -> ModelEntry | None:
        parts = rel.split("/")
        if not 1 <= len(parts) <= 2 or any(not p or p.startswith(".") or p in ("..", ".") for p in parts):
            return None
        folder = self.runs_dir.joinpath(*parts)
        return ModelEntry(f"run:{rel}", f"run: {rel}", "run", folder)

    def _scan_runs(self) -> list[ModelEntry]:
        """runs/<run> and runs/<run>/<name> folders that hold a checkpoint; newest run first."""
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
            found += [f"{run.name}/{s.name}" for s in subs]
        return [e for e in (self._run_entry(rel) for rel in found) if e is not None]

    def _upload_entry(self, folder: Path) -> ModelEntry:
        label = f"upload {folder.name[:6]}"
        try:
            info = json.loads((folder / UPLOAD_INFO).read_text(encoding="utf-8"))
            label += f": {_clean(str(info['shape']), 40)}"
            if info["name"] != MODEL_FILE:
                label += f" ({_clean(str(info['name']), 40)})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return ModelEntry(f"upload:{folder.name}", label, "upload", folder)

    def _scan_uploads(self) -> list[ModelEntry]:
        try:
            folders = [d for d in self.uploads_dir.iterdir()
                       if _UPLOAD_ID.match(d.name) and checkpoint.is_checkpoint(d)]
            folders.sort(key=lambda d: d.stat().st_mtime)
        except OSError:
            return []
        return [self._upload_entry(d) for d in folders]

    # ---- loading ----------------------------------------------------------------------
    def get(self, key: str) -> Checkpoint:
        """The loaded checkpoint for `key`: loaded once, then served from the LRU."""
        entry = self.entry(key)
        try:
            stamp = _stamp(entry.path)
        except OSError:
            raise ValueError(f"the model {entry.label!r} is gone: {entry.path} cannot be read") from None
        with self._lock:
            hit = self._hit(key, stamp)
            if hit is not None:
                return hit
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per key; other keys load (or hit the cache) meanwhile
            with self._lock:
                hit = self._hit(key, stamp)
            if hit is not None:
                return hit
            ck = checkpoint.load(entry.path, device=self.device, max_bytes=self.max_bytes)
            self._remember(key, stamp, ck)
        return ck

    def _hit(self, key: str, stamp: tuple) -> Checkpoint | None:
        cached = self._cache.get(key)
        if cached is None or cached[0] != stamp:
            return None
        self._cache.move_to_end(key)
        return cached[1]

    def _remember(self, key: str, stamp: tuple, ck: Checkpoint) -> None:
        with self._lock:
            self._cache[key] = (stamp, ck)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_resident or (
                    len(self._cache) > 1 and self.resident_bytes_locked() > self.max_resident_bytes):
                self._cache.popitem(last=False)  # least recently used; the newest always stays

    def resident_bytes_locked(self) -> int:
        return sum(_model_bytes(ck) for _, ck in self._cache.values())

    def resident_bytes(self) -> int:
        """Bytes of parameters held by the loaded models."""
        with self._lock:
            return self.resident_bytes_locked()

    def resident(self) -> list[str]:
        """Keys of the loaded models, least recently used first."""
        with self._lock:
            return list(self._cache)

    def _register(self, entry: ModelEntry, ck: Checkpoint, owner: str | None = None) -> str:
        if entry.source in ("path", "hub"):
            with self._lock:
                self._added[entry.key] = entry
        self.own(entry.key, owner)
        self._remember(entry.key, _stamp(entry.path), ck)
        return entry.key

    # ---- adding models ----------------------------------------------------------------
    def add_path(self, text: str, owner: str | None = None) -> str:
        """Offer the checkpoint folder at a typed path (Glassbox or GPT-2 layout); returns its key."""
        if not self.allow_paths:
            raise ValueError("loading a folder from the server's disk is turned off on this server "
                             "(GLASSBOX_ALLOW_PATHS=0): upload the checkpoint's files instead")
        if len(text or "") > MAX_NAME_CHARS:
            raise ValueError(f"that path is {len(text):,} characters long; the limit is {MAX_NAME_CHARS:,}")
        text = _CONTROL.sub("", text or "").strip().strip("'\"")
        if not text:
            raise ValueError("type the path of a checkpoint folder (it holds config.json and model.safetensors)")
        folder = Path(text).expanduser()
        folder = (folder if folder.is_absolute() else Path.cwd() / folder).resolve()
        if folder.is_file() and folder.suffix == ".safetensors":
            folder = folder.parent
        if not folder.exists():
            raise ValueError(f"no such folder: {folder}")
        if not folder.is_dir():
            raise ValueError(f"{folder} is a file: give the folder that holds config.json and model.safetensors")
        if not checkpoint.is_checkpoint(folder):
            missing = [n for n in (CONFIG_FILE, MODEL_FILE) if not (folder / n).is_file()]
            hint = ""
            if any((folder / n).is_file() for n in ("pytorch_model.bin", "model.pt", "model.pth")):
                hint = " (it has pickle weights, which Glassbox never loads: convert them to model.safetensors)"
            raise ValueError(f"{folder} is not a checkpoint folder: {' and '.join(missing)} missing{hint}")
        known = self._key_for_folder(folder)
        if known is not None:
            self.get(known)
            self.own(known, owner)
            return known
        ck = checkpoint.load(folder, device=self.device, max_bytes=self.max_bytes)
        return self._register(ModelEntry(f"path:{folder}", f"folder: {_clean(str(folder))}", "path", folder), ck,
                              owner)

    def _key_for_folder(self, folder: Path) -> str | None:
        """The existing key of a folder the catalog already offers (bundled, a run, an upload)."""
        if self.bundled is not None and folder == self.bundled:
            return BUNDLED_KEY
        for base, make in ((self.runs_dir, lambda rel: self._run_entry(rel)),
                           (self.uploads_dir, lambda rel: self._upload_entry(self.uploads_dir / rel)
                            if _UPLOAD_ID.match(rel) else None)):
            try:
                rel = folder.relative_to(base).as_posix()
            except ValueError:
                continue
            entry = make(rel)
            if entry is not None:
                return entry.key
        with self._lock:
            key = f"path:{folder}"
            return key if key in self._added else None

    def add_upload(self, files: Iterable[str | Path] | None, owner: str | None = None) -> str:
        """Copy uploaded checkpoint files into a fresh uploads folder, validate, return the key.

        Accepted: one `*.safetensors` (stored as model.safetensors), config.json, and
        tokenizer.json (or GPT-2's vocab.json + merges.txt); meta.json is optional.
        Anything else, and pickle files above all, is refused before anything is loaded.
        """
        # str or Path (gr.File's "filepath"), or a file object with .name
        paths = [Path(f if isinstance(f, (str, os.PathLike)) else f.name) for f in (files or [])]
        if not paths:
            raise ValueError("choose the checkpoint's files: model.safetensors, config.json and tokenizer.json "
                             "(meta.json is optional)")
        plan: dict[str, Path] = {}
        for p in paths:
            name = _clean(p.name)
            low = p.name.lower()
            if low.endswith(PICKLE_SUFFIXES):
                raise ValueError(f"{name} looks like a PyTorch pickle: Glassbox never loads pickle files "
                                 "(loading one can run code). Upload model.safetensors instead")
            if low.endswith(".safetensors"):
                target = MODEL_FILE
            elif low in UPLOAD_FILES:
                target = low
            else:
                raise ValueError(f"{name} is not part of a checkpoint: upload model.safetensors, config.json "
                                 "and tokenizer.json (meta.json is optional)")
            if target in plan:
                raise ValueError(f"two files for {target}: {_clean(plan[target].name)} and {name}")
            if not p.is_file():
                raise ValueError(f"the uploaded file {name} is missing on the server; upload it again")
            plan[target] = p
        missing = [n for n in (MODEL_FILE, CONFIG_FILE) if n not in plan]
        if "tokenizer.json" not in plan and not {"vocab.json", "merges.txt"} <= plan.keys():
            missing.append("tokenizer.json")
        if missing:
            raise ValueError(f"{' and '.join(missing)} missing: a checkpoint upload needs model.safetensors, "
                             "config.json and tokenizer.json (meta.json is optional)")
        total = sum(p.stat().st_size for p in plan.values())
        if total > self.max_bytes:
            raise ValueError(f"the upload is {total / 1e9:.1f} GB, over this server's limit of "
                             f"{self.max_bytes / 1e9:.1f} GB")
        checkpoint.check_safetensors_file(plan[MODEL_FILE])  # refuses pickle / zip by their magic bytes

        self.clean_uploads()
        uid = uuid.uuid4().hex[:12]
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        tmp, final = self.uploads_dir / f".tmp-{uid}", self.uploads_dir / uid
        tmp.mkdir()
        try:
            for target, src in plan.items():
                shutil.copyfile(src, tmp / target)
            ck = checkpoint.load(tmp, device=self.device, max_bytes=self.max_bytes)
            c = ck.config
            info = {"name": _clean(plan[MODEL_FILE].name), "files": sorted(_clean(p.name) for p in paths),
                    "shape": f"{c.n_layer} layers × {c.n_embd} dims, {c.n_params() / 1e6:.1f}M parameters"}
            (tmp / UPLOAD_INFO).write_text(json.dumps(info), encoding="utf-8")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        ck.path = final
        return self._register(self._upload_entry(final), ck, owner)

    def clean_uploads(self, now: float | None = None) -> list[str]:
        """Delete uploads (and half-written ones) older than `upload_ttl_s`; returns their names."""
        now = time.time() if now is None else now
        gone = []
        try:
            folders = list(self.uploads_dir.iterdir())
        except OSError:
            return gone
        for d in folders:
            if not (_UPLOAD_ID.match(d.name) or d.name.startswith(".tmp-")):
                continue
            try:
                old = now - d.stat().st_mtime > self.upload_ttl_s
            except OSError:
                continue
            if old:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
                with self._lock:
                    self._cache.pop(f"upload:{d.name}", None)
                    self._owners.pop(f"upload:{d.name}", None)
        return gone

    def add_hub(self, repo: str) -> str:
        """Download a GPT-2-layout model from the Hugging Face Hub (safetensors only); returns its key.

        Offline (HF_HUB_OFFLINE=1) only the local Hugging Face cache is used, so this fails at
        once with a clear message when the model was never downloaded.
        """
        if len(repo or "") > MAX_NAME_CHARS:
            raise ValueError(f"that model name is {len(repo):,} characters long; the limit is {MAX_NAME_CHARS:,}")
        repo = _CONTROL.sub("", repo or "").strip().strip("/")
        repo = re.sub(r"^https?://huggingface\.co/", "", repo)
        if not repo:
            raise ValueError("type a Hugging Face model name, e.g. gpt2 or distilgpt2")
        if not _HUB_REPO.match(repo) or ".." in repo:
            raise ValueError(f"{_clean(repo)!r} is not a Hugging Face model name (like gpt2 or openai-community/gpt2)")
        key = f"hub:{repo}"
        with self._lock:
            known = key in self._added
        if known:
            self.get(key)
            return key
        folder = self._download(repo)
        ck = checkpoint.load(folder, device=self.device, max_bytes=self.max_bytes)
        return self._register(ModelEntry(key, f"Hub: {repo}", "hub", folder), ck)

    def _download(self, repo: str) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                            RepositoryNotFoundError, RevisionNotFoundError)

        offline = hub_offline()
        kw = dict(cache_dir=self.hub_cache_dir, local_files_only=offline, etag_timeout=HUB_TIMEOUT_S)
        try:
            folder = Path(snapshot_download(repo, allow_patterns=[CONFIG_FILE, checkpoint.INDEX_FILE], **kw))
            checkpoint.detect_kind(folder)  # a GPT-2 (or Glassbox) config, before the weights come
            cfg = _config_of(folder)
            if cfg is not None and cfg.memory_bytes(4) > self.max_bytes:
                raise ValueError(f"{repo} has {cfg.n_params():,} parameters ({cfg.memory_bytes(4) / 1e9:.1f} GB "
                                 f"in float32), over this server's limit of {self.max_bytes / 1e9:.1f} GB")
            files, index = HUB_FILES, folder / checkpoint.INDEX_FILE
            if index.is_file():  # sharded: the shards the index lists instead of model.safetensors
                files = [f for f in HUB_FILES if f != MODEL_FILE] + checkpoint.shard_files(index)
            folder = Path(snapshot_download(repo, allow_patterns=files, **kw))
        except CheckpointError as e:
            raise ValueError(f"{repo} is not a GPT-2-layout model: {e}") from None
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):
            if offline:
                raise ValueError(f"cannot download {repo}: the app is offline (HF_HUB_OFFLINE=1) and {repo} is not "
                                 "in the local Hugging Face cache. Load it from a local folder instead") from None
            raise ValueError(f"cannot download {repo}: the Hugging Face Hub could not be reached (no internet?) "
                             "and it is not in the local cache. Load it from a local folder instead") from None
        except GatedRepoError:
            raise ValueError(f"{repo} is gated on the Hub: accept its licence and log in, or load it from a "
                             "local folder") from None
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise ValueError(f"there is no public model named {repo} on the Hugging Face Hub") from None
        except ValueError:
            raise
        except Exception as e:  # network and HTTP errors come in many types
            raise ValueError(f"could not download {repo} from the Hugging Face Hub: {type(e).__name__}: "
                             f"{_clean(str(e), 200)}") from None
        if not checkpoint.is_checkpoint(folder):
            raise ValueError(f"{repo} has no model.safetensors (nor a sharded {checkpoint.INDEX_FILE}) on the Hub: "
                             "Glassbox loads only safetensors weights, never pytorch_model.bin (pickle)")
        return folder
