"""Training: the loop as an object that emits events and can be stopped.

Owns: `Trainer` (AdamW with weight decay on matrices only, or Muon for the hidden
matrices with AdamW for the rest; warmup + cosine LR; gradient clipping; eval on a
fixed set of batches; samples from a fixed prompt; checkpoints every N steps plus the
best val loss; exact resume from safetensors + JSON (`core.resume`); the compute path (dtype, SDPA
kernel, Muon's orthogonalisation dtype) from `core.probe`, measured on this CPU; bf16 + fused AdamW
and optional torch.compile on GPU, with MFU; DistributedDataParallel under `torchrun`), and
`run(spec, on_event, stop)`, the one assembly of a run from a `core.spec.RunSpec` (corpus →
tokenizer → token split → model → optimizer → Trainer), which the CLI, the app's job manager
and its child process (`python -m core.train --spec run.json --json`) all call. The flags
live in `core.cli`; this module's `__main__` hands it `run`.

Failures end the run with a `failed` event and a reason (non-finite loss or gradient, out
of memory, bad data, a disk that is full or read-only: said in words, without paths);
`latest/` then still holds the last good checkpoint.

The trainer never prints: it calls `on_event(event)` with a dict whose `kind` is one of
prepare (with a `stage`, before the start) / start / step / eval / sample / checkpoint /
snapshot / done / stopped / failed; the CLI, the app's job manager and the benchmarks decide
what to show. Does not own: corpora and batches (`core.data`), the file format
(`core.checkpoint`), the snapshot schedule (`core.snapshots`).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .checkpoint import SaveFailed, disk_error
from .config import RECIPE, GPTConfig, TrainConfig, lr_at
from .data import BatchSampler, TokenSplit, fixed_batches, load_corpus, split_tokens
from .device import Placement, peak_flops, pick_device, pick_dtype
from .dist import Dist, init_distributed, teardown
from .generate import generate
from .model import GPT
from .optim import build_optimizers
from .probe import choose_path
from .resume import flatten_optim as _flatten_optim
from .resume import resumable
from .resume import unflatten_optim as _unflatten_optim
from .snapshots import Snapshots
from .spec import RunSpec
from .tokenizer import Tokenizer

EventSink = Callable[[dict], None]

# Glassbox's CPU recipe for small char/BPE models (bench/train_cpu.py compares it with
# nanoGPT's): TrainConfig overrides, and model overrides on top of a preset. Tuned on Tiny
# Shakespeare with the nano model (600-step runs): Muon on the hidden matrices tolerates a
# 6× higher peak LR than nanoGPT's AdamW (1.83 vs 2.28 val at 600 steps, batch 12), and
# the bf16 path pays for a larger batch (batch 24 reached 1.53 at 2000 steps but needed
# 400 steps to pass nanoGPT's final loss; 16 balances the two).
GLASSBOX_CPU_RECIPE: dict = dict(RECIPE)  # batch 16, lr 6e-3, warmup 50, wd 0.1, beta2 0.99, clip 1.0, muon
GLASSBOX_CPU_MODEL: dict = {}


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
                 run_info: dict | None = None, dist: Dist | None = None, stop: threading.Event | None = None):
        self.mcfg, self.cfg, self.data, self.tokenizer = model_config, train_config, data, tokenizer
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.sinks: list[EventSink] = [on_event] if on_event else []
        self.resume_from = Path(resume_from) if resume_from else None
        self.run_info = dict(run_info or {})
        self.dist = dist or Dist()
        self._stop = stop if stop is not None else threading.Event()  # `stop` lets a caller share its flag
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
        self.device = pick_device("cuda" if (cfg.device == "auto" and self.dist.enabled and torch.cuda.is_available())
                                  else cfg.device)
        if self.device.type == "cpu":  # tiny attention weights turn denormal as training sharpens it: slow on every x86 CPU
            torch.set_flush_denormal(True)  # before the thread pool starts, whose threads inherit the mode
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # the compute path: explicit flags win; a resumed run keeps the path it was saved with
        # (exact continuation); otherwise a CPU measures its fastest path now
        self._saved_state = ckpt.load_train_state(self.resume_from) if self.resume_from is not None else None
        saved = (self._saved_state[1].get("placement") or {}) if self._saved_state else {}
        if cfg.dtype == "auto" and self.device.type == "cpu" and not saved:
            self._emit("prepare", stage="probing CPU speed")
        # every rank takes rank 0's choice: one path for all replicas
        answer = [choose_path(self.device, self.mcfg, cfg, saved, max(1, cfg.batch_size // self.dist.world),
                              cfg.extra.get("cache_dir")) if self.dist.main or self.device.type != "cpu" else None]
        if self.dist.enabled and self.device.type == "cpu":
            import torch.distributed as dist

            dist.broadcast_object_list(answer, src=0)
        self.choices = answer[0]
        dtype, sdpa = pick_dtype(self.device, self.choices["dtype"]), self.choices["sdpa"]
        self.place = Placement(self.device, dtype, sdpa)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self._emit("prepare", stage="building model")
        torch.manual_seed(cfg.seed)
        self.raw_model = GPT(self.mcfg).to(self.device)
        self.optimizers = build_optimizers(self.raw_model, cfg, fused=self.device.type == "cuda",
                                           ortho=self.choices["ortho"])
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
            self._emit("prepare", stage="compiling")
            model = torch.compile(model, mode=cfg.extra.get("compile_mode") or None)
        self.model = model
        self.tokens_per_step = cfg.batch_size * self.mcfg.block_size * cfg.grad_accum
        self.peak = peak_flops(self.device)
        self._emit("start", device=str(self.device), dtype=self.place.dtype_name, sdpa=self.place.sdpa,
                   probe=self.choices["timings"] or None, choices=self.choices,
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

    def save(self, name: str = "latest", with_state: bool = True, **meta) -> Path | None:
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
                                        "sdpa": self.place.sdpa, "ortho": self.choices["ortho"]},
                          "best_val": None if math.isinf(self.best_val) else self.best_val}
        try:
            path = ckpt.save(self.out_dir / name, self.raw_model, self.tokenizer, self._meta(**meta), state, state_meta)
        except Exception as e:  # safetensors and tokenizers raise their own types for an OSError
            words = disk_error(e)
            if words is None:
                raise
            where = "a snapshot" if "/" in name else f"{name}/"  # snapshots/step-N: a visitor sees no path
            raise SaveFailed(f"{words} while saving step {self.step} ({where})") from None
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
        flushed = float(torch.tensor([1e-39]) * 0.5) == 0.0  # the caller's denormal mode, kept for it
        try:
            return self._run()
        finally:
            torch.set_flush_denormal(flushed)

    def _run(self) -> dict:
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
        steps_timed, time_in_steps, first_step = 0, 0.0, self.step + 1  # shown whatever the log interval
        last_good = str(self.resume_from) if self.resume_from is not None else None
        good_step = self.step if self.resume_from is not None else None  # of the last `latest/` saved
        try:
            self.snaps = Snapshots.for_trainer(self)
            self.snaps and self.snaps.save_if_due(self)  # step 0 (a resumed run: only if still due)
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
                if self.step in (first_step, cfg.steps) or self.step % cfg.log_interval == 0:
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
                self.snaps and self.snaps.save_if_due(self)
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


# --------------------------------------------------------------------------------------
# The one assembly of a run


def run(spec: RunSpec, on_event: EventSink | None = None, stop: threading.Event | None = None, *,
        command: str | None = None) -> dict:
    """Run `spec` to the end: corpus → tokenizer → token split → model → optimizer → Trainer.

    Events go to `on_event` (on rank 0 under torchrun), `prepare` ones first, naming each stage;
    setting `stop` ends the run within one step (before training: at step 0, still saving
    `latest/`). Returns the final event; a run that failed while preparing (bad data, no
    checkpoint to resume) has a `stage` key in it, naming where."""
    dist = init_distributed(spec.device)
    stop = stop if stop is not None else threading.Event()
    stage = ""

    def emit(ev: dict) -> None:
        if on_event is not None and dist.main:
            on_event(ev)

    def enter(name: str) -> None:
        nonlocal stage
        stage = name
        emit({"kind": "prepare", "step": 0, "time": time.time(), "stage": name})

    try:
        if not spec.out:
            raise ValueError("the run spec has no out folder: say where the run goes")
        resume_dir = resumable(spec.out, dist) if spec.resume else None
        enter("reading corpus")
        raw = load_corpus(spec.corpus, text=spec.text or None, path=spec.text_file, seed=spec.seed)
        if resume_dir is not None:  # the tokenizer the run was trained with
            tok = Tokenizer.from_file(resume_dir / ckpt.TOKENIZER_FILE)
        elif spec.tokenizer == "bpe":
            enter("training BPE tokenizer")
            tok = Tokenizer.train_bpe(raw, spec.vocab_size)
        else:
            tok = Tokenizer.train_char(raw)
        enter("tokenizing")
        ids = tok.encode(raw)
        split = split_tokens(ids, val_fraction=spec.val_fraction)
        info = {"corpus": spec.corpus, "corpus_chars": len(raw), "tokenizer": tok.kind, "vocab_size": tok.vocab_size,
                "tokens": len(ids)}
        trainer = Trainer(spec.model_config(tok.vocab_size), spec.train_config(), split, tok, out_dir=spec.out,
                          on_event=on_event, resume_from=resume_dir, dist=dist, stop=stop,
                          run_info={"data": info, "spec": spec.public(), "command": command or "core.train.run"})
    except (ValueError, OSError) as e:
        ev = {"kind": "failed", "step": 0, "time": time.time(), "reason": str(e), "stage": stage or "checking"}
        emit(ev)
        return ev
    final = trainer.run()
    if dist.enabled:
        del trainer  # the DDP wrapper goes before the process group
        teardown(dist)
    return final


if __name__ == "__main__":  # the flags and the printing live in core.cli
    from .cli import main
    raise SystemExit(main(run))
