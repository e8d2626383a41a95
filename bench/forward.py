"""Forward-pass benchmark: one JSON line of ratios measured in one run.

- SDPA (fast) path vs inspection path (explicit softmax, full trace) at T = 64 and 256
- KV-cache generation vs recompute-every-step generation (256 new tokens, greedy)
- load time of a GPT-2-124M-sized Glassbox checkpoint (random weights, saved to a temp dir)
- the inference fast path's measured kernel choice (core.fastpath) vs plain nn.Linear, and vs
  each kernel everywhere, for a one-token cached step and a 64-token prompt

Usage: python bench/forward.py [--preset gpt2] [--threads N] [--reps 5] [--parts sdpa,cache,kernels,load]
The JSON line says which machine it ran on (`core.machine.describe()`).
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

from core import checkpoint, fastpath, machine  # noqa: E402
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
    ap.add_argument("--parts", default="sdpa,cache,kernels,load", help="which comparisons to run (comma-separated)")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = preset(a.preset)
    model = GPT(cfg).eval()
    out: dict = {"bench": "forward", "preset": a.preset, "params": cfg.n_params(), "machine": machine.describe()}
    t0 = time.perf_counter()
    plan = fastpath.choose(model)
    out["inference_choice"] = {"kinds": plan["choice"]["kinds"], "cached": plan["cached"],
                               "choose_s": round(time.perf_counter() - t0, 3)}

    if "sdpa" in parts:
        out.update(sdpa_vs_inspection(model, cfg, a.reps))
    if "cache" in parts:
        out.update(cache_vs_recompute(model, cfg, a.new_tokens))
    if "kernels" in parts:
        out.update(kernels(model, cfg, a.reps))
    if "load" in parts:
        with tempfile.TemporaryDirectory() as d:
            path = checkpoint.save(Path(d) / "ck", model, None, {})
            size = (path / "model.safetensors").stat().st_size
            loads = [timed(lambda: checkpoint.load(path)) for _ in range(3)]
        out.update(checkpoint_mb=round(size / 1e6, 1), load_s=round(min(loads), 3))
    print(json.dumps(out))


def sdpa_vs_inspection(model, cfg, reps: int) -> dict:
    out = {}
    with torch.no_grad():
        for T in [t for t in (64, 256) if t <= cfg.block_size]:
            idx = torch.randint(0, cfg.vocab_size, (1, T))
            model(idx), model.trace(idx, keep="*")  # warm up
            fast, insp = [], []
            for _ in range(reps):  # interleaved so drift hits both alike
                fast.append(timed(lambda: model(idx)))
                insp.append(timed(lambda: model.trace(idx, keep="*")))
            f, i = statistics.median(fast), statistics.median(insp)
            out[f"T{T}_sdpa_ms"] = round(f * 1e3, 2)
            out[f"T{T}_inspect_ms"] = round(i * 1e3, 2)
            out[f"T{T}_inspect_over_sdpa"] = round(i / f, 3)
    return out


def cache_vs_recompute(model, cfg, n: int) -> dict:
    prompt = torch.randint(0, cfg.vocab_size, (8,)).tolist()
    generate(model, prompt, 4, greedy=True)  # warm up
    t_cache = timed(lambda: generate(model, prompt, n, greedy=True, use_cache=True))
    t_nocache = timed(lambda: generate(model, prompt, n, greedy=True, use_cache=False))
    same = generate(model, prompt, 32, greedy=True, use_cache=True) == generate(model, prompt, 32, greedy=True, use_cache=False)
    return {"new_tokens": n, "kv_cache_tokens_per_s": round(n / t_cache, 1),
            "recompute_tokens_per_s": round(n / t_nocache, 1), "kv_cache_speedup": round(t_nocache / t_cache, 2),
            "kv_cache_same_tokens": same}


def kernels(model, cfg, reps: int) -> dict:
    """ms of a one-token cached step (after 64 tokens of context) and of a 64-token prompt, with
    the measured choice, plain nn.Linear and each kernel everywhere, interleaved."""
    measured = model.inference_plan
    ways = {"chosen": measured, **{k: None for k in fastpath.available_kinds()}}
    prompt = torch.randint(0, cfg.vocab_size, (1, 64))
    times: dict = {(w, t): [] for w in ways for t in ("step", "prompt")}
    with torch.no_grad():
        for rep in range(reps + 1):  # the first round builds the copies
            for w, plan in ways.items():
                if plan is None:
                    fastpath.fixed_plan(model, w)
                else:
                    model.__dict__["inference_plan"] = plan
                cache = model.new_kv_cache(1, 64 + 8)
                model(prompt, kv_cache=cache)
                t_step = timed(lambda: [model(prompt[:, i:i + 1], kv_cache=cache) for i in range(8)]) / 8
                t_prompt = timed(lambda: model(prompt))
                if rep:
                    times[w, "step"].append(t_step)
                    times[w, "prompt"].append(t_prompt)
                if w != "chosen":
                    model.clear_decode_cache()  # one kind of copy at a time
    model.__dict__["inference_plan"] = measured
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {f"{t}_ms_{w}": round(med[w, t] * 1e3, 2) for w in ways for t in ("step", "prompt")}
    for t in ("step", "prompt"):
        out[f"{t}_chosen_speedup_vs_linear"] = round(med["linear", t] / med["chosen", t], 2)
    return out


if __name__ == "__main__":
    main()
