"""The app's tabs: one module per tab, each exposing `TITLE` and `build(ctx, model_picker)`.

`build` creates the tab's components and wires its events inside the surrounding
`gr.Blocks` (the assembler, `app.ui`, wraps it in a `gr.Tab`); it reads the selected model
key from `model_picker`, the one `gr.Dropdown` shared by every tab, and changes it only by
returning `ctx.picker.update(request)` (`app.ui.ModelPicker`: the visitor's own models stay listed).

This module also holds the few helpers every tab uses: turning `ValueError`s into
`gr.Error` toasts (escaped: Gradio renders toast messages as HTML), escaping user text
for `gr.Markdown`, the browser session of a request, and human-readable numbers. It owns no
state.
"""

from __future__ import annotations

import functools
import html
import re
from typing import Callable, TypeVar

import gradio as gr

F = TypeVar("F", bound=Callable)

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def user_errors(fn: F) -> F:
    """Decorate a handler so a `ValueError` (bad input, bad file) becomes a `gr.Error` toast
    with the message escaped, never a traceback. Other exceptions are bugs and propagate."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(html.escape(str(e), quote=False), print_exception=False) from None

    return wrapper  # type: ignore[return-value]


def session_of(request: gr.Request | None) -> str | None:
    """The browser session's id (what it added to the catalog is listed for it alone)."""
    return getattr(request, "session_hash", None) if request is not None else None


def md_escape(text: object) -> str:
    """Escape any text (a path, a file name, a label) so `gr.Markdown` shows it verbatim."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def fmt_int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_bytes(n: int | float | None) -> str:
    """1536 → '1.5 KiB' (binary units, one decimal)."""
    if n is None:
        return "—"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # unreachable; keeps type checkers calm
