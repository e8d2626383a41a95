"""Embedding views: projections, nearest neighbours, faithfulness and alignment.

Owns the numbers behind the Embeddings tab, computed from tensors with no web code:
- `pca`: principal components of an (N, C) matrix with the share of variance each one
  explains (exact: the eigenvectors of the covariance, or an SVD when N < C);
- `token_classes`: what kind of text each vocabulary token is (leading space, letters,
  digits, punctuation, byte pieces, ...), read from the tokenizer's token bytes;
- `CosineIndex`: exact cosine nearest neighbours in the full dimension (brute force over
  the whole vocabulary) of a token or of `a - b + c` (parsed by `core.inspect.expression`);
- `neighbour_recall`: how faithful a 2-D picture is — the share of each point's k
  nearest neighbours in the full dimension that are also its k nearest in 2-D;
- `cosine_matrix` / `pool_square`: position–position similarity;
- `hidden_states`: the residual stream at every layer for one text, from `GPT.trace`;
- `procrustes` / `align_checkpoints`: the same tokens across checkpoints of a run in
  one coordinate system (orthogonal Procrustes to the last checkpoint).

Does not own: parsing expressions (`core.inspect.expression`), drawing
(`app.figures.embeddings`), loading models (`core.checkpoint`, the app's catalog), caching
results per model (the app). Bad input raises ValueError naming the value and the limit.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..model import GPT
from ..tokenizer import Tokenizer, display_text
from .expression import Term, display_lookup

CLASS_NAMES = ("leading space", "letters", "digits", "punctuation", "byte pieces", "whitespace", "special",
               "other")
(LEADING_SPACE, LETTERS, DIGITS, PUNCTUATION, BYTE_PIECES, WHITESPACE, SPECIAL, OTHER) = range(len(CLASS_NAMES))

MAX_NEIGHBOURS = 100
RECALL_QUERIES = 1000  # query points for neighbour recall; every point when there are fewer


def _as_tensor(X) -> torch.Tensor:
    t = X.detach() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.dim() != 2:
        raise ValueError(f"expected an (N, C) matrix, got shape {tuple(t.shape)}")
    return t.float()


# --------------------------------------------------------------------------------------
# PCA


@dataclass(frozen=True)
class Projection:
    """`coords` (N, k) float32 = (X - mean) @ components.T; `explained` (k,) is the share
    of the total variance along each component (they sum to at most 1)."""

    coords: np.ndarray
    explained: np.ndarray
    components: np.ndarray  # (k, C) orthonormal rows
    mean: np.ndarray  # (C,)

    def project(self, X) -> np.ndarray:
        """Coordinates of other rows (same C) in this projection's axes."""
        X = _as_tensor(X).cpu().numpy()
        return ((X - self.mean) @ self.components.T).astype(np.float32)


def pca(X, k: int = 3) -> Projection:
    """Exact PCA of the rows of `X` (N, C): the top `k` eigenvectors of the covariance
    (one C×C eigendecomposition after one N×C×C product; an SVD when N < C).

    Each component's sign is fixed so its largest-magnitude loading is positive (so the
    picture does not flip between calls). Components past the rank are zero.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1")
    X = _as_tensor(X)
    N, C = X.shape
    if N == 0:
        raise ValueError("cannot project an empty matrix (0 rows)")
    mean = X.mean(0)
    Xc = X - mean  # (N, C)
    if N >= C:
        cov = (Xc.T @ Xc).double()  # (C, C)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        total = float(evals.sum())
        comps = evecs.T[:k].float()  # (k', C)
        var = evals[:k]
    else:
        _, S, Vh = torch.linalg.svd(Xc.double(), full_matrices=False)  # S (N,), Vh (N, C)
        total = float((S ** 2).sum())
        comps = Vh[:k].float()
        var = (S ** 2)[:k]
    comps = comps.to(X.device)
    idx = comps.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(comps.gather(1, idx)).clamp(min=0) * 2 - 1  # +1 / -1, never 0
    comps = comps * signs
    coords = Xc @ comps.T  # (N, k')
    explained = (var / total).float().cpu().numpy() if total > 0 else np.zeros(len(var), np.float32)
    coords_np = np.zeros((N, k), np.float32)
    coords_np[:, :coords.shape[1]] = coords.cpu().numpy()
    comps_np = np.zeros((k, C), np.float32)
    comps_np[:comps.shape[0]] = comps.cpu().numpy()
    explained_np = np.zeros(k, np.float32)
    explained_np[:len(explained)] = explained
    if total <= 0:  # all rows equal: no direction carries variance
        coords_np[:] = 0
    return Projection(coords_np, explained_np, comps_np, mean.cpu().numpy())


# --------------------------------------------------------------------------------------
# Token classes


def classify_token(b: bytes, special: bool = False) -> int:
    """The class (an index into `CLASS_NAMES`) of a token standing for bytes `b`."""
    if special:
        return SPECIAL
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return BYTE_PIECES
    if not s:
        return OTHER
    if s.isspace():
        return WHITESPACE
    if s[0] == " ":
        return LEADING_SPACE
    if s.isalpha():
        return LETTERS
    if s.isdigit():
        return DIGITS
    if all(unicodedata.category(ch)[0] in "PS" for ch in s):
        return PUNCTUATION
    return OTHER


def token_classes(tokenizer: Tokenizer | None, vocab_size: int) -> np.ndarray:
    """(vocab_size,) int8 class per id; ids the tokenizer lacks (a padded vocab) are OTHER."""
    out = np.full(vocab_size, OTHER, dtype=np.int8)
    if tokenizer is None:
        return out
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        out[i] = classify_token(tokenizer.token_bytes(i), tokenizer.is_special(i))
    return out


def token_labels(tokenizer: Tokenizer | None, vocab_size: int) -> list[str]:
    """The printable label of every id (`Tokenizer.display`); `#id` where there is none."""
    labels = tokenizer.vocab()[:vocab_size] if tokenizer is not None else []
    return labels + [f"#{i}" for i in range(len(labels), vocab_size)]


def search_tokens(labels: Sequence[str], query: str, max_chars: int = 100) -> np.ndarray:
    """Ids whose label contains `query` (case-insensitive; a typed space matches ·, a
    newline ↵, as labels show them). An empty query matches nothing."""
    if not isinstance(query, str):
        raise ValueError("the search must be text")
    if len(query) > max_chars:
        raise ValueError(f"the search is {len(query)} characters; at most {max_chars} are accepted")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate (JSON can carry one as an escape)
        raise ValueError(f"the search is not valid Unicode at index {e.start}: "
                         f"a lone surrogate U+{ord(query[e.start]):04X}") from None
    if not query:
        return np.zeros(0, np.int64)
    q = display_text(query).casefold()
    return np.array([i for i, s in enumerate(labels) if q in s.casefold()], dtype=np.int64)


# --------------------------------------------------------------------------------------
# Nearest neighbours


class CosineIndex:
    """Exact cosine nearest neighbours over the rows of E (V, C): brute force, full dimension."""

    def __init__(self, E):
        self.E = _as_tensor(E)
        self.norms = self.E.norm(dim=1).clamp_min(1e-12)  # (V,)

    def __len__(self) -> int:
        return self.E.shape[0]

    def vector(self, terms: Sequence[Term]) -> torch.Tensor:
        """Σ sign · E[id] over the terms: (C,)."""
        v = torch.zeros(self.E.shape[1], device=self.E.device)
        for t in terms:
            v = v + t.sign * self.E[t.id]
        return v

    def search(self, query, k: int = 10, exclude: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The `k` rows most cosine-similar to `query` (C,), best first: (ids, scores)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_NEIGHBOURS:
            raise ValueError(f"k={k!r} neighbours: ask for 1 to {MAX_NEIGHBOURS}")
        q = torch.as_tensor(query, dtype=torch.float32, device=self.E.device).reshape(-1)
        qn = q.norm()
        if float(qn) == 0.0:
            raise ValueError("the query vector is zero (the terms cancel out): no direction to compare with")
        scores = (self.E @ q) / (self.norms * qn)  # (V,)
        if len(exclude):
            scores[torch.as_tensor(list(exclude), dtype=torch.long, device=scores.device)] = -float("inf")
        k = min(k, len(self) - len(set(exclude)))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        top = torch.topk(scores, k)
        return top.indices.cpu().numpy(), top.values.cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------------------
# Faithfulness of a 2-D picture


@dataclass(frozen=True)
class Recall:
    value: float  # mean share of full-dimension neighbours kept in 2-D
    k: int
    n_queries: int
    n_points: int
    metric: str  # the full-dimension metric ("euclidean" or "cosine"); 2-D is Euclidean
    sampled: bool  # True when the queries are a seeded random sample of the points


def _knn(X: torch.Tensor, q_idx: torch.Tensor, k: int, metric: str, chunk: int = 256) -> torch.Tensor:
    """(Q, k) ids of each query row's k nearest rows of X, the query itself excluded."""
    if metric == "cosine":
        X = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sq = (X * X).sum(1)
    out = []
    for s in range(0, len(q_idx), chunk):
        qi = q_idx[s:s + chunk]
        Q = X[qi]
        if metric == "cosine":
            d = -(Q @ X.T)
        else:
            d = sq[qi, None] - 2 * (Q @ X.T) + sq[None, :]  # squared distances (Q, N)
        d[torch.arange(len(qi)), qi] = float("inf")
        out.append(torch.topk(d, k, largest=False).indices)
    return torch.cat(out)


def neighbour_recall(full, low, k: int = 10, n_queries: int = RECALL_QUERIES, seed: int = 0,
                     metric: str = "euclidean") -> Recall:
    """Neighbour recall@k: for each query point, the share of its k nearest neighbours in
    `full` (N, C) (by `metric`) that are also among its k nearest in `low` (N, 2)
    (Euclidean), averaged. 1.0: the picture keeps every neighbourhood; chance is k/(N-1).

    With more than `n_queries` points the queries are a seeded random sample (said in
    the result); the neighbours are always searched among all N points.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric={metric!r} must be 'euclidean' or 'cosine'")
    F, L = _as_tensor(full), _as_tensor(low).to(_as_tensor(full).device)
    N = F.shape[0]
    if L.shape[0] != N:
        raise ValueError(f"full has {N} rows but low has {L.shape[0]}")
    if N < 2:
        raise ValueError("neighbour recall needs at least 2 points")
    k = min(k, N - 1)
    sampled = N > n_queries
    if sampled:
        g = torch.Generator().manual_seed(seed)
        q_idx = torch.randperm(N, generator=g)[:n_queries].to(F.device)
    else:
        q_idx = torch.arange(N, device=F.device)
    a = _knn(F, q_idx, k, metric)
    b = _knn(L, q_idx, k, "euclidean")
    hits = (a[:, :, None] == b[:, None, :]).any(-1).float().sum(1)  # (Q,)
    return Recall(float(hits.mean() / k), k, len(q_idx), N, metric, sampled)


# --------------------------------------------------------------------------------------
# Positions, hidden states


def cosine_matrix(X) -> np.ndarray:
    """(N, N) float32 cosine similarity between the rows of X."""
    X = _as_tensor(X)
    Xn = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (Xn @ Xn.T).cpu().numpy().astype(np.float32)


def pool_square(M: np.ndarray, max_size: int) -> tuple[np.ndarray, int]:
    """Average (f × f) blocks of a square matrix so it is at most `max_size` a side; (pooled, f)."""
    n = M.shape[0]
    f = max(1, -(-n // max_size))
    if f == 1:
        return M, 1
    m = -(-n // f) * f
    P = np.full((m, m), np.nan, np.float32)
    P[:n, :n] = M
    return np.nanmean(P.reshape(m // f, f, m // f, f), axis=(1, 3)).astype(np.float32), f


def hidden_states(model: GPT, ids: Sequence[int], normalize: bool = False) -> np.ndarray:
    """The residual stream for one sequence at every layer: (L+1, T, C) float32.

    Layer 0 is the embedding (token + position); layer i the output of block i.
    `normalize`: centre each vector and scale it to unit RMS, as the next layer norm sees
    it (the stream's size grows with depth, which would otherwise dominate a projection).
    """
    ids = [int(i) for i in ids]
    V = model.config.vocab_size
    if ids and not all(0 <= i < V for i in ids):
        raise ValueError(f"token ids must be in 0..{V - 1}")
    p = model.transformer.wte.weight
    idx = torch.tensor([ids], dtype=torch.long, device=p.device)  # (1, T)
    tr = model.trace(idx, keep=["embed", "blocks.*.resid_post"])
    H = tr.residuals()[:, 0].float()  # (L+1, T, C)
    if normalize:
        H = H - H.mean(-1, keepdim=True)
        H = H / H.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
    return H.cpu().numpy()


def layer_paths(states: np.ndarray, k: int = 2) -> tuple[np.ndarray, Projection]:
    """One PCA fitted on every layer's states at once: (L+1, T, k) coordinates, so each
    token's path across layers is drawn in one coordinate system."""
    L1, T, C = states.shape
    proj = pca(states.reshape(L1 * T, C), k)
    return proj.coords.reshape(L1, T, k), proj


# --------------------------------------------------------------------------------------
# Alignment across checkpoints


def procrustes(A, B) -> np.ndarray:
    """The orthogonal R (C, C) minimising ‖(A − Ā) R − (B − B̄)‖ (orthogonal Procrustes)."""
    A, B = _as_tensor(A).double(), _as_tensor(B).double()
    if A.shape != B.shape:
        raise ValueError(f"cannot align matrices of shapes {tuple(A.shape)} and {tuple(B.shape)}")
    M = (A - A.mean(0)).T @ (B - B.mean(0))  # (C, C)
    U, _, Vh = torch.linalg.svd(M)
    return (U @ Vh).cpu().numpy()


def align(A, B) -> tuple[np.ndarray, float]:
    """A rotated (and shifted) onto B: (aligned A, disparity ‖aligned − B‖ / ‖B − B̄‖)."""
    R = procrustes(A, B)
    A, B = _as_tensor(A).double().cpu().numpy(), _as_tensor(B).double().cpu().numpy()
    out = (A - A.mean(0)) @ R + B.mean(0)
    denom = np.linalg.norm(B - B.mean(0))
    return out.astype(np.float32), float(np.linalg.norm(out - B) / denom) if denom > 0 else 0.0


def align_checkpoints(mats: Sequence, k: int = 2) -> tuple[np.ndarray, Projection, list[float]]:
    """The same rows across checkpoints in one picture: each (V, C) matrix is rotated onto
    the last one (orthogonal Procrustes in the full dimension), then all are projected on
    the last one's principal axes. Returns ((n, V, k) coords, the last's PCA, disparities)."""
    if not mats:
        raise ValueError("no checkpoints to align")
    last = _as_tensor(mats[-1]).cpu()
    proj = pca(last, k)
    coords, disp = [], []
    for M in mats:
        aligned, d = align(M, last)
        coords.append(proj.project(aligned))
        disp.append(d)
    return np.stack(coords), proj, disp


# --------------------------------------------------------------------------------------
# Everything about one vocabulary, computed once per model


@dataclass(frozen=True)
class VocabView:
    """The token embedding matrix seen whole: PCA (3 components), classes, labels, a
    cosine index, and how faithful the 2-D picture is (recall@k, two metrics)."""

    projection: Projection
    classes: np.ndarray
    labels: list[str]
    lookup: dict[str, int]
    index: CosineIndex
    recall: Recall  # full-dimension Euclidean neighbours vs 2-D neighbours
    recall_cosine: Recall  # full-dimension cosine neighbours (the ones listed) vs 2-D neighbours

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.index.E.shape)


def analyse_vocab(E, tokenizer: Tokenizer | None, k: int = 10, n_queries: int = RECALL_QUERIES) -> VocabView:
    """All of `VocabView` for a (V, C) token embedding matrix (every row: nothing sampled
    but the recall's queries when V > n_queries)."""
    E = _as_tensor(E)
    V = E.shape[0]
    proj = pca(E, 3)
    labels = token_labels(tokenizer, V)
    low = proj.coords[:, :2]
    return VocabView(
        projection=proj, classes=token_classes(tokenizer, V), labels=labels, lookup=display_lookup(labels),
        index=CosineIndex(E), recall=neighbour_recall(E, low, k, n_queries),
        recall_cosine=neighbour_recall(E, low, k, n_queries, metric="cosine"),
    )
