"""The runs folder: one sub-folder per run, what is in it, and a run's checkpoints as one zip.

Layout of `runs/<name>/` (the name is the job id, `[A-Za-z0-9_-]{1,64}`):
    run.json       the RunSpec the trainer runs (`python -m core.train --spec run.json`)
    job.json       the manager's record: the form's settings, state, times, failure reason
    events.jsonl   every event of the run, one JSON object per line (all its parts, resumed too)
    corpus.txt     the pasted or uploaded training text (runs on a built-in corpus have none)
    stderr.log     the child process's stderr (the reason a crash gives)
    STOP           present while a stop is asked for (the thread backend's stop flag)
    latest/ best/  checkpoint folders (`core.checkpoint`)

Owns: `Job` (one run in memory), reading a run back from its folder, and `zip_run`.
Does not own: starting or following runs (`app.jobs.manager`, `app.jobs.backends`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.jobs.events import read_events
from app.validate import crash_line
from core import checkpoint
from core.spec import NAME_RE, RunSpec

ACTIVE = ("starting", "running", "stopping")
FINAL = ("done", "stopped", "failed", "interrupted")
SPEC_FILE, JOB_FILE, EVENTS_FILE, CORPUS_FILE = "run.json", "job.json", "events.jsonl", "corpus.txt"
STOP_FILE, STDERR_FILE = "STOP", "stderr.log"
ZIP_KEEP_S = 600  # an older zip of a run is removed this long after a newer one was made


def write_json(path: Path, obj: dict) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class Job:
    name: str
    run_dir: Path
    settings: dict  # what the form asked for (shown in status, the runs table and config diffs)
    backend: str
    spec: RunSpec | None = None  # None for a run read back from disk until it is resumed
    state: str = "starting"
    created: float = field(default_factory=time.time)
    finished: float | None = None
    reason: str | None = None
    events: list[dict] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def record(self) -> dict:
        return {"name": self.name, "settings": self.settings, "backend": self.backend, "state": self.state,
                "created": self.created, "finished": self.finished, "reason": self.reason}

    def save_record(self, record: dict) -> None:
        try:
            write_json(self.run_dir / JOB_FILE, record)
        except OSError:
            pass

    def on_event(self, ev: dict) -> None:
        """An event from the run: logged; a final one ends the job (on disk at once, so a
        restarted server never sees "running")."""
        record = None
        with self.lock:
            self.events.append(ev)
            if ev["kind"] in ("done", "stopped", "failed"):
                self.state, self.reason, self.finished = ev["kind"], ev.get("reason"), time.time()
                record = self.record()
        if record is not None:
            self.save_record(record)

    def finish(self, rc: int | None) -> None:
        """The run's process or thread ended (exit code `rc`), with or without a final event."""
        with self.lock:
            if self.state in ACTIVE:  # ended without a final event: killed, or crashed
                self.state = "stopped" if self.state == "stopping" else "failed"
                tail = ""
                try:
                    tail = (self.run_dir / STDERR_FILE).read_text(encoding="utf-8", errors="replace")[-600:].strip()
                except OSError:
                    pass
                self.reason = self.reason or (f"the training process ended (exit code {rc}) without a final report"
                                              + (f": {crash_line(tail)}" if tail else ""))
                self.finished = time.time()
            record = self.record()
        self.save_record(record)


def load_job(run_dir: Path, backend: str) -> Job | None:
    """A run read back from its folder (None without a readable job.json). A run that was
    training when its server went away shows as "interrupted"."""
    try:
        rec = json.loads((run_dir / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    job = Job(run_dir.name, run_dir, rec.get("settings") or {}, backend, state=rec.get("state", "interrupted"),
              created=rec.get("created") or run_dir.stat().st_mtime, finished=rec.get("finished"),
              reason=rec.get("reason"))
    if job.state in ACTIVE:
        job.state = "interrupted"
        job.reason = "the server stopped while this run was training; resume it from its last checkpoint"
    job.events = read_events(run_dir / EVENTS_FILE)
    return job


def load_spec(run_dir: Path) -> RunSpec:
    """The run's spec: run.json, or (a run started before run specs) the flags in its job.json."""
    if (run_dir / SPEC_FILE).is_file():
        return RunSpec.load(run_dir / SPEC_FILE)
    from core.cli import build_parser, spec_from_args

    args: Any = json.loads((run_dir / JOB_FILE).read_text(encoding="utf-8")).get("args")
    if not isinstance(args, list):
        raise ValueError(f"run {run_dir.name!r} has neither a {SPEC_FILE} nor the flags it was started with")
    return spec_from_args(build_parser().parse_args([str(a) for a in args if a != "--resume"]))


def run_names(runs_dir: Path) -> set[str]:
    try:
        return {d.name for d in runs_dir.iterdir() if NAME_RE.match(d.name) and (d / JOB_FILE).is_file()}
    except OSError:
        return set()


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(d for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and checkpoint.is_checkpoint(d))


def _version(run_dir: Path, folders: list[Path]) -> str:
    """A short hash of the files a zip would hold (names, sizes, modification times)."""
    h = hashlib.sha256()
    for f in [run_dir / JOB_FILE, *(f for d in folders for f in sorted(d.iterdir()))]:
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{f.relative_to(run_dir)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def zip_run(run_dir: Path, dest_dir: str | Path) -> Path:
    """Zip the run's checkpoint folders (latest/, best/, …) plus job.json, once per version of
    them: `dest_dir/<name>-<version>/<name>.zip`. Each build goes to its own temporary file and
    is renamed into place, so concurrent downloads never share a half-written zip."""
    name = run_dir.name
    if not run_dir.is_dir():
        raise ValueError(f"there is no run named {name!r}")
    folders = _checkpoints(run_dir)
    if not folders:
        raise ValueError(f"run {name!r} has no checkpoint yet: wait for its first checkpoint")
    dest_dir = Path(dest_dir)
    folder = dest_dir / f"{name}-{_version(run_dir, folders)}"
    final = folder / f"{name}.zip"
    if final.is_file():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{uuid.uuid4().hex}.zip.tmp"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for ck in folders:
                for f in sorted(ck.iterdir()):
                    if f.is_file():
                        try:
                            zf.write(f, f"{name}/{ck.name}/{f.name}")
                        except FileNotFoundError:  # a checkpoint rewritten while we zip
                            continue
            if (run_dir / JOB_FILE).is_file():
                zf.write(run_dir / JOB_FILE, f"{name}/{JOB_FILE}")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _drop_old_zips(dest_dir, name, keep=folder)
    return final


def _drop_old_zips(dest_dir: Path, name: str, keep: Path) -> None:
    """Older versions of this run's zip, once no download can still be reading them."""
    cutoff = time.time() - ZIP_KEEP_S
    for old in dest_dir.glob(f"{name}-*"):
        try:
            if old != keep and old.is_dir() and old.name[len(name) + 1:].isalnum() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
