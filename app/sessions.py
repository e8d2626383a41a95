"""Per-session memory: what the server keeps for each browser (or API client) session.

Owns: `keep_small(demo)`. Gradio keeps, for every session, a copy of the last value of every
component an event read or wrote (`SessionState.config_values`), only so that a deep-link
button can rebuild the page; sessions live until the least recently used is dropped beyond
`state_session_capacity`. Glassbox has no deep-link button, and those copies were most of a
session's memory (one /tokenize of 20,000 emoji kept its whole answer, ~40 MB, per session):
sessions of a demo marked by `keep_small` keep none. `gr.State` values are untouched (each tab
stores only what a later click needs, with a time to live).
Does not own: the tabs' states (`app/tabs/*`), the session capacity (`app.ui.launch_kwargs`).
"""

from __future__ import annotations

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
