"""GPU training bench: GPT-2 124M MFU and the tiny model's torch.compile speedup, one JSON line.

Runs `core.train.Trainer` (the app's own loop: bf16 autocast, flash SDPA, fused AdamW) on
random tokens (no download; the GPU box may be offline):
- GPT-2 small (12 layers, 768 wide, block 1024, vocab padded to 50304) compiled: tokens/s and
  MFU against the device's dense bf16 peak (`core.device.peak_flops`); target ≥ 45% on H100;
- the nano model (4 layers, 128 wide, block 64, batch 64): eager vs compiled vs compiled with
  CUDA graphs (mode reduce-overhead), tokens/s interleaved over repeats.

Usage: python bench/train_gpu.py [--quick]. Without CUDA it prints a JSON note and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.config import TrainConfig, preset  # noqa: E402
from core.data import TokenSplit  # noqa: E402
from core.device import peak_flops  # noqa: E402
from core.train import Trainer  # noqa: E402


def random_split(vocab: int, n: int = 2_000_000) -> TokenSplit:
    g = torch.Generator().manual_seed(0)
    return TokenSplit(train=torch.randint(0, vocab, (n,), generator=g),
                      val=torch.randint(0, vocab, (n // 10,), generator=g))


def timed_run(mcfg, split, steps: int, skip: int, **train) -> dict:
    """Run the Trainer; median tokens/s and MFU over the steps after `skip` (compile warm-up)."""
    cfg = TrainConfig(steps=steps, eval_interval=0, eval_batches=1, ckpt_interval=0, sample_tokens=0,
                      log_interval=1, device="cuda", dtype="bfloat16", warmup_steps=10, **train)
    events: list[dict] = []
    final = Trainer(mcfg, cfg, split, on_event=events.append).run()
    if final["kind"] != "done":
        return {"failed": final.get("reason")}
    steps_ev = [e for e in events if e["kind"] == "step"][skip:]
    tps = statistics.median(e["tokens_per_s"] for e in steps_ev)
    mfu = [e["mfu"] for e in steps_ev if e["mfu"] is not None]
    return {"tokens_per_s": round(tps), "mfu": round(statistics.median(mfu), 4) if mfu else None,
            "final_loss": round(steps_ev[-1]["loss"], 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--gpt2-batch", type=int, default=16)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "train_gpu", "skipped": "no CUDA device on this machine"}), flush=True)
        return 0
    dev = torch.device("cuda")
    out: dict = {"bench": "train_gpu", "device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
                 "peak_bf16_flops": peak_flops(dev)}

    gpt2 = preset("gpt2", vocab_size=50304)  # 50257 padded to a multiple of 64 for the tensor cores
    steps = 20 if a.quick else 50
    res = timed_run(gpt2, random_split(50304), steps, skip=10, batch_size=a.gpt2_batch, compile=True)
    out["gpt2_124m"] = {"batch": a.gpt2_batch, "block": 1024, "compiled": True, **res}

    nano = preset("nano", vocab_size=65)
    split = random_split(65, 500_000)
    n = 60 if a.quick else 300
    modes = {"eager": dict(compile=False), "compiled": dict(compile=True),
             "compiled_cudagraphs": dict(compile=True, extra={"compile_mode": "reduce-overhead"})}
    tps = {k: [] for k in modes}
    for _ in range(1 if a.quick else 2):  # interleaved repeats
        for k, kw in modes.items():
            tps[k].append(timed_run(nano, split, n, skip=n // 3, batch_size=64, **kw)["tokens_per_s"])
    med = {k: statistics.median(v) for k, v in tps.items()}
    out["nano"] = {"batch": 64, "block": 64, "tokens_per_s": med,
                   "compile_speedup": round(med["compiled"] / med["eager"], 3),
                   "cudagraphs_speedup": round(med["compiled_cudagraphs"] / med["eager"], 3)}
    mfu = out["gpt2_124m"].get("mfu")
    out["targets"] = {"gpt2_mfu>=0.45": bool(mfu is not None and mfu >= 0.45)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
