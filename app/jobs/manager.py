"""The job manager: starts, follows, stops and resumes training runs; lists them; zips them.

One run at a time per server by default (`max_running=1`); a second start raises `JobBusy`
naming the running job. Every run is a `core.spec.RunSpec` written to `runs/<name>/run.json`
and trained by a backend (`app.jobs.backends`); resume is the same spec with `resume` set
(and more `steps`). A child that ignores SIGTERM is killed after `stop_timeout` seconds;
children are reaped by `close()` and, as a last resort, at interpreter exit (atexit).
Thread-safe: one lock guards the job table, one per job guards its event log.
Does not own: the form (`app.jobs.form`), the folder layout (`app.jobs.runs`), the events
(`app.jobs.events`), what the page shows (`app.tabs.train`).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import app.jobs.backends as backends
from app.jobs.events import fold
from app.jobs.form import FORM_PRESET, settings_of, spec_from_form
from app.jobs.runs import (
    ACTIVE,
    CORPUS_FILE,
    JOB_FILE,
    SPEC_FILE,
    STOP_FILE,
    Job,
    load_job,
    load_spec,
    run_names,
    write_json,
    zip_run,
)
from core.data import read_text_file
from core.resume import resumable
from core.spec import RunSpec, check_name, check_server_value


class JobBusy(ValueError):
    """A run is already training on this server."""


class JobManager:
    """Starts, follows, stops and resumes training runs under `runs_dir`. Create one per app."""

    def __init__(self, runs_dir: str | Path, *, threads: int | None = None, max_running: int = 1,
                 backend: str = "auto", nice: int = 4, stop_timeout: float = 60.0, python: str = sys.executable,
                 warm_start: bool = False):
        if backend == "auto":
            backend = "thread" if importlib.util.find_spec("spaces") is not None else "process"
        if backend not in ("process", "thread"):
            raise ValueError(f"backend={backend!r} must be 'auto', 'process' or 'thread'")
        self.runs_dir = Path(runs_dir).resolve()
        self.threads = threads if threads is not None else max(1, (os.cpu_count() or 2) // 2)
        self.max_running = max_running
        self.backend = backend
        # the run's niceness (and its scheduling group's): the balance between the run's speed
        # and the other users' latency on a small machine (bench/load.py)
        self.nice = nice
        self.stop_timeout = stop_timeout
        self.python = python
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._closed = False
        # warm_start: keep one trainer process imported and waiting, so Start skips the imports
        self.spare = backends.Spare() if warm_start and backend == "process" else None
        if self.spare is not None:
            self.spare.refill(self.python, self.threads, self.nice)
        atexit.register(self.close)

    # ---- starting -----------------------------------------------------------------------
    def start(self, settings: dict | RunSpec, text_file: str | Path | None = None) -> dict:
        """Start a run, return its status. `settings` is the form's values (`app.jobs.FORM`'s
        keys), or a RunSpec; `text_file` (a server-side path, e.g. an upload; never taken from
        the API) is the corpus for corpus "file"."""
        if isinstance(settings, RunSpec):
            spec, shown = settings.check_server_limits(), settings.public()
        else:
            spec = spec_from_form(dict(settings), str(text_file) if text_file else None)
            shown = settings_of(spec, preset=dict(settings).get("preset") or FORM_PRESET)
        corpus_text = read_text_file(spec.text_file) if spec.corpus == "file" else spec.text or None
        with self._lock:
            self._check_free()
            name = spec.name or self._fresh_name(spec)
            run_dir = self._run_dir(name)
            if run_dir.exists():
                raise ValueError(f"a run named {name!r} already exists: pick another name, or resume it")
            run_dir.mkdir(parents=True)
            if corpus_text is not None:  # the run keeps its own copy of the text it trains on
                (run_dir / CORPUS_FILE).write_text(corpus_text, encoding="utf-8")
                spec = spec.replace(corpus="file", text="", text_file=str(run_dir / CORPUS_FILE))
            spec = spec.replace(name=name, out=str(run_dir), threads=self.threads)
            job = Job(name, run_dir, {**shown, "name": name}, self.backend, spec=spec)
            self._jobs[name] = job
            self._launch(job)
        return self.status(name)

    def resume(self, name: str, steps: int | None = None) -> dict:
        """Continue a stopped (or interrupted, or finished) run from its `latest` checkpoint;
        `steps` raises the total."""
        name = check_name(name)
        with self._lock:
            self._check_free()
            job = self._get(name)
            if job.active:
                raise ValueError(f"run {name!r} is still training")
            try:
                resumable(job.run_dir)  # puts back a checkpoint a killed save set aside
            except ValueError:
                raise ValueError(f"run {name!r} has no checkpoint to resume from "
                                 "(it stopped before saving one)") from None
            spec = job.spec or load_spec(job.run_dir)
            reached = self._progress(job)[0]
            if steps is not None:
                steps = check_server_value("steps", steps)
                if steps <= reached:
                    raise ValueError(f"steps={steps} must be more than the {reached} steps the run has done")
                job.settings = {**job.settings, "steps": steps}
            elif reached >= spec.steps:
                raise ValueError(f"run {name!r} has done all its {reached} steps: give more steps to continue it")
            job.spec = spec.replace(steps=steps or spec.steps, resume=True, out=str(job.run_dir),
                                    threads=self.threads)
            job.state, job.reason, job.finished = "starting", None, None
            job.stop = threading.Event()
            self._launch(job)
        return self.status(name)

    def _check_free(self) -> None:
        running = [j for j in self._jobs.values() if j.active]
        if self._closed:
            raise ValueError("the job manager is closed (the server is shutting down)")
        if len(running) >= self.max_running:
            j = running[0]
            step, total = self._progress(j)
            raise JobBusy(f"a training run is already going on this server: {j.name!r} (step {step} of {total}). "
                          "Stop it, or wait until it finishes, then start again")

    def _fresh_name(self, spec: RunSpec) -> str:
        base = f"{spec.corpus}-{spec.tokenizer}-{time.strftime('%Y%m%d-%H%M%S')}"
        name, i = base, 2
        while (self.runs_dir / name).exists() or name in self._jobs:
            name, i = f"{base}-{i}", i + 1
        return name

    def _run_dir(self, name: str) -> Path:
        folder = (self.runs_dir / check_name(name)).resolve()
        if folder.parent != self.runs_dir:
            raise ValueError(f"run name {name!r} is not allowed")
        return folder

    def _launch(self, job: Job) -> None:
        (job.run_dir / STOP_FILE).unlink(missing_ok=True)
        job.spec.save(job.run_dir / SPEC_FILE)
        write_json(job.run_dir / JOB_FILE, job.record())
        if job.backend == "process":
            backends.launch_process(job, python=self.python, threads=self.threads, nice=self.nice,
                                    on_event=Job.on_event, finish=Job.finish, spare=self.spare)
        else:
            backends.launch_thread(job, on_event=Job.on_event, finish=Job.finish)

    # ---- stopping --------------------------------------------------------------------------
    def stop(self, name: str | None = None, wait: float = 0.0) -> dict:
        """Ask the run (default: the running one) to stop: it ends within one step and saves
        `latest/`. With `wait` > 0, block up to that many seconds for it to end."""
        job = self._resolve(name, active_only=True)
        if job.active:
            with job.lock:
                job.state = "stopping"
            try:
                (job.run_dir / STOP_FILE).touch()
            except OSError:
                pass
            if job.proc is not None and job.proc.poll() is None:
                try:
                    job.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                threading.Thread(target=self._kill_later, args=(job.proc,), daemon=True).start()
            job.stop.set()
        if wait and job.thread is not None:
            job.thread.join(timeout=wait)
        return self.status(job.name)

    def _kill_later(self, proc: subprocess.Popen) -> None:
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()

    def close(self, timeout: float = 30.0) -> None:
        """Stop every run and reap its process (the server is going away). Idempotent."""
        with self._lock:
            self._closed = True
            jobs = [j for j in self._jobs.values() if j.active or (j.proc is not None and j.proc.poll() is None)]
        if self.spare is not None:
            self.spare.close()
        for job in jobs:
            try:
                self.stop(job.name)
            except ValueError:
                pass
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.proc is not None:
                try:
                    job.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    job.proc.kill()
                    job.proc.wait()
            if job.thread is not None:
                job.thread.join(timeout=max(0.1, deadline - time.monotonic()))
        try:
            atexit.unregister(self.close)
        except Exception:  # pragma: no cover - interpreter shutting down
            pass

    # ---- reading ---------------------------------------------------------------------------
    def current(self) -> str | None:
        """The running job's name, else the most recently started one this server knows, else None."""
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            if j.active:
                return j.name
        return max(jobs, key=lambda j: j.created).name if jobs else None

    def _get(self, name: str) -> Job:
        """A job from memory, or read back from its folder (the caller may hold self._lock)."""
        job = self._jobs.get(check_name(name))
        if job is None:
            job = load_job(self._run_dir(name), self.backend)
            if job is None:
                raise ValueError(f"there is no run named {name!r}")
            self._jobs[name] = job
        return job

    def _resolve(self, name: str | None, active_only: bool = False) -> Job:
        with self._lock:
            if name:
                return self._get(name)
            active = [j for j in self._jobs.values() if j.active]
            if active:
                return active[0]
            if active_only:
                raise ValueError("no training run is going on this server")
            cur = max(self._jobs.values(), key=lambda j: j.created, default=None)
            if cur is None:
                raise ValueError("no training run has been started on this server yet")
            return cur

    def version(self, name: str | None = None) -> tuple:
        """A cheap fingerprint of a run's progress, (name, state, events seen): a page polls
        this and fetches `status()` only when it changes. ("", "none", 0) without any run."""
        try:
            job = self._resolve(name)
        except ValueError:
            return ("", "none", 0)
        with job.lock:
            return (job.name, job.state, len(job.events))

    @staticmethod
    def _progress(job: Job) -> tuple[int, int]:
        with job.lock:
            steps = [e.get("step") or 0 for e in job.events
                     if e.get("kind") in ("step", "eval", "checkpoint", "stopped", "done")]
        return int(max(steps, default=0)), int(job.settings.get("steps") or 0)

    def status(self, name: str | None = None) -> dict:
        """The run's state and its history so far (default: the running run, else the latest).

        Keys: job, state, running, step, total, loss, train_loss, val_loss, lr, tokens_per_s,
        elapsed, eta, stage (what a preparing run is doing), device, dtype, sdpa, choices (the
        start event's), n_params, vocab_size, losses [[step, loss]], lrs [[step, lr]],
        evals [[step, train_loss, val_loss]], sample, checkpoints, reason, settings, kind, events.
        """
        job = self._resolve(name)
        with job.lock:
            events = list(job.events)
            state, reason = job.state, job.reason
        st = fold(events)
        start_steps, failure = st.pop("start_steps"), st.pop("failure")
        running = state in ACTIVE
        # before its first event the run's process is starting (Python, torch): say so too
        stage = (st["stage"] or (None if events else "starting the trainer process")) if running else None
        return {"job": job.name, "state": state, "running": running, **st,
                "total": int(job.settings.get("steps") or start_steps or 0),
                "eta": st["eta"] if running else 0.0, "stage": stage,
                "reason": reason or failure, "settings": dict(job.settings)}

    def runs(self) -> list[dict]:
        """Every run this server knows (live ones, and those under runs_dir with a job.json),
        newest first: name, state, step, total, best val loss, settings."""
        names = run_names(self.runs_dir)
        with self._lock:
            jobs = []
            for n in names | set(self._jobs):
                try:
                    jobs.append(self._get(n))
                except ValueError:
                    continue
        out = []
        for job in sorted(jobs, key=lambda j: j.created, reverse=True):
            st = self.status(job.name)
            vals = [e[2] for e in st["evals"] if e[2] is not None]
            out.append({"name": job.name, "state": st["state"], "step": st["step"], "total": st["total"],
                        "best_val": min(vals) if vals else None, "n_params": st["n_params"],
                        "created": job.created, "settings": st["settings"]})
        return out

    def zip_run(self, name: str, dest_dir: str | Path) -> Path:
        """The run's checkpoints and job.json as `<name>.zip` under `dest_dir` (see `app.jobs.runs.zip_run`)."""
        return zip_run(self._run_dir(name), dest_dir)
