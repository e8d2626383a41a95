"""Vector-arithmetic expressions for the Embeddings tab: `king - man + woman` into token ids.

`parse_expression` reads a line of signed terms (a bare word, a token as the plot labels
it, a quoted string, or `#id`) into `Term`s that `core.inspect.embeddings.CosineIndex`
sums and searches; `display_lookup` maps those labels back to ids. Bad input raises
ValueError saying what is wrong and what is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..tokenizer import Tokenizer

MAX_EXPRESSION_CHARS = 200
MAX_TERMS = 12


@dataclass(frozen=True)
class Term:
    sign: int  # +1 or -1
    id: int
    text: str  # what was typed
    spaced: bool = False  # a bare word read in its leading-space form (king → ·king)


_TERM = re.compile(r"""\s*([+-]?)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\#\d+|[^\s+\-]+)""")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "s": " "}


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), s[1:-1])


def display_lookup(labels: Sequence[str]) -> dict[str, int]:
    """Label → id (the first id when two tokens share a label)."""
    out: dict[str, int] = {}
    for i, s in enumerate(labels):
        out.setdefault(s, i)
    return out


def _spaced(text: str, quoted: bool, tokenizer: Tokenizer | None, V: int) -> int | None:
    """A bare word's leading-space form (` king`, shown ·king) when that is one token: inside a
    sentence a word comes after a space, so byte-level BPE learns the spaced form as the word."""
    if quoted or tokenizer is None or not _WORD.fullmatch(text):
        return None
    ids = tokenizer.encode(" " + text)
    unk = getattr(tokenizer, "unk_id", None)
    return ids[0] if len(ids) == 1 and ids[0] < V and ids[0] != unk else None


_WORD = re.compile(r"[^\W_]+")  # letters and digits only


def _resolve(text: str, quoted: bool, tokenizer: Tokenizer | None, lookup: dict[str, int], V: int) -> int:
    if text.startswith("#") and not quoted:
        i = int(text[1:])
        if not 0 <= i < V:
            raise ValueError(f"token id {text} is out of range: this vocabulary has ids 0..{V - 1}")
        return i
    if not quoted and text in lookup:
        return lookup[text]
    if tokenizer is not None and text:
        ids = tokenizer.encode(text)
        unk = getattr(tokenizer, "unk_id", None)
        if len(ids) == 1 and ids[0] < V and not (ids[0] == unk and text != tokenizer.display(ids[0])):
            return ids[0]
        if quoted and text in lookup:
            return lookup[text]
        if len(ids) > 1:
            pieces = ", ".join(tokenizer.display(i) for i in ids[:8]) + (", …" if len(ids) > 8 else "")
            raise ValueError(f"{text!r} is not one token of this vocabulary: it is {len(ids)} tokens ({pieces}). "
                             "Use a single token (· stands for a space, e.g. ·king), a quoted string, or #id")
    raise ValueError(f"{text!r} is not a token of this vocabulary: use a token as the plot shows it "
                     "(· for a space, ↵ for a newline), a quoted string like \" king\", or #id")


def parse_expression(expr: str, tokenizer: Tokenizer | None, lookup: dict[str, int], vocab_size: int) -> list[Term]:
    """Parse `a - b + c` into signed token terms.

    A term is a word as typed (`king`: its leading-space form `·king` when that is one
    token, as a word reads inside a sentence; `Term.spaced` says so), a token as displayed
    (`·king`, `↵`), a quoted string that is one token exactly (`"king"`, `" king"`, with
    \\n \\t \\" escapes), or `#id`. Terms are joined by + or -.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("type a token or an expression such as king - man + woman")
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is {len(expr)} characters; at most {MAX_EXPRESSION_CHARS} are accepted")
    terms: list[Term] = []
    pos, n = 0, len(expr.rstrip())
    while pos < n:
        m = _TERM.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read the expression at character {pos + 1}: {expr[pos:pos + 20]!r}")
        sign, raw = m.group(1), m.group(2)
        if terms and not sign:
            raise ValueError(f"expected + or - before {raw!r} (terms are joined by + or -)")
        quoted = raw[0] in "\"'" and len(raw) >= 2 and raw[-1] == raw[0]
        text = _unquote(raw) if quoted else raw
        spaced = _spaced(text, quoted, tokenizer, vocab_size)
        tid = spaced if spaced is not None else _resolve(text, quoted, tokenizer, lookup, vocab_size)
        terms.append(Term(-1 if sign == "-" else 1, tid, raw, spaced is not None))
        if len(terms) > MAX_TERMS:
            raise ValueError(f"the expression has more than {MAX_TERMS} terms")
        pos = m.end()
    if not terms:
        raise ValueError("type a token or an expression such as king - man + woman")
    return terms
