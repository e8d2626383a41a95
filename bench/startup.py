"""Start-up bench: `python -m core.train` from launch to its first `step` event, nano preset.

Runs the CLI as a user does (`--corpus shakespeare --preset nano`, char-level), first with a
fresh cache folder (the start-up probe measures) and then again with the same folder (the
probe's answer is cached), alternating `--rounds` times; each run is stopped with SIGTERM once
its first step event is printed. Prints one JSON line: seconds from launch to the `start` event
and to the first `step` event for each case (median over rounds), the choice the runs made,
the phases of one run measured inside it (torch import, data, set-up), and the CPU
(`core.machine.describe()`). Then the Train tab's path: `JobManager.start` with the form's
defaults (the workshop preset) to the first step, cached probe, with a plain child process
("cold") and with the waiting trainer process the app keeps ("warm"), alternating.

Usage: python bench/startup.py [--rounds 3] [--threads 0]
Skips cleanly (a JSON note, exit 0) when ../shared/data/tinyshakespeare.txt is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# the phases of one run, timed inside a child that imports what the CLI imports, in its order
PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from core.config import TrainConfig, preset
from core.data import load_corpus, split_tokens
from core.tokenizer import Tokenizer
from core.train import Trainer
t2 = time.perf_counter()
raw = load_corpus("shakespeare")
tok = Tokenizer.train_char(raw)
split = split_tokens(tok.encode(raw))
t3 = time.perf_counter()
marks = {}
def sink(ev):
    marks.setdefault(ev["kind"], time.perf_counter())
    if ev["kind"] == "step":
        tr.stop()
cfg = TrainConfig(steps=5, eval_interval=0, sample_tokens=0, ckpt_interval=0, threads=int(sys.argv[1]),
                  extra={"cache_dir": sys.argv[2]})
tr = Trainer(preset("nano", vocab_size=tok.vocab_size), cfg, split, tok, on_event=sink)
tr.run()
print(json.dumps({"import_torch": t1 - t0, "import_core": t2 - t1, "data": t3 - t2,
                  "setup_to_start_event": marks["start"] - t3, "first_step": marks["step"] - marks["start"]}))
"""


def first_step(cache: Path, out: Path, threads: int) -> dict:
    cmd = [sys.executable, "-m", "core.train", "--corpus", "shakespeare", "--preset", "nano", "--steps", "200",
           "--eval-interval", "0", "--sample-tokens", "0", "--ckpt-interval", "0", "--json", "--out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "GLASSBOX_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    got: dict = {}
    try:
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["kind"] == "start":
                got["start_s"] = time.perf_counter() - t0
                got["choices"] = ev.get("choices")
            elif ev["kind"] == "step":
                got["first_step_s"] = time.perf_counter() - t0
                proc.send_signal(signal.SIGTERM)
                break
            elif ev["kind"] == "failed":
                raise RuntimeError(ev["reason"])
    finally:
        proc.wait(timeout=300)
    return got


def app_first_step(root: Path, cache: Path, warm: bool, threads: int) -> float:
    """The Train tab's Start (`JobManager.start` with the form's defaults, as the tab calls it)
    to the run's first step, with or without the waiting trainer process; the manager has
    been up for a while first, as a server has."""
    os.environ["GLASSBOX_CACHE_DIR"] = str(cache)
    from app.jobs import JobManager

    jm = JobManager(root / ("warm" if warm else "cold"), threads=threads or 1, warm_start=warm)
    try:
        time.sleep(10)  # the server has been up: a spare has finished its imports
        t0 = time.perf_counter()
        name = jm.start({"steps": 200})["job"]
        while jm.status(name)["step"] < 1:
            if not jm.status(name)["running"]:
                raise RuntimeError(jm.status(name)["reason"])
            time.sleep(0.02)
        took = time.perf_counter() - t0
        jm.stop(name, wait=60)
        return took
    finally:
        jm.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="fresh-cache / cached pairs")
    ap.add_argument("--threads", type=int, default=0, help="--threads for the CLI (0: torch's default)")
    a = ap.parse_args()
    if not DATA.is_file():
        print(json.dumps({"bench": "startup", "skipped": f"{DATA} is absent"}), flush=True)
        return 0
    from core.machine import describe

    runs: dict[str, list[dict]] = {"fresh": [], "cached": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            cache = Path(tmp) / f"cache{r}"
            runs["fresh"].append(first_step(cache, Path(tmp) / f"run{r}a", a.threads))
            runs["cached"].append(first_step(cache, Path(tmp) / f"run{r}b", a.threads))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        phases = json.loads(subprocess.run([sys.executable, "-c", PHASES, str(a.threads), str(Path(tmp) / "cache0")],
                                           cwd=ROOT, env=env, capture_output=True, text=True,
                                           check=True).stdout.strip().splitlines()[-1])
        # the Train tab: the form's default run (the workshop preset), cached probe, cold vs warm start
        app = {"cold": [], "warm": []}
        for r in range(a.rounds):
            for warm in (False, True):
                app["warm" if warm else "cold"].append(app_first_step(Path(tmp) / f"app{r}", Path(tmp) / "cache0",
                                                                      warm, a.threads))
    out = {"bench": "startup", "machine": describe(), "threads": a.threads, "rounds": a.rounds}
    for case, rs in runs.items():
        out[f"{case}_start_s"] = round(statistics.median(x["start_s"] for x in rs), 2)
        out[f"{case}_first_step_s"] = round(statistics.median(x["first_step_s"] for x in rs), 2)
        out[f"{case}_all_first_step_s"] = [round(x["first_step_s"], 2) for x in rs]
    out["choice_fresh"] = {k: runs["fresh"][0]["choices"][k] for k in ("summary", "timings", "cached")}
    out["choice_cached"] = {k: runs["cached"][0]["choices"][k] for k in ("summary", "cached")}
    out["phases_cached_s"] = {k: round(v, 2) for k, v in phases.items()}
    for case, xs in app.items():
        out[f"train_tab_{case}_first_step_s"] = round(statistics.median(xs), 2)
        out[f"train_tab_{case}_all_s"] = [round(x, 2) for x in xs]
    out["targets"] = {"fresh_first_step<=5s": out["fresh_first_step_s"] <= 5.0,
                      "cached_first_step<=2s": out["cached_first_step_s"] <= 2.0,
                      "train_tab_warm_first_step<=2s": out["train_tab_warm_first_step_s"] <= 2.0}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
