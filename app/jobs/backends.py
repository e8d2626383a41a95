"""The two ways a run trains: a child process (the default), or a thread (Hugging Face ZeroGPU).

* **process**: a child `python -m core.train --spec runs/<name>/run.json --json`, niced (and
  its scheduling group too) and with a limited number of torch threads, so the server keeps
  answering other users while it trains. A reader thread parses one JSON event per stdout
  line, appends it to `events.jsonl` and hands it to the manager. Stop is SIGTERM (the
  trainer finishes the step, saves `latest/` and emits "stopped").
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


def launch_process(job: Job, *, python: str, threads: int, nice: int, on_event: OnEvent, finish: Finish) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))

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

    stderr = open(job.run_dir / STDERR_FILE, "ab")
    try:
        job.proc = subprocess.Popen([python, "-m", "core.train", "--spec", str(job.run_dir / SPEC_FILE), "--json"],
                                    cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=stderr, preexec_fn=lower_priority if os.name == "posix" else None,
                                    start_new_session=os.name == "posix")
    finally:
        stderr.close()
    job.state = "running"
    job.thread = threading.Thread(target=_follow_process, args=(job, job.proc, on_event, finish), daemon=True,
                                  name=f"glassbox-job-{job.name}")
    job.thread.start()


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
