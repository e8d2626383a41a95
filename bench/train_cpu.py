"""CPU training bench: Glassbox's trainer vs a plain eager fp32 loop, measured in one run.

Prints one JSON line:
- tokens/s of `core.train.Trainer` (its default CPU path: start-up probe, bf16 autocast
  where faster, pinned SDPA backend) vs a plain eager fp32 PyTorch loop written below as a
  user would (torch AdamW, no tricks), both at nanoGPT's CPU recipe (4 layers, 4 heads,
  128 dims, block 64, batch 12, char-level Tiny Shakespeare), interleaved in chunks;
- val loss after `--steps` steps on 200 fixed val batches: Glassbox's default recipe
  (`GLASSBOX_RECIPE`, run through `Trainer.run()`) vs nanoGPT's recipe (the plain loop:
  AdamW lr 1e-3, warmup 100, cosine to 1e-4, betas 0.9/0.99, clip 1.0, dropout 0), also
  interleaved in chunks, with wall time to reach nanoGPT's final val loss;
- tokens/s of `Trainer.run()` with the app's event sinks attached (JSON lines written to
  a pipe-like file + a history list) vs headless, alternated.

The JSON line names the CPU it ran on (`core.machine.describe()`: model string, torch's
capability, whether bf16 matmul is fast): the probe's choices differ by CPU.

Usage: python bench/train_cpu.py [--quick] [--steps 2000] [--threads 1] [--skip-sinks]
Skips cleanly (a JSON note, exit 0) when ../shared/data/tinyshakespeare.txt is absent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.config import TrainConfig, preset  # noqa: E402
from core.data import BatchSampler, fixed_batches, split_tokens  # noqa: E402
from core.machine import describe  # noqa: E402
from core.model import GPT  # noqa: E402
from core.tokenizer import Tokenizer  # noqa: E402
from core.train import GLASSBOX_CPU_MODEL, GLASSBOX_CPU_RECIPE, Trainer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
NANO = dict(batch_size=12, lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99, clip=1.0, wd=0.1)


# --------------------------------------------------------------------------------------
# nanoGPT's loop, as a user writes it: eager fp32, torch AdamW, nothing else


class PlainLoop:
    def __init__(self, mcfg, train_ids, steps: int, seed: int):
        torch.manual_seed(seed)
        self.model = GPT(mcfg)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": NANO["wd"]},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=NANO["lr"], betas=(0.9, NANO["beta2"]))
        self.sampler = BatchSampler(train_ids, mcfg.block_size, NANO["batch_size"], seed)
        self.steps, self.step = steps, 0
        self.tokens_per_step = NANO["batch_size"] * mcfg.block_size

    def lr(self, it: int) -> float:
        if it < NANO["warmup"]:
            return NANO["lr"] * (it + 1) / (NANO["warmup"] + 1)
        ratio = min(1.0, (it - NANO["warmup"]) / (self.steps - NANO["warmup"]))
        return NANO["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (NANO["lr"] - NANO["min_lr"])

    def advance(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            for g in self.opt.param_groups:
                g["lr"] = self.lr(self.step)
            x, y = self.sampler.next()
            _, loss = self.model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), NANO["clip"])
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
        return time.perf_counter() - t0


# --------------------------------------------------------------------------------------
# Glassbox's Trainer.run(), paused every `chunk` steps so the two loops interleave


class PacedTrainer:
    """Runs `Trainer.run()` in a thread; a sink blocks it after 'start' and every `chunk` steps.

    Only one of the two loops computes at any moment, so they share the CPU fairly."""

    def __init__(self, trainer: Trainer, chunk: int):
        self.tr, self.chunk = trainer, chunk
        self._go, self._paused = threading.Semaphore(0), threading.Semaphore(0)
        self.final: dict | None = None
        self.setup_s = 0.0
        trainer.add_sink(self._sink)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.setup_s = self._resume()  # runs set-up (incl. the probe) up to the 'start' event
        self.start_event = self._start

    def _sink(self, ev: dict) -> None:
        if ev["kind"] == "start":
            self._start = ev
        if ev["kind"] == "start" or (ev["kind"] == "step" and ev["step"] % self.chunk == 0
                                     and ev["step"] < self.tr.cfg.steps):
            self._paused.release()
            self._go.acquire()

    def _run(self) -> None:
        self._go.acquire()
        self.final = self.tr.run()
        self._paused.release()

    def _resume(self) -> float:
        t0 = time.perf_counter()
        self._go.release()
        self._paused.acquire()
        return time.perf_counter() - t0

    def advance(self) -> float:
        return self._resume()

    def finish(self) -> None:
        if self.final is None:
            self.tr.stop()
            self._resume()
        self.thread.join()


@torch.no_grad()
def val_loss(model: GPT, batches) -> float:
    was = model.training
    model.eval()
    total = sum(float(model(x, y)[1]) for x, y in batches)
    model.train(was)
    return total / len(batches)


def glassbox_config(steps: int, **over) -> TrainConfig:
    return TrainConfig(**{**GLASSBOX_CPU_RECIPE, "steps": steps, "eval_interval": 0, "eval_batches": 1,
                          "ckpt_interval": 0, "sample_tokens": 0, "device": "cpu", **over})


# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few steps, few val batches")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--val-batches", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=100, help="val loss every N steps (untimed)")
    ap.add_argument("--chunk", type=int, default=25, help="steps per interleaved chunk")
    ap.add_argument("--tput-steps", type=int, default=300, help="steps per loop in the tokens/s phase")
    ap.add_argument("--sink-steps", type=int, default=100, help="steps per run in the sinks phase")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="the probe's cache (default: a fresh temporary folder, so the probe measures)")
    ap.add_argument("--skip-sinks", action="store_true", help="leave out phase 3 (sinks vs headless)")
    ap.add_argument("--skip-tput", action="store_true", help="leave out phase 1 (tokens/s)")
    ap.add_argument("--skip-loss", action="store_true", help="leave out phase 2 (val loss and time to it)")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.val_batches, a.eval_every, a.chunk, a.tput_steps, a.sink_steps = 60, 10, 20, 10, 40, 20
    if not DATA.is_file():
        print(json.dumps({"bench": "train_cpu", "skipped": f"{DATA} is absent"}), flush=True)
        return 0
    torch.set_num_threads(a.threads)
    if a.cache_dir is None:
        import tempfile

        a.cache_dir = Path(tempfile.mkdtemp(prefix="glassbox-bench-cache-"))
    text = DATA.read_text(encoding="utf-8")
    tok = Tokenizer.train_char(text)
    split = split_tokens(tok.encode(text), val_fraction=0.1)
    nano = preset("nano", vocab_size=tok.vocab_size, dropout=0.0)
    val_batches = fixed_batches(split.val, nano.block_size, 12, a.val_batches, seed=0)
    out: dict = {"bench": "train_cpu", "machine": describe(), "steps": a.steps, "threads": a.threads,
                 "torch": torch.__version__, "val_batches": a.val_batches, "recipe": GLASSBOX_CPU_RECIPE, "recipe_model": GLASSBOX_CPU_MODEL}

    # 1. tokens/s at nanoGPT's shape: Trainer's default CPU path vs the plain loop, interleaved
    def tput(optimizer: str, batch: int) -> dict:
        plain = PlainLoop(nano, split.train, a.tput_steps + a.chunk, a.seed)
        gb = PacedTrainer(Trainer(nano, glassbox_config(a.tput_steps + a.chunk, batch_size=batch, optimizer=optimizer,
                                                        extra={"cache_dir": str(a.cache_dir)} if a.cache_dir else {}),
                                  split), a.chunk)
        ch = gb.start_event["choices"]
        plain.advance(a.chunk), gb.advance()  # warm-up chunk each
        t_plain, t_gb = [], []
        for _ in range(a.tput_steps // a.chunk):
            t_plain.append(plain.advance(a.chunk))
            t_gb.append(gb.advance())
        gb.finish()
        tps_plain = plain.tokens_per_step * a.chunk * len(t_plain) / sum(t_plain)
        tps_gb = gb.tr.tokens_per_step * a.chunk * len(t_gb) / sum(t_gb)
        r = {"optimizer": optimizer, "batch": batch, "choice": ch["summary"], "probe_timings": ch["timings"],
             "cached": ch["cached"], "tokens_per_s_plain": round(tps_plain), "tokens_per_s_glassbox": round(tps_gb),
             "speedup": round(tps_gb / tps_plain, 3),
             "chunk_speedup_median": round(statistics.median(p / g * batch / 12 for p, g in zip(t_plain, t_gb)), 3)}
        print(json.dumps({"progress": r}), file=sys.stderr, flush=True)
        return r

    if not a.skip_tput:
        out["tput"] = [tput("muon", 12), tput("adamw", 12), tput("muon", GLASSBOX_CPU_RECIPE["batch_size"])]
        out["speedup_tokens_per_s"] = out["tput"][0]["speedup"]
        out["probe"] = {"dtype": "float32" if out["tput"][0]["choice"].startswith("fp32") else "bfloat16",
                        "choice": out["tput"][0]["choice"]}

    # 2. val loss after `steps`: Glassbox's default recipe vs nanoGPT's, interleaved
    if not a.skip_loss:
        plain = PlainLoop(nano, split.train, a.steps, a.seed)
        gcfg = glassbox_config(a.steps, extra={"cache_dir": str(a.cache_dir)} if a.cache_dir else {})
        gmodel = nano.replace(**GLASSBOX_CPU_MODEL) if GLASSBOX_CPU_MODEL else nano
        gb = PacedTrainer(Trainer(gmodel, gcfg, split), a.eval_every)
        curve_plain, curve_gb = [], []
        wall_plain, wall_gb = 0.0, gb.setup_s
        while plain.step < a.steps:
            wall_plain += plain.advance(a.eval_every)
            wall_gb += gb.advance()
            curve_plain.append((plain.step, wall_plain, val_loss(plain.model, val_batches)))
            curve_gb.append((gb.tr.step, wall_gb, val_loss(gb.tr.raw_model, val_batches)))
            print(json.dumps({"progress": [curve_plain[-1], curve_gb[-1]]}), file=sys.stderr, flush=True)
        gb.finish()
        gb_tokens = gb.tr.tokens_per_step * gb.tr.step
        out.update(tokens_per_s_nanogpt_recipe=round(plain.tokens_per_step * plain.step / wall_plain),
                   tokens_per_s_glassbox_recipe=round(gb_tokens / (wall_gb - gb.setup_s)))
        target = curve_plain[-1][2]
        reach = next(((s, w) for s, w, v in curve_gb if v <= target), None)
        out.update(val_loss_nanogpt=round(target, 4), val_loss_glassbox=round(curve_gb[-1][2], 4),
                   wall_s_nanogpt=round(wall_plain, 1), wall_s_glassbox=round(wall_gb, 1),
                   glassbox_setup_s=round(gb.setup_s, 2),
                   glassbox_step_reaching_nanogpt_loss=reach[0] if reach else None,
                   time_to_nanogpt_loss_speedup=round(wall_plain / reach[1], 3) if reach else None,
                   curve_nanogpt=[[s, round(w, 1), round(v, 4)] for s, w, v in curve_plain],
                   curve_glassbox=[[s, round(w, 1), round(v, 4)] for s, w, v in curve_gb])

    # 3. tokens/s with the app's event sinks attached vs headless (same probed path), alternated
    if not a.skip_sinks:
        sink_file = open(os.devnull, "w")
        history: list = []

        def app_sink(ev: dict) -> None:  # what the job manager does with each event: a JSON line, a list
            sink_file.write(json.dumps(ev, default=str) + "\n")
            sink_file.flush()
            history.append(ev)

        fixed = glassbox_config(a.sink_steps, batch_size=12, optimizer="adamw", dtype="float32",
                                log_interval=1)  # no probe
        times = {"headless": [], "sinks": []}
        for _ in range(5):
            for mode in ("headless", "sinks"):
                # wall time of the loop from the first step to the last, sink calls included; a
                # headless run carries only a clock (reading the time at the first and last step)
                marks: dict = {}

                def clock(ev: dict, marks=marks) -> None:
                    if ev["kind"] == "step" and ev["step"] in (1, a.sink_steps):
                        marks[ev["step"]] = time.perf_counter()

                tr = Trainer(nano, fixed, split)
                if mode == "sinks":
                    tr.add_sink(app_sink)
                tr.add_sink(clock)
                tr.run()
                times[mode].append(marks[a.sink_steps] - marks[1])
        sink_file.close()
        out["sinks_vs_headless_tokens_per_s"] = round(statistics.median(times["headless"]) /
                                                      statistics.median(times["sinks"]), 3)
    fast = out["machine"]["bf16_fast"]
    want = 1.6 if fast else 1.0
    out["targets"] = {}
    if "speedup_tokens_per_s" in out:
        out["targets"][f"speedup_tokens_per_s>={want}"] = out["speedup_tokens_per_s"] >= want
    if "val_loss_glassbox" in out:
        out["targets"]["time_to_nanogpt_loss_speedup>=2.5"] = (out["time_to_nanogpt_loss_speedup"] or 0) >= 2.5
    if "sinks_vs_headless_tokens_per_s" in out:
        out["targets"]["sinks_vs_headless>=0.95"] = out["sinks_vs_headless_tokens_per_s"] >= 0.95
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
