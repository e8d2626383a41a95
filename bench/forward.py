"""Forward-pass benchmark: one JSON line of ratios measured in one run.

- SDPA (fast) path vs inspection path (explicit softmax, full trace) at T = 64 and 256
- KV-cache generation vs recompute-every-step generation (256 new tokens, greedy)
- load time of a GPT-2-124M-sized Glassbox checkpoint (random weights, saved to a temp dir)

Usage: python bench/forward.py [--preset gpt2] [--threads N] [--reps 5]
Random weights are fine: speed does not depend on what the weights say.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import checkpoint  # noqa: E402
from core.config import preset  # noqa: E402
from core.generate import generate  # noqa: E402
from core.model import GPT  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=256)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = preset(a.preset)
    model = GPT(cfg).eval()
    out: dict = {"bench": "forward", "preset": a.preset, "params": cfg.n_params(), "threads": torch.get_num_threads()}

    with torch.no_grad():
        for T in (64, 256):
            idx = torch.randint(0, cfg.vocab_size, (1, T))
            model(idx), model.trace(idx, keep="*")  # warm up
            fast, insp = [], []
            for _ in range(a.reps):  # interleaved so drift hits both alike
                fast.append(timed(lambda: model(idx)))
                insp.append(timed(lambda: model.trace(idx, keep="*")))
            f, i = statistics.median(fast), statistics.median(insp)
            out[f"T{T}_sdpa_ms"] = round(f * 1e3, 2)
            out[f"T{T}_inspect_ms"] = round(i * 1e3, 2)
            out[f"T{T}_inspect_over_sdpa"] = round(i / f, 3)

    prompt = torch.randint(0, cfg.vocab_size, (8,)).tolist()
    n = a.new_tokens
    generate(model, prompt, 4, greedy=True)  # warm up
    t_cache = timed(lambda: generate(model, prompt, n, greedy=True, use_cache=True))
    t_nocache = timed(lambda: generate(model, prompt, n, greedy=True, use_cache=False))
    same = generate(model, prompt, 32, greedy=True, use_cache=True) == generate(model, prompt, 32, greedy=True, use_cache=False)
    out.update(new_tokens=n, kv_cache_tokens_per_s=round(n / t_cache, 1), recompute_tokens_per_s=round(n / t_nocache, 1),
               kv_cache_speedup=round(t_nocache / t_cache, 2), kv_cache_same_tokens=same)

    with tempfile.TemporaryDirectory() as d:
        path = checkpoint.save(Path(d) / "ck", model, None, {})
        size = (path / "model.safetensors").stat().st_size
        loads = [timed(lambda: checkpoint.load(path)) for _ in range(3)]
    out.update(checkpoint_mb=round(size / 1e6, 1), load_s=round(min(loads), 3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
