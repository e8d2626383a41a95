"""Embeddings benchmark: one JSON line of ratios measured in one run.

The full-vocabulary PCA figure for a GPT-2-sized token embedding matrix (50,257 × 768):
- build time (PCA + `app.figures.embeddings.token_map` + the JSON Gradio sends) as a
  ratio to one `torch.linalg.svd` of the same matrix (target ≤ 2×);
- the figure's JSON size (`fig.to_json()`, target ≤ 3 MB) in 2-D and 3-D, and the size
  of what Gradio's `gr.Plot` puts on the wire (the JSON again, as a string);
- the one-off analysis the tab caches per model (classes, recall@10 on 1,000 queries),
  reported in seconds, not part of the figure build.

Usage: python bench/embeddings.py [--vocab 50257] [--dim 768] [--threads N] [--reps 3]
The matrix is random with a planted low-rank structure (speed does not depend on the
values); the labels are made-up GPT-2-like tokens (words with and without a leading
space, digits, punctuation, lone bytes), so hover text weighs what it would for GPT-2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.figures import embeddings as figs  # noqa: E402
from core.inspect import embeddings as emb  # noqa: E402
from core.tokenizer import display_bytes  # noqa: E402


def fake_vocab(V: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """GPT-2-like labels (about 6-7 bytes a token, as in GPT-2) and their classes."""
    g = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    seen, toks = set(), [bytes([b]) for b in range(256)]
    seen.update(toks)
    while len(toks) < V:
        r = g.random()
        if r < 0.85:
            w = "".join(g.choice(letters, size=int(g.integers(2, 10))))
            w = (" " + w) if g.random() < 0.6 else w.capitalize() if g.random() < 0.2 else w
        elif r < 0.92:
            w = str(int(g.integers(0, 10 ** int(g.integers(1, 4)))))
        else:
            w = "".join(g.choice(list(".,;:!?'\"()-[]{}"), size=int(g.integers(1, 4))))
        b = w.encode()
        if b not in seen:
            seen.add(b)
            toks.append(b)
    labels = [display_bytes(b) for b in toks]
    classes = np.array([emb.classify_token(b) for b in toks], dtype=np.int8)
    return labels, classes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    import gradio as gr

    torch.manual_seed(0)
    V, C = a.vocab, a.dim
    E = torch.randn(V, 64) @ torch.randn(64, C) * 0.05 + torch.randn(V, C) * 0.02  # (V, C)
    labels, classes = fake_vocab(V)
    out: dict = {"bench": "embeddings", "vocab": V, "dim": C, "threads": torch.get_num_threads()}

    def build(dims: int) -> tuple[str, object]:
        p = emb.pca(E, 3)
        fig = figs.token_map(p.coords, classes, labels, p.explained, dims=dims)
        return fig.to_json(), fig

    build(2)  # warm up (imports, allocator)
    svd, b2, b3, pca_t = [], [], [], []
    for _ in range(a.reps):  # interleaved so drift hits all alike
        t0 = time.perf_counter()
        torch.linalg.svd(E, full_matrices=False)
        svd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        emb.pca(E, 3)
        pca_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        j2, fig2 = build(2)
        b2.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        j3, _ = build(3)
        b3.append(time.perf_counter() - t0)
    s = statistics.median(svd)
    out["svd_s"] = round(s, 3)
    out["pca_s"] = round(statistics.median(pca_t), 3)
    out["figure_2d_s"] = round(statistics.median(b2), 3)
    out["figure_3d_s"] = round(statistics.median(b3), 3)
    out["ratio_figure_2d_vs_svd"] = round(statistics.median(b2) / s, 3)
    out["ratio_figure_3d_vs_svd"] = round(statistics.median(b3) / s, 3)
    out["json_2d_mb"] = round(len(j2.encode()) / 1e6, 3)
    out["json_3d_mb"] = round(len(j3.encode()) / 1e6, 3)
    wire = json.dumps(gr.Plot().postprocess(fig2).model_dump())
    out["gradio_wire_2d_mb"] = round(len(wire.encode()) / 1e6, 3)
    out["points_drawn"] = sum(len(t.customdata) for t in fig2.data)

    t0 = time.perf_counter()
    view_coords = emb.pca(E, 3).coords[:, :2]
    r = emb.neighbour_recall(E, view_coords, 10)
    out["recall10_s_once_per_model"] = round(time.perf_counter() - t0, 3)
    out["recall10"] = round(r.value, 4)
    out["targets_met"] = out["ratio_figure_3d_vs_svd"] <= 2 and out["json_3d_mb"] <= 3
    print(json.dumps(out))


if __name__ == "__main__":
    main()
