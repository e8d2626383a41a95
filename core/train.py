"""Training: the loop as an object that emits events and can be stopped.

Owns: `Trainer` (AdamW with weight decay on matrices only, or Muon for the hidden
matrices with AdamW for the rest; warmup + cosine LR; gradient clipping; eval on a
fixed set of batches; samples from a fixed prompt; checkpoints every N steps plus the
best val loss; exact resume from safetensors + JSON; a start-up probe that picks fp32 or
bf16 autocast and the SDPA kernel by measuring them on this CPU; bf16 + fused AdamW and
optional torch.compile on GPU, with MFU; DistributedDataParallel under `torchrun`), and the
entry point of `python -m core.train` (its parser lives in `core.cli`).

Failures end the run with a `failed` event and a reason (non-finite loss or gradient, out
of memory, bad data, a disk that is full or read-only: said in words, without paths);
`latest/` then still holds the last good checkpoint.

The trainer never prints: it calls `on_event(event)` with a dict whose `kind` is one of
step / eval / sample / checkpoint / done / stopped / failed; the CLI, the app's job
manager and the benchmarks decide what to show. Does not own: corpora and batches
(`core.data`), the file format (`core.checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .config import GPTConfig, TrainConfig, lr_at
from .data import BatchSampler, TokenSplit, fixed_batches
from .device import SDPA_BACKENDS, Placement, autocast, peak_flops, pick_device, pick_dtype
from .generate import generate
from .model import GPT
from .tokenizer import Tokenizer

EventSink = Callable[[dict], None]

# A failed write, in words a visitor understands (no path: the reason is shown to everyone).
DISK_WORDS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "the disk quota is used up",
              errno.EROFS: "the output folder is on a read-only file system",
              errno.EACCES: "no permission to write to the output folder",
              errno.EPERM: "no permission to write to the output folder"}
_OS_ERROR = re.compile(r"(?:os error|code:)\s*(\d+)")  # safetensors' and tokenizers' (Rust) IO errors


def disk_error(e: BaseException) -> str | None:
    """What went wrong with a write, in words (None when `e` is not a failed write)."""
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if code is None:
        m = _OS_ERROR.search(str(e))
        code = int(m.group(1)) if m else None
    if code is None:
        return None
    return DISK_WORDS.get(code, f"the disk refused a write ({os.strerror(code).lower()})")


class SaveFailed(Exception):
    """A checkpoint could not be written; the message says why and which step, without paths."""

# Glassbox's CPU recipe for small char/BPE models (bench/train_cpu.py compares it with
# nanoGPT's): TrainConfig overrides, and model overrides on top of a preset. Tuned on Tiny
# Shakespeare with the nano model (600-step runs): Muon on the hidden matrices tolerates a
# 6× higher peak LR than nanoGPT's AdamW (1.83 vs 2.28 val at 600 steps, batch 12), and
# the bf16 path pays for a larger batch (batch 24 reached 1.53 at 2000 steps but needed
# 400 steps to pass nanoGPT's final loss; 16 balances the two).
GLASSBOX_CPU_RECIPE: dict = dict(batch_size=16, lr=6e-3, warmup_steps=50, weight_decay=0.1, beta2=0.99,
                                 grad_clip=1.0, optimizer="muon")
GLASSBOX_CPU_MODEL: dict = {}


# --------------------------------------------------------------------------------------
# Start-up probe: the fastest CPU dtype, measured rather than assumed


CPU_CANDIDATES = (("float32", None), ("bfloat16", "math"), ("bfloat16", "flash"))


def probe_cpu(model_config: GPTConfig, batch_size: int, steps: int = 2) -> tuple[str, str | None, dict]:
    """Time forward+backward of a throwaway model on this CPU in fp32 and in bf16 autocast with
    each SDPA backend; return (dtype, sdpa backend, timings in seconds).

    The best of `steps` timed runs (after one warm-up) is kept, so a busy machine's noise
    mostly cancels. bf16 is chosen only when clearly faster (≥ 1.1×) than fp32, and then
    with the SDPA backend that is fastest for its backward pass. The global RNG is untouched."""
    times: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT(model_config)
        idx = torch.randint(0, model_config.vocab_size, (batch_size, model_config.block_size))
        for _ in range(2):  # two interleaved passes over the candidates
            for dtype_name, sdpa in CPU_CANDIDATES:
                key = f"{dtype_name}/{sdpa or 'default'}"
                for i in range(steps + 1):
                    t0 = time.perf_counter()
                    with autocast(torch.device("cpu"), pick_dtype(torch.device("cpu"), dtype_name), sdpa):
                        _, loss = model(idx, idx)
                    loss.backward()
                    model.zero_grad(set_to_none=True)
                    if i:  # the first run warms up
                        times[key] = min(times.get(key, math.inf), time.perf_counter() - t0)
    fp32 = times["float32/default"]
    best_key = min((k for k in times if k.startswith("bfloat16")), key=times.__getitem__)
    if fp32 / times[best_key] >= 1.1:
        return "bfloat16", best_key.split("/")[1], times
    return "float32", None, times


# --------------------------------------------------------------------------------------
# Optimizers


def build_optimizers(model: GPT, cfg: TrainConfig, fused: bool = False) -> list[torch.optim.Optimizer]:
    """AdamW: decay on matrices (dim ≥ 2), none on biases and norms. With 'muon', the hidden
    2-D matrices (attention and MLP weights) go to torch.optim.Muon, the rest to AdamW."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    hidden = {n for n, p in params.items() if p.dim() == 2 and ".h." in n} if cfg.optimizer == "muon" else set()
    decay = [p for n, p in params.items() if p.dim() >= 2 and n not in hidden]
    no_decay = [p for n, p in params.items() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused or None)]
    if hidden:
        opts.append(torch.optim.Muon([params[n] for n in sorted(hidden)], lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     adjust_lr_fn="match_rms_adamw"))
    return opts


def _flatten_optim(opts: list[torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], list]:
    tensors, meta = {}, []
    for j, opt in enumerate(opts):
        sd = opt.state_dict()
        scalars = {}
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{j}.{pid}.{k}"] = v
                else:
                    scalars[f"{pid}.{k}"] = v
        meta.append({"param_groups": sd["param_groups"], "scalars": scalars})
    return tensors, meta


def _unflatten_optim(opts: list[torch.optim.Optimizer], tensors: dict[str, torch.Tensor], meta: list) -> None:
    if len(meta) != len(opts):
        raise ValueError(f"the saved training state has {len(meta)} optimizer(s), this run has {len(opts)}")
    for j, opt in enumerate(opts):
        state: dict[int, dict] = {}
        for name, t in tensors.items():
            if name.startswith(f"optim.{j}."):
                _, _, pid, k = name.split(".", 3)
                state.setdefault(int(pid), {})[k] = t
        for key, v in meta[j]["scalars"].items():
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        opt.load_state_dict({"state": state, "param_groups": meta[j]["param_groups"]})


# --------------------------------------------------------------------------------------
# Distributed (torchrun)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Under torchrun (RANK/WORLD_SIZE set) join the process group: nccl on GPU, gloo on CPU."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    use_cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    return d


# --------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Train a GPT on a token split, emitting events; `stop()` ends it within one step.

    out_dir (a run folder) receives `latest/` (checkpoint + exact resume state, every
    `ckpt_interval` steps and at the end) and `best/` (lowest val loss so far).
    """

    def __init__(self, model_config: GPTConfig, train_config: TrainConfig, data: TokenSplit,
                 tokenizer: Tokenizer | None = None, out_dir: str | Path | None = None,
                 on_event: EventSink | None = None, resume_from: str | Path | None = None,
                 run_info: dict | None = None, dist: Dist | None = None):
        self.mcfg, self.cfg, self.data, self.tokenizer = model_config, train_config, data, tokenizer
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.sinks: list[EventSink] = [on_event] if on_event else []
        self.resume_from = Path(resume_from) if resume_from else None
        self.run_info = dict(run_info or {})
        self.dist = dist or Dist()
        self._stop = threading.Event()
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.best_val = math.inf
        self.step = 0
        if tokenizer is not None and tokenizer.vocab_size > model_config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than "
                             f"vocab_size={model_config.vocab_size}")
        B = train_config.batch_size
        if B % self.dist.world:
            raise ValueError(f"batch_size={B} must be divisible by the number of processes ({self.dist.world})")
        for name, split in (("train", data.train), ("val", data.val)):
            if split.numel() < model_config.block_size + 1:
                raise ValueError(f"the {name} split has {split.numel()} tokens; it needs more than block_size="
                                 f"{model_config.block_size}: use more text or a smaller block size")

    def add_sink(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _emit(self, kind: str, **data) -> None:
        if not self.dist.main:
            return
        ev = {"kind": kind, "step": self.step, "time": time.time(), **data}
        for sink in self.sinks:
            sink(ev)

    # --- set-up -----------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device("cuda" if (cfg.device == "auto" and self.dist.enabled and torch.cuda.is_available())
                                  else cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # the compute path: explicit flags win; a resumed run keeps the path it was saved with
        # (exact continuation); otherwise a CPU measures its fastest path now
        self._saved_state = ckpt.load_train_state(self.resume_from) if self.resume_from is not None else None
        saved = (self._saved_state[1].get("placement") or {}) if self._saved_state else {}
        sdpa = cfg.extra.get("sdpa", "auto")
        if sdpa not in ("auto", *SDPA_BACKENDS):
            raise ValueError(f"sdpa={sdpa!r} is not one of auto, {', '.join(SDPA_BACKENDS)}")
        sdpa = None if sdpa == "auto" else sdpa
        probe = None
        if cfg.dtype == "auto" and saved.get("device") == self.device.type:
            dtype, sdpa = pick_dtype(self.device, saved["dtype"]), saved.get("sdpa") if sdpa is None else sdpa
        elif cfg.dtype == "auto" and self.device.type == "cpu":
            answer = [None]
            if self.dist.main:
                answer = [probe_cpu(self.mcfg, max(1, cfg.batch_size // self.dist.world))]
            if self.dist.enabled:  # every rank takes rank 0's measurement: one path for all replicas
                import torch.distributed as dist

                dist.broadcast_object_list(answer, src=0)
            dtype_name, probed_sdpa, probe = answer[0]
            dtype, sdpa = pick_dtype(self.device, dtype_name), probed_sdpa if sdpa is None else sdpa
        else:
            dtype = pick_dtype(self.device, cfg.dtype)
        self.place = Placement(self.device, dtype, sdpa)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        torch.manual_seed(cfg.seed)
        self.raw_model = GPT(self.mcfg).to(self.device)
        self.optimizers = build_optimizers(self.raw_model, cfg, fused=self.device.type == "cuda")
        self.sampler = BatchSampler(self.data.train, self.mcfg.block_size, cfg.batch_size, cfg.seed)
        n_eval = min(cfg.eval_batches, 10_000)
        self.val_batches = fixed_batches(self.data.val, self.mcfg.block_size, cfg.batch_size, n_eval, cfg.seed + 1)
        self.train_eval_batches = fixed_batches(self.data.train, self.mcfg.block_size, cfg.batch_size, n_eval,
                                                cfg.seed + 2)
        if self.resume_from is not None:
            self._restore(self.resume_from)
        model: nn.Module = self.raw_model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:  # extra["compile_mode"]="reduce-overhead" adds CUDA graphs (tiny models on GPU)
            model = torch.compile(model, mode=cfg.extra.get("compile_mode") or None)
        self.model = model
        self.tokens_per_step = cfg.batch_size * self.mcfg.block_size * cfg.grad_accum
        self.peak = peak_flops(self.device)
        self._emit("start", device=str(self.device), dtype=self.place.dtype_name, sdpa=self.place.sdpa, probe=probe,
                   n_params=self.raw_model.num_params(), world_size=self.dist.world,
                   resumed=self.resume_from is not None, steps=cfg.steps, config=self.mcfg.to_dict(),
                   train=cfg.to_dict(), vocab_size=self.mcfg.vocab_size)

    def _restore(self, folder: Path) -> None:
        loaded = ckpt.load(folder, device=self.device)
        if loaded.config != self.mcfg:
            raise ValueError(f"cannot resume: the checkpoint's model config {loaded.config} differs from {self.mcfg}")
        self.raw_model.load_state_dict(loaded.model.state_dict())
        tensors, meta = self._saved_state
        if int(meta["step"]) > self.cfg.steps:
            raise ValueError(f"cannot resume: the checkpoint is at step {meta['step']}, beyond steps={self.cfg.steps}")
        _unflatten_optim(self.optimizers, {k: v.to(self.device) if not k.endswith(".step") else v
                                           for k, v in tensors.items() if k.startswith("optim.")}, meta["optim"])
        self.sampler.load_state_dict({k[len("sampler."):]: v for k, v in tensors.items() if k.startswith("sampler.")})
        torch.set_rng_state(tensors["rng.cpu"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = int(meta["step"])
        self.history = list(meta.get("history", []))
        self.evals = list(meta.get("evals", []))
        self.best_val = math.inf if meta.get("best_val") is None else float(meta["best_val"])

    # --- pieces of the loop -------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        m = self.raw_model
        was_training = m.training
        m.eval()
        out = {}
        for name, batches in (("train_loss", self.train_eval_batches), ("val_loss", self.val_batches)):
            total = 0.0
            for x, y in batches:
                with self.place.autocast():
                    _, loss = m(x.to(self.device), y.to(self.device))
                total += float(loss)
            out[name] = total / len(batches)
        m.train(was_training)
        m.clear_decode_cache()  # the weights change next step: don't keep a packed copy alive
        return out

    def sample(self) -> str:
        if self.tokenizer is None or self.cfg.sample_tokens == 0 or not self.dist.main:
            return ""
        m = self.raw_model
        was_training = m.training
        m.eval()
        ids = self.tokenizer.encode(self.cfg.sample_prompt) or [0]
        with self.place.autocast():
            new = generate(m, ids[-self.mcfg.block_size:], self.cfg.sample_tokens, temperature=0.8, top_k=50,
                           seed=self.cfg.seed, eot_id=self.tokenizer.eot_id)
        m.train(was_training)
        m.clear_decode_cache()  # the weights change next step: don't keep a packed copy alive
        return self.cfg.sample_prompt + self.tokenizer.decode(new)

    def _meta(self, **extra) -> dict:
        return {"step": self.step, "model": self.mcfg.to_dict(), "train": self.cfg.to_dict(), **self.run_info,
                "history": self.history, "evals": self.evals,
                "best_val": None if math.isinf(self.best_val) else self.best_val,
                **extra}

    def save(self, name: str = "latest", with_state: bool = True) -> Path | None:
        if self.out_dir is None or not self.dist.main:
            return None
        state = state_meta = None
        if with_state:
            opt_t, opt_meta = _flatten_optim(self.optimizers)
            state = {**opt_t, **{f"sampler.{k}": v for k, v in self.sampler.state_dict().items()},
                     "rng.cpu": torch.get_rng_state()}
            if self.device.type == "cuda":
                state["rng.cuda"] = torch.cuda.get_rng_state(self.device)
            state_meta = {"step": self.step, "optim": opt_meta, "history": self.history, "evals": self.evals,
                          "placement": {"device": self.device.type, "dtype": self.place.dtype_name,
                                        "sdpa": self.place.sdpa},
                          "best_val": None if math.isinf(self.best_val) else self.best_val}
        try:
            path = ckpt.save(self.out_dir / name, self.raw_model, self.tokenizer, self._meta(), state, state_meta)
        except Exception as e:  # safetensors and tokenizers raise their own types for an OSError
            words = disk_error(e)
            if words is None:
                raise
            raise SaveFailed(f"{words} while saving step {self.step} ({name}/)") from None
        self._emit("checkpoint", path=str(path), name=name)
        return path

    def _set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = lr

    def train_step(self) -> tuple[float, float]:
        """One optimizer step (with gradient accumulation); returns (loss, grad norm)."""
        cfg, dev = self.cfg, self.device
        r, w = self.dist.rank, self.dist.world
        total = torch.zeros((), device=dev)
        for micro in range(cfg.grad_accum):
            x, y = self.sampler.next()  # the global batch: the same on every rank
            if w > 1:
                per = x.size(0) // w
                x, y = x[r * per:(r + 1) * per], y[r * per:(r + 1) * per]
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            sync = self.dist.enabled and micro < cfg.grad_accum - 1
            ctx = self.model.no_sync() if sync else contextlib.nullcontext()
            with ctx:
                with self.place.autocast():
                    _, loss = self.model(x, y)
                (loss / cfg.grad_accum).backward()
            total += loss.detach()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss = total / cfg.grad_accum
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        return float(loss), float(norm)

    def _replicas_identical(self) -> bool:
        """Under DDP: do all ranks hold bit-identical weights? (per-tensor sums, compared exactly)"""
        import torch.distributed as dist

        sums = torch.stack([p.detach().double().sum() for p in self.raw_model.parameters()])
        gathered = [torch.empty_like(sums) for _ in range(self.dist.world)]
        dist.all_gather(gathered, sums)
        return all(torch.equal(gathered[0], g) for g in gathered[1:])

    # --- the loop ----------------------------------------------------------------------
    def _should_stop(self) -> bool:
        """The stop flag; under torchrun every rank stops at the same step (any rank's flag counts)."""
        flag = self._stop.is_set()
        if self.dist.enabled:
            import torch.distributed as dist

            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def run(self) -> dict:
        """Train to `steps` (or until stopped). Returns the final event (done / stopped / failed)."""
        try:
            self._setup()
        except torch.OutOfMemoryError:
            return self._final("failed", reason="out of memory while building the model: use a smaller model")
        except (ValueError, RuntimeError) as e:
            return self._final("failed", reason=f"could not start: {e}")
        try:
            self._check_out_dir()
        except OSError as e:
            words = disk_error(e) or "the output folder cannot be written"
            return self._final("failed", reason=f"could not start: {words}")
        cfg = self.cfg
        self.raw_model.train()
        t_start = time.perf_counter()
        steps_timed, time_in_steps = 0, 0.0
        last_good = str(self.resume_from) if self.resume_from is not None else None
        good_step = self.step if self.resume_from is not None else None  # of the last `latest/` saved
        try:
            while self.step < cfg.steps:
                if self._should_stop():
                    path = self.save("latest")
                    return self._final("stopped", path=str(path) if path else None)
                lr = lr_at(self.step, cfg)
                self._set_lr(lr)
                t0 = time.perf_counter()
                loss, norm = self.train_step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    what = f"the loss became {loss}" if not math.isfinite(loss) else f"the gradient norm became {norm}"
                    return self._final("failed", reason=f"{what} at step {self.step}: training diverged (try a lower "
                                       "learning rate); the last good checkpoint is kept", last_checkpoint=last_good)
                self.step += 1
                if self.step > 1:  # the first step includes warm-up costs
                    steps_timed += 1
                    time_in_steps += dt
                tps = self.tokens_per_step / dt
                avg = time_in_steps / steps_timed if steps_timed else dt
                self.history.append({"step": self.step, "loss": loss, "lr": lr})
                if self.step % cfg.log_interval == 0 or self.step == cfg.steps:
                    mfu = (self.mcfg.flops_per_token() * tps / self.peak) if self.peak else None
                    self._emit("step", loss=loss, lr=lr, grad_norm=norm, tokens_per_s=tps, dt=dt,
                               elapsed=time.perf_counter() - t_start, eta=avg * (cfg.steps - self.step),
                               total_steps=cfg.steps, mfu=mfu)
                is_last = self.step == cfg.steps
                if (cfg.eval_interval and self.step % cfg.eval_interval == 0) or is_last:
                    ev = self.evaluate()
                    self.evals.append({"step": self.step, **ev})
                    self._emit("eval", **ev)
                    text = self.sample()
                    if text:
                        self._emit("sample", text=text)
                    if ev["val_loss"] < self.best_val:
                        self.best_val = ev["val_loss"]
                        self.save("best", with_state=False)
                elif cfg.sample_interval and self.step % cfg.sample_interval == 0:
                    self._emit("sample", text=self.sample())
                if (cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0) or is_last:
                    path = self.save("latest")
                    last_good, good_step = (str(path), self.step) if path else (last_good, good_step)
            extra = {"replicas_identical": self._replicas_identical()} if self.dist.enabled else {}
            return self._final("done", path=str(self.out_dir / "latest") if self.out_dir else None, **extra)
        except SaveFailed as e:
            kept = (f"the last good checkpoint is step {good_step} (latest/)" if good_step is not None
                    else "no checkpoint was saved before")
            return self._final("failed", reason=f"{e}; {kept}", last_checkpoint=last_good)
        except torch.OutOfMemoryError:
            return self._final("failed", reason=f"out of memory at step {self.step}: use a smaller batch, block "
                               "size or model", last_checkpoint=last_good)
        except RuntimeError as e:
            if "can't allocate memory" in str(e) or "out of memory" in str(e).lower():  # the CPU allocator's words
                return self._final("failed", reason=f"out of memory at step {self.step}: use a smaller batch, "
                                   "block size or model", last_checkpoint=last_good)
            return self._final("failed", reason=f"error at step {self.step}: {e}", last_checkpoint=last_good)
        except (ValueError, IndexError) as e:
            return self._final("failed", reason=f"bad data at step {self.step}: {e}", last_checkpoint=last_good)

    def _check_out_dir(self) -> None:
        """Fail at the start, not at the first checkpoint, when the output folder cannot be written."""
        if self.out_dir is None or not self.dist.main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        probe = self.out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()

    def _final(self, kind: str, **data) -> dict:
        ev = {"kind": kind, "step": self.step, "best_val": None if math.isinf(self.best_val) else self.best_val, **data}
        self._emit(kind, **{k: v for k, v in ev.items() if k not in ("kind", "step")})
        return ev


if __name__ == "__main__":
    import sys

    from .cli import train_main

    sys.exit(train_main())
