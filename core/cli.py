"""The training command line: `python -m core.train ...` (this module holds its parser).

Owns: turning flags into a corpus, a tokenizer, a token split, a `GPTConfig` and a
`TrainConfig`, running the `Trainer`, and printing its events (human lines, or one JSON
object per line with `--json`). `prepare_data` is shared with the app's job manager.
Does not own: the loop itself (`core.train`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import checkpoint as ckpt
from .config import PRESETS, GPTConfig, TrainConfig, preset
from .data import SYNTHETIC_CORPORA, TokenSplit, load_corpus, split_tokens
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
    p = argparse.ArgumentParser(prog="python -m core.train", description="Train a small GPT and write a checkpoint folder.")
    g = p.add_argument_group("data")
    g.add_argument("--corpus", default="shakespeare", choices=corpora)
    g.add_argument("--text-file", help="with --corpus file: a UTF-8 .txt file")
    g.add_argument("--tokenizer", default="char", choices=["char", "bpe"])
    g.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size")
    g.add_argument("--val-fraction", type=float, default=0.1)
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="nano", choices=list(PRESETS))
    m.add_argument("--n-layer", type=int)
    m.add_argument("--n-head", type=int)
    m.add_argument("--n-embd", type=int)
    m.add_argument("--block-size", type=int)
    m.add_argument("--dropout", type=float)
    m.add_argument("--no-bias", action="store_true")
    t = p.add_argument_group("training")
    d = TrainConfig()
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (split across torchrun processes)")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--min-lr", type=float, default=None)
    t.add_argument("--warmup", type=int, default=d.warmup_steps)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--beta2", type=float, default=d.beta2)
    t.add_argument("--grad-clip", type=float, default=d.grad_clip)
    t.add_argument("--optimizer", default=d.optimizer, choices=["adamw", "muon"])
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--eval-interval", type=int, default=d.eval_interval)
    t.add_argument("--eval-batches", type=int, default=d.eval_batches)
    t.add_argument("--ckpt-interval", type=int, default=d.ckpt_interval)
    t.add_argument("--sample-interval", type=int, default=0)
    t.add_argument("--sample-prompt", default=d.sample_prompt)
    t.add_argument("--sample-tokens", type=int, default=d.sample_tokens)
    t.add_argument("--log-interval", type=int, default=10)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    t.add_argument("--compile", action="store_true")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, help="run folder: latest/ and best/ checkpoints go here")
    o.add_argument("--resume", action="store_true", help="continue from OUT/latest exactly where it stopped")
    o.add_argument("--export", help="after training, copy the best checkpoint (without training state) here")
    o.add_argument("--json", action="store_true", help="print one JSON object per event")
    return p


def _human(ev: dict) -> str | None:
    k = ev["kind"]
    if k == "start":
        return (f"training {ev['n_params']:,} parameters on {ev['device']} ({ev['dtype']}), "
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


def train_main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    out = Path(a.out)

    def emit(ev: dict) -> None:
        line = json.dumps(ev, default=str) if a.json else _human(ev)
        if line is not None:
            print(line, flush=True)

    try:
        dist = init_distributed(a.device)
        resume_dir = out / "latest" if a.resume else None
        tok = None
        if resume_dir is not None:
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
                           seed=a.seed, device=a.device, dtype=a.dtype, compile=a.compile, threads=a.threads)
        trainer = Trainer(mcfg, tcfg, split, tok, out_dir=out, on_event=emit, resume_from=resume_dir,
                          run_info={"data": info, "command": "python -m core.train " + " ".join(sys.argv[1:] if argv is None else argv)},
                          dist=dist)
    except ValueError as e:
        emit({"kind": "failed", "step": 0, "reason": str(e)})
        return 2
    final = trainer.run()
    if a.export and final["kind"] == "done" and dist.main:
        src = out / "best" if (out / "best").is_dir() else out / "latest"
        loaded = ckpt.load(src)
        ckpt.save(a.export, loaded.model, loaded.tokenizer, loaded.meta)
    if dist.enabled:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return {"done": 0, "stopped": 0}.get(final["kind"], 1)
