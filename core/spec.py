"""A run spec: everything one training run needs, in one validated, JSON-able object.

Owns: `RunSpec` (the data, the model, the training settings, where the run goes, and
`resume`), its one validation (`__post_init__`; `check_server_limits()` adds the web
server's narrower limits), `to_json` / `from_json` (unknown keys refused), the trainer's
inputs derived from it (`model_config`, `train_config`), and the server's limits
(`SERVER_LIMITS`: the /train_start API checks them and the Train tab's sliders use them).
The recipe's numbers are `core.config.RECIPE`, read here as the defaults.

The flag CLI (`core.cli`), the Train tab (`app.jobs.form`) and the job manager each build a
RunSpec; `core.train.run(spec, ...)` runs one; the job manager's child process reads one
from a file (`python -m core.train --spec run.json --json`).
Does not own: running it (`core.train`), the flags (`core.cli`), the form (`app.jobs`).
Errors are `ValueError`s naming the field, the value (at most ~60 characters of it) and the limit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import PRESETS, RECIPE, GPTConfig, TrainConfig
from .data import CORPUS_CHOICES, validate_text
from .device import check_available
from .snapshots import MAX_SNAPSHOTS
from .tokenizer import MAX_VOCAB_SIZE, MIN_BPE_VOCAB_SIZE

SPEC_VERSION = 1
_TRAIN = TrainConfig()  # the trainer's defaults, which a RunSpec shares

TOKENIZERS = ("char", "bpe")
OPTIMIZERS = ("adamw", "muon")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SDPA = ("auto", "math", "flash", "efficient", "cudnn")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")
MODEL_SIZES = ("n_layer", "n_head", "n_embd", "block_size")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# (low, high) of every number any run accepts: far beyond what a CPU trains, small enough to
# refuse nonsense. The model's own sizes are checked by GPTConfig.
RANGES: dict[str, tuple[float, float]] = {
    "vocab_size": (1, MAX_VOCAB_SIZE), "val_fraction": (0.001, 0.5), "dropout": (0.0, 0.99),
    "steps": (1, 10_000_000), "batch_size": (1, 65_536), "lr": (1e-9, 10.0), "min_lr": (0.0, 10.0),
    "warmup": (0, 10_000_000), "weight_decay": (0.0, 10.0), "beta2": (0.0, 1.0), "grad_clip": (0.0, 1e6),
    "grad_accum": (1, 65_536), "eval_interval": (0, 10_000_000), "eval_batches": (1, 100_000),
    "ckpt_interval": (0, 10_000_000), "sample_interval": (0, 10_000_000), "sample_tokens": (0, 100_000),
    "log_interval": (1, 10_000_000), "seed": (0, 2**63 - 1), "threads": (0, 4096), "snapshots": (0, MAX_SNAPSHOTS),
    **{k: (1, 1_000_000) for k in MODEL_SIZES},
}
INTS = {"vocab_size", "steps", "batch_size", "warmup", "grad_accum", "eval_interval", "eval_batches", "ckpt_interval",
        "sample_interval", "sample_tokens", "log_interval", "seed", "threads", "snapshots", *MODEL_SIZES}

# The web server's limits: what /train_start accepts and the Train tab's sliders offer.
SERVER_LIMITS: dict[str, tuple[float, float]] = {
    "vocab_size": (257, 8192), "n_layer": (1, 12), "n_head": (1, 16), "n_embd": (8, 1024), "block_size": (8, 1024),
    "steps": (1, 100_000), "batch_size": (1, 256), "lr": (1e-6, 1.0), "warmup": (0, 100_000),
    "weight_decay": (0.0, 1.0), "dropout": (0.0, 0.9), "seed": (0, 2**31 - 1), "eval_interval": (0, 100_000),
    "eval_batches": (1, 200), "snapshots": (0, 48),
}
SERVER_DEVICES = ("auto", "cpu", "cuda", "mps")  # those the machine lacks are refused in words
MAX_PASTED_CHARS = 1_000_000  # pasted text; bigger corpora come as files
MAX_PROMPT_CHARS = 200  # the sample prompt
MAX_TRAIN_BYTES = 8 * 1024**3  # the training memory one run may need (GLASSBOX_MAX_TRAIN_BYTES overrides it)
CHAR_VOCAB_GUESS = 256  # a character vocabulary's size before the corpus is tokenized


def shown(value: Any, limit: int = 60) -> str:
    """A bad value as an error message quotes it: its repr, cut to `limit` characters."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "…"


def check_name(name: Any) -> str:
    """A run name that is safe as a folder name under a runs folder."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"run name {shown(name)} is not allowed: use 1 to 64 letters, digits, '-' or '_'")
    return name


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _number(name: str, value: Any, lo: float, hi: float) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {shown(value)}")
    if name in INTS:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{name} must be a whole number, got {shown(value)}")
            value = int(value)
    elif not math.isfinite(value):
        raise ValueError(f"{name}={value} is not a finite number")
    else:
        value = float(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} is out of range: it must be between {_fmt(lo)} and {_fmt(hi)}")
    return value


def check_server_value(name: str, value: Any) -> int | float:
    """One number against the server's limit for it (`SERVER_LIMITS`)."""
    lo, hi = SERVER_LIMITS[name]
    return _number(name, value, lo, hi)


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {shown(value)} is unknown: choose one of {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class RunSpec:
    """One training run. Sizes left None come from `preset`; `preset="custom"` needs all four."""

    # data
    corpus: str = "shakespeare"  # shakespeare, a synthetic corpus, "text" (with `text`) or "file" (`text_file`)
    text: str = ""
    text_file: str | None = None
    tokenizer: str = "char"
    vocab_size: int = 512  # BPE only: a character vocabulary is the corpus's characters
    val_fraction: float = 0.1
    # model
    preset: str = "nano"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    dropout: float | None = None
    bias: bool = True
    # training (the recipe: core.config.RECIPE)
    steps: int = _TRAIN.steps
    batch_size: int = RECIPE["batch_size"]
    lr: float = RECIPE["lr"]
    min_lr: float | None = None  # the cosine's end; None: lr / 10
    warmup: int = RECIPE["warmup_steps"]
    weight_decay: float = RECIPE["weight_decay"]
    beta2: float = RECIPE["beta2"]
    grad_clip: float = RECIPE["grad_clip"]
    optimizer: str = RECIPE["optimizer"]
    grad_accum: int = 1
    eval_interval: int = _TRAIN.eval_interval  # 0: only at the end
    eval_batches: int = _TRAIN.eval_batches
    ckpt_interval: int = _TRAIN.ckpt_interval  # 0: only at the end
    sample_interval: int = 0  # 0: at each eval
    sample_prompt: str = _TRAIN.sample_prompt
    sample_tokens: int = _TRAIN.sample_tokens
    log_interval: int = 10
    seed: int = _TRAIN.seed
    snapshots: int = 0  # weight-only snapshots over the run, dense early (core.snapshots); 0: none
    # speed
    device: str = "auto"
    dtype: str = "auto"
    sdpa: str = "auto"
    compile: bool = False
    compile_mode: str | None = None
    threads: int = 0  # 0: torch's default
    # where the run goes
    out: str = ""  # the run folder: latest/ and best/ go here
    name: str = ""  # a label (the app's run name); "" is allowed
    resume: bool = False  # continue from out/latest exactly where it stopped

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("text_file", "out"):  # a Path is welcome; the spec keeps text (JSON)
            if isinstance(getattr(self, name), Path):
                set_(self, name, str(getattr(self, name)))
        for name, (lo, hi) in RANGES.items():
            v = getattr(self, name)
            if v is not None or name not in (*MODEL_SIZES, "dropout", "min_lr"):
                set_(self, name, _number(name, v, lo, hi))
        for name in ("corpus", "text", "tokenizer", "preset", "optimizer", "device", "dtype", "sdpa", "out", "name",
                     "sample_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be text, got {shown(getattr(self, name))}")
        for name in ("bias", "compile", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {shown(getattr(self, name))}")
        set_(self, "corpus", self.corpus.strip().lower())
        _choice("corpus", self.corpus, tuple(CORPUS_CHOICES))
        for name, allowed in (("tokenizer", TOKENIZERS), ("optimizer", OPTIMIZERS), ("device", DEVICES),
                              ("dtype", DTYPES), ("sdpa", SDPA), ("compile_mode", COMPILE_MODES),
                              ("preset", (*PRESETS, "custom"))):
            _choice(name, getattr(self, name), allowed)
        if self.tokenizer == "bpe" and not MIN_BPE_VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size={self.vocab_size} is out of range: byte-level BPE needs between "
                             f"{MIN_BPE_VOCAB_SIZE} and {MAX_VOCAB_SIZE} tokens")
        if self.corpus == "text":
            validate_text(self.text)  # not empty, long enough, valid Unicode
        if self.corpus == "file" and not (isinstance(self.text_file, str) and self.text_file):
            raise ValueError("corpus 'file' needs text_file, the path of a UTF-8 .txt file")
        if self.text_file is not None and self.corpus != "file":
            raise ValueError(f"text_file is only for corpus 'file', not {shown(self.corpus)}")
        if self.preset == "custom" and any(getattr(self, k) is None for k in MODEL_SIZES):
            missing = [k for k in MODEL_SIZES if getattr(self, k) is None]
            raise ValueError(f"preset 'custom' needs every model size: {', '.join(missing)} missing")
        n_embd, n_head = self._size("n_embd"), self._size("n_head")
        if n_embd % n_head:
            raise ValueError(f"width n_embd={n_embd} must be divisible by heads n_head={n_head} "
                             "(each head gets n_embd / n_head numbers)")
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is above lr={self.lr}: the cosine decays to min_lr")
        if self.name:
            check_name(self.name)
        self.model_config()  # GPTConfig's own checks (e.g. the preset's sizes)

    def _size(self, name: str) -> int:
        v = getattr(self, name)
        return PRESETS[self.preset][name] if v is None else v

    # --- the trainer's inputs -------------------------------------------------------------
    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        """The architecture for a tokenizer of `vocab_size` tokens (None: estimated). A preset
        with its own vocabulary (demo, gpt2) keeps it unless the tokenizer needs more."""
        base = PRESETS.get(self.preset, {})
        v = vocab_size or (self.vocab_size if self.tokenizer == "bpe" else CHAR_VOCAB_GUESS)
        v = max(v, base.get("vocab_size", 0))
        return GPTConfig(vocab_size=v, **{k: self._size(k) for k in MODEL_SIZES},
                         dropout=float(self.dropout if self.dropout is not None else base.get("dropout", 0.0)),
                         bias=self.bias)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, min_lr=self.min_lr, warmup_steps=self.warmup,
            weight_decay=self.weight_decay, beta2=self.beta2, grad_clip=self.grad_clip, optimizer=self.optimizer,
            grad_accum=self.grad_accum, eval_interval=self.eval_interval, eval_batches=self.eval_batches,
            ckpt_interval=self.ckpt_interval, sample_interval=self.sample_interval, sample_prompt=self.sample_prompt,
            sample_tokens=self.sample_tokens, log_interval=self.log_interval, seed=self.seed, snapshots=self.snapshots,
            device=self.device,
            dtype=self.dtype, compile=self.compile, threads=self.threads,
            extra={"sdpa": self.sdpa, **({"compile_mode": self.compile_mode} if self.compile_mode else {})})

    # --- the web server's narrower limits ---------------------------------------------------
    @classmethod
    def for_server(cls, max_train_bytes: int = MAX_TRAIN_BYTES, **values: Any) -> RunSpec:
        """A spec from the web server's inputs: its own limits are checked first (so the message
        names the server's limit), then the spec's, then `check_server_limits`."""
        for name in SERVER_LIMITS:
            if values.get(name) is not None:
                values[name] = check_server_value(name, values[name])
        return cls(**values).check_server_limits(max_train_bytes)

    def check_server_limits(self, max_train_bytes: int = MAX_TRAIN_BYTES) -> RunSpec:
        """Refuse what the Train tab's sliders would not offer (the /train_start API checks the same)."""
        for name in SERVER_LIMITS:
            v = self._size(name) if name in MODEL_SIZES else getattr(self, name)
            if v is not None:
                check_server_value(name, v)
        _choice("device", self.device, SERVER_DEVICES)
        if len(self.text) > MAX_PASTED_CHARS:
            raise ValueError(f"the pasted text is {len(self.text):,} characters, over the limit of "
                             f"{MAX_PASTED_CHARS:,}: upload a .txt file instead")
        if self.warmup > self.steps:
            raise ValueError(f"warmup={self.warmup} is longer than the run (steps={self.steps})")
        if len(self.sample_prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"the sample prompt is {len(self.sample_prompt)} characters, over the limit of "
                             f"{MAX_PROMPT_CHARS}")
        need = self.model_config().training_memory_bytes(self.batch_size)
        if need > max_train_bytes:
            raise ValueError(f"this model and batch need about {need / 1e9:.1f} GB to train, over this server's "
                             f"limit of {max_train_bytes / 1e9:.1f} GB: use fewer layers, a smaller width, "
                             "block size or batch")
        check_available(self.device)
        return self

    # --- serialisation ------------------------------------------------------------------------
    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"spec_version": SPEC_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def public(self) -> dict:
        """The fields without the pasted text (for meta.json, status and config diffs)."""
        d = dataclasses.asdict(self)
        d["text"] = f"{len(self.text):,} characters" if self.text else ""
        return d

    @classmethod
    def from_dict(cls, d: Any) -> RunSpec:
        if not isinstance(d, dict):
            raise ValueError(f"a run spec must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ValueError(f"spec_version={shown(version)} is not supported (this Glassbox reads {SPEC_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown run spec keys: {shown(', '.join(unknown))} (known: {', '.join(sorted(known))})")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ValueError(f"a run spec must be JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json(), encoding="utf-8")
        return path
