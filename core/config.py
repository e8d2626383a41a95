"""Model and training configuration: typed dataclasses, named presets, estimates.

Owns: `GPTConfig` (the architecture, saved as `config.json` next to the weights with a
format version), the named presets, the parameter count and memory estimate computed
from a config *before* anything is allocated, and `TrainConfig`.

Does not own: building the model (`core.model`), reading files (`core.checkpoint`).
Validation raises `ValueError` naming the bad value and its limit; never `assert`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

FORMAT_VERSION = 1

# Hard limits: far beyond anything the app trains, small enough to refuse absurd files.
LIMITS = {
    "vocab_size": (1, 1_000_000),
    "block_size": (1, 131_072),
    "n_layer": (1, 256),
    "n_head": (1, 256),
    "n_embd": (1, 65_536),
    "n_inner": (1, 262_144),  # optional: None means 4 × n_embd
}


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range: it must be between {lo} and {hi}")


@dataclass(frozen=True)
class GPTConfig:
    """The GPT-2 architecture's hyper-parameters."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    n_inner: int | None = None  # the MLP's hidden width; None: 4 × n_embd (GPT-2's)
    tie_word_embeddings: bool = True  # the output head shares the token embedding's weights

    def __post_init__(self) -> None:
        for name, (lo, hi) in LIMITS.items():
            if name == "n_inner" and self.n_inner is None:
                continue
            _check_int(name, getattr(self, name), lo, hi)
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                f"(each head gets n_embd / n_head dimensions)"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"dropout must be a number, got {self.dropout!r}")
        if not (0.0 <= float(self.dropout) < 1.0) or math.isnan(self.dropout):
            raise ValueError(f"dropout={self.dropout} is out of range: it must be in [0, 1)")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be true or false, got {self.bias!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        """The feed-forward network's hidden width: n_inner, or 4 × n_embd when unset."""
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    # --- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"config format_version={version!r} is not supported (this Glassbox reads {FORMAT_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        missing = sorted(f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.name not in d)
        if missing:
            raise ValueError(f"config is missing required keys: {', '.join(missing)}")
        return cls(**d)

    def replace(self, **changes: Any) -> GPTConfig:
        return dataclasses.replace(self, **changes)

    # --- estimates (pure arithmetic: nothing is allocated) ----------------------------
    def n_params(self, include_embeddings: bool = True) -> int:
        """Parameter count with a tied output head counted once (an untied head is not an
        embedding, so it counts either way)."""
        C, V, T, L, H = self.n_embd, self.vocab_size, self.block_size, self.n_layer, self.mlp_width
        b = 1 if self.bias else 0
        ln = C + b * C
        attn = C * 3 * C + b * 3 * C + C * C + b * C
        mlp = C * H + b * H + H * C + b * C
        per_block = 2 * ln + attn + mlp
        total = L * per_block + ln  # + ln_f
        if not self.tie_word_embeddings:
            total += V * C  # lm_head
        if include_embeddings:
            total += V * C + T * C
        return total

    def memory_bytes(self, dtype_bytes: int = 4) -> int:
        """Bytes needed to hold the weights (what loading a checkpoint allocates)."""
        return self.n_params() * dtype_bytes

    def training_memory_bytes(self, batch_size: int, dtype_bytes: int = 4) -> int:
        """Rough training footprint: weights + grads + AdamW moments + activations."""
        weights = 4 * self.memory_bytes(dtype_bytes)
        B, T, C, L, V = batch_size, self.block_size, self.n_embd, self.n_layer, self.vocab_size
        acts = B * T * (L * (16 * C + 2 * self.n_head * T) + 2 * V) * dtype_bytes
        return weights + acts

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), as in the PaLM appendix."""
        N = self.n_params(include_embeddings=False)
        return 6 * N + 12 * self.n_layer * self.n_embd * self.block_size


# Named presets: architecture only; vocab_size comes from the tokenizer unless given.
PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's CPU recipe (shakespeare_char on a laptop)
    "nano": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    # the bundled demo model (assets/demo): byte-level BPE with 2k tokens
    "demo": dict(n_layer=4, n_head=6, n_embd=192, block_size=128, vocab_size=2048),
    "micro": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    # a workshop on a shared CPU: small enough that WORKSHOP_TRAIN ends within minutes
    "workshop": dict(n_layer=2, n_head=4, n_embd=96, block_size=64),
}

# Training settings that go with the 'workshop' model: char-level Tiny Shakespeare, Muon at the
# recipe's learning rate, a short warm-up, and evals with samples often enough to watch it learn.
WORKSHOP_TRAIN: dict[str, Any] = dict(steps=1200, batch_size=16, lr=6e-3, warmup_steps=20, optimizer="muon",
                                      eval_interval=200, eval_batches=10, sample_tokens=200,
                                      sample_prompt="ROMEO:", ckpt_interval=200)


def preset(name: str, **overrides: Any) -> GPTConfig:
    """Build a `GPTConfig` from a named preset; keyword overrides win (None is ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    d = dict(PRESETS[name])
    d.update({k: v for k, v in overrides.items() if v is not None})
    if "vocab_size" not in d:
        raise ValueError(f"preset {name!r} needs a vocab_size (it comes from the tokenizer)")
    return GPTConfig(**d)


OPTIMIZERS = ("adamw", "muon")

# Glassbox's CPU recipe for small models (bench/train_cpu.py compares it with nanoGPT's): Muon
# for the hidden matrices, AdamW for the rest. The one copy: TrainConfig's defaults, and so
# RunSpec's, the CLI's and the Train tab's, are read from it.
RECIPE: dict[str, Any] = dict(batch_size=16, lr=6e-3, warmup_steps=50, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                              optimizer="muon")


@dataclass
class TrainConfig:
    """Training settings (the trainer's input; `core.spec.RunSpec.train_config()` builds one).
    Defaults are Glassbox's CPU recipe for small models (`RECIPE`)."""

    steps: int = 2000
    batch_size: int = RECIPE["batch_size"]
    lr: float = RECIPE["lr"]
    min_lr: float | None = None  # defaults to lr / 10
    warmup_steps: int = RECIPE["warmup_steps"]
    weight_decay: float = RECIPE["weight_decay"]
    beta1: float = 0.9
    beta2: float = RECIPE["beta2"]
    grad_clip: float = RECIPE["grad_clip"]
    optimizer: str = RECIPE["optimizer"]
    eval_interval: int = 250
    eval_batches: int = 20
    log_interval: int = 1
    sample_interval: int = 0  # 0: only at eval time
    sample_prompt: str = "\n"
    sample_tokens: int = 100
    ckpt_interval: int = 500
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False
    threads: int = 0  # 0: leave torch's default
    grad_accum: int = 1
    snapshots: int = 0  # weight-only snapshots over the run (core.snapshots); 0: none
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("steps", 1, 10_000_000),
            ("batch_size", 1, 65_536),
            ("warmup_steps", 0, 10_000_000),
            ("eval_interval", 0, 10_000_000),
            ("eval_batches", 1, 100_000),
            ("log_interval", 1, 10_000_000),
            ("sample_interval", 0, 10_000_000),
            ("sample_tokens", 0, 100_000),
            ("ckpt_interval", 0, 10_000_000),
            ("seed", 0, 2**63 - 1),
            ("threads", 0, 4096),
            ("grad_accum", 1, 65_536),
            ("snapshots", 0, 10_000),
        ):
            _check_int(name, getattr(self, name), lo, hi)
        for name, lo, hi in (
            ("lr", 0.0, 10.0),
            ("weight_decay", 0.0, 10.0),
            ("beta1", 0.0, 1.0),
            ("beta2", 0.0, 1.0),
            ("grad_clip", 0.0, 1e6),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or math.isnan(v):
                raise ValueError(f"{name}={v!r} is out of range: it must be a number in [{lo}, {hi}]")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.min_lr is not None and not (0 <= self.min_lr <= self.lr):
            raise ValueError(f"min_lr={self.min_lr} must be in [0, lr={self.lr}]")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"device={self.device!r} is not one of auto, cpu, cuda, mps")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r} is not one of auto, float32, bfloat16, float16")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**d)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to `final_lr` at `cfg.steps` (a pure function)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.steps:
        return cfg.final_lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    ratio = (step - cfg.warmup_steps) / span
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.final_lr + coeff * (cfg.lr - cfg.final_lr)
