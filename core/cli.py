"""The command lines: `python -m core.train FLAGS` or `python -m core.train --spec run.json`,
and `python -m core.generate CHECKPOINT --prompt ...` (`generate_main`).

Owns: the flags (each names a `core.spec.RunSpec` field, and its default is RunSpec's),
turning them (or a spec file) into a RunSpec, printing a run's events (human lines, or one
JSON object per line with `--json`), turning SIGTERM / SIGINT into a clean stop (OUT/latest
saved, a `stopped` event, exit 0), and `--export`. Does not own: the run itself
(`core.train.run`, which `core.train`'s `__main__` hands to `main`: this module never imports
the trainer, so the two do not import each other).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import checkpoint as ckpt
from .beam import beam_search
from .config import PRESETS
from .data import SYNTHETIC_CORPORA
from .generate import generate
from .spec import COMPILE_MODES, DEVICES, DTYPES, OPTIMIZERS, SDPA, TOKENIZERS, RunSpec

D = RunSpec()  # every flag's default
# flags whose dest is a RunSpec field of the same name (--no-bias is the one inverted flag)
SPEC_FLAGS = ("corpus", "text_file", "tokenizer", "vocab_size", "val_fraction", "preset", "n_layer", "n_head",
              "n_embd", "block_size", "dropout", "steps", "batch_size", "lr", "min_lr", "warmup", "weight_decay",
              "beta2", "grad_clip", "optimizer", "grad_accum", "eval_interval", "eval_batches", "ckpt_interval",
              "sample_interval", "sample_prompt", "sample_tokens", "log_interval", "seed", "device", "dtype", "sdpa",
              "compile", "compile_mode", "threads", "out", "resume", "snapshots")
WITH_SPEC = ("spec", "json", "resume", "spec_from_stdin")  # what may go with --spec


def build_parser() -> argparse.ArgumentParser:
    corpora = ["shakespeare", *SYNTHETIC_CORPORA, "file"]
    p = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train a small GPT and write a checkpoint folder (OUT/latest and OUT/best).",
        epilog="Events: with --json, one JSON object per line (keys 'kind' and 'step'; kinds prepare, start, step, "
               "eval, sample, checkpoint, snapshot, done, stopped, failed), flushed. SIGTERM or SIGINT stops within "
               "one step, "
               "saves OUT/latest (resumable with --resume), prints a 'stopped' event and exits 0. Exit codes: 0 "
               "done/stopped, 1 failed while training, 2 bad arguments or data. Distributed: torchrun "
               "--nproc_per_node=N -m core.train ... (gloo on CPU, nccl on GPU; rank 0 logs and saves). "
               "--spec run.json takes the whole run from a RunSpec file (core.spec) instead of the flags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--corpus", default=None, choices=corpora,
                   help="training text: Tiny Shakespeare, a synthetic corpus, or 'file' (with --text-file); "
                        "default shakespeare, or file when --text-file is given")
    g.add_argument("--text-file", help="a UTF-8 .txt file to train on (implies --corpus file)")
    g.add_argument("--tokenizer", default=D.tokenizer, choices=TOKENIZERS, help="character-level or byte-level BPE")
    g.add_argument("--vocab-size", type=int, default=D.vocab_size, help="BPE vocabulary size (trained on the corpus)")
    g.add_argument("--val-fraction", type=float, default=D.val_fraction,
                   help="share of the tokens held out for validation")
    m = p.add_argument_group("model (a preset, each size overridable)")
    m.add_argument("--preset", default=D.preset, choices=list(PRESETS), help="model preset")
    m.add_argument("--n-layer", type=int, help="transformer blocks (default: the preset's)")
    m.add_argument("--n-head", type=int, help="attention heads (default: the preset's)")
    m.add_argument("--n-embd", type=int, help="width; divisible by --n-head (default: the preset's)")
    m.add_argument("--block-size", type=int, help="context length in tokens (default: the preset's)")
    m.add_argument("--dropout", type=float, help="dropout probability (default: 0)")
    m.add_argument("--no-bias", action="store_true", help="no biases in linear layers and LayerNorms")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=D.steps, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=D.batch_size,
                   help="global batch (split across torchrun processes)")
    t.add_argument("--lr", type=float, default=D.lr, help="peak learning rate")
    t.add_argument("--min-lr", type=float, default=D.min_lr, help="final learning rate of the cosine (default: lr/10)")
    t.add_argument("--warmup", type=int, default=D.warmup, help="linear warm-up steps")
    t.add_argument("--weight-decay", type=float, default=D.weight_decay, help="AdamW decay (matrices only)")
    t.add_argument("--beta2", type=float, default=D.beta2, help="AdamW beta2")
    t.add_argument("--grad-clip", type=float, default=D.grad_clip, help="clip the gradient norm (0: off)")
    t.add_argument("--optimizer", default=D.optimizer, choices=OPTIMIZERS,
                   help="adamw, or muon (torch.optim.Muon on hidden matrices + AdamW on the rest)")
    t.add_argument("--grad-accum", type=int, default=D.grad_accum, help="micro-batches per optimizer step")
    t.add_argument("--eval-interval", type=int, default=D.eval_interval, help="eval every N steps (0: only at the end)")
    t.add_argument("--eval-batches", type=int, default=D.eval_batches, help="fixed batches per eval")
    t.add_argument("--ckpt-interval", type=int, default=D.ckpt_interval,
                   help="save OUT/latest every N steps (0: at the end)")
    t.add_argument("--sample-interval", type=int, default=D.sample_interval,
                   help="sample every N steps (0: at each eval)")
    t.add_argument("--sample-prompt", default=D.sample_prompt, help="prompt for the samples")
    t.add_argument("--sample-tokens", type=int, default=D.sample_tokens, help="tokens per sample (0: no samples)")
    t.add_argument("--log-interval", type=int, default=D.log_interval, help="a step event every N steps, and after the first")
    t.add_argument("--seed", type=int, default=D.seed, help="seed for init, batches and dropout")
    x = p.add_argument_group("speed")
    x.add_argument("--device", default=D.device, choices=DEVICES, help="where to train")
    x.add_argument("--dtype", default=D.dtype, choices=DTYPES,
                   help="autocast dtype; auto: bf16 on GPU, on CPU whichever a start-up probe measures faster")
    x.add_argument("--sdpa", default=D.sdpa, choices=SDPA,
                   help="pin the attention kernel; auto: probed on CPU, torch's choice on GPU")
    x.add_argument("--compile", action="store_true", help="torch.compile the model")
    x.add_argument("--compile-mode", default=D.compile_mode, choices=[c for c in COMPILE_MODES if c],
                   help="torch.compile mode (reduce-overhead uses CUDA graphs)")
    x.add_argument("--threads", type=int, default=D.threads, help="torch threads (0: torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", help="run folder: latest/ and best/ checkpoints go here (required without --spec)")
    o.add_argument("--resume", action="store_true", help="continue from OUT/latest exactly where it stopped")
    o.add_argument("--snapshots", type=int, default=D.snapshots,
                   help="weight-only snapshots over the run, dense early, in OUT/snapshots/step-N (0: none)")
    o.add_argument("--export", help="after training, copy the best checkpoint (without training state) here")
    o.add_argument("--json", action="store_true", help="print one JSON object per event and line")
    o.add_argument("--spec", metavar="RUN.json",
                   help="take the whole run from a RunSpec JSON file (only --json and --resume may go with it)")
    # the app's warm start (app.jobs.backends.Spare): not for users, so not in --help
    o.add_argument("--spec-from-stdin", action="store_true", help=argparse.SUPPRESS)
    return p


def spec_from_args(a: argparse.Namespace) -> RunSpec:
    """The RunSpec the flags describe (raises ValueError, naming the flag, for a contradiction)."""
    values = {k: getattr(a, k) for k in SPEC_FLAGS}
    if values["text_file"] and values["corpus"] not in (None, "file"):
        raise ValueError(f"--text-file trains on that file: drop --corpus {a.corpus} (or use --corpus file)")
    if values["corpus"] == "file" and not values["text_file"]:
        raise ValueError("--corpus file needs --text-file PATH")
    values["corpus"] = values["corpus"] or ("file" if values["text_file"] else "shakespeare")
    return RunSpec(**{k: v for k, v in values.items() if v is not None}, bias=not a.no_bias)


def _finite(obj):
    """Strict JSON has no NaN / Infinity: such numbers go out as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _human(ev: dict) -> str | None:
    k = ev["kind"]
    if k == "prepare":
        return f"{ev['stage']}…"
    if k == "start":
        return (f"training {ev['n_params']:,} parameters on {ev['device']} ({ev['dtype']}, "
                f"attention kernel: {ev['sdpa'] or 'auto'}), "
                f"{ev['steps']} steps{' (resumed)' if ev['resumed'] else ''}")
    if k == "step":
        return (f"step {ev['step']}/{ev['total_steps']} | loss {ev['loss']:.4f} | lr {ev['lr']:.2e} | "
                f"{ev['tokens_per_s']:,.0f} tok/s | eta {ev['eta']:.0f}s")
    if k == "eval":
        return f"step {ev['step']}: train loss {ev['train_loss']:.4f}, val loss {ev['val_loss']:.4f}"
    if k == "sample":
        return "--- sample ---\n" + ev["text"] + "\n--------------"
    if k in ("done", "stopped"):
        return f"{k} at step {ev['step']}; best val loss {ev.get('best_val')}"
    if k == "failed":
        return f"failed at step {ev['step']}: {ev['reason']}"
    return None


class _SignalStop:
    """SIGTERM / SIGINT set the run's stop flag, so it stops after the current step (a second
    one interrupts at once). Installed before the data is prepared: a signal that arrives early
    stops the run at step 0, which still saves OUT/latest and reports 'stopped'."""

    def __init__(self) -> None:
        self.event = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()


def _wait_for_spec() -> str | None:
    """The app's warm start: import what a run's set-up would (torch's optimizers import
    torch._dynamo on first use), then wait for one stdin line, {"spec": path, "stderr": path,
    "env": the environment of the moment}. Returns the spec's path (stderr now goes to that
    file, the environment is the one given), or None if stdin closed first."""
    import torch._dynamo  # noqa: F401
    import torch.optim  # noqa: F401

    line = sys.stdin.readline()
    if not line.strip():
        return None
    order = json.loads(line)
    if isinstance(order.get("env"), dict):
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in order["env"].items()})
    if order.get("stderr"):
        fd = os.open(order["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    return str(order["spec"])


def main(run: Callable[..., dict], argv: list[str] | None = None) -> int:
    """`python -m core.train`: `run` is `core.train.run`. Returns the exit code."""
    parser = build_parser()
    a = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if a.spec is not None:
        extra = sorted(k for k, v in vars(a).items() if k not in WITH_SPEC and v != parser.get_default(k))
        if extra:
            parser.error(f"--spec takes the whole run from its file: drop --{extra[0].replace('_', '-')}")
    elif not a.out and not a.spec_from_stdin:
        parser.error("the following arguments are required: --out (or --spec RUN.json)")
    if a.spec_from_stdin:  # before the signal handlers: a waiting spare ends at once on SIGTERM
        a.spec = _wait_for_spec()
        if a.spec is None:
            return 0
        argv = ["--spec", a.spec, *(["--json"] if a.json else [])]
    signals = _SignalStop()

    def emit(ev: dict) -> None:
        line = json.dumps(_finite(ev), default=str, allow_nan=False) if a.json else _human(ev)
        if line is not None:
            print(line, flush=True)

    try:
        spec = RunSpec.load(a.spec) if a.spec is not None else spec_from_args(a)
        if a.resume and not spec.resume:
            spec = spec.replace(resume=True)
    except (ValueError, OSError) as e:
        emit({"kind": "failed", "step": 0, "reason": str(e)})
        return 2
    final = run(spec, emit, signals.event, command="python -m core.train " + " ".join(argv))
    if final["kind"] == "failed" and "stage" in final:  # bad data, or nothing to resume
        return 2
    if a.export and final["kind"] == "done" and int(os.environ.get("RANK", "0")) == 0:
        out = Path(spec.out)
        src = out / "best" if (out / "best").is_dir() else out / "latest"
        loaded = ckpt.load(src)
        ckpt.save(a.export, loaded.model, loaded.tokenizer, loaded.meta)
    return {"done": 0, "stopped": 0}.get(final["kind"], 1)


# --------------------------------------------------------------------------------------
# python -m core.generate (here, not in core.generate, so that module needs no other strategy)


def generate_main(argv: list[str] | None = None) -> int:
    """`python -m core.generate CHECKPOINT --prompt TEXT [--beams N] [--json]`: prints the text."""
    p = argparse.ArgumentParser(prog="python -m core.generate", description="Generate text from a checkpoint.")
    p.add_argument("checkpoint", help="a Glassbox or Hugging Face GPT-2-layout folder")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--beams", type=int, default=0, help="beam search with this width (0 = off)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length**this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    a = p.parse_args(argv)
    try:
        ck = ckpt.load(a.checkpoint, device=a.device)
        if ck.tokenizer is None:
            raise ValueError(f"{a.checkpoint} has no tokenizer files")
        ids = ck.tokenizer.encode(a.prompt)
        t0 = time.perf_counter()
        if a.beams:
            new = beam_search(ck.model, ids, a.max_new_tokens, num_beams=a.beams, length_penalty=a.length_penalty,
                              eot_id=ck.tokenizer.eot_id).tokens
        else:
            new = generate(ck.model, ids, a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                           top_p=a.top_p, min_p=a.min_p, repetition_penalty=a.repetition_penalty,
                           greedy=a.greedy, seed=a.seed, eot_id=ck.tokenizer.eot_id)
        dt = time.perf_counter() - t0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = ck.tokenizer.decode(new)
    if a.json:
        print(json.dumps({"prompt": a.prompt, "text": text, "ids": new, "tokens_per_s": len(new) / max(dt, 1e-9)}))
    else:
        print(a.prompt + text)
    return 0
