"""Per-session memory: what the server keeps for each browser (or API client) session.

Owns: `keep_small(demo)` and `click_record` (what the Tokens tab keeps for a click). Gradio keeps, for every session, a copy of the last value of every
component an event read or wrote (`SessionState.config_values`), only so that a deep-link
button can rebuild the page; sessions live until the least recently used is dropped beyond
`state_session_capacity`. Glassbox has no deep-link button, and those copies were most of a
session's memory (one /tokenize of 20,000 emoji kept its whole answer, ~40 MB, per session):
sessions of a demo marked by `keep_small` keep none. `gr.State` values are untouched (each tab
stores only what a later click needs, with a time to live).
Does not own: the tabs' states (`app/tabs/*`), the session capacity (`app.ui.launch_kwargs`).
"""

from __future__ import annotations

import math
from array import array

import gradio.state_holder as _holder

MARK = "_glassbox_small_sessions"


class _SmallSessionState(_holder.SessionState):
    """A session of a marked demo keeps no copies of component values; others behave as Gradio's."""

    def __init__(self, blocks):
        super().__init__(blocks)
        self._small = bool(getattr(blocks, MARK, False))

    def _update_value_in_config(self, key: int, value) -> None:
        if not self._small:
            super()._update_value_in_config(key, value)


def keep_small(demo) -> None:
    """Mark `demo` so its sessions keep no per-component value copies (see the module docstring).
    The session class is swapped once per process; it only changes sessions of marked demos."""
    setattr(demo, MARK, True)
    if _holder.SessionState is not _SmallSessionState and not issubclass(_holder.SessionState, _SmallSessionState):
        _holder.SessionState = _SmallSessionState


# ---- what the Tokens tab keeps for a click on a span -------------------------------------

MAX_CLICK_TOKENS = 16_384  # tokens of the drawn spans kept for clicks (the text's first spans)


class _Pairs:
    """offsets[t] → (start, end), from one flat array of ints."""

    def __init__(self, pairs):
        self._a = array("i", (x for p in pairs for x in p))

    def __len__(self) -> int:
        return len(self._a) // 2

    def __getitem__(self, t: int) -> tuple[int, int]:
        if not 0 <= t < len(self):
            raise IndexError(t)
        return self._a[2 * t], self._a[2 * t + 1]


class _ById:
    """tokens[t] → one fact of token t's id, from the ids and a table with one row per distinct id."""

    def __init__(self, ids: array, table: dict, k: int):
        self._ids, self._table, self._k = ids, table, k

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, t: int) -> str:
        return self._table[self._ids[t]][self._k]


class _Groups:
    """groups[g] → {"start", "end", "text", "tokens"} of span g, from a flat array."""

    def __init__(self, groups: list[dict], text: str):
        self._a = array("i", (x for g in groups for x in (g["start"], g["end"], *g["tokens"])))
        self._text = text

    def __len__(self) -> int:
        return len(self._a) // 4

    def __getitem__(self, g: int) -> dict:
        if not 0 <= g < len(self):
            raise IndexError(g)
        a, b, i, j = self._a[4 * g:4 * g + 4]
        return {"start": a, "end": b, "text": self._text[a:b], "tokens": [i, j]}


def click_record(d: dict | None, max_groups: int, max_tokens: int = MAX_CLICK_TOKENS) -> dict | None:
    """The part of a /tokenize answer `d` that a click on one of the first `max_groups` drawn
    spans needs (the Tokens tab's `details` reads it as it reads `d`), packed in arrays: at most
    `max_tokens` tokens, a few bytes each, whatever the text. The whole answer (every id, offset,
    span and the side-by-side rows: ~40 MB for 20,000 emoji) is not kept."""
    if not d:
        return None
    groups = [g for g in d["groups"][:max_groups] if g["tokens"][1] <= max_tokens]
    n = groups[-1]["tokens"][1] if groups else 0
    end = groups[-1]["end"] if groups else 0
    ids = array("i", d["ids"][:n])
    table = {i: (d["tokens"][t], d["bytes"][t], d["byte_level"][t]) for t, i in enumerate(d["ids"][:n])}
    s = d.get("surprise")
    surprise = None if s is None else array("f", (math.nan if v is None else v for v in s[:n]))
    text = d["text"][:end]
    return {"text": text, "ids": ids, "offsets": _Pairs(d["offsets"][:n]), "groups": _Groups(groups, text),
            "n_groups": len(d["groups"]), "tokens": _ById(ids, table, 0), "bytes": _ById(ids, table, 1), "byte_level": _ById(ids, table, 2),
            "surprise": surprise}
