"""Attention-tab benchmark: one JSON line of ratios and payload sizes measured in one run.

For T = 64, 256, 1024 tokens on a GPT-2-124M-shaped model (random weights: speed and size
do not depend on what the weights say):
- forward_s: the inspection forward pass the tab runs (`model.trace` keeping what
  `core.inspect.attention.view_keep` names: every pattern, the residual stream, q/k/v/z)
- build_s: everything the tab does after it — pooling, statistics, the aggregation
  (rollout, the costliest), the equation, the logit lens, every figure and table, and
  serialising the figures to JSON as Gradio does
- induction_once_s: the induction scores' own small pass (a repeated random sequence of
  100 tokens), made once per model and then kept (`InductionCache`), as the app does
- ratio = build_s / forward_s (target ≤ 1.0 at T = 1024), for the grid view and for the
  one-head view; and the bytes on the wire of the grid figure (budget 2 MB), of the
  focused head (budget 1.5 MB) and of all the figures of one response, at each T.

Usage: python bench/attention_view.py [--preset gpt2] [--threads N] [--reps 3] [--lengths 64,256,1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.figures.attention import payload_bytes  # noqa: E402
from app.tabs.attention import InductionCache, render_view  # noqa: E402
from core.config import preset  # noqa: E402
from core.inspect import attention as A  # noqa: E402
from core.model import GPT  # noqa: E402


class LabelTokenizer:
    """Stands in for GPT-2's tokenizer (not downloaded): labels only."""
    eot_id = None

    def display(self, i: int) -> str:
        return f"t{i}"


def serialise(result: dict) -> dict[str, int]:
    """Bytes on the wire per figure (`payload_bytes`: the figure's JSON, sent as a JSON string)."""
    return {k: payload_bytes(v) for k, v in result.items() if hasattr(v, "to_json")}


def one_view(model, tok, prep, view: str, induction: InductionCache) -> tuple[float, float, dict[str, int]]:
    """(forward seconds, build seconds, figure sizes) for one view of the tab."""
    layer, head = model.config.n_layer // 2, 0
    with torch.no_grad():
        idx = torch.tensor([prep.ids])
        t0 = time.perf_counter()
        tr = model.trace(idx, keep=A.view_keep(layer))
        t1 = time.perf_counter()
        r = render_view(model, tok, prep, "bench", layer, head, -1, view, "rollout",
                        "entropy" if view == "grid" else "none", trace=tr, induction=induction)
        sizes = serialise(r)
        json.dumps(r["data"])
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, sizes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lengths", default="64,256,1024")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = preset(a.preset)
    model = GPT(cfg).eval()
    tok = LabelTokenizer()
    induction = InductionCache()  # as in the app: measured once per model, then reused
    t0 = time.perf_counter()
    induction.get(model)
    induction_s = time.perf_counter() - t0
    out: dict = {"bench": "attention_view", "preset": a.preset, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                 "threads": torch.get_num_threads(), "induction_once_s": round(induction_s, 3)}
    for T in (int(x) for x in a.lengths.split(",")):
        ids = torch.randint(0, cfg.vocab_size, (T,)).tolist()
        prep = A.PreparedText(ids=ids, labels=[tok.display(i) for i in ids], n_total=T)
        one_view(model, tok, prep, "grid", induction)  # warm up
        for view in ("grid", "head"):
            runs = [one_view(model, tok, prep, view, induction) for _ in range(a.reps)]
            fwd = statistics.median(r[0] for r in runs)
            build = statistics.median(r[1] for r in runs)
            sizes = runs[-1][2]
            out[f"T{T}_{view}_forward_s"] = round(fwd, 3)
            out[f"T{T}_{view}_build_s"] = round(build, 3)
            out[f"T{T}_{view}_ratio"] = round(build / fwd, 3)
            out[f"T{T}_{'grid' if view == 'grid' else 'focus'}_bytes"] = sizes["main"]
            if view == "grid":
                out[f"T{T}_all_figures_bytes"] = sum(sizes.values())
    out["target_ratio_T1024"] = 1.0
    out["grid_budget_bytes"], out["focus_budget_bytes"] = 2_000_000, 1_500_000
    print(json.dumps(out))


if __name__ == "__main__":
    main()
