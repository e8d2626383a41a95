"""The command lines: `python -m core.train ...` and `python -m core.generate ...` (their parsers).

Owns: turning flags into a corpus, a tokenizer, a token split, a `GPTConfig` and a
`TrainConfig`, running the `Trainer`, printing its events (human lines, or one JSON
object per line with `--json`), and turning SIGTERM / SIGINT into a clean stop (OUT/latest
saved, a `stopped` event, exit 0). `prepare_data` is shared with the app's job manager.
`generate_main`: a checkpoint and a prompt in, greedy / sampled / beam-search text out.
Does not own: the loop itself (`core.train`), the decoding (`core.generate`, `core.beam`).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

from . import checkpoint as ckpt
from .beam import beam_search
from .config import PRESETS, GPTConfig, TrainConfig, preset
from .data import SYNTHETIC_CORPORA, TokenSplit, load_corpus, split_tokens
from .generate import generate
from .tokenizer import Tokenizer
from .train import Trainer, init_distributed


def prepare_data(corpus: str, tokenizer: str = "char", vocab_size: int = 512, text: str | None = None,
                 path: str | None = None, val_fraction: float = 0.1, tokenizer_obj: Tokenizer | None = None,
                 seed: int = 0) -> tuple[Tokenizer, TokenSplit, dict]:
    """Corpus → tokenizer (trained on it unless given) → train/val token split, plus facts for meta."""
    raw = load_corpus(corpus, text=text, path=path, seed=seed)
    if tokenizer_obj is None:
        if tokenizer == "char":
            tokenizer_obj = Tokenizer.train_char(raw)
        elif tokenizer == "bpe":
            tokenizer_obj = Tokenizer.train_bpe(raw, vocab_size)
        else:
            raise ValueError(f"tokenizer={tokenizer!r} must be 'char' or 'bpe'")
    ids = tokenizer_obj.encode(raw)
    split = split_tokens(ids, val_fraction=val_fraction)
    info = {"corpus": corpus, "corpus_chars": len(raw), "tokenizer": tokenizer_obj.kind,
            "vocab_size": tokenizer_obj.vocab_size, "tokens": len(ids)}
    return tokenizer_obj, split, info


def build_parser() -> argparse.ArgumentParser:
    corpora = ["shakespeare", *SYNTHETIC_CORPORA, "file"]
    p = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train a small GPT and write a checkpoint folder (OUT/latest and OUT/best).",
        epilog="Events: with --json, one JSON object per line (keys 'kind' and 'step'; kinds start, step, eval, "
               "sample, checkpoint, done, stopped, failed), flushed. SIGTERM or SIGINT stops within one step, "
               "saves OUT/latest (resumable with --resume), prints a 'stopped' event and exits 0. Exit codes: 0 "
               "done/stopped, 1 failed while training, 2 bad arguments or data. Distributed: torchrun "
               "--nproc_per_node=N -m core.train ... (gloo on CPU, nccl on GPU; rank 0 logs and saves).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--corpus", default=None, choices=corpora,
                   help="training text: Tiny Shakespeare, a synthetic corpus, or 'file' (with --text-file); "
                        "default shakespeare, or file when --text-file is given")
    g.add_argument("--text-file", help="a UTF-8 .txt file to train on (implies --corpus file)")
    g.add_argument("--tokenizer", default="char", choices=["char", "bpe"], help="character-level or byte-level BPE")
    g.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (trained on the corpus)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of the tokens held out for validation")
    m = p.add_argument_group("model (a preset, each size overridable)")
    m.add_argument("--preset", default="nano", choices=list(PRESETS), help="model preset")
    m.add_argument("--n-layer", type=int, help="transformer blocks (default: the preset's)")
    m.add_argument("--n-head", type=int, help="attention heads (default: the preset's)")
    m.add_argument("--n-embd", type=int, help="width; divisible by --n-head (default: the preset's)")
    m.add_argument("--block-size", type=int, help="context length in tokens (default: the preset's)")
    m.add_argument("--dropout", type=float, help="dropout probability (default: 0)")
    m.add_argument("--no-bias", action="store_true", help="no biases in linear layers and LayerNorms")
    t = p.add_argument_group("training")
    d = TrainConfig()
    t.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch (split across torchrun processes)")
    t.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    t.add_argument("--min-lr", type=float, default=None, help="final learning rate of the cosine (default: lr/10)")
    t.add_argument("--warmup", type=int, default=d.warmup_steps, help="linear warm-up steps")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay (matrices only)")
    t.add_argument("--beta2", type=float, default=d.beta2, help="AdamW beta2")
    t.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the gradient norm (0: off)")
    t.add_argument("--optimizer", default=d.optimizer, choices=["adamw", "muon"],
                   help="adamw, or muon (torch.optim.Muon on hidden matrices + AdamW on the rest)")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--eval-interval", type=int, default=d.eval_interval, help="eval every N steps (0: only at the end)")
    t.add_argument("--eval-batches", type=int, default=d.eval_batches, help="fixed batches per eval")
    t.add_argument("--ckpt-interval", type=int, default=d.ckpt_interval,
                   help="save OUT/latest every N steps (0: at the end)")
    t.add_argument("--sample-interval", type=int, default=0, help="sample every N steps (0: at each eval)")
    t.add_argument("--sample-prompt", default=d.sample_prompt, help="prompt for the samples")
    t.add_argument("--sample-tokens", type=int, default=d.sample_tokens, help="tokens per sample (0: no samples)")
    t.add_argument("--log-interval", type=int, default=10, help="a step event every N steps")
    t.add_argument("--seed", type=int, default=d.seed, help="seed for init, batches and dropout")
    x = p.add_argument_group("speed")
    x.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to train")
    x.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype; auto: bf16 on GPU, on CPU whichever a start-up probe measures faster")
    x.add_argument("--sdpa", default="auto", choices=["auto", "math", "flash", "efficient", "cudnn"],
                   help="pin the attention kernel; auto: probed on CPU, torch's choice on GPU")
    x.add_argument("--compile", action="store_true", help="torch.compile the model")
    x.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode (reduce-overhead uses CUDA graphs)")
    x.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, help="run folder: latest/ and best/ checkpoints go here")
    o.add_argument("--resume", action="store_true", help="continue from OUT/latest exactly where it stopped")
    o.add_argument("--export", help="after training, copy the best checkpoint (without training state) here")
    o.add_argument("--json", action="store_true", help="print one JSON object per event and line")
    return p


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
    """SIGTERM / SIGINT stop the trainer after the current step (a second one interrupts at
    once). Installed before the data is prepared: a signal that arrives early stops the
    run at step 0, which still saves OUT/latest and reports 'stopped'."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.pending = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        if self.trainer is not None:
            self.trainer.stop()

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        if self.pending:
            trainer.stop()


def train_main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    out = Path(a.out)
    if a.corpus is None:
        a.corpus = "file" if a.text_file else "shakespeare"
    signals = _SignalStop()

    def emit(ev: dict) -> None:
        line = json.dumps(_finite(ev), default=str, allow_nan=False) if a.json else _human(ev)
        if line is not None:
            print(line, flush=True)

    try:
        if a.text_file and a.corpus != "file":
            raise ValueError(f"--text-file trains on that file: drop --corpus {a.corpus} (or use --corpus file)")
        if a.corpus == "file" and not a.text_file:
            raise ValueError("--corpus file needs --text-file PATH")
        dist = init_distributed(a.device)
        resume_dir = out / "latest" if a.resume else None
        tok = None
        if resume_dir is not None:
            if dist.main:  # a save killed half-way may have set the previous checkpoint aside
                ckpt.recover(resume_dir)
                ckpt.recover(out / "best")
            if dist.enabled:
                import torch.distributed as tdist
                tdist.barrier()
            if not ckpt.is_checkpoint(resume_dir):
                raise ValueError(f"--resume: no checkpoint at {resume_dir}")
            tok = Tokenizer.from_file(resume_dir / ckpt.TOKENIZER_FILE)
        tok, split, info = prepare_data(a.corpus, a.tokenizer, a.vocab_size, path=a.text_file,
                                        val_fraction=a.val_fraction, tokenizer_obj=tok, seed=a.seed)
        mcfg: GPTConfig = preset(a.preset, vocab_size=tok.vocab_size if "vocab_size" not in PRESETS[a.preset] else None,
                                 n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=a.block_size,
                                 dropout=a.dropout, bias=False if a.no_bias else None)
        if tok.vocab_size > mcfg.vocab_size:
            mcfg = mcfg.replace(vocab_size=tok.vocab_size)
        tcfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, min_lr=a.min_lr, warmup_steps=a.warmup,
                           weight_decay=a.weight_decay, beta2=a.beta2, grad_clip=a.grad_clip, optimizer=a.optimizer,
                           grad_accum=a.grad_accum, eval_interval=a.eval_interval, eval_batches=a.eval_batches,
                           ckpt_interval=a.ckpt_interval, sample_interval=a.sample_interval,
                           sample_prompt=a.sample_prompt, sample_tokens=a.sample_tokens, log_interval=a.log_interval,
                           seed=a.seed, device=a.device, dtype=a.dtype, compile=a.compile, threads=a.threads,
                           extra={k: v for k, v in (("sdpa", a.sdpa), ("compile_mode", a.compile_mode)) if v})
        trainer = Trainer(mcfg, tcfg, split, tok, out_dir=out, on_event=emit, resume_from=resume_dir,
                          run_info={"data": info, "command": "python -m core.train "
                                    + " ".join(sys.argv[1:] if argv is None else argv)},
                          dist=dist)
    except ValueError as e:
        emit({"kind": "failed", "step": 0, "reason": str(e)})
        return 2
    signals.attach(trainer)
    final = trainer.run()
    if a.export and final["kind"] == "done" and dist.main:
        src = out / "best" if (out / "best").is_dir() else out / "latest"
        loaded = ckpt.load(src)
        ckpt.save(a.export, loaded.model, loaded.tokenizer, loaded.meta)
    if dist.enabled:
        import gc

        import torch.distributed as tdist

        # Tear down in order: every rank done, the DDP wrapper (and its gloo work) freed, then the
        # group. Destroying the group under a live DDP reducer can abort the process at exit
        # ("terminate called without an active exception").
        tdist.barrier()
        del trainer
        gc.collect()
        tdist.destroy_process_group()
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
