"""The two ways a run trains: a child process (the default), or a thread (Hugging Face ZeroGPU).

* **process**: a child `python -m core.train --spec runs/<name>/run.json --json`, niced (and
  its scheduling group too) and with a limited number of torch threads, so the server keeps
  answering other users while it trains. A reader thread parses one JSON event per stdout
  line, appends it to `events.jsonl` and hands it to the manager. Stop is SIGTERM (the
  trainer finishes the step, saves `latest/` and emits "stopped"). With a `Spare`, the next
  run's process is started ahead (torch imported, waiting for its spec on stdin), so Start
  reaches the first step without the seconds of imports.
* **thread**, where the `spaces` package is importable: the GPU is only granted inside a
  function decorated with `@spaces.GPU`, which a subprocess cannot be, so `core.train.run`
  runs in a thread, wrapped in `spaces.GPU`. ZeroGPU may run that function in a forked
  worker, so it gets the spec as JSON, events travel through `events.jsonl` (the sink
  appends, a follower thread tails it), and Stop also writes a `STOP` file the sink checks.

Either way the manager gets `on_event(job, ev)` for every event and `finish(job, rc)` once.
Does not own: the job table (`app.jobs.manager`), the run (`core.train.run`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from app.jobs.events import parse, tail
from app.jobs.runs import EVENTS_FILE, SPEC_FILE, STDERR_FILE, STOP_FILE, Job

ROOT = Path(__file__).resolve().parents[2]
OnEvent = Callable[[Job, dict], None]
Finish = Callable[[Job, "int | None"], None]


def _child_env(threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _popen(python: str, args: list[str], env: dict, nice: int, stdin, stderr) -> subprocess.Popen:
    def lower_priority() -> None:  # runs in the child (after setsid), before exec
        if nice:
            try:
                os.nice(nice)
            except OSError:
                pass
            # Linux gives each new session its own scheduling group ("autogroup") and shares the
            # CPU fairly between groups whatever the processes' nice values: without this a
            # niced run still takes a full core from the server (bench/load.py)
            try:
                with open("/proc/self/autogroup", "w") as f:
                    f.write(str(nice))
            except OSError:
                pass

    return subprocess.Popen([python, "-m", "core.train", *args], cwd=ROOT, env=env, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=stderr,
                            preexec_fn=lower_priority if os.name == "posix" else None,
                            start_new_session=os.name == "posix")


# environment variables read when Python, torch and its math libraries start: a waiting process
# made under other values cannot take a run (the others are handed over with the run)
IMPORT_TIME_ENV = ("PYTHON", "LD_", "OMP_", "KMP_", "GOMP_", "MKL_", "ATEN_", "ONEDNN_", "DNNL_", "TORCH_",
                   "PYTORCH_", "CUDA_")


class Spare:
    """One trainer process started ahead of the next run (`python -m core.train
    --spec-from-stdin --json`): it has imported torch and the trainer, seconds of a run's
    start-up, and waits for its run on stdin, which brings the environment of the moment.
    Made for one python, thread count, niceness and import-time environment
    (`IMPORT_TIME_ENV`); a run with other ones starts a fresh process. Idle, it only holds memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._key: tuple | None = None
        self._closed = False

    @staticmethod
    def key(python: str, threads: int, nice: int, env: dict) -> tuple:
        return python, threads, nice, tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)))

    def take(self, key: tuple) -> subprocess.Popen | None:
        """The waiting process if it suits `key` and is alive (then it is no longer the spare)."""
        with self._lock:
            proc, self._proc = self._proc, None
            suits = self._key == key
        if proc is not None and (not suits or proc.poll() is not None):
            _discard(proc)
            return None
        return proc

    def refill(self, python: str, threads: int, nice: int) -> None:
        env = _child_env(threads)
        with self._lock:
            if self._closed or self._proc is not None:
                return
            try:
                self._proc = _popen(python, ["--spec-from-stdin", "--json"], env, nice, subprocess.PIPE,
                                    subprocess.DEVNULL)
                self._key = self.key(python, threads, nice, env)
            except OSError:  # no process to spare: runs start the plain way
                self._proc = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is not None:
            _discard(proc)


def _discard(proc: subprocess.Popen) -> None:
    for f in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            f and f.close()
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def launch_process(job: Job, *, python: str, threads: int, nice: int, on_event: OnEvent, finish: Finish,
                   spare: Spare | None = None) -> None:
    env = _child_env(threads)
    proc = spare.take(Spare.key(python, threads, nice, env)) if spare is not None else None
    if proc is not None:
        try:  # the spare's stderr goes to the run's file from here on
            proc.stdin.write(json.dumps({"spec": str(job.run_dir / SPEC_FILE), "stderr": str(job.run_dir / STDERR_FILE),
                                         "env": env}).encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died meanwhile
            _discard(proc)
            proc = None
    if proc is None:
        stderr = open(job.run_dir / STDERR_FILE, "ab")
        try:
            proc = _popen(python, ["--spec", str(job.run_dir / SPEC_FILE), "--json"], env, nice,
                          subprocess.DEVNULL, stderr)
        finally:
            stderr.close()
    job.proc = proc
    job.state = "running"
    job.thread = threading.Thread(target=_follow_process, args=(job, job.proc, on_event, finish), daemon=True,
                                  name=f"glassbox-job-{job.name}")
    job.thread.start()
    if spare is not None:  # the next run's, started now (niced: it yields to this run and the server)
        spare.refill(python, threads, nice)


def _follow_process(job: Job, proc: subprocess.Popen, on_event: OnEvent, finish: Finish) -> None:
    if proc.stdout is None:
        raise RuntimeError("the training process has no stdout pipe")
    try:
        log = open(job.run_dir / EVENTS_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError:  # a full or read-only disk: the page still follows the run from memory
        log = None
    for raw in proc.stdout:
        ev = parse(raw)
        if ev is None:
            continue
        if log is not None:
            try:
                log.write(json.dumps(ev) + "\n")
                log.flush()
            except OSError:
                pass
        on_event(job, ev)
    if log is not None:
        with contextlib.suppress(OSError):
            log.close()
    proc.stdout.close()
    finish(job, proc.wait())


def launch_thread(job: Job, *, on_event: OnEvent, finish: Finish) -> None:
    job.state = "running"
    job.thread = threading.Thread(target=_run_in_thread, args=(job, on_event, finish), daemon=True,
                                  name=f"glassbox-job-{job.name}")
    job.thread.start()


def _run_in_thread(job: Job, on_event: OnEvent, finish: Finish) -> None:
    events, stop_file = job.run_dir / EVENTS_FILE, job.run_dir / STOP_FILE
    done = threading.Event()
    follower = threading.Thread(target=tail, args=(events, lambda ev: on_event(job, ev), done), daemon=True)
    follower.start()
    rc = 1
    try:
        spec_json = (job.run_dir / SPEC_FILE).read_text(encoding="utf-8")
        if _GPU_TRAIN is not None:  # ZeroGPU: the call may run in a forked worker, so pass no live objects
            rc = _GPU_TRAIN(spec_json, str(events), str(stop_file))
        else:
            rc = train_in_process(spec_json, str(events), str(stop_file), job.stop)
    except Exception as e:  # a crash in the trainer's set-up: report it as a failed run
        with open(events, "a", encoding="utf-8") as log:
            log.write(json.dumps({"kind": "failed", "step": 0, "reason": f"{type(e).__name__}: {e}"}) + "\n")
    finally:
        done.set()
        follower.join(timeout=10)
        finish(job, rc)


def train_in_process(spec_json: str, events_path: str, stop_path: str, stop: threading.Event | None = None) -> int:
    """`core.train.run` on the spec in this process (a module-level function, so `spaces.GPU`
    can wrap it); events are appended to `events_path`, and the run stops when `stop_path`
    appears or `stop` is set. Returns the CLI's exit code."""
    from core.spec import RunSpec
    from core.train import run

    stop = stop if stop is not None else threading.Event()
    stop_file = Path(stop_path)
    with open(events_path, "a", encoding="utf-8") as log:
        def sink(ev: dict) -> None:
            log.write(json.dumps(ev, default=str) + "\n")
            log.flush()
            if stop_file.exists():
                stop.set()

        try:
            spec = RunSpec.from_json(spec_json)
        except ValueError as e:
            sink({"kind": "failed", "step": 0, "reason": str(e)})
            return 2
        if stop_file.exists():
            stop.set()
        final = run(spec, sink, stop, command="app.jobs (thread backend)")
    return 0 if final["kind"] in ("done", "stopped") else 2 if "stage" in final else 1


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
