"""Tokenizers: one small interface over character-level and byte-level BPE.

Owns: training a char-level or byte-level BPE tokenizer on a corpus, loading one
(our `tokenizer.json`, GPT-2's `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`),
encode / decode, character offsets for highlighting, the raw bytes of a token and a
printable form of it for the UI. Both kinds are plain Hugging Face `tokenizers` files,
so a checkpoint folder always holds one `tokenizer.json`.

The kind is read back from the file's structure (the loader rejects extra keys):
- "char": a `WordLevel` model whose vocab is the corpus characters (sorted, ids 0..n-1)
  plus `<unk>` (id n), behind a one-code-point-per-piece `Split` pre-tokenizer.
  Characters outside the vocab encode to `unk_id` and decode to the text "<unk>".
- "bpe": a `BPE` model behind a `ByteLevel` pre-tokenizer and decoder (GPT-2 style).
  Every string encodes; `<|endoftext|>` is a special token (id 0 when trained here,
  50256 in GPT-2) and is matched where it appears in the input text.

Does not own: corpora and batching (`core.data`), where the file lives in a checkpoint
(`core.checkpoint`), how tokens are drawn in the app (`app/`).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from .safefile import loads_json, short

EOT = "<|endoftext|>"
UNK = "<unk>"
MAX_VOCAB_SIZE = 65536            # ids fit in uint16
MIN_BPE_VOCAB_SIZE = 256 + 1      # every byte + <|endoftext|>
MAX_FILE_BYTES = 16 * 2**20       # GPT-2's tokenizer.json is 1.4 MB, a 128k-token one about 9 MB
MAX_LOAD_VOCAB = 262_144          # tokens a loaded file may declare (its vocab, its merges, its added tokens)
MAX_TOKEN_CHARS = 4_096           # one vocabulary entry
_CHAR_PATTERN = r"[\s\S]"         # one code point per piece (Oniguruma has no (?s) flag)
_VISIBLE = {" ": "·", "\n": "↵", "\t": "→"}


class TokenizerError(ValueError):
    """A tokenizer could not be trained, loaded or used as asked."""


@dataclass(frozen=True)
class Encoding:
    """Token ids and, per token, the (start, end) Python character span it covers.

    Spans are either equal or disjoint and, in order, cover the whole text: a token that
    holds only part of a character (byte-level BPE on emoji, CJK) gets the span of the
    whole character, shared with its neighbours.
    """
    ids: list[int]
    offsets: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ids)


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's `bytes_to_unicode` table, inverted: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def display_text(s: str) -> str:
    """A printable form of `s`: space ·, newline ↵, tab →, other C0 controls as their
    control pictures (U+2400 block), other invisible or format characters (ZWJ, NBSP,
    U+FFFD, ...) as `\\u200d`-style escapes; a leading combining mark gets a dotted circle."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif o < 0x20:
            out.append(chr(0x2400 + o))
        elif o == 0x7F:
            out.append("\u2421")
        elif ch == "\ufffd" or unicodedata.category(ch)[0] in "CZ":
            out.append(f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(ch)
    r = "".join(out)
    if r and unicodedata.category(r[0]).startswith("M"):
        r = "\u25cc" + r
    return r


def display_bytes(b: bytes) -> str:
    """`display_text` of the UTF-8 in `b`; bytes that are not valid UTF-8 on their own
    (part of a character) become `<0xF0>`-style hex, never U+FFFD."""
    out = []
    while b:
        try:
            out.append(display_text(b.decode("utf-8")))
            break
        except UnicodeDecodeError as e:
            out.append(display_text(b[:e.start].decode("utf-8")))
            out.append("".join(f"<0x{x:02X}>" for x in b[e.start:e.end]))
            b = b[e.end:]
    return "".join(out)


def _merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Widen overlapping spans (tokens sharing a character) to their union."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(spans)
    while i < n:
        a, b = spans[i]
        j = i + 1
        while j < n and spans[j][0] < b:
            a, b = min(a, spans[j][0]), max(b, spans[j][1])
            j += 1
        out.extend([(a, b)] * (j - i))
        i = j
    return out


def _detect_kind(d: dict) -> str:
    model = d["model"]
    pre = d.get("pre_tokenizer") if isinstance(d.get("pre_tokenizer"), dict) else {}
    mtype = model.get("type")
    if mtype is None and "merges" in model:
        mtype = "BPE"  # older files leave out the model type
    if mtype == "WordLevel" and pre.get("type") == "Split" and pre.get("pattern") == {"Regex": _CHAR_PATTERN}:
        return "char"
    pres = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in pres)
    decoder = d.get("decoder") if isinstance(d.get("decoder"), dict) else {}
    if mtype == "BPE" and byte_level and decoder.get("type") == "ByteLevel":
        return "bpe"
    raise TokenizerError(f"unsupported tokenizer: model {short(mtype)} with pre-tokenizer {short(pre.get('type'))}; "
                         "Glassbox reads character-level files it wrote and byte-level BPE (GPT-2 style)")


class Tokenizer:
    """A char-level or byte-level BPE tokenizer over a `tokenizers.Tokenizer`.

    Build one with `train_char`, `train_bpe`, `from_file` or `from_str`.
    """

    def __init__(self, hf: HFTokenizer, kind: str):
        if kind not in ("char", "bpe"):
            raise TokenizerError(f"kind must be 'char' or 'bpe', got {kind!r}")
        if kind == "bpe" and (hf.post_processor is None or isinstance(hf.post_processor, processors.ByteLevel)):
            # untrimmed offsets: a token "Ġhe" covers " he", so spans cover the text
            hf.post_processor = processors.ByteLevel(trim_offsets=False)
        self._hf = hf
        self.kind = kind
        self._special = {i: t.content for i, t in hf.get_added_tokens_decoder().items() if t.special}
        self.unk_id: int | None = hf.token_to_id(UNK) if kind == "char" else None
        if self.unk_id is not None:
            self._special[self.unk_id] = UNK
        self.eot_id: int | None = hf.token_to_id(EOT)
        self._vocab: list[str] | None = None
        self._char_table = None  # (sorted code points, their ids) for the vectorised char-level encode

    # ---- building -------------------------------------------------------------------
    @classmethod
    def train_char(cls, text: str) -> Tokenizer:
        """One token per distinct character of `text` (sorted), plus `<unk>` last."""
        _check_corpus(text)
        chars = sorted(set(text))
        if len(chars) + 1 > MAX_VOCAB_SIZE:
            raise TokenizerError(f"text has {len(chars)} distinct characters; a char vocab holds at most "
                                 f"{MAX_VOCAB_SIZE - 1} (plus {UNK})")
        vocab = {c: i for i, c in enumerate(chars)}
        vocab[UNK] = len(chars)
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_PATTERN), behavior="isolated")
        hf.decoder = decoders.Fuse()
        return cls(hf, "char")

    @classmethod
    def train_bpe(cls, text: str, vocab_size: int, min_frequency: int = 2) -> Tokenizer:
        """Byte-level BPE (GPT-2 regex, all 256 bytes in the alphabet, `<|endoftext|>` = id 0).

        The result can hold fewer than `vocab_size` tokens when the corpus runs out of
        pairs seen `min_frequency` times.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
                or not MIN_BPE_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
            raise TokenizerError(f"vocab_size={vocab_size!r} is out of range: byte-level BPE needs "
                                 f"{MIN_BPE_VOCAB_SIZE} (256 bytes + {EOT}) to {MAX_VOCAB_SIZE}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise TokenizerError(f"min_frequency={min_frequency!r} must be an integer >= 1")
        _check_corpus(text)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        hf.train_from_iterator([text], trainer=trainer, length=1)
        return cls(hf, "bpe")

    @classmethod
    def from_str(cls, json_str: str, name: str = "tokenizer file") -> Tokenizer:
        """Load from the text of a `tokenizer.json`. Its size, nesting, declared counts and
        component types are checked (`check_tokenizer_json`) before `tokenizers` reads it."""
        if not isinstance(json_str, (str, bytes)):
            raise TokenizerError(f"{name} must be JSON text, got {type(json_str).__name__}")
        d = loads_json(json_str, name, TokenizerError, max_bytes=MAX_FILE_BYTES, not_json="is not JSON")
        check_tokenizer_json(d, name)
        kind = _detect_kind(d)
        try:
            hf = HFTokenizer.from_str(json_str if isinstance(json_str, str) else json_str.decode("utf-8"))
        except BaseException as e:  # the Rust loader raises a bare Exception, or a PanicException (a BaseException)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise TokenizerError(f"{name} is not a valid tokenizer.json: {str(e)[:200]}") from None
        return cls(hf, kind)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json` file, or a folder holding `tokenizer.json` or GPT-2's
        `vocab.json` + `merges.txt` (byte-level, no prefix space)."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.json").is_file() or (path / "merges.txt").is_file():
                return cls._from_vocab_merges(path / "vocab.json", path / "merges.txt")
            else:
                raise TokenizerError(f"no tokenizer.json (nor vocab.json + merges.txt) in folder {path.name}")
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path.name} does not exist")
        return cls.from_str(_read_text(path))

    @classmethod
    def _from_vocab_merges(cls, vocab: Path, merges: Path) -> Tokenizer:
        for p in (vocab, merges):
            if not p.is_file():
                raise TokenizerError(f"{p.name} is missing: a GPT-2 tokenizer folder needs both "
                                     "vocab.json and merges.txt (or a tokenizer.json)")
        v = loads_json(_read_text(vocab), vocab.name, TokenizerError, max_bytes=MAX_FILE_BYTES, max_depth=1,
                       not_json="is not JSON")
        if not isinstance(v, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v.values()):
            raise TokenizerError(f"{vocab.name} must map token strings to integer ids")
        _check_count(len(v), f"{vocab.name} declares", "tokens")
        _check_count(_read_text(merges).count("\n"), f"{merges.name} holds", "merges")
        try:
            hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except BaseException as e:  # a bare Exception or a PanicException from the Rust side
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise TokenizerError(f"could not read {vocab.name} + {merges.name}: {str(e)[:200]}") from None
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        if EOT in v:
            hf.add_special_tokens([EOT])  # keeps its vocab id (50256 in GPT-2)
        return cls(hf, "bpe")

    def to_str(self) -> str:
        """The `tokenizer.json` text."""
        return self._hf.to_str()

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` to `path` (a file path, or an existing folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        self._hf.save(str(path))
        return path

    # ---- using ----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if self.kind == "char" and isinstance(text, str) and len(text) >= 4096:
            ids = self._encode_chars(text)
            if ids is not None:
                return ids
        return self._encode(text).ids

    def _encode_chars(self, text: str) -> list[int] | None:
        """Char-level ids by a vectorised table lookup: the WordLevel model's answer (one code
        point per token, an unknown one → <unk>), for whole corpora where the
        bindings build a Python object per character. None: take the general path."""
        import numpy as np

        if self.unk_id is None or self._hf.normalizer is not None:
            return None
        try:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        except UnicodeEncodeError:
            return None  # a lone surrogate: the general path names it
        if self._char_table is None:
            pairs = sorted((ord(t), i) for t, i in self._hf.get_vocab(with_added_tokens=True).items() if len(t) == 1)
            self._char_table = (np.array([c for c, _ in pairs], dtype=np.uint32),
                                np.array([i for _, i in pairs], dtype=np.int64))
        keys, vals = self._char_table
        if keys.size == 0:
            return None
        pos = np.minimum(np.searchsorted(keys, codes), keys.size - 1)
        return np.where(keys[pos] == codes, vals[pos], self.unk_id).tolist()

    def encode_with_offsets(self, text: str) -> Encoding:
        """Ids plus Python character spans: `text[a:b]` is what token i covers (see `Encoding`)."""
        enc = self._encode(text)
        return Encoding(ids=list(enc.ids), offsets=_merge_spans([tuple(o) for o in enc.offsets]))

    def _encode(self, text: str):
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a str, got {type(text).__name__}")
        try:
            return self._hf.encode(text, add_special_tokens=False)
        except Exception as e:  # a lone surrogate raises TypeError in the bindings
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as u:
                bad = text[u.start]
                what = f"a lone surrogate U+{ord(bad):04X}" if "\ud800" <= bad <= "\udfff" else repr(bad)
                raise TokenizerError(f"text is not valid Unicode at index {u.start}: {what} ({u.reason}); "
                                     "remove it or paste the text again") from None
            raise TokenizerError(f"could not encode text: {e}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`; special tokens are kept (so decode(encode(s)) == s for BPE)."""
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise TokenizerError(f"ids must be integers, got {ids!r:.80}") from None
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise TokenizerError(f"token id {bad} is out of range: this tokenizer has ids 0..{self.vocab_size - 1}")
        return self._hf.decode(ids, skip_special_tokens=False)

    def id_to_token(self, id: int) -> str:
        """The raw vocab string (byte-level BPE: GPT-2's stand-in alphabet, e.g. 'Ġhe')."""
        return self._hf.id_to_token(self._check_id(id))

    def token_to_id(self, token: str) -> int | None:
        """Id of a raw vocab string, or None if it is not in the vocab."""
        return self._hf.token_to_id(token)

    def is_special(self, id: int) -> bool:
        return self._check_id(id) in self._special

    def token_bytes(self, id: int) -> bytes:
        """The bytes token `id` stands for (special tokens and `<unk>`: their text in UTF-8).

        Byte-level tokens can be part of a character, so these bytes need not be valid UTF-8.
        """
        tok = self.id_to_token(id)
        if self.kind == "char" or id in self._special:
            return tok.encode("utf-8")
        table = byte_decoder()
        return b"".join(bytes([table[c]]) if c in table else c.encode("utf-8") for c in tok)

    def display(self, id: int) -> str:
        """A printable label for token `id` (see `display_text`, `display_bytes`)."""
        if self.is_special(id):
            return display_text(self._special[id])
        return display_bytes(self.token_bytes(id))

    def vocab(self) -> list[str]:
        """`display(i)` for every id, in id order."""
        if self._vocab is None:
            self._vocab = [self.display(i) for i in range(self.vocab_size)]
        return list(self._vocab)

    def _check_id(self, id: int) -> int:
        try:
            i = int(id)
        except (TypeError, ValueError):
            raise TokenizerError(f"token id must be an integer, got {id!r}") from None
        if i != id or not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {id!r} is out of range: this tokenizer has ids 0..{self.vocab_size - 1}")
        return i

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _check_corpus(text: str) -> None:
    if not isinstance(text, str):
        raise TokenizerError(f"training text must be a str, got {type(text).__name__}")
    if not text:
        raise TokenizerError("training text is empty: give at least a few characters of corpus")


def _read_text(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TokenizerError(f"{path.name} is {size:,} bytes; tokenizer files over {MAX_FILE_BYTES:,} bytes are "
                             "refused")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path.name} is not UTF-8 text (bad byte at {e.start})") from None


def _check_count(n: int, what: str, unit: str) -> None:
    if n > MAX_LOAD_VOCAB:
        raise TokenizerError(f"{what} {n:,} {unit}; at most {MAX_LOAD_VOCAB:,} are accepted")


def _bad(name: str, why: str) -> TokenizerError:
    return TokenizerError(f"{name} is not a valid tokenizer.json: {why}")


# Containers whose items are components themselves, by component type.
_LISTS = {"Sequence": ("pretokenizers", "decoders", "normalizers", "processors")}


def _check_component(c, where: str, name: str) -> None:
    """A normalizer / pre-tokenizer / decoder / post-processor: null, or an object with a
    string `type`; the items of a `Sequence` are components too (nesting is bounded already)."""
    if c is None:
        return
    if not isinstance(c, dict):
        raise _bad(name, f"{where} must be an object, got {short(c)}")
    if not isinstance(c.get("type"), str):
        raise _bad(name, f"{where} has no string \"type\" (got {short(c.get('type'))})")
    for key in _LISTS.get(c["type"], ()):
        if key in c:
            items = c[key]
            if not isinstance(items, list):
                raise _bad(name, f"{where}.{key} must be a list, got {short(items)}")
            for i, item in enumerate(items):
                _check_component(item, f"{where}.{key}[{i}]", name)


def check_tokenizer_json(d, name: str = "tokenizer file") -> None:
    """Structure and declared sizes of a parsed tokenizer.json, checked before `tokenizers`
    builds it: the model's vocab and merges and the added tokens are bounded by
    `MAX_LOAD_VOCAB`, every component is an object with a type."""
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
        raise TokenizerError(f"{name} has no 'model' object: expected a Hugging Face tokenizers tokenizer.json")
    model = d["model"]
    vocab = model.get("vocab")
    if vocab is not None:
        if not isinstance(vocab, (dict, list)):
            raise _bad(name, f"model.vocab must be an object or a list, got {short(vocab)}")
        _check_count(len(vocab), f"{name}'s model.vocab declares", "tokens")
        if isinstance(vocab, dict):
            long = next((t for t in vocab if len(t) > MAX_TOKEN_CHARS), None)
            if long is not None:
                raise _bad(name, f"a vocabulary entry of {len(long):,} characters ({short(long)}); "
                                 f"at most {MAX_TOKEN_CHARS:,}")
    merges = model.get("merges")
    if merges is not None:
        if not isinstance(merges, list):
            raise _bad(name, f"model.merges must be a list, got {short(merges)}")
        _check_count(len(merges), f"{name}'s model.merges declares", "merges")
        bad = next((m for m in merges if not (isinstance(m, str) or (isinstance(m, list) and len(m) == 2
                                                                    and all(isinstance(x, str) for x in m)))), None)
        if bad is not None:
            raise _bad(name, f"a merge must be \"a b\" or [\"a\", \"b\"], got {short(bad)}")
    added = d.get("added_tokens", [])
    if not isinstance(added, list) or not all(isinstance(t, dict) for t in added):
        raise _bad(name, "added_tokens must be a list of objects")
    _check_count(len(added), f"{name} declares", "added tokens")
    for key in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        _check_component(d.get(key), key, name)
