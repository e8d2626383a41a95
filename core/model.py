"""The GPT-2 architecture, with GPT-2's module names so GPT-2 weights load.

Owns: `GPT` (token + learned position embeddings, pre-LayerNorm blocks, causal
self-attention, tanh-GELU MLP, output head tied to the token embedding), the KV cache
for generation, and the inspection path that returns an explicit `Trace`.

Attention has one module, two paths and one math: `F.scaled_dot_product_attention`
for speed, and the explicit softmax(QKᵀ/√d)V when a view needs the probabilities.
Does not own: the CPU inference fast path (`core.fastpath`: which kernel runs each Linear,
chosen by measurement; the modules take its choice as `fast`), decoding strategies
(`core.generate`), derived views (`core.inspect`), files (`core.checkpoint`). Nothing here
registers hooks on the model.

Shape letters: B batch, T query length, S key length, C n_embd, nh heads, hs head size,
V vocab size, L layers.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import fastpath
from .config import GPTConfig

# --------------------------------------------------------------------------------------
# Modules, in dependency order. `fast` is the inference fast path's kernel choice
# (`core.fastpath.plan`), or None for nn.Linear's own call.


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

    def forward(self, x: torch.Tensor, *, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False, head_mask: torch.Tensor | None = None,
                record: dict | None = None, fast: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, C) → (B, T, C), and the attention probabilities (B, nh, T, S) when
        `need_weights`. `cache`: this layer's keys/values are appended at `cache.pos`.
        `record`: filled with q, k, v, z for the trace."""
        B, T, C = x.size()
        nh, hs = self.n_head, C // self.n_head
        q, k, v = fastpath.linear(self.c_attn, x, fast).split(self.n_embd, dim=2)  # 3 × (B, T, C)
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
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)  # (T, S)

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
        y = self.resid_dropout(fastpath.linear(self.c_proj, y, fast))
        return y, att


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's gelu_new
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, *, fast: dict | None = None) -> torch.Tensor:
        h = self.gelu(fastpath.linear(self.c_fc, x, fast))  # (B, T, 4C)
        return self.dropout(fastpath.linear(self.c_proj, h, fast))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, *, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False, head_mask: torch.Tensor | None = None,
                record: dict | None = None, fast: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, C) → (B, T, C), and attention probabilities when `need_weights`."""
        a, att = self.attn(self.ln_1(x), cache=cache, layer=layer, need_weights=need_weights,
                           head_mask=head_mask, record=record, fast=fast)
        x = x + a
        if record is not None:
            record["resid_mid"] = x
        x = x + self.mlp(self.ln_2(x), fast=fast)
        return x, att


# --------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    decode_weight_cache: bool = True  # the CPU inference fast path (core.fastpath); False: nn.Linear only

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
        n = sum(p.numel() for p in self.parameters())  # the tied head is one tensor
        if not include_embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def new_kv_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        p = self.transformer.wte.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    def clear_decode_cache(self) -> None:
        """Free the inference fast path's weight copies (rebuilt on next use)."""
        fastpath.clear(self)

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
        fast = fastpath.plan(self, idx)
        x = self.transformer.drop(self._embed(idx, past))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            hm = head_mask[i] if head_mask is not None else None
            x, _ = block(x, cache=kv_cache, layer=i, head_mask=hm, fast=fast)
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        x = self.transformer.ln_f(x)
        logits = fastpath.linear(self.lm_head, x, fast)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

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
        fast = fastpath.plan(self, idx)
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
            x, att = block(x, layer=i, need_weights=need, head_mask=hm, record=record, fast=fast)
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
        logits = fastpath.linear(self.lm_head, x, fast)  # (B, T, V)
        if want("logits"):
            out.tensors["logits"] = logits
        return out

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logit lens: final layer norm then output head on any residual stream (…, C) → (…, V)."""
        return fastpath.linear(self.lm_head, self.transformer.ln_f(resid), fastpath.plan(self, resid))

    def describe_modules(self) -> list[dict]:
        """One row per parameter group in GPT-2's names: module, shape, parameter count (the
        tied head counted once, at wte). What each does is the app's to say."""
        names = ["transformer.wte", "transformer.wpe"]
        for i in range(self.config.n_layer):
            names += [f"transformer.h.{i}.{m}" for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
        names += ["transformer.ln_f", "lm_head"]
        modules = dict(self.named_modules())
        counted: set[int] = set()
        out = []
        for name in names:
            own = list(modules[name].parameters(recurse=False))
            n = sum(p.numel() for p in own if id(p) not in counted)
            counted.update(id(p) for p in own)
            out.append({"module": name, "shape": list(modules[name].weight.shape), "params": n})
        return out


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
