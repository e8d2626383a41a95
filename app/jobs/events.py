"""A run's events: the one JSONL reader, and folding a run's events into its status.

Events are the trainer's dicts (`core.train`: prepare, start, step, eval, sample, checkpoint,
snapshot, done, stopped, failed), one JSON object per line on the child's stdout and in
`runs/<name>/events.jsonl`. Owns: reading a line, a file or a growing file of them, and
`fold`, which turns a run's events into the status dict's history keys.
Does not own: the job table or the run's state (`app.jobs.manager`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

MAX_POINTS = 2000  # loss points a status returns (longer histories are thinned evenly)


def parse(line: str | bytes) -> dict | None:
    """One event from one line, or None for anything else (a log line, half a line, junk)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) and "kind" in ev else None


def parse_all(lines: Iterable[str | bytes]) -> list[dict]:
    return [ev for ev in map(parse, lines) if ev is not None]


def read_events(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_all(f)
    except OSError:
        return []


def tail(path: Path, on_event: Callable[[dict], None], done: threading.Event, poll: float = 0.3) -> None:
    """Follow a growing events file from its current end, calling `on_event` for each complete
    line, until `done` is set (then read what is left and return)."""
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
            for ev in parse_all(chunk[:end].splitlines()):
                on_event(ev)
        if finished:
            return
        done.wait(poll)


def thin(points: list, limit: int = MAX_POINTS) -> list:
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def fold(events: list[dict]) -> dict:
    """The history a run's events add up to: last step and eval, curves, sample, checkpoints,
    the start event (device, dtype, choices), and the stage it is preparing (until it starts)."""
    losses: dict[int, float] = {}
    lrs: dict[int, float] = {}
    evals: dict[int, tuple] = {}
    last_step: dict = {}
    start: dict = {}
    sample, stage, failure, checkpoints, snapshots = "", None, None, [], []
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
        elif kind == "prepare":
            stage = ev.get("stage")
        elif kind == "start":
            start, stage = ev, None
        elif kind == "checkpoint":
            if ev.get("name") and ev.get("name") not in checkpoints:
                checkpoints.append(ev.get("name"))
        elif kind == "snapshot" and ev.get("step") not in snapshots:
            snapshots.append(ev.get("step"))
        elif kind == "failed" and failure is None:
            failure = ev.get("reason")
    last_eval = evals[max(evals)] if evals else (None, None)
    return {
        "kind": events[-1]["kind"] if events else None,
        "step": max([0, *losses, *evals]),
        "loss": last_step.get("loss"),
        "train_loss": last_eval[0],
        "val_loss": last_eval[1],
        "lr": last_step.get("lr"),
        "tokens_per_s": last_step.get("tokens_per_s"),
        "elapsed": last_step.get("elapsed"),
        "eta": last_step.get("eta"),
        "stage": stage,
        "device": start.get("device"),
        "dtype": start.get("dtype"),
        "sdpa": start.get("sdpa"),
        "choices": start.get("choices"),
        "n_params": start.get("n_params"),
        "vocab_size": start.get("vocab_size"),
        "start_steps": start.get("steps"),
        "losses": thin([[s, losses[s]] for s in sorted(losses)]),
        "lrs": thin([[s, lrs[s]] for s in sorted(lrs)]),
        "evals": [[s, *evals[s]] for s in sorted(evals)],
        "sample": sample,
        "checkpoints": checkpoints,
        "snapshots": snapshots,  # their steps (core.snapshots), for the Timeline tab
        "failure": failure,
        "events": len(events),
    }
