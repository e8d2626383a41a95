"""Beam search, with the tree of beams it explored.

Owns: `BeamSearch` (width, length penalty, early stopping, end-of-text, on the KV cache
with `KVCache.reorder`), the tree it records (`BeamNode`: every kept beam and finished
hypothesis, with its parent, token, log-probability and cumulative score, and the top
candidates the model offered next), and `beam_search`, the one-call form.

The scoring follows Hugging Face `transformers` 5.x (`GenerationMixin._beam_search`) so
the two give the same text: a hypothesis scores sum(log p) / new_tokens**length_penalty
(the prompt is not counted); each step keeps the 2·width best continuations over all
beams; the best `width` that are not finished run on; those among the first `width` that
end (end of text, or the token limit) join the finished hypotheses, of which the best
`width` are kept. early_stopping True stops once `width` hypotheses are finished; False
stops when no running beam can still beat the worst finished one (scored at its current
length); "never" (with a positive length penalty) assumes the longest possible length.
Does not own: sampling and the per-step filter trace (`core.generate`), metrics
(`core.decoding`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .generate import LN2, check_prompt
from .model import GPT

MAX_BEAMS = 16  # the one limit: the library, the CLI, the API and the Decode tab's slider
NEG = -1.0e9  # Hugging Face's "impossible" score


@dataclass
class BeamNode:
    """One node of the beam tree. step 0 is the prompt (the root); step k the k-th new token.

    logprob: log p(token | the parent's text) under the model; score: the sum of logprobs from
    the root; rank: the token's rank among the parent's next-token candidates (1 = best).
    final_score: score / step**length_penalty when this node ended a kept hypothesis.
    candidates / cand_probs / entropy (bits): what the model offered next from this node
    (filled when the node was expanded).
    """

    id: int
    step: int
    parent: int
    token: int
    logprob: float
    score: float
    rank: int
    final_score: float | None = None
    candidates: list[int] = field(default_factory=list)
    cand_probs: list[float] = field(default_factory=list)
    entropy: float | None = None

    @property
    def finished(self) -> bool:
        return self.final_score is not None


@dataclass
class BeamStep:
    """Yielded after each step: the running beams (node ids, best first), the finished
    hypotheses kept so far (node ids, best first), and this run's own compute time."""

    step: int
    running: list[int]
    finished: list[int]
    t: float
    dt: float


@dataclass
class BeamResult:
    tokens: list[int]       # the best hypothesis's new tokens
    score: float            # its length-penalised score
    path: list[int]         # node ids from the root to its last token
    hypotheses: list[tuple[list[int], float]]  # every kept hypothesis, best first
    nodes: list[BeamNode]


class BeamSearch:
    """`for step in BeamSearch(...).run(): ...`, then `.result()`."""

    def __init__(self, model: GPT, ids: list[int], max_new_tokens: int, *, num_beams: int = 4,
                 length_penalty: float = 1.0, early_stopping: bool | str = False,
                 eot_id: int | None = None, use_cache: bool = True, top: int = 10):
        check_prompt(model, ids, max_new_tokens)
        if not 1 <= num_beams <= MAX_BEAMS:
            raise ValueError(f"num_beams={num_beams} must be between 1 and {MAX_BEAMS}")
        if not -10.0 <= length_penalty <= 10.0:
            raise ValueError(f"length_penalty={length_penalty} must be in [-10, 10]")
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping={early_stopping!r} must be True, False or 'never'")
        if model.config.vocab_size < 2:
            raise ValueError("beam search needs a vocabulary of at least 2 tokens")
        if early_stopping in (True, False):
            early_stopping = bool(early_stopping)
        self.model, self.ids, self.max_new = model, list(ids), max_new_tokens
        self.W, self.lp, self.early = num_beams, float(length_penalty), early_stopping
        self.eot_id, self.use_cache, self.top = eot_id, use_cache, top
        self.nodes: list[BeamNode] = [BeamNode(0, 0, -1, -1, 0.0, 0.0, 0)]
        self.pool: list[int | None] = [None] * num_beams  # finished hypotheses (node ids)
        self.done = max_new_tokens == 0

    def _node(self, parent: BeamNode, token: int, logp_row: torch.Tensor, score: float) -> BeamNode:
        lp = float(logp_row[token])
        n = BeamNode(len(self.nodes), parent.step + 1, parent.id, token, lp, score,
                     int((logp_row > logp_row[token]).sum()) + 1)
        self.nodes.append(n)
        return n

    def _record_candidates(self, running: list[BeamNode], logp: torch.Tensor) -> None:
        k = min(self.top, logp.size(-1))
        top_lp, top_ids = torch.topk(logp, k, dim=-1)  # (W, k)
        ent = -(logp.exp() * logp).nan_to_num(0.0).sum(-1) / LN2  # (W,) bits
        for b, node in enumerate(running):
            if not node.candidates:
                node.candidates = top_ids[b].tolist()
                node.cand_probs = [round(float(x), 6) for x in top_lp[b].exp()]
                node.entropy = float(ent[b])

    @torch.inference_mode()
    def run(self) -> Iterator[BeamStep]:
        model, W, V = self.model, self.W, self.model.config.vocab_size
        if self.done:
            return
        model.eval()
        device = model.transformer.wte.weight.device
        block = model.config.block_size
        K = 2 * W  # Hugging Face keeps max(2, 1 + n_eos) * num_beams candidates
        clock, elapsed = time.perf_counter, 0.0

        t0 = clock()
        cache = model.new_kv_cache(1) if self.use_cache else None
        prompt = self.ids[-block:]
        logits, _ = model(torch.tensor([prompt], device=device), kv_cache=cache)
        logits = logits[:, -1, :].expand(W, V)  # (W, V): every beam starts as the prompt
        if cache is not None:
            cache.reorder(torch.zeros(W, dtype=torch.long, device=device))
        run_scores = torch.full((W,), NEG, device=device)
        run_scores[0] = 0.0
        running = [self.nodes[0]] * W
        seqs: list[list[int]] = [[] for _ in range(W)]
        pool_scores = torch.full((W,), NEG, device=device)
        pool_done = torch.zeros(W, dtype=torch.bool, device=device)
        unsatisfied = True
        top_mask = torch.arange(K, device=device) < W

        for step in range(self.max_new):
            logp = F.log_softmax(logits.float(), dim=-1)  # (W, V)
            self._record_candidates(running, logp)
            acc = (logp + run_scores[:, None]).reshape(-1)  # (W*V,)
            top_scores, top_idx = torch.topk(acc, K)
            src, tok = top_idx // V, top_idx % V  # (K,) beam each continues, and its token
            hits = torch.zeros(K, dtype=torch.bool, device=device)
            if self.eot_id is not None:
                hits |= tok == self.eot_id
            if step + 1 >= self.max_new:
                hits[:] = True
            made: dict[int, BeamNode] = {}

            def node_for(c: int) -> BeamNode:
                if c not in made:
                    b = int(src[c])
                    made[c] = self._node(running[b], int(tok[c]), logp[b], float(top_scores[c]))
                return made[c]

            # the best `W` continuations that did not end run on
            run_sel = top_scores + hits.float() * NEG
            nxt = torch.topk(run_sel, W).indices
            new_running = [node_for(int(c)) for c in nxt]
            new_seqs = [seqs[int(src[c])] + [int(tok[c])] for c in nxt]

            # those among the first `W` that ended join the finished hypotheses (best `W` kept)
            fin = top_scores / ((step + 1) ** self.lp)
            fin = fin + float(bool(pool_done.all()) and self.early is True) * NEG
            fin = fin + float(not unsatisfied) * NEG
            fin = fin + (~(hits & top_mask)).float() * NEG
            merged = torch.cat([pool_scores, fin])
            keep = torch.topk(merged, W).indices
            merged_done = torch.cat([pool_done, hits & top_mask])
            new_pool: list[int | None] = []
            for j in keep.tolist():
                if j < W:
                    new_pool.append(self.pool[j])
                elif bool(merged_done[j]) and float(merged[j]) > NEG / 2:
                    n = node_for(j - W)
                    n.final_score = float(merged[j])
                    new_pool.append(n.id)
                else:
                    new_pool.append(None)  # an empty slot (or a rejected one: never the answer)
            self.pool = new_pool
            pool_scores, pool_done = merged[keep], merged_done[keep]
            parents = src[nxt]
            run_scores, running, seqs = run_sel[nxt], new_running, new_seqs

            # can a running beam still beat the worst finished hypothesis?
            best_len = self.max_new if (self.early == "never" and self.lp > 0.0) else step + 1
            best_possible = run_scores[0] / (best_len ** self.lp)
            worst = torch.where(pool_done, pool_scores.min(), torch.tensor(NEG, device=device))
            unsatisfied = unsatisfied and bool((best_possible > worst).any())
            go_on = unsatisfied and not (bool(pool_done.all()) and self.early is True) and not bool(hits.all())

            if go_on:  # feed each running beam its new token
                new = torch.tensor([[s[-1]] for s in seqs], device=device)  # (W, 1)
                if cache is not None and cache.pos + 1 <= block:
                    cache.reorder(parents)
                    logits, _ = model(new, kv_cache=cache)
                else:  # past the block: recompute every beam on its window
                    cache = None
                    window = torch.tensor([(self.ids + s)[-block:] for s in seqs], device=device)
                    logits, _ = model(window)
                logits = logits[:, -1, :]
            dt = clock() - t0
            elapsed += dt
            yield BeamStep(step, [n.id for n in running], [i for i in self.pool if i is not None], elapsed, dt)
            t0 = clock()
            if not go_on:
                break
        self.done = True

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root to `node_id`."""
        out = []
        while node_id >= 0:
            out.append(node_id)
            node_id = self.nodes[node_id].parent
        return out[::-1]

    def tokens(self, node_id: int) -> list[int]:
        return [self.nodes[i].token for i in self.path(node_id)[1:]]

    def result(self) -> BeamResult:
        if not self.done:
            for _ in self.run():
                pass
        kept = [i for i in self.pool if i is not None]
        if not kept:
            return BeamResult([], 0.0, [0], [], self.nodes)
        best = kept[0]
        return BeamResult(self.tokens(best), float(self.nodes[best].final_score), self.path(best),
                          [(self.tokens(i), float(self.nodes[i].final_score)) for i in kept], self.nodes)


def beam_search(model: GPT, ids: list[int], max_new_tokens: int, *, num_beams: int = 4,
                length_penalty: float = 1.0, early_stopping: bool | str = False,
                eot_id: int | None = None, use_cache: bool = True) -> BeamResult:
    """Run beam search to the end; `.tokens` are the best hypothesis's new tokens."""
    return BeamSearch(model, ids, max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                      early_stopping=early_stopping, eot_id=eot_id, use_cache=use_cache).result()
