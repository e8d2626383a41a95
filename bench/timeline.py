"""Timeline benchmark: one JSON line, measured in one run.

- snapshot cost: the nano preset's Train-tab run (Tiny Shakespeare, char-level, 500 steps, the
  form's settings, one torch thread as the app's job manager gives a run on 2 cores) with 12
  snapshots: seconds spent writing them as a share of the run's wall time (target ≤ 3%), and
  the snapshots' bytes on disk;
- timeline build: loading those 12 snapshots and deriving the timeline on a 64-token text
  (`core.inspect.timeline`: statistics, grids, predictions, aligned embeddings; target ≤ 2 s),
  and redrawing one step from the built timeline (what a slider move costs);
- the "watch an induction head form" preset (`app.jobs.form.INDUCTION_PRESET`) run as the Train
  tab runs it: its wall time, the best head's induction score at every snapshot, the first
  snapshot step where it is above 0.5 (and the seconds to get there), that head, and the training
  loss around each snapshot, over the plateau before the rise and after it (skip with --no-induction).

Usage: python bench/timeline.py [--steps 500] [--threads 1] [--no-induction]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.figures import timeline as figures  # noqa: E402
from app.jobs.form import FORM, INDUCTION_PRESET, spec_from_form  # noqa: E402
from core import machine, snapshots  # noqa: E402
from core.inspect import timeline as TL  # noqa: E402
from core.train import run  # noqa: E402


def timed_run(spec) -> tuple[float, float, list[dict]]:
    """(wall seconds, seconds inside snapshot writes, events) of one run."""
    events: list[dict] = []
    t0 = time.perf_counter()
    final = run(spec, events.append)
    wall = time.perf_counter() - t0
    if final["kind"] != "done":
        raise SystemExit(f"the run did not finish: {final}")
    # a snapshot's write ends at its checkpoint event and starts after the event before it
    spent, last = 0.0, {}
    for ev in events:
        if ev["kind"] == "checkpoint" and str(ev.get("name", "")).startswith(snapshots.SNAPSHOTS_DIR + "/"):
            spent += ev["time"] - last.get("time", ev["time"])
        last = ev
    return wall, spent, events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=FORM["steps"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-induction", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out: dict = {"bench": "timeline", "machine": machine.describe(), "threads": a.threads}
    with tempfile.TemporaryDirectory() as d:
        base = spec_from_form({"corpus": "shakespeare", "steps": a.steps, "snapshots": 12})
        spec = base.replace(out=str(Path(d) / "nano"), threads=a.threads)
        wall, spent, _ = timed_run(spec)
        found = snapshots.listing(spec.out)
        disk = sum(f.stat().st_size for _, p in found for f in p.iterdir())
        out.update(nano_steps=a.steps, nano_wall_s=round(wall, 2), snapshots=len(found),
                   snapshot_write_s=round(spent, 3), snapshot_share=round(spent / wall, 4),
                   snapshot_disk_mb=round(disk / 1e6, 2), snapshot_mb_each=round(disk / 1e6 / len(found), 3))
        text = TL.default_text(spec.out)
        t0 = time.perf_counter()
        tl = TL.build(TL.run_snapshots(spec.out), text)
        out["timeline_build_s"] = round(time.perf_counter() - t0, 3)
        out["timeline_tokens"] = len(tl.labels)
        t0 = time.perf_counter()
        i = len(tl.steps) // 2
        for fig in (figures.grid(tl, i), figures.loss_at(tl, tl.steps[i]), figures.top_next(tl.views[i], "x"),
                    figures.head_stats(tl, tl.steps[i])):
            fig.to_json()
        out["timeline_step_redraw_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        for fig in (figures.true_token_probs(tl), figures.embeddings(tl)):
            fig.to_json()
        out["timeline_all_steps_draw_s"] = round(time.perf_counter() - t0, 3)

        if not a.no_induction:
            spec = spec_from_form(dict(INDUCTION_PRESET)).replace(out=str(Path(d) / "induction"), threads=a.threads)
            wall, spent, events = timed_run(spec)
            tl = TL.build(TL.run_snapshots(spec.out), TL.default_text(spec.out))
            best = [float(np.nanmax(v.stats["induction_score"])) for v in tl.views]
            formed = next((k for k, b in enumerate(best) if b > 0.5), None)
            losses = {e["step"]: e["loss"] for e in events if e["kind"] == "step"}

            def mean_loss(lo, hi):
                xs = [v for s, v in losses.items() if lo <= s < hi]
                return round(sum(xs) / len(xs), 3) if xs else None

            out["induction"] = {
                "steps": spec.steps, "wall_s": round(wall, 1), "snapshot_share": round(spent / wall, 4),
                "best_head_by_step": {s: round(b, 3) for s, b in zip(tl.steps, best)},
                "formed_at_step": tl.steps[formed] if formed is not None else None,
                "formed_after_s": None if formed is None else round(
                    next(e["elapsed"] for e in events if e["kind"] == "step" and e["step"] >= tl.steps[formed]), 1),
                "head": None if formed is None else "L{} H{}".format(*np.unravel_index(
                    int(np.nanargmax(tl.views[formed].stats["induction_score"])),
                    tl.views[formed].stats["induction_score"].shape)),
                "loss_by_step": {s: mean_loss(s - 25, s + 25) for s in tl.steps[1:]},
            }
            if formed is not None:  # the loss over the 200 steps before the biggest jump, and the 200 after it formed
                start = tl.steps[int(np.argmax(np.diff(best[:formed + 1])))]
                out["induction"].update(rise_from_step=start, loss_before=mean_loss(start - 200, start),
                                        loss_after=mean_loss(tl.steps[formed], tl.steps[formed] + 200))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
