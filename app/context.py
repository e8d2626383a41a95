"""The app context: the shared, long-lived things every tab receives.

Owns: `AppContext` (the model catalog, the training job manager, the folders the app
reads and writes, and each tab's per-app cache, every one a named field with its owner)
and `make_context`, which creates them once per app. Tabs get the context as an argument;
nothing in `app/` keeps state in module globals. Many requests use the context at once:
each shared field is thread-safe on its own (it holds its lock).
Does not own: what is in the folders (the catalog and the job manager do), nor what the
caches compute (their tabs do).

Folders (each can be set by argument or environment variable):
    runs dir     GLASSBOX_RUNS_DIR    default ./runs         training runs (checkpoints)
    cache dir    GLASSBOX_CACHE_DIR   default ./cache        downloads, uploads
    uploads dir  (cache dir)/uploads                         uploaded checkpoints
    bundled      GLASSBOX_DEMO_MODEL  default assets/demo    the bundled demo model

GLASSBOX_WARM_START=0 turns off the waiting trainer process (`app.jobs.backends.Spare`) that
lets Start skip the imports (it holds a few hundred MB while idle).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from app.catalog import ModelCatalog
from app.jobs import JobManager
from app.tabs.attention import InductionCache
from app.tabs.embeddings import EmbeddingCache
from app.tabs.timeline import TimelineCache
from app.ui import ModelPicker
from core.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = ROOT / "assets"


T = TypeVar("T")


class Found(Generic[T]):
    """A value looked for once per app and kept once found (None until then). Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._value: T | None = None

    def get(self) -> T | None:
        with self._lock:
            return self._value

    def set(self, value: T | None) -> T | None:
        with self._lock:
            self._value = value
        return value


@dataclass
class AppContext:
    """What every tab's `build(ctx, model_picker)` receives. Each field: who writes it."""

    catalog: ModelCatalog  # app.catalog: every model on offer and the loaded ones
    assets_dir: Path
    runs_dir: Path
    cache_dir: Path
    uploads_dir: Path
    jobs: JobManager | None = None  # app.jobs: the training runs (in the background, under runs_dir)
    gpt2_tokenizer: Found[Tokenizer] = field(default_factory=Found)  # app.tabs.tokens: once found or fetched
    embeddings: EmbeddingCache = field(default_factory=EmbeddingCache)  # app.tabs.embeddings: vocabulary views
    induction: InductionCache = field(default_factory=InductionCache)  # app.tabs.attention: induction scores
    timelines: TimelineCache = field(default_factory=TimelineCache)  # app.tabs.timeline: runs' timelines
    picker: ModelPicker = field(init=False)  # app.ui: the one writer of the shared model picker

    def __post_init__(self) -> None:
        self.picker = ModelPicker(self.catalog)


def _path(arg: str | Path | None, env: str, default: Path) -> Path:
    value = arg if arg is not None else os.environ.get(env) or default
    return Path(value).expanduser().resolve()


def make_context(runs_dir: str | Path | None = None, bundled: str | Path | None = None, *,
                 cache_dir: str | Path | None = None, uploads_dir: str | Path | None = None,
                 hub_cache_dir: str | Path | None = None, max_resident: int = 3,
                 device: str | None = None, train_threads: int | None = None,
                 train_backend: str = "auto") -> AppContext:
    """Create the context once per app (`build_app` receives it).

    `hub_cache_dir` None uses Hugging Face's own cache (HF_HOME), so models downloaded
    before are found offline. `device` defaults to GLASSBOX_DEVICE or "cpu". Training runs
    use `train_threads` torch threads (default: GLASSBOX_TRAIN_THREADS, else half the cores)
    and the job manager's `train_backend` ("auto": a subprocess, or a thread under ZeroGPU).
    """
    runs = _path(runs_dir, "GLASSBOX_RUNS_DIR", Path("runs"))
    cache = _path(cache_dir, "GLASSBOX_CACHE_DIR", Path("cache"))
    uploads = Path(uploads_dir).expanduser().resolve() if uploads_dir is not None else cache / "uploads"
    demo = _path(bundled, "GLASSBOX_DEMO_MODEL", ASSETS_DIR / "demo")
    catalog = ModelCatalog(
        bundled=demo, runs_dir=runs, uploads_dir=uploads,
        hub_cache_dir=Path(hub_cache_dir).expanduser().resolve() if hub_cache_dir is not None else None,
        max_resident=max_resident, device=device or os.environ.get("GLASSBOX_DEVICE", "cpu"),
    )
    env_threads = os.environ.get("GLASSBOX_TRAIN_THREADS")
    threads = train_threads if train_threads is not None else (int(env_threads) if env_threads else None)
    jobs = JobManager(runs, threads=threads, backend=train_backend,
                      warm_start=os.environ.get("GLASSBOX_WARM_START", "1") != "0")
    return AppContext(catalog=catalog, assets_dir=ASSETS_DIR, runs_dir=runs, cache_dir=cache, uploads_dir=uploads,
                      jobs=jobs)
