"""Token views: what the Tokens tab shows, computed without any web code.

Owns:
- grouping a tokenizer's tokens into visible characters (grapheme clusters, approximated
  without extra dependencies), so a character that byte-level BPE splits over several
  tokens (emoji, CJK) is one span carrying all its ids, never a bare U+FFFD;
- the facts a user inspects per token (id, printable string, UTF-8 bytes in hex, the
  byte-level form, the characters covered) and the counts (tokens, characters, bytes,
  characters per token, tokens per word);
- surprise: the model's cross-entropy on each token given the ones before it;
- the BPE lab: train a byte-level BPE, list its merges in order with the pair counts that
  chose them (`tokenizers` does not report them: they are recomputed by replaying the
  merges over the pre-tokenized corpus' word counts), re-segment a sentence after the
  first k merges, and characters per token against vocab size;
- finding GPT-2's tokenizer in the local Hugging Face cache (never touching the network),
  and fetching it from the Hub only when asked to (bounded by a timeout; offline it
  fails at once with a message).

Does not own: the tokenizers themselves (`core.tokenizer`), the model (`core.model`),
drawing (`app/figures`) or the page (`app/tabs/tokens.py`).
"""
from __future__ import annotations

import json
import math
import socket
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from core.tokenizer import (
    EOT,
    MAX_VOCAB_SIZE,
    MIN_BPE_VOCAB_SIZE,
    Tokenizer,
    TokenizerError,
    byte_decoder,
    display_bytes,
    display_text,
)

MAX_TEXT_CHARS = 20_000        # live tokenization
MAX_CORPUS_CHARS = 2_000_000   # BPE lab corpus (~2 MB of ASCII)
MAX_LAB_VOCAB = 8192           # BPE lab: the merge replay is pure Python
MAX_SURPRISE_TOKENS = 4096     # tokens scored by the model; later ones get no surprise
GPT2_REPOS = ("openai-community/gpt2", "gpt2")
ZWJ = "\u200d"


def check_text(text, max_chars: int = MAX_TEXT_CHARS, what: str = "text") -> str:
    """`text` as a str ('' for None), or ValueError naming its length and the limit."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ValueError(f"{what} has {len(text):,} characters, over the limit of {max_chars:,}")
    return text


# ---- visible characters -------------------------------------------------------------
def _is_ri(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF  # regional indicator (flags come in pairs)


def _extends(ch: str) -> bool:
    o = ord(ch)
    return (unicodedata.category(ch) in ("Mn", "Mc", "Me") or ch == ZWJ or 0xFE00 <= o <= 0xFE0F
            or 0xE0100 <= o <= 0xE01EF or 0x1F3FB <= o <= 0x1F3FF or 0xE0020 <= o <= 0xE007F)


def grapheme_bounds(text: str) -> list[int]:
    """Offsets where one visible character (grapheme cluster) ends and the next begins,
    from 0 to len(text). An approximation of UAX #29 covering what tokenizers split:
    combining marks, ZWJ emoji sequences, skin tones, variation selectors, tag
    sequences, flag pairs and CR LF."""
    bounds = [0]
    ri = int(bool(text) and _is_ri(text[0]))  # regional indicators in the current cluster
    for i in range(1, len(text)):
        prev, ch = text[i - 1], text[i]
        if prev == "\r" and ch == "\n":
            join = True
        elif unicodedata.category(prev) == "Cc" or unicodedata.category(ch) == "Cc":
            join = False
        elif _extends(ch):
            join = True
        elif prev == ZWJ:
            join = unicodedata.category(ch) == "So"  # emoji ZWJ sequence
        else:
            join = _is_ri(ch) and _is_ri(prev) and ri % 2 == 1
        if not join:
            bounds.append(i)
            ri = 0
        ri += _is_ri(ch)
    if text:
        bounds.append(len(text))
    return bounds


def visible(text: str) -> str:
    """`text` for a token view: space ·, tab →, newline ↵ followed by a real line break,
    other invisible characters escaped (`display_text`); a multi-code-point character
    (emoji sequence, letter + combining mark) is kept whole so it draws as one glyph."""
    b = grapheme_bounds(text)
    out = []
    for a, z in zip(b, b[1:]):
        c = text[a:z]
        if c in ("\n", "\r\n"):
            out.append(display_text(c) + "\n")
        elif len(c) > 1 and unicodedata.category(c[0])[0] not in "CZ":
            out.append(c)
        else:
            out.append(display_text(c))
    return "".join(out)


def group_tokens(offsets: list[tuple[int, int]], text: str) -> list[tuple[int, int]]:
    """Token index ranges [i, j): the fewest consecutive tokens whose spans end on a
    visible-character boundary. Tokens inside one character (equal spans) fall in one
    group; a token covering whole characters is a group of its own."""
    bounds = set(grapheme_bounds(text))
    groups: list[tuple[int, int]] = []
    i, n = 0, len(offsets)
    while i < n:
        j, end = i + 1, offsets[i][1]
        while j < n and (offsets[j][0] < end or end not in bounds):
            end = max(end, offsets[j][1])
            j += 1
        groups.append((i, j))
        i = j
    return groups


# ---- one text through one tokenizer ---------------------------------------------------
def text_counts(text: str, n_tokens: int) -> dict:
    """Tokens, characters (code points), visible characters, UTF-8 bytes, words and the ratios."""
    chars, words = len(text), len(text.split())
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    return {
        "tokens": n_tokens, "chars": chars, "visible_chars": max(0, len(grapheme_bounds(text)) - 1),
        "bytes": n_bytes, "words": words,
        "chars_per_token": chars / n_tokens if n_tokens else None,
        "bytes_per_token": n_bytes / n_tokens if n_tokens else None,
        "tokens_per_word": n_tokens / words if words else None,
    }


@dataclass
class TokenView:
    """One text tokenized: per token its id, printable string, byte-level vocab form, UTF-8
    bytes (hex) and character span; the groups (one per visible character or run of
    whole characters); the counts."""
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    tokens: list[str]
    byte_level: list[str]
    bytes_hex: list[str]
    groups: list[tuple[int, int]]
    counts: dict

    def group_span(self, g: int) -> tuple[int, int]:
        i, j = self.groups[g]
        return self.offsets[i][0], max(o[1] for o in self.offsets[i:j])

    def group_text(self, g: int) -> str:
        a, b = self.group_span(g)
        return self.text[a:b]

    def to_dict(self) -> dict:
        groups = []
        for g, (i, j) in enumerate(self.groups):
            a, b = self.group_span(g)
            groups.append({"start": a, "end": b, "text": self.text[a:b], "shown": visible(self.text[a:b]),
                           "tokens": [i, j], "ids": self.ids[i:j]})
        return {"ids": self.ids, "tokens": self.tokens, "offsets": [list(o) for o in self.offsets],
                "byte_level": self.byte_level, "bytes": self.bytes_hex, "groups": groups, "counts": self.counts}


def tokenize(tok: Tokenizer, text: str, max_chars: int = MAX_TEXT_CHARS) -> TokenView:
    """Encode `text` with offsets and gather what the token view shows."""
    text = check_text(text, max_chars)
    enc = tok.encode_with_offsets(text)
    facts: dict[int, tuple[str, str, str]] = {}
    for i in set(enc.ids):
        facts[i] = (tok.display(i), tok.id_to_token(i), tok.token_bytes(i).hex(" "))
    unk = getattr(tok, "unk_id", None)
    # an unknown character's token stands for "<unk>", but the bytes a user asks about are the character's own
    bytes_hex = [text[a:b].encode("utf-8", "surrogatepass").hex(" ") if i == unk and b > a else facts[i][2]
                 for i, (a, b) in zip(enc.ids, enc.offsets)]
    return TokenView(
        text=text, ids=list(enc.ids), offsets=list(enc.offsets),
        tokens=[facts[i][0] for i in enc.ids], byte_level=[facts[i][1] for i in enc.ids],
        bytes_hex=bytes_hex, groups=group_tokens(enc.offsets, text),
        counts=text_counts(text, len(enc.ids)),
    )


def code_points(text: str) -> str:
    """'U+0041 U+1F44D' for the characters in `text`."""
    return " ".join(f"U+{ord(c):04X}" for c in text)


# ---- surprise -----------------------------------------------------------------------
@torch.no_grad()
def token_surprise(model, ids: list[int], max_tokens: int = MAX_SURPRISE_TOKENS,
                   batch_size: int = 8) -> list[float | None]:
    """Cross-entropy in nats, -log p(token i | tokens before i), for every token.

    The first token has no context, so no surprise (None); neither do tokens past
    `max_tokens`. Texts longer than the model's block size are scored in overlapping
    windows, so every token sees at least half a block of context (once there is one).
    """
    n_all = len(ids)
    out: list[float | None] = [None] * n_all
    n = min(n_all, max_tokens)
    if n < 2:
        return out
    V, T = model.config.vocab_size, model.config.block_size
    bad = next((i for i in ids[:n] if not 0 <= int(i) < V), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is out of range for this model (vocab_size={V})")
    device = model.transformer.wte.weight.device
    x = torch.tensor(ids[:n], dtype=torch.long, device=device)
    W = min(T, n)
    stride = max(1, W // 2)
    starts = list(range(0, n - W + 1, stride))
    if starts[-1] != n - W:
        starts.append(n - W)
    done = 1  # next target position without a score
    for c in range(0, len(starts), batch_size):
        chunk = starts[c:c + batch_size]
        idx = torch.stack([x[s:s + W] for s in chunk])  # (B, W)
        logits, _ = model(idx)  # (B, W, V)
        logp = F.log_softmax(logits.float(), dim=-1)
        nll = -logp[:, :-1].gather(-1, idx[:, 1:, None]).squeeze(-1)  # (B, W-1): target s+1 .. s+W-1
        for b, s in enumerate(chunk):
            lo = max(done, s + 1)
            vals = nll[b, lo - s - 1:].tolist()
            out[lo:s + W] = vals
            done = max(done, s + W)
    return out


def group_surprise(view: TokenView, surprise: list[float | None]) -> list[float | None]:
    """Surprise of each group: the sum over its tokens (the chain rule: -log p of the whole
    character), or None when a token in it has none."""
    out = []
    for i, j in view.groups:
        vals = surprise[i:j]
        out.append(None if any(v is None for v in vals) else float(sum(vals)))
    return out


# ---- the BPE lab ----------------------------------------------------------------------
@dataclass(frozen=True)
class Merge:
    """One BPE merge: two byte-level symbols (GPT-2's stand-in alphabet, 'Ġ' is a space)
    and how often they stood side by side in the corpus when the trainer picked them."""
    rank: int
    left: str
    right: str
    count: int

    @property
    def merged(self) -> str:
        return self.left + self.right


@dataclass
class BpeLab:
    """A BPE trained in the lab, its merges with counts, and the corpus' token count after
    each number of merges (`corpus_tokens[k]`: after the first k merges)."""
    tokenizer: Tokenizer
    merges: list[Merge]
    corpus_tokens: list[int]
    corpus_chars: int
    corpus_bytes: int
    base_vocab: int = MIN_BPE_VOCAB_SIZE
    extra: dict = field(default_factory=dict)

    @property
    def vocab_sizes(self) -> list[int]:
        return [self.base_vocab + k for k in range(len(self.corpus_tokens))]

    @property
    def chars_per_token(self) -> list[float]:
        return [self.corpus_chars / t if t else math.nan for t in self.corpus_tokens]


def bpe_merges(tok: Tokenizer) -> list[tuple[str, str]]:
    """A byte-level BPE's merges in rank order, as pairs of byte-level strings."""
    if tok.kind != "bpe":
        raise ValueError(f"a {tok.kind} tokenizer has no merges: the BPE lab needs a byte-level BPE")
    raw = json.loads(tok.to_str())["model"].get("merges", [])
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw]


def byte_level_display(s: str) -> str:
    """The printable form of a byte-level vocab string ('Ġthe' -> '·the', partial UTF-8 as <0xE2>)."""
    table = byte_decoder()
    return display_bytes(b"".join(bytes([table[c]]) if c in table else c.encode("utf-8") for c in s))


def _pretokenize(corpus: str) -> Counter:
    """Word counts of the corpus after GPT-2's byte-level pre-tokenization (as the trainer sees it)."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return Counter(piece for piece, _ in pre.pre_tokenize_str(corpus))


def replay_merges(corpus: str, merges: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Replay `merges` in order over the corpus' pre-tokenized words.

    Returns (counts, corpus_tokens): counts[r] is how often the pair of merge r stood side
    by side (weighted by word frequency, every adjacent position counted, as the trainer
    counts) just before it was applied, i.e. the count that chose it; corpus_tokens[k] is
    the number of tokens the corpus takes after the first k merges.
    """
    wc = _pretokenize(corpus)
    words = [list(w) for w in wc]
    freqs = list(wc.values())
    pairs: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, w in enumerate(words):
        for p in zip(w, w[1:]):
            pairs[p] += freqs[wi]
            where[p].add(wi)
    total = sum(len(w) * f for w, f in zip(words, freqs))
    counts, tokens = [], [total]
    for a, b in merges:
        counts.append(pairs.get((a, b), 0))
        new = a + b
        for wi in where.pop((a, b), ()):
            w, f = words[wi], freqs[wi]
            for p in zip(w, w[1:]):
                pairs[p] -= f
                if pairs[p] <= 0:
                    del pairs[p]
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(new)
                    total -= f
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pairs[p] += f
                where[p].add(wi)
        tokens.append(total)
    return counts, tokens


def check_lab_vocab(vocab_size) -> int:
    if isinstance(vocab_size, float) and vocab_size.is_integer():
        vocab_size = int(vocab_size)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
            or not MIN_BPE_VOCAB_SIZE <= vocab_size <= min(MAX_LAB_VOCAB, MAX_VOCAB_SIZE):
        raise ValueError(f"vocab size {vocab_size!r} is out of range: the BPE lab trains "
                         f"{MIN_BPE_VOCAB_SIZE} (256 bytes + {EOT}) to {MAX_LAB_VOCAB} tokens")
    return vocab_size


def train_bpe_lab(corpus: str, vocab_size: int, min_frequency: int = 2,
                  max_chars: int = MAX_CORPUS_CHARS) -> BpeLab:
    """Train a byte-level BPE on `corpus` with `tokenizers`, then recompute the pair counts
    that chose each merge and the corpus' length in tokens after each merge."""
    vocab_size = check_lab_vocab(vocab_size)
    corpus = check_text(corpus, max_chars, "the corpus")
    if not corpus.strip():
        raise ValueError("the corpus is empty: paste some text or pick a corpus")
    tok = Tokenizer.train_bpe(corpus, vocab_size, min_frequency=min_frequency)
    pairs = bpe_merges(tok)
    counts, tokens = replay_merges(corpus, pairs)
    merges = [Merge(r, a, b, c) for r, ((a, b), c) in enumerate(zip(pairs, counts))]
    return BpeLab(tokenizer=tok, merges=merges, corpus_tokens=tokens, corpus_chars=len(corpus),
                  corpus_bytes=len(corpus.encode("utf-8", "surrogatepass")),
                  base_vocab=tok.vocab_size - len(merges))


def truncated_bpe(tok: Tokenizer, k: int) -> Tokenizer:
    """The same byte-level BPE with only its first `k` merges (ids renumbered in the
    original order): what the tokenizer looked like k steps into training."""
    pairs = bpe_merges(tok)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(pairs):
        raise ValueError(f"merge step {k!r} is out of range: this tokenizer has 0..{len(pairs)} merges")
    d = json.loads(tok.to_str())
    keep = set(pre_tokenizers.ByteLevel.alphabet()) | {a + b for a, b in pairs[:k]}
    specials = [t["content"] for t in d.get("added_tokens", []) if t.get("special")]
    keep |= set(specials)
    kept = sorted((i, t) for t, i in d["model"]["vocab"].items() if t in keep)
    hf = HFTokenizer(models.BPE(vocab={t: n for n, (_, t) in enumerate(kept)}, merges=pairs[:k]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    if specials:
        hf.add_special_tokens(specials)
    return Tokenizer(hf, "bpe")


# ---- GPT-2's tokenizer, offline ----------------------------------------------------------
def find_gpt2_tokenizer(cache_dir: str | Path | None = None) -> Tokenizer | None:
    """GPT-2's tokenizer from the local Hugging Face cache (`cache_dir`, default HF's own),
    or None when it was never downloaded. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with gradio
        return None
    for repo in GPT2_REPOS:
        for name in ("tokenizer.json", "vocab.json"):
            try:
                p = try_to_load_from_cache(repo, name, cache_dir=str(cache_dir) if cache_dir else None)
            except (OSError, ValueError):
                continue
            if isinstance(p, str):
                try:
                    return Tokenizer.from_file(Path(p).parent)
                except TokenizerError:
                    continue
    return None


def fetch_gpt2_tokenizer(cache_dir: str | Path | None = None, offline: bool = False,
                         timeout: float = 10.0) -> Tokenizer:
    """GPT-2's tokenizer: from the local cache, else downloaded once from the Hub
    (`tokenizer.json`, about 1.4 MB, into the Hugging Face cache). ValueError saying it is
    unavailable when `offline` and not cached, or when the Hub cannot be reached (`timeout`
    bounds one test connection and the metadata request; the download itself uses
    HF_HUB_DOWNLOAD_TIMEOUT, 10 s)."""
    found = find_gpt2_tokenizer(cache_dir)
    if found is not None:
        return found
    if offline:
        raise ValueError("GPT-2's tokenizer is unavailable: the app is offline (HF_HUB_OFFLINE=1) and it is not "
                         "in the local Hugging Face cache")
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with gradio
        raise ValueError("GPT-2's tokenizer is unavailable: huggingface_hub is not installed") from None
    url = urlparse(constants.ENDPOINT)
    try:  # one quick connection first: huggingface_hub retries a dead network for ~30 s
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"GPT-2's tokenizer is unavailable: {url.hostname} cannot be reached from this machine "
                         f"({type(e).__name__}: no internet?)") from None
    try:
        p = hf_hub_download(GPT2_REPOS[0], "tokenizer.json", cache_dir=str(cache_dir) if cache_dir else None,
                            etag_timeout=timeout)
    except Exception as e:  # network and HTTP errors come in many types
        raise ValueError(f"GPT-2's tokenizer is unavailable: the Hugging Face Hub could not be reached "
                         f"({type(e).__name__}); it works offline once downloaded") from None
    try:
        return Tokenizer.from_file(p)
    except TokenizerError as e:
        raise ValueError(f"GPT-2's tokenizer from the Hub could not be read: {e}") from None
