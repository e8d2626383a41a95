"""The app context: the shared, long-lived things every tab receives.

Owns: `AppContext` (the model catalog, the training job manager, and the folders the app
reads and writes) and `make_context`, which creates them once per app. Tabs get the
context as an argument; nothing in `app/` keeps state in module globals.
Does not own: what is in the folders (the catalog and the job manager do).

Folders (each can be set by argument or environment variable):
    runs dir     GLASSBOX_RUNS_DIR    default ./runs         training runs (checkpoints)
    cache dir    GLASSBOX_CACHE_DIR   default ./cache        downloads, uploads
    uploads dir  (cache dir)/uploads                         uploaded checkpoints
    bundled      GLASSBOX_DEMO_MODEL  default assets/demo    the bundled demo model
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.catalog import ModelCatalog
from app.jobs import JobManager

ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = ROOT / "assets"


@dataclass
class AppContext:
    catalog: ModelCatalog
    assets_dir: Path
    runs_dir: Path
    cache_dir: Path
    uploads_dir: Path
    jobs: JobManager | None = None  # the training job manager (runs in the background, under runs_dir)
    extras: dict[str, Any] = field(default_factory=dict)


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
    jobs = JobManager(runs, threads=threads, backend=train_backend)
    return AppContext(catalog=catalog, assets_dir=ASSETS_DIR, runs_dir=runs, cache_dir=cache, uploads_dir=uploads,
                      jobs=jobs)
