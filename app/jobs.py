"""The training job manager: a run is a background job the server owns, never a click handler.

Owns: validating a run's settings (`TrainSettings`, every number range-checked here so the
API refuses what the sliders would), starting a run, following its events, stopping and
resuming it, listing runs (live and on disk), and zipping a run's checkpoints for download.
Does not own: the training loop (`core.train`), the CLI that wraps it (`core.cli`), what the
page shows (`app.tabs.train`), or loading the checkpoints it writes (`app.catalog`).

Two backends, chosen automatically (`backend="auto"`):

* **process** (the default): a child `python -m core.train --json ...`, niced and with a
  limited number of torch threads (half the cores, at least one), so the server keeps
  answering other users while it trains. A reader thread parses one JSON event per stdout
  line into the run's in-memory log and appends it to `runs/<name>/events.jsonl`. Stop
  sends SIGTERM: the trainer finishes the step, saves `latest/` and emits "stopped"; a run
  that ignores it is killed after `stop_timeout` seconds. Children are reaped by
  `close()` and, as a last resort, at interpreter exit (atexit).
* **thread**, used where the `spaces` package is importable (Hugging Face ZeroGPU): the GPU
  is only granted inside a function decorated with `@spaces.GPU`, which a subprocess cannot
  be, so the run goes through `core.train.Trainer` in a thread, wrapped in `spaces.GPU`.
  ZeroGPU may run that function in a forked worker, so events travel through
  `events.jsonl` (the sink appends, a follower thread tails it) and Stop also writes a
  `STOP` file the sink checks after every step.

One run at a time per server by default (`max_running=1`); a second start raises
`JobBusy` naming the running job. A run's name is its job id: `[A-Za-z0-9_-]{1,64}`, so it
never climbs out of the runs folder. `runs/<name>/job.json` records the settings and the
final state, so a restarted server still lists finished runs (a run that was training when
the server went away shows as "interrupted" and can be resumed from its last checkpoint).
Thread-safe: one lock guards the job table, one per job guards its event log.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import checkpoint
from core.config import PRESETS, GPTConfig
from app.validate import crash_line
from core.data import CORPUS_CHOICES, read_text_file, validate_text

ROOT = Path(__file__).resolve().parents[1]
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ACTIVE = ("starting", "running", "stopping")
FINAL = ("done", "stopped", "failed", "interrupted")
JOB_FILE, EVENTS_FILE, CORPUS_FILE = "job.json", "events.jsonl", "corpus.txt"
STOP_FILE, STDERR_FILE = "STOP", "stderr.log"
MAX_POINTS = 2000  # loss points returned by status() (longer histories are thinned evenly)
MAX_TRAIN_BYTES = int(os.environ.get("GLASSBOX_MAX_TRAIN_BYTES", 8 * 1024**3))
MAX_PASTED_CHARS = 1_000_000  # pasted text (through the page or the API); bigger corpora come as files
CHAR_VOCAB_GUESS = 256  # for the memory check before the corpus is tokenized

# (low, high) of every number a run accepts; the tab's sliders use the same limits.
LIMITS: dict[str, tuple[float, float]] = {
    "vocab_size": (257, 8192),
    "n_layer": (1, 12),
    "n_head": (1, 16),
    "n_embd": (8, 1024),
    "block_size": (8, 1024),
    "steps": (1, 100_000),
    "batch_size": (1, 256),
    "lr": (1e-6, 1.0),
    "warmup": (0, 100_000),
    "weight_decay": (0.0, 1.0),
    "dropout": (0.0, 0.9),
    "seed": (0, 2**31 - 1),
    "eval_interval": (0, 100_000),
    "eval_batches": (1, 200),
}
INT_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "steps", "batch_size", "warmup", "seed",
              "eval_interval", "eval_batches")
TOKENIZERS = ("char", "bpe")
OPTIMIZERS = ("adamw", "muon")
DEVICES = ("auto", "cpu", "cuda")


class JobBusy(ValueError):
    """A run is already training on this server."""


def check_name(name: Any) -> str:
    """A run name (= job id) that is safe as a folder name under the runs dir."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        shown = repr(name)[:80]
        raise ValueError(f"run name {shown} is not allowed: use 1 to 64 letters, digits, '-' or '_'")
    return name


def _num(name: str, value: Any) -> int | float:
    lo, hi = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if name in INT_FIELDS:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{name} must be a whole number, got {value}")
            value = int(value)
    elif not math.isfinite(value):
        raise ValueError(f"{name}={value} is not a finite number")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range: it must be between {lo:g} and {hi:g}")
    return value


@dataclass
class TrainSettings:
    """Everything one run needs; `validate()` checks it all before anything starts."""

    corpus: str = "shakespeare"   # "shakespeare", a synthetic corpus, "text" (pasted) or "file" (uploaded)
    text: str = ""                # the pasted text for corpus "text"
    tokenizer: str = "char"
    vocab_size: int = 512         # BPE only
    preset: str = "nano"          # a label; the four numbers below are what counts
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    steps: int = 500
    batch_size: int = 16  # Glassbox's CPU recipe (core.config.TrainConfig): Muon, lr 6e-3, warmup 50
    lr: float = 6e-3
    warmup: int = 50
    weight_decay: float = 0.1
    dropout: float = 0.0
    optimizer: str = "muon"
    seed: int = 1337
    device: str = "auto"
    eval_interval: int = 0        # 0: about ten evaluations per run
    eval_batches: int = 20
    sample_prompt: str = "\n"
    name: str = ""                # empty: made from the corpus and the time

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d).validate()

    def validate(self) -> "TrainSettings":
        for f in LIMITS:
            setattr(self, f, _num(f, getattr(self, f)))
        corpus = (self.corpus or "").strip().lower()
        if corpus not in CORPUS_CHOICES:
            raise ValueError(f"corpus {self.corpus!r} is unknown: choose one of {', '.join(CORPUS_CHOICES)}")
        self.corpus = corpus
        if isinstance(self.text, str) and len(self.text) > MAX_PASTED_CHARS:
            raise ValueError(f"the pasted text is {len(self.text):,} characters, over the limit of "
                             f"{MAX_PASTED_CHARS:,}: upload a .txt file instead")
        if corpus == "text":
            validate_text(self.text)  # not empty, long enough, valid Unicode
        for name, value, allowed in (("tokenizer", self.tokenizer, TOKENIZERS),
                                     ("optimizer", self.optimizer, OPTIMIZERS), ("device", self.device, DEVICES),
                                     ("preset", self.preset, (*PRESETS, "custom"))):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is unknown: choose one of {', '.join(allowed)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"width n_embd={self.n_embd} must be divisible by heads n_head={self.n_head} "
                             "(each head gets n_embd / n_head numbers)")
        if self.warmup > self.steps:
            raise ValueError(f"warmup={self.warmup} is longer than the run (steps={self.steps})")
        if not isinstance(self.sample_prompt, str) or len(self.sample_prompt) > 200:
            raise ValueError("the sample prompt must be text of at most 200 characters")
        if self.name:
            check_name(self.name)
        cfg = self.model_config()
        need = cfg.training_memory_bytes(self.batch_size)
        if need > MAX_TRAIN_BYTES:
            raise ValueError(f"this model and batch need about {need / 1e9:.1f} GB to train, over this server's "
                             f"limit of {MAX_TRAIN_BYTES / 1e9:.1f} GB: use fewer layers, a smaller width, "
                             "block size or batch")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("device 'cuda' was chosen but this server has no CUDA GPU: choose auto or cpu")
        return self

    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        """The architecture (vocab estimated until the tokenizer exists)."""
        v = vocab_size or (self.vocab_size if self.tokenizer == "bpe" else CHAR_VOCAB_GUESS)
        return GPTConfig(vocab_size=v, block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=float(self.dropout))

    def intervals(self) -> int:
        return self.eval_interval or max(10, min(250, self.steps // 10))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def public(self) -> dict:
        """The settings without the pasted text (for status, job.json and config diffs)."""
        d = self.to_dict()
        d["text"] = f"{len(self.text):,} characters" if self.text else ""
        if self.tokenizer == "char":
            d["vocab_size"] = None  # set by the corpus's characters, not by this setting
        return d


def cli_args(s: TrainSettings, run_dir: Path, threads: int, corpus_file: Path | None) -> list[str]:
    """The `python -m core.train` arguments (without the interpreter) for validated settings."""
    every = s.intervals()
    args = ["--out", str(run_dir), "--json"]
    if corpus_file is not None:
        args += ["--corpus", "file", "--text-file", str(corpus_file)]
    else:
        args += ["--corpus", s.corpus]
    args += ["--tokenizer", s.tokenizer, "--vocab-size", str(s.vocab_size), "--preset", "nano",
             "--n-layer", str(s.n_layer), "--n-head", str(s.n_head), "--n-embd", str(s.n_embd),
             "--block-size", str(s.block_size), "--dropout", repr(float(s.dropout)),
             "--steps", str(s.steps), "--batch-size", str(s.batch_size), "--lr", repr(float(s.lr)),
             "--warmup", str(s.warmup), "--weight-decay", repr(float(s.weight_decay)), "--optimizer", s.optimizer,
             "--seed", str(s.seed), "--device", s.device, "--eval-interval", str(every),
             "--eval-batches", str(s.eval_batches), "--ckpt-interval", str(every), "--log-interval", "1",
             "--sample-prompt", s.sample_prompt]
    if threads:
        args += ["--threads", str(threads)]
    return args


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _thin(points: list, limit: int = MAX_POINTS) -> list:
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


@dataclass
class Job:
    name: str
    run_dir: Path
    settings: dict
    args: list[str]
    backend: str
    state: str = "starting"
    created: float = field(default_factory=time.time)
    finished: float | None = None
    reason: str | None = None
    events: list[dict] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    trainer: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def record(self) -> dict:
        return {"name": self.name, "settings": self.settings, "args": self.args, "backend": self.backend,
                "state": self.state, "created": self.created, "finished": self.finished, "reason": self.reason}


class JobManager:
    """Starts, follows, stops and resumes training runs under `runs_dir`. Create one per app."""

    def __init__(self, runs_dir: str | Path, *, threads: int | None = None, max_running: int = 1,
                 backend: str = "auto", nice: int = 4, stop_timeout: float = 60.0, python: str = sys.executable):
        if backend == "auto":
            backend = "thread" if importlib.util.find_spec("spaces") is not None else "process"
        if backend not in ("process", "thread"):
            raise ValueError(f"backend={backend!r} must be 'auto', 'process' or 'thread'")
        self.runs_dir = Path(runs_dir).resolve()
        self.threads = threads if threads is not None else max(1, (os.cpu_count() or 2) // 2)
        self.max_running = max_running
        self.backend = backend
        # The run's niceness (and its scheduling group's, see `_launch_process`): 4 measured as the
        # balance on 2 cores with 50 simulated users (bench/load.py): the run kept 41% of its
        # steps/s and p95 latency was 2.3x idle; at 2: 64% and 3.5x; at 5: 35% and 0.7x.
        self.nice = nice
        self.stop_timeout = stop_timeout
        self.python = python
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._closed = False
        atexit.register(self.close)

    # ---- starting -----------------------------------------------------------------------
    def start(self, settings: TrainSettings | dict, text_file: str | Path | None = None) -> dict:
        """Validate `settings`, start the run, return its status. `text_file` (a server-side
        path, e.g. an upload; never taken from the API) is the corpus for corpus "file"."""
        s = settings if isinstance(settings, TrainSettings) else TrainSettings.from_dict(dict(settings))
        s.validate()
        corpus_text = None
        if s.corpus == "file":
            if not text_file:
                raise ValueError("corpus 'file' needs an uploaded .txt file: choose one first")
            corpus_text = read_text_file(text_file)
        elif s.corpus == "text":
            corpus_text = validate_text(s.text)
        with self._lock:
            self._check_free()
            name = s.name or self._fresh_name(s)
            run_dir = self._run_dir(name)
            if run_dir.exists():
                raise ValueError(f"a run named {name!r} already exists: pick another name, or resume it")
            run_dir.mkdir(parents=True)
            corpus_file = None
            if corpus_text is not None:
                corpus_file = run_dir / CORPUS_FILE
                corpus_file.write_text(corpus_text, encoding="utf-8")
            s.name = name
            job = Job(name, run_dir, s.public(), cli_args(s, run_dir, self.threads, corpus_file), self.backend)
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
            for sub in ("latest", "best"):  # the trainer is not running: undo a save it was killed in
                checkpoint.recover(job.run_dir / sub)
            if not checkpoint.is_checkpoint(job.run_dir / "latest"):
                raise ValueError(f"run {name!r} has no checkpoint to resume from (it stopped before saving one)")
            args = [a for a in job.args if a != "--resume"]
            reached = self._progress(job)[0]
            if steps is not None:
                steps = _num("steps", steps)
                if steps <= reached:
                    raise ValueError(f"steps={steps} must be more than the {reached} steps the run has done")
                i = args.index("--steps")
                args[i + 1] = str(steps)
                job.settings = {**job.settings, "steps": steps}
            elif reached >= int(job.settings.get("steps") or 0):
                raise ValueError(f"run {name!r} has done all its {reached} steps: give more steps to continue it")
            job.args = args + ["--resume"]
            job.state, job.reason, job.finished = "starting", None, None
            self._jobs[name] = job
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

    def _fresh_name(self, s: TrainSettings) -> str:
        base = f"{s.corpus}-{s.tokenizer}-{time.strftime('%Y%m%d-%H%M%S')}"
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
        _write_json(job.run_dir / JOB_FILE, job.record())
        if job.backend == "process":
            self._launch_process(job)
        else:
            self._launch_thread(job)

    def _launch_process(self, job: Job) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        nice = self.nice

        def lower_priority() -> None:  # runs in the child (after setsid), before exec
            if nice:
                try:
                    os.nice(nice)
                except OSError:
                    pass
                # Linux gives each new session its own scheduling group ("autogroup") and shares
                # the CPU fairly between groups whatever the processes' nice values: without this
                # a niced run still took a full core from the server (bench/load.py: p95 4.2 s,
                # 7x idle, with training keeping 93% of its steps/s)
                try:
                    with open("/proc/self/autogroup", "w") as f:
                        f.write(str(nice))
                except OSError:
                    pass

        stderr = open(job.run_dir / STDERR_FILE, "ab")
        try:
            job.proc = subprocess.Popen([self.python, "-m", "core.train", *job.args], cwd=ROOT, env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                        preexec_fn=lower_priority if os.name == "posix" else None,
                                        start_new_session=os.name == "posix")
        finally:
            stderr.close()
        job.state = "running"
        job.thread = threading.Thread(target=self._follow_process, args=(job, job.proc), daemon=True,
                                      name=f"glassbox-job-{job.name}")
        job.thread.start()

    def _follow_process(self, job: Job, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        try:
            log = open(job.run_dir / EVENTS_FILE, "a", encoding="utf-8")
        except OSError:  # a full or read-only disk: the page still follows the run from memory
            log = None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict) or "kind" not in ev:
                continue
            if log is not None:
                try:
                    log.write(json.dumps(ev) + "\n")
                    log.flush()
                except OSError:
                    pass
            self._on_event(job, ev)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
        proc.stdout.close()
        rc = proc.wait()
        self._finish(job, rc)

    def _launch_thread(self, job: Job) -> None:
        job.state = "running"
        job.thread = threading.Thread(target=self._run_in_thread, args=(job,), daemon=True,
                                      name=f"glassbox-job-{job.name}")
        job.thread.start()

    def _run_in_thread(self, job: Job) -> None:
        """The thread backend: Trainer in this process (inside @spaces.GPU where available).
        Events go through events.jsonl so a forked ZeroGPU worker reaches the page too."""
        events = job.run_dir / EVENTS_FILE
        stop_file = job.run_dir / STOP_FILE
        args = list(job.args)
        done = threading.Event()
        follower = threading.Thread(target=self._tail, args=(job, events, done), daemon=True)
        follower.start()
        rc = 1
        try:
            if _GPU_TRAIN is not None:  # ZeroGPU: the call may run in a forked worker, so pass no live objects
                rc = _GPU_TRAIN(args, str(events), str(stop_file))
            else:
                rc = train_in_process(args, str(events), str(stop_file), job)
        except Exception as e:  # a crash in the trainer's set-up: report it as a failed run
            with open(events, "a", encoding="utf-8") as log:
                log.write(json.dumps({"kind": "failed", "step": 0, "reason": f"{type(e).__name__}: {e}"}) + "\n")
        finally:
            done.set()
            follower.join(timeout=10)
            self._finish(job, rc)

    def _tail(self, job: Job, path: Path, done: threading.Event) -> None:
        """Follow events.jsonl (the thread backend's sink appends to it) until `done`."""
        pos = path.stat().st_size if path.exists() else 0
        while True:
            finished = done.is_set()
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except OSError:
                chunk = b""
            end = chunk.rfind(b"\n")
            if end >= 0:
                pos += end + 1
                for line in chunk[:end].decode("utf-8", "replace").splitlines():
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(ev, dict) and "kind" in ev:
                        self._on_event(job, ev)
            if finished:
                return
            done.wait(0.3)

    # ---- events ---------------------------------------------------------------------------
    def _on_event(self, job: Job, ev: dict) -> None:
        record = None
        with job.lock:
            job.events.append(ev)
            kind = ev["kind"]
            if kind in ("done", "stopped", "failed"):
                job.state = kind
                job.reason = ev.get("reason")
                job.finished = time.time()
                record = job.record()
        if record is not None:  # on disk at once: a restarted server must not see "running"
            try:
                _write_json(job.run_dir / JOB_FILE, record)
            except OSError:
                pass

    def _finish(self, job: Job, rc: int | None) -> None:
        with job.lock:
            if job.state in ACTIVE:  # ended without a final event: killed, or crashed
                job.state = "stopped" if job.state == "stopping" else "failed"
                tail = ""
                try:
                    tail = (job.run_dir / STDERR_FILE).read_text(encoding="utf-8", errors="replace")[-600:].strip()
                except OSError:
                    pass
                job.reason = job.reason or (f"the training process ended (exit code {rc}) without a final report"
                                            + (f": {crash_line(tail)}" if tail else ""))
                job.finished = time.time()
            record = job.record()
        try:
            _write_json(job.run_dir / JOB_FILE, record)
        except OSError:
            pass

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
            if job.trainer is not None:
                job.trainer.stop()
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
        """A job from memory, or loaded from runs/<name>/job.json (caller may hold self._lock)."""
        name = check_name(name)
        job = self._jobs.get(name)
        if job is not None:
            return job
        job = self._load(name)
        if job is None:
            raise ValueError(f"there is no run named {name!r}")
        self._jobs[name] = job
        return job

    def _load(self, name: str) -> Job | None:
        run_dir = self._run_dir(name)
        try:
            rec = json.loads((run_dir / JOB_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict):
            return None
        job = Job(name, run_dir, rec.get("settings") or {}, list(rec.get("args") or []), self.backend,
                  state=rec.get("state", "interrupted"), created=rec.get("created") or run_dir.stat().st_mtime,
                  finished=rec.get("finished"), reason=rec.get("reason"))
        if job.state in ACTIVE:  # the server went away while it trained
            job.state = "interrupted"
            job.reason = "the server stopped while this run was training; resume it from its last checkpoint"
        try:
            with open(run_dir / EVENTS_FILE, encoding="utf-8") as f:
                for line in f:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(ev, dict) and "kind" in ev:
                        job.events.append(ev)
        except OSError:
            pass
        return job

    def _resolve(self, name: str | None, active_only: bool = False) -> Job:
        with self._lock:
            if not name:
                active = [j for j in self._jobs.values() if j.active]
                if active:
                    return active[0]
                if active_only:
                    raise ValueError("no training run is going on this server")
                cur = max(self._jobs.values(), key=lambda j: j.created, default=None)
                if cur is None:
                    raise ValueError("no training run has been started on this server yet")
                return cur
            return self._get(name)

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

        Keys: job, state, running, step, total, loss, val_loss, lr, tokens_per_s, elapsed, eta,
        device, dtype, n_params, vocab_size, losses [[step, loss]], lrs [[step, lr]],
        evals [[step, train_loss, val_loss]], sample, checkpoints, reason, settings, kind, events.
        """
        job = self._resolve(name)
        with job.lock:
            events = list(job.events)
            state, reason = job.state, job.reason
        losses: dict[int, float] = {}
        lrs: dict[int, float] = {}
        evals: dict[int, tuple] = {}
        last_step: dict = {}
        start: dict = {}
        sample, checkpoints = "", []
        for ev in events:
            kind = ev.get("kind")
            if kind == "step":
                losses[ev["step"]] = ev.get("loss")
                lrs[ev["step"]] = ev.get("lr")
                last_step = ev
            elif kind == "eval":
                evals[ev["step"]] = (ev.get("train_loss"), ev.get("val_loss"))
            elif kind == "sample":
                sample = str(ev.get("text", ""))
            elif kind == "start":
                start = ev
            elif kind == "checkpoint":
                if ev.get("name") not in checkpoints:
                    checkpoints.append(ev.get("name"))
            elif kind == "failed" and not reason:
                reason = ev.get("reason")
        total = int(job.settings.get("steps") or start.get("steps") or 0)
        step = max([0, *losses, *evals])
        last_eval = evals[max(evals)] if evals else (None, None)
        return {
            "job": job.name,
            "state": state,
            "running": state in ACTIVE,
            "kind": events[-1]["kind"] if events else None,
            "step": step,
            "total": total,
            "loss": last_step.get("loss"),
            "train_loss": last_eval[0],
            "val_loss": last_eval[1],
            "lr": last_step.get("lr"),
            "tokens_per_s": last_step.get("tokens_per_s"),
            "elapsed": last_step.get("elapsed"),
            "eta": last_step.get("eta") if state in ACTIVE else 0.0,
            "device": start.get("device"),
            "dtype": start.get("dtype"),
            "n_params": start.get("n_params"),
            "vocab_size": start.get("vocab_size"),
            "losses": _thin([[s, losses[s]] for s in sorted(losses)]),
            "lrs": _thin([[s, lrs[s]] for s in sorted(lrs)]),
            "evals": [[s, *evals[s]] for s in sorted(evals)],
            "sample": sample,
            "checkpoints": [c for c in checkpoints if c],
            "reason": reason,
            "settings": dict(job.settings),
            "events": len(events),
        }

    def runs(self) -> list[dict]:
        """Every run this server knows (live ones, and those under runs_dir with a job.json),
        newest first: name, state, step, total, best val loss, settings."""
        names = set()
        try:
            names = {d.name for d in self.runs_dir.iterdir()
                     if NAME_RE.match(d.name) and (d / JOB_FILE).is_file()}
        except OSError:
            pass
        with self._lock:
            names |= set(self._jobs)
            jobs = []
            for n in names:
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

    # ---- download --------------------------------------------------------------------------
    def zip_run(self, name: str, dest_dir: str | Path) -> Path:
        """Zip the run's checkpoint folders (latest/, best/, …) plus job.json into
        `dest_dir/<name>.zip`; refuses names that would leave the runs folder."""
        run_dir = self._run_dir(name)
        if not run_dir.is_dir():
            raise ValueError(f"there is no run named {name!r}")
        folders = sorted(d for d in run_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
                         and checkpoint.is_checkpoint(d))
        if not folders:
            raise ValueError(f"run {name!r} has no checkpoint yet: wait for its first checkpoint")
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        final = dest_dir / f"{name}.zip"
        tmp = dest_dir / f".{name}.zip.tmp"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for folder in folders:
                for f in sorted(folder.iterdir()):
                    if f.is_file():
                        try:
                            zf.write(f, f"{name}/{folder.name}/{f.name}")
                        except FileNotFoundError:  # a checkpoint rewritten while we zip
                            continue
            for extra in (JOB_FILE,):
                if (run_dir / extra).is_file():
                    zf.write(run_dir / extra, f"{name}/{extra}")
        os.replace(tmp, final)
        return final

    def delete(self, name: str) -> None:
        """Remove a finished run's folder."""
        with self._lock:
            job = self._get(name)
            if job.active:
                raise ValueError(f"run {name!r} is still training: stop it first")
            self._jobs.pop(name, None)
        shutil.rmtree(job.run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# The thread backend's worker (a module-level function so `spaces.GPU` can wrap it)


def train_in_process(args: list[str], events_path: str, stop_path: str, job: Job | None = None) -> int:
    """Run `core.train` with CLI `args` in this process; events are appended to `events_path`
    and the run stops when `stop_path` appears (or `job.trainer.stop()` is called)."""
    from core import checkpoint as ckpt
    from core.cli import build_parser, prepare_data
    from core.config import TrainConfig, preset
    from core.tokenizer import Tokenizer
    from core.train import Trainer

    a = build_parser().parse_args(args)
    out = Path(a.out)
    stop = Path(stop_path)
    log = open(events_path, "a", encoding="utf-8")
    trainer = None

    def sink(ev: dict) -> None:
        log.write(json.dumps(ev, default=str) + "\n")
        log.flush()
        if trainer is not None and stop.exists():
            trainer.stop()

    try:
        try:
            resume_dir = out / "latest" if a.resume else None
            tok = Tokenizer.from_file(resume_dir / ckpt.TOKENIZER_FILE) if resume_dir is not None else None
            tok, split, info = prepare_data(a.corpus, a.tokenizer, a.vocab_size, path=a.text_file,
                                            val_fraction=a.val_fraction, tokenizer_obj=tok, seed=a.seed)
            mcfg = preset(a.preset, vocab_size=tok.vocab_size, n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                          block_size=a.block_size, dropout=a.dropout)
            tcfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup,
                               weight_decay=a.weight_decay, optimizer=a.optimizer, eval_interval=a.eval_interval,
                               eval_batches=a.eval_batches, ckpt_interval=a.ckpt_interval,
                               sample_prompt=a.sample_prompt, log_interval=a.log_interval, seed=a.seed,
                               device=a.device, threads=a.threads)
            trainer = Trainer(mcfg, tcfg, split, tok, out_dir=out, on_event=sink, resume_from=resume_dir,
                              run_info={"data": info, "command": "python -m core.train " + " ".join(args)})
        except ValueError as e:
            sink({"kind": "failed", "step": 0, "reason": str(e)})
            return 2
        if job is not None:
            job.trainer = trainer
        if stop.exists():
            trainer.stop()
        final = trainer.run()
        return 0 if final["kind"] in ("done", "stopped") else 1
    finally:
        log.close()


def _gpu_wrapped():
    """`train_in_process` inside `@spaces.GPU` where the `spaces` package exists (ZeroGPU).
    Decorated once at import, as ZeroGPU expects; GLASSBOX_GPU_DURATION (seconds, default
    300) is the longest a run may hold the GPU."""
    if importlib.util.find_spec("spaces") is None:
        return None
    try:
        import spaces  # type: ignore[import-not-found]
    except Exception:  # pragma: no cover - a broken install: fall back to the plain thread
        return None
    return spaces.GPU(duration=int(os.environ.get("GLASSBOX_GPU_DURATION", 300)))(train_in_process)


_GPU_TRAIN = _gpu_wrapped()
