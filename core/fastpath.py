"""The CPU inference fast path: which kernel runs each `nn.Linear` product, chosen by measurement.

Inference on CPU is bound by its matmuls, and a decode step by reading the weights. The same
float32 product can run three ways, and which is fastest depends on the CPU, the weight's
shape and the number of rows (1 for a decode step, a few for batched decoding, a prompt's
rows):

- "linear": `F.linear`, PyTorch's own call (MKL's sgemm on the (out, in) weight) — the plain
  path, and the fallback whenever a trick is not faster;
- "t": `addmm` on a cached transposed contiguous copy (in, out) of the weight;
- "onednn": oneDNN's linear on a cached copy it has reordered ("prepacked") for this CPU
  (`mkldnn._reorder_linear_weight` / `mkldnn._linear_pointwise`, the ops PyTorch's compiler
  uses when it freezes a model).

`plan(model, x)` measures the one-row bucket as a decode step runs it (one pass over all the
model's weights per kind) and each distinct weight shape at 4 and 64 rows on a sample of its
own weights, 1.5–3 s for GPT-2 124M (building the copies it times included) and a tenth of a
second for small models, once per machine and model shape, and picks per
shape and row bucket (1 | 2-8 | 9+); `core.machine.cached_choice` keeps the choice per machine and model shape,
so a second load starts without measuring. Same dtype, same math: only the summation order
inside the matmul differs, so the logits agree with `nn.Linear`'s to float rounding.

When the fast path applies (`plan` returns None otherwise): `GPT.forward`, `GPT.trace` and
`GPT.unembed` with no grad, in eval mode, on CPU, with float32 weights and no autocast, and
`model.decode_weight_cache` true. A Linear with hooks runs its own module call.

Copies are built on first use and kept while the parameter lives: at most one per weight (a
plan uses one kind of copy per shape), so memory stays within twice the weights; the output
head's weight is read from `lm_head.weight`, tied or not.
A copy is keyed on the parameter's version counter, storage pointer, dtype and shape, so an
optimizer step, `load_state_dict`, `copy_` or `.to()` makes it stale and it is rebuilt on next
use (in-place writes through `.data` bypass the version counter: call `clear(model)` after
those). Weights created in inference mode have no version counter: they take the plain path.

Does not own: the model's math (`core.model`), the cache file (`core.machine`).
"""

from __future__ import annotations

import threading
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import machine

KINDS = ("linear", "t", "onednn")
MEASURE_ROWS = (1, 4, 64)  # one per bucket: rows 1 | 2..8 | 9+
PACK_BATCH_HINT = 16  # oneDNN picks its packed layout for this many rows
SAMPLE_BYTES = (0, 40 << 20, 4 << 20)  # per bucket (the one-row bucket reads every weight)
MAX_ROUNDS = 12
MARGIN = 0.95  # a trick must be at least 5% faster than nn.Linear to be chosen
PLAN_VERSION = 2  # part of the cache key: bump when the measurement changes

# id(weight) -> (weakref to it, key, {kind: copy}); a plain dict keyed by id with a weakref
# that removes the entry is a few times cheaper per lookup than WeakIdKeyDictionary, and
# this runs for every matmul of a decode step.
_COPIES: dict[int, tuple] = {}
_ONEDNN: bool | None = None  # probed on first use
_LOCK = threading.Lock()


def onednn_ok() -> bool:
    """oneDNN's prepacked linear is present and gives nn.Linear's numbers on a small probe."""
    global _ONEDNN
    if _ONEDNN is None:
        _ONEDNN = False
        try:
            if not torch.backends.mkldnn.is_available():
                return False
            g = torch.Generator().manual_seed(0)
            w, b, x = torch.randn(24, 40, generator=g), torch.randn(24, generator=g), torch.randn(3, 40, generator=g)
            y = torch.ops.mkldnn._linear_pointwise(x, _make("onednn", w), b, "none", [], "")
            _ONEDNN = bool(torch.allclose(y, F.linear(x, w, b), atol=1e-4))
        except (RuntimeError, AttributeError):  # an op missing in this build, or it failed: the other kinds are exact too
            _ONEDNN = False
    return _ONEDNN


def _make(kind: str, w: torch.Tensor) -> torch.Tensor:
    """A new "t" or "onednn" copy of the (out, in) weight `w`."""
    with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode
        w = w.detach()
        if kind == "onednn":
            return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), PACK_BATCH_HINT)
        return w.t().contiguous()


def _apply(kind: str, x2: torch.Tensor, w: torch.Tensor, copy: torch.Tensor | None,
           bias: torch.Tensor | None) -> torch.Tensor:
    """(rows, in) @ weight of `kind` + bias → (rows, out)."""
    if kind == "t":
        return torch.mm(x2, copy) if bias is None else torch.addmm(bias, x2, copy)
    if kind == "onednn":
        return torch.ops.mkldnn._linear_pointwise(x2, copy, bias, "none", [], "")
    return F.linear(x2, w, bias)


def _drop_entry(wid: int):
    def drop(ref) -> None:
        entry = _COPIES.get(wid)
        if entry is not None and entry[0] is ref:
            del _COPIES[wid]
    return drop


def _copy(w: torch.Tensor, kind: str) -> torch.Tensor | None:
    """The cached copy of `kind` of `w`, built if missing or stale; None if `w` is an
    inference tensor (it has no version counter, so a change could not be detected)."""
    try:
        key = (w._version, w.data_ptr(), w.dtype, w.shape)
    except RuntimeError:
        return None
    wid = id(w)
    entry = _COPIES.get(wid)
    if entry is None or entry[0]() is not w or entry[1] != key:
        _COPIES.pop(wid, None)  # free stale copies before building new ones
        entry = (weakref.ref(w, _drop_entry(wid)), key, {})
        _COPIES[wid] = entry
    copies = entry[2]
    copy = copies.get(kind)
    if copy is None:
        copy = copies[kind] = _make(kind, w)
    return copy


def kinds_of(w: torch.Tensor) -> set[str]:
    """Which copies of `w` exist ("t", "onednn"); empty if none."""
    entry = _COPIES.get(id(w))
    return set(entry[2]) if entry is not None and entry[0]() is w else set()


def clear(model: nn.Module) -> None:
    """Free the copies of `model`'s weights (rebuilt on next use); the plan stays."""
    for p in model.parameters():
        _COPIES.pop(id(p), None)


def copy_bytes(model: nn.Module) -> int:
    """Bytes the fast path's copies of `model`'s weights take now."""
    total = 0
    for p in model.parameters():
        entry = _COPIES.get(id(p))
        if entry is not None and entry[0]() is p:
            total += sum(c.numel() * c.element_size() for c in entry[2].values())
    return total


def linear(mod: nn.Linear, x: torch.Tensor, kinds: dict | None) -> torch.Tensor:
    """`mod(x)`, through the kernel the plan `kinds` chose for this weight's shape and rows."""
    if kinds is None or mod._forward_hooks or mod._forward_pre_hooks:
        return mod(x)
    w = mod.weight
    per_bucket = kinds.get(w.shape)
    if per_bucket is None or x.dtype != w.dtype or not x.numel():
        return mod(x)
    x2 = x.reshape(-1, x.size(-1))
    rows = x2.size(0)
    kind = per_bucket[0 if rows == 1 else 1 if rows <= 8 else 2]
    if kind == "linear":
        return F.linear(x, w, mod.bias)
    copy = _copy(w, kind)
    if copy is None:
        return F.linear(x, w, mod.bias)
    return _apply(kind, x2, w, copy, mod.bias).view(*x.shape[:-1], w.size(0))


# --------------------------------------------------------------------------------------
# Choosing by measurement


def _linears(model: nn.Module) -> dict[tuple[int, int], list[nn.Linear]]:
    """The model's Linear modules by weight shape (out, in), each weight once."""
    out: dict[tuple[int, int], list[nn.Linear]] = {}
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.setdefault(tuple(m.weight.shape), []).append(m)
    return out


def _sample(mods: list[nn.Linear], budget: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) pairs of this shape up to `budget` bytes; one weight cut to its first
    rows where a single weight is bigger (the kernel streams rows alike)."""
    out, total = [], 0
    for m in mods:
        w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
        size = w.numel() * w.element_size()
        if total + size > budget:
            if not out:
                n = max(1, budget // (w.size(1) * w.element_size()))
                out.append((w[:n], None if b is None else b[:n]))
            break
        out.append((w, b))
        total += size
    return out


def _time_kinds(work: dict[str, list], rows: int, budget_s: float) -> dict[str, float]:
    """Fastest seconds of one pass over `work` (kind → [(weight, copy, bias)]) at `rows` rows,
    per kind. Rounds interleave the kinds (drift hits all alike) and go on for `budget_s` (3 to
    `MAX_ROUNDS` rounds): the fastest of several short passes is what a kernel costs when
    nothing else takes the CPU."""
    g = torch.Generator().manual_seed(0)
    xs = {w.size(1): None for pairs in work.values() for w, _, _ in pairs}  # one input per width
    xs = {n: torch.randn(rows, n, generator=g) for n in sorted(xs)}
    best = {k: float("inf") for k in work}
    start = time.perf_counter()
    with torch.no_grad():
        for k, pairs in work.items():  # warm-up: first calls build kernels and fault in pages
            _apply(k, xs[pairs[0][0].size(1)], *pairs[0])
        for rnd in range(MAX_ROUNDS):
            for k, pairs in work.items():
                t0 = time.perf_counter()
                for w, c, b in pairs:
                    _apply(k, xs[w.size(1)], w, c, b)
                best[k] = min(best[k], time.perf_counter() - t0)
            if rnd >= 2 and time.perf_counter() - start > budget_s:
                break
    return best


def measure(model: nn.Module, budget_s: float | None = None) -> dict:
    """Time every kind and pick, per weight shape and bucket, nn.Linear unless a trick beats it
    by `MARGIN`, with at most one kind of copy per shape. The one-row bucket, where decoding
    spends its time, is timed as a decode step reads the weights: one pass over all of them
    per kind (a sample of one shape fits in the cache, and there kernels rank by cache speed,
    not by how they stream the model from memory); its kind then holds for every shape. The
    other buckets time each shape on a sample. Returns a JSON-able choice. `budget_s` (default:
    0.6 s for GPT-2 124M's 0.5 GB of weights, less for smaller models) is spread over the
    timings; each gets at least three rounds."""
    kinds = available_kinds()
    t0 = time.perf_counter()
    shapes = sorted(_linears(model).items())
    nbytes = sum(m.weight.numel() * m.weight.element_size() for _, mods in shapes for m in mods)
    if budget_s is None:
        budget_s = min(0.6, max(0.05, 0.6 * nbytes / 500e6))
    each = budget_s / (1 + len(shapes) * (len(MEASURE_ROWS) - 1))
    # the one-row bucket: every weight, one kind at a time (its copies built, timed, dropped)
    whole = {}
    for k in kinds:
        pairs = [(m.weight.detach(), None if k == "linear" else _make(k, m.weight.detach()),
                  None if m.bias is None else m.bias.detach()) for _, mods in shapes for m in mods]
        whole[k] = _time_kinds({k: pairs}, 1, each)[k]
    one = min((k for k in kinds if k != "linear"), key=whole.get, default="linear")
    one = one if whole[one] < MARGIN * whole["linear"] else "linear"
    choice, times = {}, {"all": {"1": {k: round(v * 1e3, 4) for k, v in whole.items()}}}
    for (o, i), mods in shapes:
        name = f"{o}x{i}"
        picks, per, built = [one], {}, {}
        for rows, budget in zip(MEASURE_ROWS[1:], SAMPLE_BYTES[1:]):
            if budget not in built:  # buckets with the same sample share its copies
                pairs = _sample(mods, budget)
                built[budget] = {k: [(w, None if k == "linear" else _make(k, w), b) for w, b in pairs] for k in kinds}
            t = _time_kinds(built[budget], rows, each)
            per[str(rows)] = {k: round(v * 1e3, 4) for k, v in t.items()}
            tricks = [k for k in picks if k != "linear"][:1] or [k for k in kinds if k != "linear"]
            fastest = min(tricks, key=t.get)  # one kind of copy per weight at most (memory ≤ 2× the weights)
            picks.append(fastest if t[fastest] < MARGIN * t["linear"] else "linear")
        choice[name], times[name] = picks, per
    return {"kinds": choice, "ms": times, "measure_s": round(time.perf_counter() - t0, 3)}


def shape_key(model: nn.Module) -> dict:
    """What the choice depends on besides the machine: each weight shape, how many, biases."""
    shapes = [[o, i, len(mods), mods[0].bias is not None] for (o, i), mods in sorted(_linears(model).items())]
    return {"v": PLAN_VERSION, "dtype": "float32", "linears": shapes}


def choose(model: nn.Module, cache_dir=None, refresh: bool = False) -> dict:
    """The measured choice for `model` on this machine (from the cache where it was measured
    before), stored on the model as `model.inference_plan` with how it was obtained."""
    with _LOCK:
        plan = model.__dict__.get("inference_plan")
        if plan is None or refresh:
            choice, info = machine.cached_choice("inference", shape_key(model), lambda: measure(model),
                                                 cache_dir=cache_dir, refresh=refresh)
            by_shape = {torch.Size(int(n) for n in name.split("x")): tuple(k)
                        for name, k in choice["kinds"].items()
                        if all(kind in KINDS and (kind != "onednn" or onednn_ok()) for kind in k)}
            plan = {"kinds": by_shape, "choice": choice, **info}
            model.__dict__["inference_plan"] = plan
        return plan


def plan(model: nn.Module, x: torch.Tensor) -> dict | None:
    """The per-shape kernel choice to run `model` on `x` with, or None for the plain path."""
    if not (model.decode_weight_cache and not model.training and x.device.type == "cpu"
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and model.lm_head.weight.dtype == torch.float32):
        return None
    p = model.__dict__.get("inference_plan")
    return (p if p is not None else choose(model))["kinds"]


def fixed_plan(model: nn.Module, kind: str) -> dict:
    """Make `model` use `kind` for every Linear at every row count (tests and benchmarks
    compare the kinds this way); `choose(model, refresh=True)` goes back to measuring."""
    if kind not in KINDS or (kind == "onednn" and not onednn_ok()):
        raise ValueError(f"kind {kind!r} is not available here; available: {', '.join(available_kinds())}")
    plan = {"kinds": {torch.Size(s): (kind,) * len(MEASURE_ROWS) for s in _linears(model)},
            "choice": {"fixed": kind}, "cached": False, "measured_at": None}
    model.__dict__["inference_plan"] = plan
    return plan


def available_kinds() -> tuple[str, ...]:
    """The kinds this PyTorch build can run ("onednn" only where its start-up check passed)."""
    return KINDS if onednn_ok() else KINDS[:2]
