"""Snapshots: weight-only copies of a model at steps spread over a run, to watch it learn.

Owns: the schedule (`schedule(total_steps, n)`: a pure function, dense early and sparse late,
step 0 and the last step included), the bounds (at most `MAX_SNAPSHOTS` per run and
`max_bytes()` of weights per run: the count shrinks to fit), where they go
(`runs/<run>/snapshots/step-<N>/`, each a checkpoint folder written by `core.checkpoint.save`
through a temporary folder and a rename, so a killed run never leaves half a snapshot at a
listed name), listing a run's snapshots, and `Snapshots`, the trainer's writer: it knows
which steps are due, skips those already on disk (a resumed run continues the same
schedule), keeps the run's samples as events arrive, and emits a `snapshot` event.

A snapshot's meta.json holds what the timeline shows beside the weights: the loss history
up to its step (thinned), the evals, the samples so far and an excerpt of the held-out text.
Does not own: the training loop (`core.train`), the folder format (`core.checkpoint`), what
is derived from snapshots (`core.inspect.timeline`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt

Trainer = Any  # core.train.Trainer (not imported: core.train imports this module)

SNAPSHOTS_DIR = "snapshots"
MAX_SNAPSHOTS = 200  # per run, whatever is asked (the web server allows fewer: core.spec.SERVER_LIMITS)
DEFAULT_MAX_BYTES = 2 * 1024**3  # weights kept per run; GLASSBOX_MAX_SNAPSHOT_BYTES overrides it
STEP_NAME = re.compile(r"^step-(\d{1,10})$")
HISTORY_POINTS = 2000  # loss points kept in a snapshot's meta.json
EXCERPT_TOKENS = 64  # the held-out text a snapshot carries (the timeline's default text)


def max_bytes() -> int:
    return int(os.environ.get("GLASSBOX_MAX_SNAPSHOT_BYTES", DEFAULT_MAX_BYTES))


def schedule(total_steps: int, n: int) -> list[int]:
    """The steps to snapshot: n points at total·(k/(n−1))² for k = 0..n−1, so a third fall in
    the first tenth of the run (where the loss moves fastest) and the rest thin out towards the
    end; steps that round to the same number count once. n = 1 is the last step only."""
    total, n = int(total_steps), min(int(n), MAX_SNAPSHOTS)
    if n <= 0 or total < 0:
        return []
    if n == 1:
        return [total]
    return sorted({round(total * (k / (n - 1)) ** 2) for k in range(n)})


def bounded_count(n: int, weight_bytes: int, limit: int | None = None) -> int:
    """How many of `n` snapshots of `weight_bytes` each fit in the per-run byte limit."""
    limit = max_bytes() if limit is None else limit
    fit = limit // max(1, weight_bytes)
    return max(0, min(int(n), MAX_SNAPSHOTS, fit))


def folder(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOTS_DIR / f"step-{int(step)}"


def listing(run_dir: str | Path) -> list[tuple[int, Path]]:
    """A run's complete snapshots, (step, folder), by step (half-written ones are dot-folders,
    never listed)."""
    base = Path(run_dir) / SNAPSHOTS_DIR
    try:
        found = [(int(m.group(1)), d) for d in base.iterdir() if (m := STEP_NAME.match(d.name))]
    except OSError:
        return []
    return sorted((s, d) for s, d in found if ckpt.is_checkpoint(d))


def clean(run_dir: str | Path) -> None:
    """Remove the temporary folders of snapshot writes a killed run left behind."""
    base = Path(run_dir) / SNAPSHOTS_DIR
    for d in base.glob(".step-*.tmp-*") if base.is_dir() else ():
        shutil.rmtree(d, ignore_errors=True)


def read_meta(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / ckpt.META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _thin(points: list, limit: int = HISTORY_POINTS) -> list:
    if len(points) <= limit:
        return points
    stride = -(-len(points) // limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


class Snapshots:
    """The trainer's snapshot writer. Make one with `for_trainer` (None when snapshots are off)."""

    def __init__(self, run_dir: Path, steps: list[int], excerpt: str = "", samples: list | None = None):
        self.run_dir, self.steps, self.excerpt = Path(run_dir), list(steps), excerpt
        self.done = {s for s, _ in listing(run_dir)}
        self.samples: list[dict] = list(samples or [])

    @classmethod
    def for_trainer(cls, trainer: Trainer) -> Snapshots | None:
        n = int(getattr(trainer.cfg, "snapshots", 0) or 0)
        if n <= 0 or trainer.out_dir is None or not trainer.dist.main:
            return None
        n = bounded_count(n, trainer.mcfg.memory_bytes())
        clean(trainer.out_dir)
        found = listing(trainer.out_dir)
        samples = read_meta(found[-1][1]).get("samples", []) if found else []  # a resumed run keeps its samples
        samples = [s for s in samples if isinstance(s, dict) and s.get("step", 0) <= trainer.step]
        snaps = cls(trainer.out_dir, schedule(trainer.cfg.steps, n), _excerpt(trainer), samples)
        trainer.add_sink(snaps.on_event)
        return snaps

    def on_event(self, ev: dict) -> None:
        if ev.get("kind") == "sample" and ev.get("text"):
            self.samples = [s for s in self.samples if s["step"] != ev["step"]] + [
                {"step": ev["step"], "text": str(ev["text"])}]

    def due(self, step: int) -> bool:
        return step in self.steps and step not in self.done

    def save_if_due(self, trainer: Trainer) -> Path | None:
        """Write the snapshot of `trainer.step` if it is scheduled and not on disk yet."""
        step = trainer.step
        if not self.due(step):
            return None
        # the trainer's own save: a full or read-only disk ends the run as a failed checkpoint does
        path = trainer.save(f"{SNAPSHOTS_DIR}/step-{step}", with_state=False, snapshot=True,
                            history=_thin(trainer.history), samples=self.samples, excerpt=self.excerpt)
        self.done.add(step)
        trainer._emit("snapshot", path=str(path), name=f"step-{step}")
        return path


def _excerpt(trainer: Trainer) -> str:
    """About `EXCERPT_TOKENS` tokens of the held-out text, from the start of a line where one
    begins early: text the model did not train on, for the timeline's default."""
    tok = trainer.tokenizer
    if tok is None:
        return ""
    text = tok.decode(trainer.data.val[:8 * EXCERPT_TOKENS].tolist())
    cut = text.find("\n", 0, len(text) // 2)
    text = text[cut + 1:] if cut >= 0 else text
    ids = tok.encode(text)[:EXCERPT_TOKENS]
    return tok.decode(ids)
