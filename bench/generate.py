"""Decoding benchmark: one JSON line of ratios measured in one run, on CPU.

- greedy tokens/s of `core.generate` vs Hugging Face `transformers` `generate` on the same
  GPT-2-124M-layout model (random weights saved locally with `save_pretrained`, loaded by
  both), 256 new tokens — target ≥ 1.3×;
- KV cache vs recompute-every-step at 512 tokens (a 448-token prompt + 64 new tokens,
  greedy) — target ≥ 5×.
Both pairs run interleaved (`--reps` times each) and the medians are compared, so drift on a
shared machine hits both alike. Random weights are fine: speed does not depend on them.

Usage: python bench/generate.py [--threads N] [--reps 3] [--new-tokens 256] [--parts greedy,cache]
Needs `transformers` (a dev dependency); nothing downloads. The JSON line says which machine
it ran on (`core.machine.describe()`) and which kernels the inference fast path chose there.
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

from core import checkpoint, fastpath, machine  # noqa: E402
from core.generate import generate  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--parts", default="greedy,cache", help="which comparisons to run (comma-separated)")
    a = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(bos_token_id=None, eos_token_id=None)  # GPT-2 124M layout, no end-of-text
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    parts = set(a.parts.split(","))
    out: dict = {"bench": "generate", "device": "cpu", "machine": machine.describe(),
                 "transformers": transformers.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
        ours = checkpoint.load(tmp).model.eval()
    out["params"] = sum(p.numel() for p in ours.parameters())
    t0 = time.perf_counter()
    plan = fastpath.choose(ours)
    out["inference_choice"] = {"kinds": plan["choice"].get("kinds"), "cached": plan["cached"],
                               "choose_s": round(time.perf_counter() - t0, 3)}

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (a.prompt_tokens,), generator=g).tolist()
    n = a.new_tokens
    mask = torch.ones(1, len(prompt), dtype=torch.long)

    def run_hf():
        with torch.inference_mode():
            return hf.generate(torch.tensor([prompt]), attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()

    def run_ours():
        return generate(ours, prompt, n, greedy=True)

    if "greedy" in parts:
        greedy(out, run_ours, run_hf, n, a.reps)
    if "cache" in parts:
        cache_vs_recompute(out, ours, cfg, g, a.reps)
    print(json.dumps(out))


def greedy(out: dict, run_ours, run_hf, n: int, reps: int) -> None:
    a_ids, b_ids = run_ours(), run_hf()  # warm up, and check both say the same thing
    out["greedy_same_tokens"] = a_ids == b_ids
    t_ours, t_hf = [], []
    for _ in range(reps):
        t_ours.append(timed(run_ours))
        t_hf.append(timed(run_hf))
    mo, mh = statistics.median(t_ours), statistics.median(t_hf)
    out.update(new_tokens=n, ours_tok_s=round(n / mo, 1), hf_tok_s=round(n / mh, 1),
               greedy_speedup_vs_hf=round(mh / mo, 2), greedy_target=1.3,
               greedy_speedup_per_rep=[round(h / o, 2) for o, h in zip(t_ours, t_hf)])


def cache_vs_recompute(out: dict, ours, cfg, g, reps: int) -> None:
    """KV cache vs recompute at 512 tokens."""
    total, new = 512, 64
    long_prompt = torch.randint(0, cfg.vocab_size, (total - new,), generator=g).tolist()
    cached = generate(ours, long_prompt, new, greedy=True, use_cache=True)
    recomputed = generate(ours, long_prompt, new, greedy=True, use_cache=False)
    out["cache_same_tokens"] = cached == recomputed
    t_c, t_r = [], []
    for _ in range(max(1, reps - 1)):
        t_c.append(timed(lambda: generate(ours, long_prompt, new, greedy=True, use_cache=True)))
        t_r.append(timed(lambda: generate(ours, long_prompt, new, greedy=True, use_cache=False)))
    mc, mr = statistics.median(t_c), statistics.median(t_r)
    out.update(cache_context=total, cache_new_tokens=new, cache_tok_s=round(new / mc, 1),
               recompute_tok_s=round(new / mr, 1), cache_speedup=round(mr / mc, 2), cache_target=5.0)


if __name__ == "__main__":
    main()
