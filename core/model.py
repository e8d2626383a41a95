"""The GPT-2 architecture, with GPT-2's module names so GPT-2 weights load.

Owns: `GPT` (token + learned position embeddings, pre-LayerNorm blocks, causal
self-attention, tanh-GELU MLP, output head tied to the token embedding), the KV cache
for generation and the CPU decode fast path (cached transposed weights, see below), and the
inspection path that returns an explicit `Trace`.

Attention has one module, two paths and one math: `F.scaled_dot_product_attention`
for speed, and the explicit softmax(QKᵀ/√d)V when a view needs the probabilities.
Does not own: decoding strategies (`core.generate`), derived views (`core.inspect`),
files (`core.checkpoint`). Nothing here registers hooks on the model.

Shape letters: B batch, T query length, S key length, C n_embd, nh heads, hs head size,
V vocab size, L layers.
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import GPTConfig

# --------------------------------------------------------------------------------------
# Inference fast path: prepacked weights for CPU matmuls
#
# Inference on CPU is bound by the matmuls, and a decode step by reading the weights. PyTorch
# runs `nn.Linear` through MKL's sgemm; oneDNN (also inside every PyTorch CPU build) runs the
# same product on a weight it has reordered ("prepacked") once for the CPU's vector width.
# Measured single-threaded on this project's 2-core AMD EPYC, GPT-2 124M's 48 block matrices
# (see bench/generate.py and bench/forward.py): 1 row 18 ms → 9 ms (the memory-bandwidth
# bound: a plain sum over the same bytes takes 8.4 ms), 16 rows 44 → 18 ms, 256 rows 414 →
# 185 ms; the output head for one row 5.3 ms → 3.5 ms. PyTorch's compiler uses the same two
# ops (`mkldnn._reorder_linear_weight`, `mkldnn._linear_pointwise`) when it freezes a model.
#
# The parameters keep nn.Linear's layout (names, state dicts, training and checkpoints are
# untouched). `GPT.forward`, `GPT.trace` and `GPT.unembed` with no grad, in eval mode, on
# CPU, with float32 weights and without autocast use fast copies of the Linear weights.
# Same dtype, same math: only the summation order inside the matmul differs (logits agree to
# float rounding).
#
# oneDNN costs about 12 µs a call whatever the size, so small products stay off it: it is
# used where a weight's size times its rows (up to 8) reaches `ONEDNN_MIN_WORK` (chosen on
# whole decodes: the demo model 0.48 ms/token vs 0.70 with oneDNN everywhere; a 6-layer
# 384-wide one 2.4 vs 2.8 ms at a 1M threshold; GPT-2 124M the same at any). Below that, matmuls of
# at most `DECODE_ROWS` rows use a transposed contiguous copy ([in, out], which MKL streams
# faster than [out, in]) and larger ones nn.Linear itself. Where oneDNN is missing or fails
# its start-up check, the transposed copies serve every few-row product.
#
# Memory: the copies are built lazily, on first use, and kept while the parameter lives:
# about one extra copy of every Linear weight, the output head included (it is the tied
# token embedding) — for GPT-2 124M about 124M floats, 0.5 GB (a weight small enough to be
# used both ways keeps both; such weights are small). A copy is keyed on the parameter's
# version counter, storage pointer, dtype and shape, so an optimizer step,
# `load_state_dict`, `copy_` or `.to()` makes it stale and it is rebuilt on next use
# (in-place writes through `.data` bypass the version counter: call
# `GPT.clear_decode_cache()` after those). `GPT.clear_decode_cache()` frees the copies;
# setting `model.decode_weight_cache = False` switches the fast path off.

DECODE_ROWS = 4  # transposed copies: at 1-2 rows [in, out] wins; at 4-8 it ties; at 16 nn.Linear's layout wins
PACK_BATCH_HINT = 16  # oneDNN picks the packed layout for this many rows; 4..64 measured alike
ONEDNN_MIN_WORK = 400_000  # weight elements × min(rows, 8) from which oneDNN beats MKL
# id(weight) -> (weakref to it, key, {"onednn" | "t": copy}); a plain dict keyed by id with a
# weakref that removes the entry is a few times cheaper per lookup than WeakIdKeyDictionary,
# and this runs for every matmul of a decode step.
_FAST: dict[int, tuple] = {}


def _onednn_ok() -> bool:
    """oneDNN's prepacked linear is present and gives nn.Linear's numbers on a small probe."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        w, b, x = torch.randn(24, 40, generator=g), torch.randn(24, generator=g), torch.randn(3, 40, generator=g)
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, PACK_BATCH_HINT),
                                               b, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, w, b), atol=1e-4, rtol=1e-4))
    except Exception:  # an op missing in this build, or it failed: the fallback is exact too
        return False


_ONEDNN: bool | None = None  # probed on first use


def _drop_entry(wid: int):
    def drop(ref) -> None:
        entry = _FAST.get(wid)
        if entry is not None and entry[0] is ref:
            del _FAST[wid]
    return drop


def _fast_copy(w: torch.Tensor, kind: str) -> torch.Tensor | None:
    """The cached "onednn" (prepacked) or "t" (contiguous (in, out) transpose) copy of the
    (out, in) weight `w`; None if `w` is an inference tensor (it has no version counter, so
    a change could not be detected)."""
    try:
        key = (w._version, w.data_ptr(), w.dtype, w.shape)
    except RuntimeError:
        return None
    wid = id(w)
    entry = _FAST.get(wid)
    if entry is None or entry[0]() is not w or entry[1] != key:
        _FAST.pop(wid, None)  # free stale copies before building new ones
        entry = (weakref.ref(w, _drop_entry(wid)), key, {})
        _FAST[wid] = entry
    copies = entry[2]
    copy = copies.get(kind)
    if copy is None:
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode
            if kind == "onednn":
                copy = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), PACK_BATCH_HINT)
            else:
                copy = w.detach().t().contiguous()
        copies[kind] = copy
    return copy


def _fast_kinds(w: torch.Tensor) -> set[str]:
    """Which fast copies of `w` exist ("onednn", "t"); empty if none."""
    entry = _FAST.get(id(w))
    return set(entry[2]) if entry is not None and entry[0]() is w else set()


def _linear(mod: nn.Linear, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """`mod(x)`, through a fast copy of the weight when `fast` (see above)."""
    global _ONEDNN
    if fast and x.numel() and x.dtype == torch.float32 and not (mod._forward_hooks or mod._forward_pre_hooks):
        w = mod.weight
        x2 = x.reshape(-1, x.size(-1))
        rows = x2.size(0)
        if _ONEDNN is None:
            _ONEDNN = _onednn_ok()
        if _ONEDNN and w.numel() * min(rows, 8) >= ONEDNN_MIN_WORK:
            wp = _fast_copy(w, "onednn")
            if wp is not None:
                y = torch.ops.mkldnn._linear_pointwise(x2, wp, mod.bias, "none", [], "")
                return y.view(*x.shape[:-1], mod.out_features)
        elif rows <= DECODE_ROWS:
            wt = _fast_copy(w, "t")
            if wt is not None:
                y = torch.mm(x2, wt) if mod.bias is None else torch.addmm(mod.bias, x2, wt)
                return y.view(*x.shape[:-1], mod.out_features)
    return mod(x)


# --------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of every layer for positions [0, pos); `pos` is explicit.

    k, v: (L, B, nh, max_len, hs). `advance(T)` is called once per forward, after all
    layers have written their keys and values for the T new positions.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        max_len = config.block_size if max_len is None else max_len
        if not 1 <= max_len <= config.block_size:
            raise ValueError(f"KV cache length {max_len} must be between 1 and block_size={config.block_size}")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.max_len = max_len

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T, hs) keys/values at [pos, pos+T); return all keys/values so far."""
        T = k.size(2)
        end = self.pos + T
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        self.pos += T

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search): index is a (B',) long tensor."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


# --------------------------------------------------------------------------------------
# Modules, in dependency order


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False, head_mask: torch.Tensor | None = None,
                record: dict | None = None, fast: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = x.size()
        nh, hs = self.n_head, C // self.n_head
        q, k, v = _linear(self.c_attn, x, fast).split(self.n_embd, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.write(layer, k, v)  # (B, nh, S, hs) with S = past + T
        S = k.size(2)
        if record is not None:
            record["q"], record["k"], record["v"] = q, k, v

        # Masks: T == S (no past) → plain causal; T == 1 → no mask (the one new token sees
        # everything); a chunk after a past → bottom-right-aligned causal mask.
        mask = None
        if T != S and T > 1:
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)

        att = None
        if need_weights:
            # explicit math: softmax(QKᵀ/√d)V
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, S)
            if T == S and T > 1:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            att = F.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, nh, T, S)
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=(mask is None and T == S and T > 1),
            )  # (B, nh, T, hs)
        if head_mask is not None:
            y = y * head_mask.view(1, nh, 1, 1).to(y.dtype)
        if record is not None:
            record["z"] = y
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        y = self.resid_dropout(_linear(self.c_proj, y, fast))
        return y, att


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's gelu_new
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, fast: bool = False) -> torch.Tensor:
        return self.dropout(_linear(self.c_proj, self.gelu(_linear(self.c_fc, x, fast)), fast))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, need_weights=False, head_mask=None, record=None, fast=False):
        a, att = self.attn(self.ln_1(x), cache, layer, need_weights, head_mask, record, fast)
        x = x + a
        if record is not None:
            record["resid_mid"] = x
        x = x + self.mlp(self.ln_2(x), fast)
        return x, att


# --------------------------------------------------------------------------------------
# Inspection trace

DEFAULT_KEEP = ("embed", "blocks.*.attn.pattern", "blocks.*.resid_post", "ln_f", "logits")

TRACE_NAMES = {
    "embed": "(B, T, C) token + position embedding (the residual stream entering block 0)",
    "blocks.{i}.attn.q": "(B, nh, T, hs) queries",
    "blocks.{i}.attn.k": "(B, nh, T, hs) keys",
    "blocks.{i}.attn.v": "(B, nh, T, hs) values",
    "blocks.{i}.attn.pattern": "(B, nh, T, T) attention probabilities, rows sum to 1",
    "blocks.{i}.attn.z": "(B, nh, T, hs) per-head weighted sums of values",
    "blocks.{i}.resid_mid": "(B, T, C) residual stream after attention",
    "blocks.{i}.resid_post": "(B, T, C) residual stream after the block",
    "ln_f": "(B, T, C) final layer norm output",
    "logits": "(B, T, V) next-token logits",
}


@dataclass
class Trace:
    """Named tensors from one inspection forward pass (see `TRACE_NAMES` for shapes)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    n_layer: int = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in this trace; kept: {', '.join(self.tensors)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def logits(self) -> torch.Tensor:
        return self["logits"]

    def patterns(self) -> torch.Tensor:
        """All layers' attention probabilities stacked: (L, B, nh, T, T)."""
        return torch.stack([self[f"blocks.{i}.attn.pattern"] for i in range(self.n_layer)])

    def residuals(self) -> torch.Tensor:
        """Residual stream after embedding and after each block: (L+1, B, T, C)."""
        return torch.stack([self["embed"]] + [self[f"blocks.{i}.resid_post"] for i in range(self.n_layer)])


def _keep_filter(keep) -> Callable[[str], bool]:
    if keep is None:
        keep = DEFAULT_KEEP
    if callable(keep):
        return keep
    if isinstance(keep, str):
        keep = (keep,)
    patterns = tuple(keep)
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)


# --------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    decode_weight_cache: bool = True  # the inference fast path (see its section above)

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias, eps=1e-5),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied head
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied head is one tensor, counted once
        if not include_embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def new_kv_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        p = self.transformer.wte.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    def _check_idx(self, idx: torch.Tensor, past: int) -> None:
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        T = idx.size(1)
        if T == 0:
            raise ValueError("idx is empty: at least one token is needed")
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the model's block_size={self.config.block_size}"
            )

    def _embed(self, idx: torch.Tensor, past: int) -> torch.Tensor:
        T = idx.size(1)
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C)
        return tok_emb + pos_emb

    def clear_decode_cache(self) -> None:
        """Free the inference fast path's weight copies (rebuilt on next use)."""
        for p in self.parameters():
            _FAST.pop(id(p), None)

    def _fast(self, idx: torch.Tensor) -> bool:
        """Whether this forward may use the inference fast path (see its section above)."""
        return (self.decode_weight_cache and not self.training and idx.device.type == "cpu"
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and self.lm_head.weight.dtype == torch.float32)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, head_mask: torch.Tensor | None = None,
                last_only: bool = False):
        """Fast path. Returns (logits (B, T, V), loss or None); `targets` -1 is ignored.

        `last_only`: compute the logits of the last position only, (B, 1, V) (generation
        needs no more; the output head is the largest matmul). Not with `targets`.
        """
        if last_only and targets is not None:
            raise ValueError("last_only=True gives no logits for the loss: pass targets or last_only, not both")
        past = kv_cache.pos if kv_cache is not None else 0
        self._check_idx(idx, past)
        fast = self._fast(idx)  # the inference fast path (see its section above)
        if fast and kv_cache is not None and idx.size(1) == 1 and head_mask is None and targets is None \
                and self._plain():
            return self._decode_one(idx, kv_cache), None
        x = self.transformer.drop(self._embed(idx, past))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            hm = head_mask[i] if head_mask is not None else None
            x, _ = block(x, kv_cache, i, False, hm, None, fast)
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        x = self.transformer.ln_f(x)
        logits = _linear(self.lm_head, x, fast)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _plain(self) -> bool:
        """No forward hooks anywhere and the stock block modules: `_decode_one` may stand in
        for the modules' own forwards (it calls the same ops on the same tensors). Runs every
        decode step, so it reads the `_modules` dicts directly (nn.Module's attribute lookup
        and `modules()` cost about 45 µs here, this about a quarter of it)."""
        from torch.nn.modules import module as M
        if M._global_forward_hooks or M._global_forward_pre_hooks:
            return False
        tr = self._modules["transformer"]
        mods = [self, tr, self._modules["lm_head"], *tr._modules.values()]
        for b in tr._modules["h"]._modules.values():
            if type(b) is not Block:
                return False
            bm = b._modules
            attn, mlp = bm["attn"], bm["mlp"]
            if (type(attn) is not CausalSelfAttention or type(mlp) is not MLP or type(bm["ln_1"]) is not nn.LayerNorm
                    or type(bm["ln_2"]) is not nn.LayerNorm or type(mlp._modules["gelu"]) is not nn.GELU):
                return False
            mods += [b, *bm.values(), *attn._modules.values(), *mlp._modules.values()]
        return not any(m._forward_hooks or m._forward_pre_hooks for m in mods)

    def _decode_one(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token per row with the KV cache, on the inference fast path: (B, 1) ids →
        (B, 1, V) logits. The blocks' forwards without the module calls (a decode step of a
        small model is mostly Python overhead): the same ops, in the same order, on the same
        tensors (dropout is the identity in eval mode), so the logits are the same bits."""
        B, C = idx.size(0), self.config.n_embd
        x = self._embed(idx, cache.pos)  # (B, 1, C)
        for i, block in enumerate(self.transformer.h):
            attn, mlp, ln_1, ln_2 = block.attn, block.mlp, block.ln_1, block.ln_2
            nh = attn.n_head
            hs = C // nh
            h = F.layer_norm(x, ln_1.normalized_shape, ln_1.weight, ln_1.bias, ln_1.eps)
            q, k, v = _linear(attn.c_attn, h, True).split(C, dim=2)  # 3 × (B, 1, C)
            q = q.view(B, 1, nh, hs).transpose(1, 2)  # (B, nh, 1, hs)
            k = k.view(B, 1, nh, hs).transpose(1, 2)
            v = v.view(B, 1, nh, hs).transpose(1, 2)
            k, v = cache.write(i, k, v)  # (B, nh, S, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
            y = y.transpose(1, 2).contiguous().view(B, 1, C)
            x = x + _linear(attn.c_proj, y, True)
            h = F.layer_norm(x, ln_2.normalized_shape, ln_2.weight, ln_2.bias, ln_2.eps)
            h = F.gelu(_linear(mlp.c_fc, h, True), approximate=mlp.gelu.approximate)
            x = x + _linear(mlp.c_proj, h, True)
        cache.advance(1)
        ln_f = self.transformer.ln_f
        x = F.layer_norm(x, ln_f.normalized_shape, ln_f.weight, ln_f.bias, ln_f.eps)
        return _linear(self.lm_head, x, True)  # (B, 1, V)

    @torch.no_grad()
    def trace(self, idx: torch.Tensor, keep: Iterable[str] | str | Callable[[str], bool] | None = None,
              head_mask: torch.Tensor | None = None) -> Trace:
        """Inspection path: one forward pass that records the named tensors `keep` selects.

        `keep`: glob patterns over `TRACE_NAMES` (default `DEFAULT_KEEP`), or a predicate.
        Layers whose pattern is not kept run on the SDPA path; the math is the same.
        `head_mask`: (L, nh) multipliers on each head's output (0 ablates a head).
        """
        self._check_idx(idx, 0)
        want = _keep_filter(keep)
        fast = self._fast(idx)
        out = Trace(n_layer=self.config.n_layer)
        x = self._embed(idx, 0)  # (B, T, C); dropout is skipped for inspection
        if want("embed"):
            out.tensors["embed"] = x
        for i, block in enumerate(self.transformer.h):
            pre = f"blocks.{i}."
            need = want(pre + "attn.pattern")
            rec_names = [n for n in ("q", "k", "v", "z") if want(pre + "attn." + n)]
            record = {} if (rec_names or want(pre + "resid_mid")) else None
            hm = head_mask[i] if head_mask is not None else None
            x, att = block(x, None, i, need, hm, record, fast)
            if need:
                out.tensors[pre + "attn.pattern"] = att
            for n in rec_names:
                out.tensors[pre + "attn." + n] = record[n]
            if want(pre + "resid_mid"):
                out.tensors[pre + "resid_mid"] = record["resid_mid"]
            if want(pre + "resid_post"):
                out.tensors[pre + "resid_post"] = x
        x = self.transformer.ln_f(x)
        if want("ln_f"):
            out.tensors["ln_f"] = x
        logits = _linear(self.lm_head, x, fast)
        if want("logits"):
            out.tensors["logits"] = logits
        return out

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logit lens: final layer norm then output head on any residual stream (…, C) → (…, V)."""
        return _linear(self.lm_head, self.transformer.ln_f(resid), self._fast(resid))

    def describe_modules(self) -> list[dict]:
        """One row per parameter group: name, shape, parameter count, what it does."""
        cfg = self.config
        rows = [
            ("transformer.wte", tuple(self.transformer.wte.weight.shape),
             "Token embedding: one vector of n_embd numbers per token id"
             + (" (also the output head, tied)" if cfg.tie_word_embeddings else "")),
            ("transformer.wpe", tuple(self.transformer.wpe.weight.shape), "Position embedding: one learned vector per position 0..block_size-1, added to the token's"),
        ]
        for i, blk in enumerate(self.transformer.h):
            rows += [
                (f"transformer.h.{i}.ln_1", tuple(blk.ln_1.weight.shape), "Layer norm before attention"),
                (f"transformer.h.{i}.attn.c_attn", tuple(blk.attn.c_attn.weight.shape), f"Attention: projects each token to query, key, value for {cfg.n_head} heads of {cfg.head_size} dims"),
                (f"transformer.h.{i}.attn.c_proj", tuple(blk.attn.c_proj.weight.shape), "Attention output: mixes the heads back into the residual stream"),
                (f"transformer.h.{i}.ln_2", tuple(blk.ln_2.weight.shape), "Layer norm before the feed-forward network"),
                (f"transformer.h.{i}.mlp.c_fc", tuple(blk.mlp.c_fc.weight.shape), f"Feed forward: expands to {cfg.mlp_width} ({'4×n_embd' if cfg.n_inner is None else 'n_inner'}), then GELU"),
                (f"transformer.h.{i}.mlp.c_proj", tuple(blk.mlp.c_proj.weight.shape), "Feed forward: projects back to n_embd"),
            ]
        rows += [
            ("transformer.ln_f", tuple(self.transformer.ln_f.weight.shape), "Final layer norm"),
            ("lm_head", tuple(self.lm_head.weight.shape), "Output head: scores every vocabulary token "
             + ("(weights shared with wte, counted once)" if cfg.tie_word_embeddings
                else "(its own weights, untied from wte)")),
        ]
        modules = dict(self.named_modules())
        out = []
        for name, shape, what in rows:
            mod = modules[name]
            tied = name == "lm_head" and cfg.tie_word_embeddings
            n = 0 if tied else sum(p.numel() for p in mod.parameters(recurse=False))
            out.append({"module": name, "shape": list(shape), "params": n, "role": what})
        return out
