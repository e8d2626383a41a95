"""The decoding lab: named methods, one column run traced token by token, and its metrics.

Owns: `Method` (a decoding method and its settings: greedy, sample, top-k, top-p, min-p,
beam), `Column` (one method run on a prompt, advanced step by step so several columns can
stream side by side, keeping the per-token trace), the text metrics (tokens/s, time to the
first token, mean log-probability and perplexity under the model, distinct-n, repeated
n-gram rate), `sample_n` (diversity across N seeded samples) and `sweep` (temperature ×
method → perplexity vs distinct-2).
Does not own: the decoding itself (`core.generate`, `core.beam`), text (callers decode
token ids with their tokenizer), drawing or the web page (`app/`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field, fields

from .beam import MAX_BEAMS, BeamSearch
from .generate import Sampling, Step, check_top, decode_rows, steps
from .model import GPT

METHODS = ("greedy", "sample", "top_k", "top_p", "min_p", "beam")
METHOD_LABELS = {"greedy": "Greedy", "sample": "Sampling", "top_k": "Top-k", "top_p": "Top-p (nucleus)",
                 "min_p": "Min-p", "beam": "Beam search"}
MAX_SAMPLES = 16
MAX_SWEEP_RUNS = 64
MAX_SEED = 2**63 - 1


def short_repr(value) -> str:
    """`repr(value)` cut to 40 characters, for an error message that quotes what it was given."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def as_int(name: str, value) -> int:
    """`value` as an int, or a ValueError naming `name` (strings of digits and whole floats are
    accepted; NaN, infinity, fractions, booleans and other types are not)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{name} must be an integer, got {short_repr(value)}")


def as_float(name: str, value) -> float:
    """`value` as a float (range checks are the caller's), or a ValueError naming `name`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # as given, so messages show the number the caller sent
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{name} must be a number, got {short_repr(value)}")


def check_seed(seed) -> int:
    seed = as_int("seed", seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed} is out of range: use 0 to 2**63 - 1")
    return seed


@dataclass(frozen=True)
class Method:
    """A decoding method. Only the settings that belong to `kind` are used: temperature and
    the repetition penalty for every sampling kind (the penalty for greedy too; "sample" is
    plain sampling from the tempered distribution); `top_k`, `top_p`, `min_p` for their own
    kind; `num_beams` and `length_penalty` for beam search. (`core.generate.Sampling`
    combines filters freely; the lab compares them one at a time.)"""

    kind: str = "greedy"
    temperature: float = 1.0
    top_k: int | None = 40
    top_p: float | None = 0.9
    min_p: float | None = 0.05
    repetition_penalty: float = 1.0
    num_beams: int = 4
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in METHODS:
            raise ValueError(f"unknown method {self.kind!r}; choose one of: {', '.join(METHODS)}")
        self.sampling()  # validates the numbers (raises ValueError naming the bad one)
        if not 1 <= int(self.num_beams) <= MAX_BEAMS:
            raise ValueError(f"num_beams={self.num_beams} must be between 1 and {MAX_BEAMS}")
        if not -10.0 <= self.length_penalty <= 10.0:
            raise ValueError(f"length_penalty={self.length_penalty} must be in [-10, 10]")

    @classmethod
    def from_dict(cls, d: dict | None) -> Method:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"method"})
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        if "method" in d:
            d["kind"] = d.pop("method")
        if not isinstance(d.get("kind", "greedy"), str):
            raise ValueError(f"kind must be a method name, got {short_repr(d['kind'])}")
        for name in ("top_k", "num_beams"):
            if d.get(name) is not None:
                d[name] = as_int(name, d[name])
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "length_penalty"):
            if d.get(name) is not None:
                d[name] = as_float(name, d[name])
        return cls(**d)

    def sampling(self) -> Sampling:
        k = self.kind
        if k == "greedy":
            return Sampling(greedy=True, repetition_penalty=self.repetition_penalty)
        return Sampling(
            temperature=self.temperature, repetition_penalty=self.repetition_penalty,
            top_k=self.top_k if k == "top_k" else None,
            top_p=self.top_p if k == "top_p" else None,
            min_p=self.min_p if k == "min_p" else None,
        )

    def used(self) -> dict:
        """The settings that matter for this kind (for labels, tables and JSON)."""
        if self.kind == "beam":
            return {"kind": "beam", "num_beams": self.num_beams, "length_penalty": self.length_penalty}
        s = self.sampling()
        out = {"kind": self.kind}
        if self.kind != "greedy":
            out["temperature"] = s.temperature
        for name in ("top_k", "top_p", "min_p"):
            if getattr(s, name) is not None:
                out[name] = getattr(s, name)
        if s.repetition_penalty != 1.0:
            out["repetition_penalty"] = s.repetition_penalty
        return out

    def label(self) -> str:
        u = self.used()
        short = {"temperature": "T", "top_k": "k", "top_p": "p", "min_p": "min-p", "repetition_penalty": "rep",
                 "num_beams": "width", "length_penalty": "lp"}
        rest = ", ".join(f"{short[k]}={v:g}" for k, v in u.items() if k != "kind")
        return METHOD_LABELS[self.kind] + (f" ({rest})" if rest else "")


class Column:
    """One method on one prompt. Call `advance()` until it returns False; after each call
    `tokens` holds the text so far (for beam search: the best running beam, then the best
    finished hypothesis), `trace` one `Step` per token (for beam search built from the
    tree at the end), `times` the run's own compute time at each token."""

    def __init__(self, model: GPT, ids: list[int], method: Method, max_new_tokens: int, *,
                 seed: int | None = 0, eot_id: int | None = None, top: int = 10, _row=None):
        self.model, self.method, self.max_new = model, method, max_new_tokens
        self.tokens: list[int] = []
        self.trace: list[Step] = []
        self.times: list[float] = []
        self.done = False
        self.beam: BeamSearch | None = None
        self._row = _row  # (_Rows, index) when it shares its forwards with other columns (`columns`)
        if method.kind == "beam":
            self.beam = BeamSearch(model, ids, max_new_tokens, num_beams=method.num_beams,
                                   length_penalty=method.length_penalty, eot_id=eot_id, top=max(top, 1))
            self._it = self.beam.run()
        elif _row is None:
            self._it = steps(model, ids, max_new_tokens, method.sampling(), seed=seed, eot_id=eot_id, top=top)
        self._beam_t = 0.0

    def advance(self) -> bool:
        """Run one step; False once the column is finished."""
        if self.done:
            return False
        try:
            ev = next(self._it) if self._row is None else self._row[0].next(self._row[1])
        except StopIteration:
            self._finish()
            return False
        if self.beam is None:
            self.trace.append(ev)
            self.tokens.append(ev.token)
            self.times.append(ev.t)
        else:
            self._beam_t = ev.t
            self.tokens = self.beam.tokens(ev.running[0]) if ev.running else self.tokens
            self.times.append(ev.t)
        return True

    def _finish(self) -> None:
        self.done = True
        if self.beam is None:
            return
        res = self.beam.result()
        self.tokens = res.tokens
        nodes = self.beam.nodes
        self.trace = []
        for i, nid in enumerate(res.path[1:]):
            n, parent = nodes[nid], nodes[nodes[nid].parent]
            cand = list(parent.candidates)
            probs = list(parent.cand_probs)
            if n.token not in cand:
                cand.append(n.token)
                probs.append(round(math.exp(n.logprob), 6))
            p = math.exp(n.logprob)
            self.trace.append(Step(index=i, token=n.token, prob=p, logprob=n.logprob, rank=n.rank, sampled_prob=p,
                                   entropy=parent.entropy or 0.0, candidates=cand, stages={"model": probs},
                                   kept={"model": self.model.config.vocab_size},
                                   t=self.times[min(i, len(self.times) - 1)] if self.times else 0.0))
        # a beam's tokens are not final until the search ends: time to first token = the whole run
        self.times = [self._beam_t] * len(self.tokens)

    def run(self) -> Column:
        while self.advance():
            pass
        return self

    def metrics(self) -> dict:
        return metrics(self.tokens, [s.logprob for s in self.trace], self.times)


class _Rows:
    """The steps of several sampling columns, decoded together as the rows of one batch
    (`core.generate.decode_rows`); each column takes its own row's steps, in order."""

    def __init__(self, model: GPT, ids: list[int], methods: list[Method], max_new_tokens: int,
                 seeds: list[int | None], eot_id: int | None, top: int):
        check_top(top)
        self._it = decode_rows(model, ids, max_new_tokens, [m.sampling() for m in methods], seeds, eot_id, True, top)
        self._queues: list[deque] = [deque() for _ in methods]

    def next(self, row: int) -> Step:
        """The row's next step (runs the batch one step when the row has none waiting);
        StopIteration once the row has ended."""
        q = self._queues[row]
        while not q:
            out = next(self._it)  # StopIteration: every row has ended
            for queue, item in zip(self._queues, out):
                queue.append(item)
        item = q.popleft()
        if item is None:  # this row stopped (end of text); the others go on
            q.appendleft(None)
            raise StopIteration
        return item


def columns(model: GPT, ids: list[int], methods: list[Method], max_new_tokens: int, *,
            seeds: list[int | None], eot_id: int | None = None, top: int = 10) -> list[Column]:
    """Columns on one prompt, not yet run, one per method (`seeds[i]` seeds column i). The ones
    that sample (every kind but beam search) are decoded together: one batched forward per step
    for all of them, which reads the model's weights once rather than once per column. A column
    picks as it would alone from the same logits; its logits come from a batch and agree with a
    lone run's to float rounding (see `core.generate.decode_rows`), and its step times include
    the shared forward."""
    if len(seeds) != len(methods):
        raise ValueError(f"give one seed per method (got {len(seeds)} seeds for {len(methods)} methods)")
    rows = [i for i, m in enumerate(methods) if m.kind != "beam"]
    row_of = {}  # column index -> (the shared rows, its row)
    if len(rows) > 1:
        shared = _Rows(model, ids, [methods[i] for i in rows], max_new_tokens, [seeds[i] for i in rows], eot_id, top)
        row_of = {i: (shared, r) for r, i in enumerate(rows)}
    return [Column(model, ids, m, max_new_tokens, seed=seeds[i], eot_id=eot_id, top=top, _row=row_of.get(i))
            for i, m in enumerate(methods)]


# --------------------------------------------------------------------------------------
# Metrics (pure functions of token ids, log-probabilities and times)


def distinct_n(tokens: list[int], n: int) -> float:
    """Unique n-grams / all n-grams (0 when the text has no n-gram)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(tokens: list[int], n: int = 3) -> float:
    """The fraction of n-grams that already occurred earlier in the text."""
    seen, rep = set(), 0
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams) if grams else 0.0


def metrics(tokens: list[int], logprobs: list[float], times: list[float]) -> dict:
    """tokens/s and time to first token from `times` (the run's compute time at each token);
    mean log-probability (nats) and perplexity under the model from `logprobs`."""
    n = len(tokens)
    total = times[-1] if times else 0.0
    mean_lp = sum(logprobs) / len(logprobs) if logprobs else float("nan")
    return {
        "length": n,
        "tokens_per_s": n / total if total > 0 else float("nan"),
        "ttft_s": times[0] if times else float("nan"),
        "mean_logprob": mean_lp,
        "perplexity": math.exp(-mean_lp) if logprobs else float("nan"),
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "repeat_3gram": repeated_ngram_rate(tokens, 3),
    }


# --------------------------------------------------------------------------------------
# Many runs: diversity across samples, and the temperature × method sweep


@dataclass
class Samples:
    texts: list[list[int]]                 # token ids of each sample
    per_sample: list[dict]                 # `metrics` of each
    summary: dict = field(default_factory=dict)


def sample_n(model: GPT, ids: list[int], method: Method, n: int, max_new_tokens: int, *, seed: int = 0,
             eot_id: int | None = None) -> Samples:
    """`n` samples with seeds seed, seed+1, …; the summary pools them: distinct-1/2 across all
    samples, how many are unique, mean perplexity and mean per-sample distinct-2."""
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"n={n} samples must be between 1 and {MAX_SAMPLES}")
    cols = columns(model, ids, [method] * n, max_new_tokens, seeds=[seed + i for i in range(n)], eot_id=eot_id, top=1)
    for c in cols:
        c.run()
    texts = [c.tokens for c in cols]
    per = [c.metrics() for c in cols]
    lps = [s.logprob for c in cols for s in c.trace]
    pooled_d1 = _pooled_distinct(texts, 1)
    pooled_d2 = _pooled_distinct(texts, 2)
    summary = {
        "n": n, "unique": len({tuple(t) for t in texts}), "distinct_1": pooled_d1, "distinct_2": pooled_d2,
        "mean_logprob": sum(lps) / len(lps) if lps else float("nan"),
        "perplexity": math.exp(-sum(lps) / len(lps)) if lps else float("nan"),
        "mean_length": sum(len(t) for t in texts) / n,
    }
    return Samples(texts, per, summary)


def _pooled_distinct(texts: list[list[int]], k: int) -> float:
    grams = [tuple(t[i:i + k]) for t in texts for i in range(len(t) - k + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sweep(model: GPT, ids: list[int], methods: list[Method], temperatures: list[float], *, n: int = 4,
          max_new_tokens: int = 32, seed: int = 0, eot_id: int | None = None) -> list[dict]:
    """For each method × temperature: `n` samples → pooled perplexity and distinct-2.
    Greedy and beam search ignore temperature: they are measured once."""
    if not methods or not temperatures:
        raise ValueError("the sweep needs at least one method and one temperature")
    runs = sum(1 if m.kind in ("greedy", "beam") else len(temperatures) for m in methods) * n
    if runs > MAX_SWEEP_RUNS:
        raise ValueError(f"the sweep asks for {runs} runs; the limit is {MAX_SWEEP_RUNS}")
    out = []
    for m in methods:
        temps = [None] if m.kind in ("greedy", "beam") else temperatures
        for t in temps:
            mm = m if t is None else Method(**{**asdict(m), "temperature": float(t)})
            s = sample_n(model, ids, mm, 1 if t is None else n, max_new_tokens, seed=seed, eot_id=eot_id)
            out.append({"method": m.kind, "label": METHOD_LABELS[m.kind], "temperature": t,
                        "perplexity": s.summary["perplexity"], "distinct_2": s.summary["distinct_2"],
                        "unique": s.summary["unique"], "n": s.summary["n"]})
    return out
