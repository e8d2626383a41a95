"""Corpora, the train/val token split, and batch sampling.

Owns: getting training text (Tiny Shakespeare from a local copy or a one-time download
checked by sha256; synthetic corpora generated in code, offline and seeded; the user's
pasted text or uploaded UTF-8 file, validated with clear errors), splitting a token id
array into contiguous train/val parts, and sampling (x, y) batches where y is x shifted
by one, from a private seeded generator whose state can be saved for an exact resume.

Does not own: tokenizing (`core.tokenizer`; callers pass token ids in), the training loop
(`core.train`), or anything about the web layer. Nothing here downloads at import time.
"""

from __future__ import annotations

import hashlib
import http.client
import operator
import os
import random
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from .machine import default_cache_dir  # noqa: F401  (re-exported: the app and tests import it from here)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # 20 MiB: an uploaded corpus file
MAX_TEXT_CHARS = MAX_UPLOAD_BYTES  # pasted text
MIN_CORPUS_CHARS = 100
SYNTHETIC_CHARS = 200_000
MAX_SYNTHETIC_CHARS = 50_000_000

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_BYTES = 1_115_394
TINY_SHAKESPEARE_FILE = "tinyshakespeare.txt"

_BOM = "\ufeff"


class DataError(ValueError):
    """A corpus, file or token array that cannot be used; the message says why and the limit."""


# --- text: files and pasted text -------------------------------------------------------
def _positive_int(value, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise DataError(f"{name}={value!r} must be an integer")
    try:
        v = operator.index(value)
    except TypeError:
        raise DataError(f"{name}={value!r} must be an integer") from None
    if v < minimum or (maximum is not None and v > maximum):
        hi = f" and at most {maximum:,}" if maximum is not None else ""
        raise DataError(f"{name}={v:,} must be at least {minimum:,}{hi}")
    return v


def _check_length(text: str, what: str, min_chars: int, max_chars: int | None) -> None:
    if not text.strip():
        raise DataError(f"{what} is empty")
    if len(text) < min_chars:
        raise DataError(f"{what} has {len(text):,} characters; a corpus needs at least {min_chars:,}")
    if max_chars is not None and len(text) > max_chars:
        raise DataError(f"{what} has {len(text):,} characters, over the limit of {max_chars:,}")


def validate_text(text, min_chars: int = MIN_CORPUS_CHARS, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Check pasted text: a str, not empty, within [min_chars, max_chars], valid Unicode.

    Returns the text as given, less a leading byte-order mark.
    """
    if text is None:
        raise DataError("no text was given")
    if not isinstance(text, str):
        raise DataError(f"the text must be a str, not {type(text).__name__}")
    if text.startswith(_BOM):
        text = text[1:]
    _check_length(text, "the text", min_chars, max_chars)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"the text has a lone surrogate U+{ord(text[e.start]):04X} at character {e.start:,}, "
                        "which is not valid Unicode; paste it again from the original source") from None
    return text


def _decode_utf8(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start:,} "
                        f"cannot be decoded ({e.reason}); save it as UTF-8 and try again") from None
    return text[1:] if text.startswith(_BOM) else text


def read_text_file(path, max_bytes: int = MAX_UPLOAD_BYTES, min_chars: int = MIN_CORPUS_CHARS) -> str:
    """Read a UTF-8 text file (strict), at most `max_bytes` (checked before reading).

    A leading BOM is removed; line endings are kept as they are.
    """
    p = Path(path)
    what = f"the file {p.name!r}"
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DataError(f"no such file: {str(p)!r}") from None
    except OSError as e:
        raise DataError(f"cannot read {what}: {e.strerror or e}") from None
    if not p.is_file():
        raise DataError(f"{str(p)!r} is not a regular file")
    if st.st_size > max_bytes:
        raise DataError(f"{what} is {st.st_size:,} bytes, over the limit of {max_bytes:,} bytes")
    with open(p, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after the stat
        raise DataError(f"{what} is over the limit of {max_bytes:,} bytes")
    if not data:
        raise DataError(f"{what} is empty")
    text = _decode_utf8(data, what)
    nul = text.find("\x00")
    if nul >= 0:
        raise DataError(f"{what} has a NUL character at character {nul:,}: it looks like a binary "
                        "or UTF-16 file, not UTF-8 text")
    _check_length(text, what, min_chars, None)
    return text


def corpus_stats(text: str) -> dict:
    """Facts about a corpus for the UI: characters, UTF-8 bytes, lines, words, distinct characters."""
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return {"chars": len(text), "bytes": len(text.encode("utf-8", "surrogatepass")), "lines": lines,
            "words": len(text.split()), "distinct_chars": len(set(text))}


# --- Tiny Shakespeare ------------------------------------------------------------------
def default_search_paths() -> list[Path]:
    """Where a local Tiny Shakespeare may be: `$GLASSBOX_DATA_DIR`, `<repo>/../shared/data`, the cache."""
    paths = []
    env = os.environ.get("GLASSBOX_DATA_DIR")
    if env:
        paths.append(Path(env).expanduser())
    paths.append(Path(__file__).resolve().parents[1].parent / "shared" / "data" / TINY_SHAKESPEARE_FILE)
    paths.append(default_cache_dir())
    return paths


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_tiny_shakespeare(search_paths: Sequence | None = None) -> Path | None:
    """The first verified copy (right size and sha256) among `search_paths`, else None.

    Each entry is a file, or a folder holding `tinyshakespeare.txt`. Copies that do not
    match the checksum are skipped (and left alone).
    """
    for entry in default_search_paths() if search_paths is None else search_paths:
        p = Path(entry).expanduser()
        if p.is_dir():
            p = p / TINY_SHAKESPEARE_FILE
        try:
            if p.is_file() and p.stat().st_size == TINY_SHAKESPEARE_BYTES and sha256_file(p) == TINY_SHAKESPEARE_SHA256:
                return p
        except OSError:
            continue
    return None


def download_file(url: str, dest, sha256: str, *, timeout: float = 30.0, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Download `url` to a temp file beside `dest`, check its sha256, then rename it into place.

    On any failure nothing is left behind and a `DataError` says why.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DataError(f"cannot write to the cache folder {str(dest.parent)!r}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                size += len(chunk)
                if size > max_bytes:
                    raise DataError(f"{url} is larger than the expected {max_bytes:,} bytes")
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise DataError(f"checksum mismatch for {url}: sha256 {h.hexdigest()} ({size:,} bytes), "
                            f"expected {sha256}; the file was deleted")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise DataError(f"could not download {url}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)


def tiny_shakespeare(cache_dir=None, search_paths: Sequence | None = None, download: bool = True,
                     timeout: float = 30.0, url: str = TINY_SHAKESPEARE_URL) -> str:
    """Tiny Shakespeare's text: a verified local copy, else downloaded once into the cache.

    `search_paths=None` means `default_search_paths()`; the cache folder is always searched.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    paths = list(default_search_paths() if search_paths is None else search_paths) + [cache]
    found = find_tiny_shakespeare(paths)
    if found is None:
        how = (f"put the file (sha256 {TINY_SHAKESPEARE_SHA256}) at {str(cache / TINY_SHAKESPEARE_FILE)!r}, "
               "or set GLASSBOX_DATA_DIR to a folder holding tinyshakespeare.txt")
        if not download:
            raise DataError(f"Tiny Shakespeare is not available offline: {how}")
        try:
            found = download_file(url, cache / TINY_SHAKESPEARE_FILE, TINY_SHAKESPEARE_SHA256,
                                  timeout=timeout, max_bytes=2 * TINY_SHAKESPEARE_BYTES)
        except DataError as e:
            raise DataError(f"Tiny Shakespeare cannot be downloaded ({e}); to use it offline, {how}") from None
    return _decode_utf8(found.read_bytes(), "Tiny Shakespeare")


# --- synthetic corpora -----------------------------------------------------------------
def _fill(n_chars: int, make_line: Callable[[], str]) -> str:
    parts, total = [], 0
    while total < n_chars:
        line = make_line()
        parts.append(line)
        total += len(line)
    return "".join(parts)[:n_chars]


def _induction(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    letters = "abcdefghijkl"

    def line() -> str:
        words = ["".join(rng.choices(letters, k=rng.randint(1, 4))) for _ in range(rng.randint(3, 8))]
        s = " ".join(words)
        return f"{s} | {s}\n"

    return _fill(n_chars, line)


def _arithmetic(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)

    def line() -> str:
        a, b = rng.randrange(100), rng.randrange(100)
        return f"{a}+{b}={a + b}\n"

    return _fill(n_chars, line)


def _counting(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)

    def line() -> str:
        start = rng.randrange(1000)
        return " ".join(str(i) for i in range(start, start + 8)) + "\n"

    return _fill(n_chars, line)


def _patterns(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    letters = "abcdefgh"

    def line() -> str:
        motif = "".join(rng.choices(letters, k=rng.randint(2, 5)))
        length = rng.randint(24, 40)
        return (motif * (length // len(motif) + 1))[:length] + "\n"

    return _fill(n_chars, line)


class SyntheticCorpus(NamedTuple):
    description: str
    generate: Callable[[int, int], str]  # (n_chars, seed) -> text


SYNTHETIC_CORPORA: dict[str, SyntheticCorpus] = {
    "induction": SyntheticCorpus("random words repeated twice per line (`ab kc | ab kc`): the second "
                                 "half is only predictable by copying, so induction heads form", _induction),
    "arithmetic": SyntheticCorpus("two-digit additions, one per line (`12+35=47`)", _arithmetic),
    "counting": SyntheticCorpus("eight consecutive numbers per line from a random start (`41 42 43 ...`)", _counting),
    "patterns": SyntheticCorpus("a short random motif repeated along each line (`abcabcabca`)", _patterns),
}

CORPUS_DESCRIPTIONS: dict[str, str] = {
    "shakespeare": "Tiny Shakespeare: ~40k lines of the plays (1.1 MB; a local copy, or downloaded once)",
    **{name: c.description for name, c in SYNTHETIC_CORPORA.items()},
    "text": "your own pasted text",
    "file": "your own UTF-8 .txt file",
}
CORPUS_CHOICES: list[str] = list(CORPUS_DESCRIPTIONS)


def synthetic_corpus(name: str, n_chars: int = SYNTHETIC_CHARS, seed: int = 0) -> str:
    """Exactly `n_chars` characters of a synthetic corpus; the same text for the same seed."""
    if name not in SYNTHETIC_CORPORA:
        raise DataError(f"unknown synthetic corpus {name!r}; choose one of {', '.join(SYNTHETIC_CORPORA)}")
    n = _positive_int(n_chars, "n_chars", maximum=MAX_SYNTHETIC_CHARS)
    return SYNTHETIC_CORPORA[name].generate(n, operator.index(seed))


def load_corpus(source: str, *, text: str | None = None, path=None, cache_dir=None, seed: int = 0,
                n_chars: int = SYNTHETIC_CHARS) -> str:
    """The text of a corpus: "shakespeare", a synthetic name, "text" (pasted) or "file" (a path)."""
    key = source.strip().lower() if isinstance(source, str) else source
    if key == "shakespeare":
        return tiny_shakespeare(cache_dir=cache_dir)
    if key in SYNTHETIC_CORPORA:
        return synthetic_corpus(key, n_chars=n_chars, seed=seed)
    if key == "text":
        return validate_text(text)
    if key == "file":
        if path is None:
            raise DataError("corpus 'file' needs a path to a UTF-8 text file")
        return read_text_file(path)
    raise DataError(f"unknown corpus {source!r}; choose one of {', '.join(CORPUS_CHOICES)}")


# --- tokens: split and batches ---------------------------------------------------------
def _as_ids(ids, what: str) -> torch.Tensor:
    t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
    if t.numel() == 0:
        raise DataError(f"{what} has no tokens")
    if t.dim() != 1:
        raise DataError(f"{what} must be a 1-D array of token ids, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"{what} must hold integer token ids, got dtype {t.dtype}")
    t = t.to(device="cpu", dtype=torch.long)
    if int(t.min()) < 0:
        raise DataError(f"{what} has a negative token id {int(t.min())}")
    return t


@dataclass
class TokenSplit:
    """Contiguous train/val parts of one token array (1-D `torch.long` tensors on CPU)."""
    train: torch.Tensor
    val: torch.Tensor


def split_tokens(ids, val_fraction: float = 0.1) -> TokenSplit:
    """First (1 - val_fraction) of the tokens for training, the rest for validation (as nanoGPT)."""
    if not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    t = _as_ids(ids, "the token array")
    n = t.numel()
    n_train = int(n * (1.0 - float(val_fraction)))
    if n_train == 0 or n_train == n:
        raise DataError(f"{n:,} tokens with val_fraction={val_fraction} give {n_train:,} train and {n - n_train:,} "
                        "val tokens; both parts must be non-empty: use more text")
    return TokenSplit(train=t[:n_train], val=t[n_train:])


class BatchSampler:
    """Random (x, y) windows of a token array: x (B, T), y = x shifted by one token.

    Offsets come from the sampler's own `torch.Generator` seeded with `seed`, never the
    global RNG; `state_dict()` / `load_state_dict()` resume the exact batch sequence.
    """

    def __init__(self, data, block_size: int, batch_size: int, seed: int = 0):
        self.data = _as_ids(data, "data")
        self.block_size = _positive_int(block_size, "block_size")
        self.batch_size = _positive_int(batch_size, "batch_size")
        n = self.data.numel()
        if n < self.block_size + 1:
            raise DataError(f"data has {n:,} tokens; sampling blocks of block_size={self.block_size:,} needs at least "
                            f"{self.block_size + 1:,} (use more text or a smaller block size)")
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(operator.index(seed))
        self.step = 0
        self._arange = torch.arange(self.block_size)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        starts = torch.randint(self.data.numel() - T, (self.batch_size,), generator=self.generator)
        idx = starts[:, None] + self._arange  # (B, T)
        self.step += 1
        return self.data[idx], self.data[idx + 1]

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly): the generator state and the step count."""
        return {"generator_state": self.generator.get_state(), "step": torch.tensor(self.step, dtype=torch.int64)}

    def load_state_dict(self, state: dict) -> None:
        missing = {"generator_state", "step"} - set(state)
        if missing:
            raise DataError(f"sampler state is missing {', '.join(sorted(missing))}")
        gs = state["generator_state"]
        if not isinstance(gs, torch.Tensor) or gs.dtype != torch.uint8:
            raise DataError("sampler generator_state must be a uint8 tensor")
        try:
            self.generator.set_state(gs.detach().to("cpu").contiguous())
        except RuntimeError as e:
            raise DataError(f"sampler generator_state is not a valid CPU generator state: {e}") from None
        self.step = int(state["step"])


def fixed_batches(data, block_size: int, batch_size: int, n_batches: int, seed: int = 0) -> list[tuple]:
    """A fixed list of `n_batches` (x, y) batches for evaluation: the same on every call."""
    n = _positive_int(n_batches, "n_batches")
    sampler = BatchSampler(data, block_size, batch_size, seed)
    return [sampler.next() for _ in range(n)]
