"""The Train tab's form (and the /train_start API's inputs) as a `core.spec.RunSpec`.

Owns: the form's fields and their defaults (`FORM`: the workshop preset's model and run,
`core.config.WORKSHOP_TRAIN`, on the recipe's other numbers from RunSpec), turning filled-in values into
a RunSpec checked against the server's limits (`spec_from_form`), and the settings a run
shows (`settings_of`). Does not own: the limits themselves (`core.spec.SERVER_LIMITS`), the
validation (`RunSpec`), or starting the run (`app.jobs.manager`).
"""

from __future__ import annotations

import os
from typing import Any

from core.config import PRESETS
from core.config import WORKSHOP_TRAIN as W
from core.spec import MAX_TRAIN_BYTES, MODEL_SIZES, RunSpec

_D = RunSpec()
FORM_PRESET = "workshop"  # recognisable Shakespeare within about two minutes on 2 cores (README)
# Every field of the form, with its default: the form's (and /train_start's) inputs.
FORM: dict[str, Any] = {
    "corpus": _D.corpus, "text": "", "tokenizer": _D.tokenizer, "vocab_size": _D.vocab_size, "preset": FORM_PRESET,
    **{k: PRESETS[FORM_PRESET][k] for k in MODEL_SIZES},
    "steps": W["steps"], "batch_size": W["batch_size"], "lr": W["lr"], "warmup": W["warmup_steps"],
    "weight_decay": _D.weight_decay, "dropout": 0.0, "optimizer": W["optimizer"], "seed": _D.seed, "device": _D.device,
    "eval_interval": 0,  # 0: about ten evaluations (and checkpoints) per run
    "eval_batches": W["eval_batches"], "sample_prompt": W["sample_prompt"], "name": "",
    "snapshots": 12,  # on by default: the Timeline tab shows them (about 0.3% of a nano run's time: bench/timeline.py)
}
NUMBERS = ("vocab_size", *MODEL_SIZES, "steps", "batch_size", "lr", "warmup", "weight_decay", "dropout", "seed",
           "eval_interval", "eval_batches", "snapshots")
# "Watch an induction head form": the form's values for a run whose timeline shows one head's induction
# score jump from ~0.05 to above 0.5 while the loss drops (measured: README, Timeline tab; bench/timeline.py).
INDUCTION_PRESET: dict[str, Any] = {
    "corpus": "induction", "tokenizer": "char", "n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64,
    "steps": 3000, "batch_size": 16, "lr": 1e-2, "warmup": 20, "weight_decay": 0.1, "dropout": 0.0,
    "optimizer": "muon", "snapshots": 32, "seed": 1337,  # the measured run (other seeds form their head later)
}


def max_train_bytes() -> int:
    return int(os.environ.get("GLASSBOX_MAX_TRAIN_BYTES", MAX_TRAIN_BYTES))


def every(steps: int) -> int:
    """The eval and checkpoint interval of a form run: about ten per run, 10 to 250 steps apart."""
    return max(10, min(250, steps // 10))


def spec_from_form(values: dict, text_file: str | None = None) -> RunSpec:
    """The RunSpec for the form's `values` (missing ones take FORM's defaults). `text_file` is
    the server-side path of an upload, for corpus "file" (never taken from the API)."""
    unknown = sorted(set(values) - set(FORM))
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(unknown)[:60]} (known: {', '.join(FORM)})")
    v = {**FORM, **values}
    for k in NUMBERS:
        if v[k] is None:
            raise ValueError(f"{k} is empty: type a number")
    corpus = v["corpus"].strip().lower() if isinstance(v["corpus"], str) else v["corpus"]
    if corpus == "file" and not text_file:
        raise ValueError("corpus 'file' needs an uploaded .txt file: choose one first")
    if v["preset"] not in (*PRESETS, "custom"):
        raise ValueError(f"preset {str(v['preset'])[:60]!r} is unknown: choose one of {', '.join(PRESETS)}, custom")
    # the preset is the form's label: the four sizes it filled in are what counts ("custom")
    name = v["name"].strip() if isinstance(v["name"], str) else v["name"] or ""
    v.update(corpus=corpus, text=(v["text"] or "") if corpus == "text" else "", name=name,
             text_file=str(text_file) if corpus == "file" else None, preset="custom", log_interval=1)
    spec = RunSpec.for_server(max_train_bytes(), **v)
    n = spec.eval_interval or every(spec.steps)
    return spec.replace(eval_interval=n, ckpt_interval=n)


def settings_of(spec: RunSpec, preset: str = "custom") -> dict:
    """The form's fields of a run's spec, for status, job.json and config diffs (without the
    pasted text; no vocabulary size for a character tokenizer, whose corpus sets it)."""
    d = {k: getattr(spec, k) for k in FORM if k != "preset"}
    d["preset"] = preset
    d["text"] = f"{len(spec.text):,} characters" if spec.text else ""
    if spec.tokenizer == "char":
        d["vocab_size"] = None
    return d
