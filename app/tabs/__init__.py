"""The app's tabs: one module per tab, each exposing `TITLE` and `build(ctx, model_picker)`.

`build` creates the tab's components and wires its events inside the surrounding
`gr.Blocks` (the assembler, `app.ui`, wraps it in a `gr.Tab`); it reads the selected model
key from `model_picker`, the one `gr.Dropdown` shared by every tab, and changes it only by
returning `ctx.picker.update(request)` (`app.ui.ModelPicker`: the visitor's own models stay listed).

This module also holds the few helpers every tab uses: turning `ValueError`s into
`gr.Error` toasts (escaped: Gradio renders toast messages as HTML), the two rules every
tab follows ("inputs changed → the views computed from the old inputs clear": `clear_when`;
"a side action failed → one message, every output left as it was": `side_action`), the
"selected" mark on a clicked token (`selection_marker`), the browser session of a request
(`session_of`), escaping user text for
`gr.Markdown`, and human-readable numbers. It owns no state.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable
from typing import TypeVar

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


def side_action(n_outputs: int):
    """Decorate the handler of a side action (a fetch, a query) whose failure must not touch
    the page: a `ValueError` becomes one warning toast, and every output is `gr.skip()`ed, so
    no panel turns into an error badge. (A raised `gr.Error` marks every output as failed.)"""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ValueError as e:
                gr.Warning(html.escape(str(e), quote=False))
                skipped = tuple(gr.skip() for _ in range(n_outputs))
                return skipped[0] if n_outputs == 1 else skipped

        return wrapper  # type: ignore[return-value]

    return decorate


def clear_when(triggers: list, cleared: dict) -> None:
    """Wire the one rule for stale views: when any of `triggers` fires (the model, the text,
    a setting changed), each component in `cleared` is set to its placeholder value, so no
    view keeps numbers computed from the old inputs. Tabs whose views recompute on the
    same triggers don't need it; this is for views a click or a button fills. A view that is
    already empty is skipped, so a keystroke redraws nothing."""
    comps, values = list(cleared), tuple(cleared.values())

    def clear(*current):
        out = tuple(gr.skip() if _blank(c) or (isinstance(c, str) and c == v) else v for c, v in zip(current, values))
        return out if len(out) > 1 else out[0]

    gr.on(triggers, clear, comps, comps, api_visibility="private", show_progress="hidden", queue=False,
          trigger_mode="always_last")


def _blank(value) -> bool:
    if value is None or isinstance(value, str) and not value:
        return True
    if getattr(value, "empty", False) is True:  # a DataFrame
        return True
    return isinstance(value, (list, tuple, dict)) and not value


# Clicking a token in a HighlightedText marks it "selected" (`gb-selected`, styled in
# assets/style.css); any change to that box's content (new text, a new model) drops the mark,
# since Svelte reuses the span elements and the mark would otherwise move to another token.
SELECT_JS = """
if (!window.gbSelection) {
  window.gbSelection = true;
  const boxes = () => document.querySelectorAll('.gb-selectable');
  document.addEventListener('click', (ev) => {
    const tok = ev.target.closest && ev.target.closest('.gb-selectable .token');
    if (!tok) return;
    const box = tok.closest('.gb-selectable');
    box.querySelectorAll('.gb-selected').forEach((t) => t.classList.remove('gb-selected'));
    tok.classList.add('gb-selected');
    tok.setAttribute('aria-pressed', 'true');
  }, true);
  const seen = new WeakSet();
  const watch = () => boxes().forEach((box) => {
    if (seen.has(box)) return;
    seen.add(box);
    new MutationObserver((muts) => {
      if (muts.some((m) => m.type !== 'attributes'))
        box.querySelectorAll('.gb-selected').forEach((t) => { t.classList.remove('gb-selected');
                                                            t.removeAttribute('aria-pressed'); });
    }).observe(box, {childList: true, subtree: true, characterData: true});
  });
  watch();
  setInterval(watch, 1000);
}
"""


def selection_marker() -> gr.HTML:
    """An empty block that installs `SELECT_JS` once per page; give the HighlightedTexts whose
    clicked token should stay marked `elem_classes=["gb-selectable"]`."""
    return gr.HTML("", js_on_load=SELECT_JS, padding=False, elem_classes=["gb-hidden"])


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
