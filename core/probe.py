"""The training compute path, chosen by measurement on the machine the run is on.

Owns: the candidates for a CPU training step (forward/backward dtype × attention kernel ×
the dtype of Muon's orthogonalisation), `probe_cpu` (times whole training steps of a
throwaway model on each and answers the fastest, the plain path unless a trick is clearly
faster; where float32 orthogonalisation wins, times its Gram form against it on the model's
matrix shapes, since that saving is too small to show in a whole step's noise), `choose_path` (explicit settings win; a resumed run keeps the path it was saved
with; a CPU run takes the cached answer for this machine and shape, or probes now), and the
one-line summary the CLI and the Train tab show. Does not own: the cache itself
(`core.machine.cached_choice`), autocast and SDPA pinning (`core.device`), the optimizers
(`core.optim`).

The plain path is fp32, torch's default SDPA kernel and fp32 orthogonalisation. Where a
bf16 matmul is far slower than fp32 (AVX2-only CPUs) bf16 candidates are not timed at all:
a single bf16 step there costs more than the whole probe may.
"""

from __future__ import annotations

import math
import time

import torch

from .config import GPTConfig, TrainConfig, lr_at
from .device import SDPA_BACKENDS, autocast, pick_dtype
from .machine import bf16_matmul_ratio, cached_choice
from .optim import ORTHO_DTYPES, build_optimizers, orthogonalise

# (dtype, SDPA backend) of the forward/backward; None is torch's own kernel choice
CPU_CANDIDATES = (("float32", None), ("float32", "math"), ("bfloat16", "math"), ("bfloat16", "flash"))
PLAIN = {"dtype": "float32", "sdpa": None, "ortho": "float32"}
CLEARLY_FASTER = 1.1  # a trick must beat the plain path by this factor to be chosen
BF16_SLOW_RATIO = 2.0  # bf16 matmul this many times slower than fp32: bf16 candidates are skipped
PROBE_BUDGET_S = 2.0
ASSUMED_FLOPS = 50e9  # a generous CPU's FLOP/s: a model whose steps would blow the budget even there is not probed
PROBE_VERSION = 3  # part of the cache key: a changed probe measures again
GRAM_TOLERANCE = 1e-4  # the Gram form must give the float32 iteration's numbers to this (relative to its largest)


def _key(dtype: str, sdpa: str | None, ortho: str | None) -> str:
    return f"{dtype}/{sdpa or 'default'}/{ortho or '-'}"


def candidates(optimizer: str, bf16_ok: bool, sdpa: str | None = None, ortho: str | None = None) -> list[tuple]:
    """(dtype, sdpa, ortho) to time, the plain path first; `sdpa`/`ortho` pin that part."""
    orthos = [ortho] if ortho else (["float32", "bfloat16"] if bf16_ok else ["float32"])
    out = []
    for dtype, kernel in CPU_CANDIDATES:
        if sdpa is not None and kernel != sdpa:
            continue
        if dtype == "bfloat16" and not bf16_ok:
            continue
        for o in (orthos if optimizer == "muon" else [None]):
            if (dtype, kernel, o) not in out:
                out.append((dtype, kernel, o))
    if sdpa is not None and not out:
        out.append(("float32", sdpa, orthos[0] if optimizer == "muon" else None))
    return out


def _bf16_ratio_at(rows: int, width: int) -> float:
    """bf16 / fp32 time of an MLP-shaped (≤ 64 rows × C) @ (C × 4C) product, alternated, best of three."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(min(rows, 64), width, generator=g), torch.randn(width, 4 * width, generator=g)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    best = {dt: math.inf for dt in pairs}
    for i in range(4):  # the first round warms up
        for dt, (x, y) in pairs.items():
            t0 = time.perf_counter()
            x @ y
            if i:
                best[dt] = min(best[dt], time.perf_counter() - t0)
        if i and best[torch.bfloat16] > 2 * BF16_SLOW_RATIO * best[torch.float32]:
            break  # far slower already: more rounds cannot change the answer
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


def _ortho_form(shapes: list[tuple[int, int]], group: dict, budget_s: float) -> tuple[str, dict]:
    """'gram' where the Gram form of Muon's float32 orthogonalisation is ≥ CLEARLY_FASTER× the
    plain iteration on this model's matrix shapes and gives its numbers; else 'float32'.

    Times both over every shape (random matrices, a fixed seed), alternated, best of three."""
    args = (group["ns_coefficients"], group["ns_steps"], group["eps"])
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(*s, generator=g) for s in shapes]
    best = {"float32": math.inf, "gram": math.inf}
    t_begin = time.perf_counter()
    for i in range(4):  # the first round warms up and compares
        for form in best:
            t0 = time.perf_counter()
            outs = [orthogonalise(m, *args, form) for m in mats]
            if i:
                best[form] = min(best[form], time.perf_counter() - t0)
            elif form == "float32":
                ref = outs
            else:
                err = max(float((o - r).abs().max() / r.abs().max().clamp(min=1e-12)) for o, r in zip(outs, ref))
                if not err <= GRAM_TOLERANCE:
                    return "float32", {"gram": f"skipped: differs from the float32 iteration by {err:.1e}"}
        if time.perf_counter() - t_begin > budget_s:
            break
    timings = {f"ortho {form}": round(t, 5) for form, t in best.items()}
    faster = best["float32"] / max(best["gram"], 1e-9) >= CLEARLY_FASTER
    return ("gram" if faster else "float32"), timings


def probe_cpu(model_config: GPTConfig, train_config: TrainConfig, batch_size: int, *,
              budget_s: float = PROBE_BUDGET_S, sdpa: str | None = None, ortho: str | None = None,
              bf16_ratio: float | None = None) -> dict:
    """Time whole training steps (forward, backward, clipping, the optimizers' step) of a
    throwaway model on this CPU for each candidate path; return the choice and the timings.

    Each candidate gets one warm-up step, then timed steps in interleaved passes while the
    budget lasts; the best time of each is kept, so a busy machine's noise mostly cancels. A
    candidate whose warm-up already took twice the plain path's is not timed further. The
    plain path wins unless a trick is ≥ CLEARLY_FASTER× faster. The global RNG is untouched.

    Returns {"dtype", "sdpa", "ortho", "timings": {path: seconds or "skipped: why"}}."""
    from .model import GPT

    ratio = bf16_matmul_ratio() if bf16_ratio is None else bf16_ratio
    if bf16_ratio is None and ratio < BF16_SLOW_RATIO:  # confirm at this model's shape, interleaved
        ratio = max(ratio, _bf16_ratio_at(batch_size * model_config.block_size, model_config.n_embd))
    bf16_ok = ratio < BF16_SLOW_RATIO
    cands = candidates(train_config.optimizer, bf16_ok, sdpa, ortho)
    timings: dict[str, float | str] = {}
    if not bf16_ok:
        timings["bfloat16"] = f"skipped: a bf16 matmul is {ratio:.0f}x slower than fp32 here"
    est = model_config.flops_per_token() * batch_size * model_config.block_size / ASSUMED_FLOPS
    if est * 4 > budget_s:
        timings["all"] = f"skipped: a step of this model takes about {est:.1f} s, too long to probe in {budget_s} s"
    if len(cands) == 1 or est * 4 > budget_s:
        d, k, o = cands[0]
        return {"dtype": d, "sdpa": k, "ortho": o or PLAIN["ortho"], "timings": timings}
    best: dict[tuple, float] = {}
    warm: dict[tuple, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT(model_config)
        opts = build_optimizers(model, train_config)
        hidden = [p for opt in opts if hasattr(opt, "ortho_dtype") for p in opt.param_groups[0]["params"]]
        for g in (g for opt in opts for g in opt.param_groups):
            g["lr"] = lr_at(0, train_config)
        idx = torch.randint(0, model_config.vocab_size, (batch_size, model_config.block_size))
        # the clock starts after the optimizers exist: building the first one imports torch._dynamo,
        # a one-time cost the run pays anyway
        t_begin = time.perf_counter()

        def step(dtype: str, kernel: str | None, o: str | None) -> float:
            for opt in opts:
                if hasattr(opt, "ortho_dtype") and o:
                    opt.ortho_dtype = o
            t0 = time.perf_counter()
            with autocast(torch.device("cpu"), pick_dtype(torch.device("cpu"), dtype), kernel):
                _, loss = model(idx, idx)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        plain = cands[0]
        for p in range(3):  # pass 0 warms each candidate up, passes 1 and 2 time it
            for c in cands:
                spent = time.perf_counter() - t_begin
                if p == 0:
                    if c != plain and (spent > budget_s / 2 or spent + warm[plain] > budget_s):
                        continue  # a slow warm-up leaves no time to compare: the plain path it is
                else:
                    if c not in warm or (c != plain and warm[c] > 2 * warm[plain]):
                        continue  # not warmed up, or far slower even allowing for warm-up costs
                    if spent + best.get(c, warm[c]) > budget_s or len(warm) == 1:
                        continue
                t = step(*c)
                if p == 0:
                    warm[c] = t
                else:
                    best[c] = min(best.get(c, math.inf), t)
    for c in cands:
        if c in best:
            timings[_key(*c)] = round(best[c], 5)
        else:
            timings[_key(*c)] = f"warm-up only: {warm[c]:.3f} s" if c in warm else "skipped: over the probe's budget"
    choice = plain
    if plain in best:
        fastest = min(best, key=best.__getitem__)
        if best[plain] / best[fastest] >= CLEARLY_FASTER:
            choice = fastest
    d, k, o = choice
    if o == "float32" and ortho is None and hidden and time.perf_counter() - t_begin < budget_s:
        group = next(opt for opt in opts if hasattr(opt, "ortho_dtype")).param_groups[0]
        o, ortho_timings = _ortho_form(sorted({tuple(p.shape) for p in hidden}), group,
                                       budget_s - (time.perf_counter() - t_begin))
        timings.update(ortho_timings)
    return {"dtype": d, "sdpa": k, "ortho": o or PLAIN["ortho"], "timings": timings,
            "probe_s": round(time.perf_counter() - t_begin, 3)}


def summary(dtype: str, sdpa: str | None, ortho: str | None, optimizer: str) -> str:
    """'fp32 · Muon (fp32 orthogonalisation) · math attention' and the like."""
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "gram": "fp32 Gram"}
    opt = f"Muon ({short.get(ortho, ortho)} orthogonalisation)" if optimizer == "muon" else "AdamW"
    attn = f"{sdpa} attention" if sdpa else "default attention"
    dt = short.get(dtype, dtype) if dtype == "float32" else f"{short.get(dtype, dtype)} autocast"
    return f"{dt} · {opt} · {attn}"


def choose_path(device: torch.device, model_config: GPTConfig, train_config: TrainConfig,
                saved: dict | None = None, batch_size: int | None = None, cache_dir=None) -> dict:
    """The compute path of a run, with why: {"dtype", "sdpa", "ortho", "timings", "cached",
    "measured_at", "summary", "source"}.

    Explicit settings (`dtype`, extra `sdpa` / `ortho`) win; a resumed run (`saved`: the
    checkpoint's placement, same device kind) keeps its path so it continues bit for bit;
    a CPU run with dtype 'auto' takes this machine's cached measurement for the shape, or
    probes now (`probe_cpu`) and caches it in `cache_dir` (default: `GLASSBOX_CACHE_DIR`)."""
    cfg = train_config
    sdpa = cfg.extra.get("sdpa", "auto")
    if sdpa not in ("auto", *SDPA_BACKENDS):
        raise ValueError(f"sdpa={sdpa!r} is not one of auto, {', '.join(SDPA_BACKENDS)}")
    ortho = cfg.extra.get("ortho", "auto")
    if ortho not in ("auto", *ORTHO_DTYPES):
        raise ValueError(f"ortho={ortho!r} is not one of auto, {', '.join(ORTHO_DTYPES)}")
    sdpa_pin = None if sdpa == "auto" else sdpa
    ortho_pin = None if ortho == "auto" else ortho
    timings: dict = {}
    cached, measured_at = False, None
    if saved and saved.get("device") == device.type:
        source = "resumed"
        dtype = saved["dtype"] if cfg.dtype == "auto" else cfg.dtype
        sdpa_name = saved.get("sdpa") if sdpa_pin is None else sdpa_pin
        # a checkpoint saved before the choice existed was written by torch's Muon: bf16
        ortho_name = ortho_pin or saved.get("ortho") or "bfloat16"
    elif cfg.dtype == "auto" and device.type == "cpu":
        batch = batch_size or cfg.batch_size
        key = {"probe": PROBE_VERSION, "model": model_config.to_dict(), "batch": batch, "optimizer": cfg.optimizer,
               "device": device.type, "sdpa": sdpa_pin, "ortho": ortho_pin}
        choice, info = cached_choice("train", key, lambda: probe_cpu(model_config, cfg, batch, sdpa=sdpa_pin,
                                                                     ortho=ortho_pin), cache_dir=cache_dir)
        source = "cached" if info["cached"] else "measured"
        dtype, sdpa_name, ortho_name = choice["dtype"], choice["sdpa"], choice["ortho"]
        timings, cached, measured_at = choice.get("timings", {}), info["cached"], info["measured_at"]
    else:
        source = "settings" if cfg.dtype != "auto" else "device"
        dtype = str(pick_dtype(device, cfg.dtype)).removeprefix("torch.")
        sdpa_name = sdpa_pin
        # GPUs have fast bf16 (torch's own choice); elsewhere the plain fp32
        ortho_name = ortho_pin or ("bfloat16" if device.type == "cuda" else PLAIN["ortho"])
    return {"dtype": dtype, "sdpa": sdpa_name, "ortho": ortho_name, "timings": timings, "cached": cached,
            "measured_at": measured_at, "source": source,
            "summary": summary(dtype, sdpa_name, ortho_name, cfg.optimizer)}
