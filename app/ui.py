"""The assembler: header, the one shared model picker, then one tab per module in `TABS`.

Owns: the page's frame, the shared model picker (`ModelPicker`: the one writer of its
choices, always for the visitor's own session, so their uploads and folders stay listed; a
rescan on ↻ and on every page load, so new runs appear), the `/models` API endpoint, and
the options passed to `launch()` (Gradio 6 takes theme and CSS there, not in `gr.Blocks`).
Each tab lives in `app/tabs/<name>.py` with `TITLE` and `build(ctx, model_picker)` (which may
return the event that fills the tab when it is opened); adding a tab is one line in `TABS`. The picker's value is per browser session (a component value,
never a global).
Does not own: any tab's content, the models (`ctx.catalog`).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

import gradio as gr

import app.sessions as sessions
import app.validate as validate
from app.tabs import md_escape, session_of

if TYPE_CHECKING:
    from app.catalog import ModelCatalog
    from app.context import AppContext

# The tabs, in page order: each name is a module in app/tabs/ with TITLE and build(ctx, model_picker).
TABS = (
    "walkthrough",
    "model",
    "train",
    "timeline",
    "tokens",
    "embeddings",
    "attention",
    "decode",
)

INTRO = ("A visual LLM playground: follow text through a small GPT, from tokens and embeddings "
         "through attention to the next-token probabilities, and train one yourself.")


class ModelPicker:
    """Updates for the shared model picker, each made for one request's browser session: the
    catalog's models plus that visitor's own uploads and folders. A tab that wants the picker
    rescanned returns `ctx.picker.update(request)` (with `select=key` to pick a model too) as
    the picker's new value, and never builds the choices itself."""

    def __init__(self, catalog: ModelCatalog):
        self.catalog = catalog

    def update(self, request: gr.Request | None, select: str | None = None) -> gr.Dropdown:
        """Rescanned choices for this visitor; the picked model stays unless `select` names one
        (which fires the picker's change event)."""
        choices = self.catalog.choices(session_of(request), current=select)
        return gr.Dropdown(choices=choices) if select is None else gr.Dropdown(choices=choices, value=select)

    def refresh(self, current: str | None, request: gr.Request | None) -> gr.Dropdown:
        """Rescanned choices for this visitor, keeping `current` if still offered (else the default)."""
        choices = self.catalog.choices(session_of(request), current=current)
        value = current if current in {k for _, k in choices} else self.catalog.default_key()
        return gr.Dropdown(choices=choices, value=value)


def _notice(ctx: AppContext) -> str:
    text = ctx.catalog.notice()
    return f"⚠️ {md_escape(text)}" if text else ""


def build_app(ctx: AppContext) -> gr.Blocks:
    """Build the whole page for `ctx` (call once; launch with `launch_kwargs(ctx)`)."""
    catalog = ctx.catalog

    def refresh(current: str | None, request: gr.Request):
        """Rescan the catalog (this session's own uploads and folders included); keep this
        session's choice if it is still offered."""
        return ctx.picker.refresh(current, request), _notice(ctx)

    def models() -> list[dict]:
        """The models on offer to everyone: key (pass it to /model_info and other endpoints), label,
        source. Uploads and typed folders are listed only in the page of the visitor who added them."""
        return [{"key": e.key, "label": e.label, "source": e.source} for e in catalog.entries()]

    # delete_cache: files Gradio keeps for sessions (CSV exports, uploads, zips) go after a day, checked hourly
    with gr.Blocks(title="Glassbox", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        with gr.Row(elem_id="gb-header"):
            gr.Markdown(f"# Glassbox\n{INTRO}", elem_id="gb-title")
        with gr.Row(elem_id="gb-picker-row", equal_height=False):
            picker = gr.Dropdown(
                choices=catalog.choices(), value=catalog.default_key(), label="Model",
                info="Used by every tab. Trained runs appear here (press ↻ after a run saves).",
                allow_custom_value=True,  # keys are checked by the catalog; lets API callers pass any key
                scale=6, elem_id="gb-model-picker",
            )
            refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=110, size="sm", elem_id="gb-refresh")
        notice = gr.Markdown(_notice(ctx), elem_id="gb-notice")
        hooks = {}  # what a tab's build hands back for wiring across tabs
        with gr.Tabs() as tabs:
            for name in TABS:
                tab = importlib.import_module(f"app.tabs.{name}")
                with gr.Tab(tab.TITLE, id=name) as tab_block:
                    hooks[name] = tab.build(ctx, picker) or {}
                if "on_open" in hooks[name]:  # a tab that fills itself when opened (the Timeline)
                    tab_block.select(**hooks[name]["on_open"])
        _link_train_to_timeline(tabs, hooks["train"], hooks["timeline"])

        refresh_btn.click(refresh, picker, [picker, notice], api_visibility="private")
        demo.load(refresh, picker, [picker, notice], api_visibility="private")
        gr.api(models, api_name="models")
    validate.install(demo)  # a caller's missing inputs reach the boundary's checks
    sessions.keep_small(demo)
    demo.queue(**queue_settings())
    return demo


def _link_train_to_timeline(tabs: gr.Tabs, train: dict, timeline: dict) -> None:
    """The Train tab's "Scrub in Timeline": the run it shows goes in the Timeline's box, that tab
    opens, and its opening event loads the run (whether or not Gradio fires the tab's select)."""
    button, watch = train["to_timeline"]
    ask = timeline["ask_for"]

    def go(job):
        return *ask["fn"](job), gr.Tabs(selected="timeline")

    button.click(go, watch, [*ask["outputs"], tabs], api_visibility="private").success(**timeline["on_open"])


# --- serving many people: the queue and the limits, each overridable by an environment variable ---
# Every event goes through Gradio's queue. Heavy events (a model forward: attention, decode,
# embeddings, model info/load, training control) set their own small `concurrency_limit` in their
# tab, so at most a few run at once on a CPU Space; everything else is cheap and runs concurrently.

def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{name}={number} must be at least 1")
    return number


def queue_settings() -> dict:
    """Options for `demo.queue(...)` (`build_app` applies them)."""
    return dict(
        # Waiting events (all tabs together, running ones not counted) before new ones are refused
        # with "Queue is full! Please try again." (HTTP 503 to API callers): a bounded wait instead of
        # an ever-growing one. 100 = two waiting events per person for a 50-person workshop.
        max_size=_env_int("GLASSBOX_QUEUE_SIZE", 100),
        # How many of one cheap event (no limit of its own: a click on a token, a slider, the page's
        # model rescan) may run at once; Gradio's default of 1 would line 50 people up behind each other.
        default_concurrency_limit=_env_int("GLASSBOX_CONCURRENCY", 8),
        # Tell waiting browsers their place in line every 2 s. Gradio's "auto" tells every waiting
        # browser whenever any event finishes: with 50 people that is a message per waiting person
        # per finished event (bench/load.py: p95 0.77 s with "auto", 0.62 s with 3 s).
        status_update_rate=_env_int("GLASSBOX_STATUS_UPDATE_S", 2),
    )


def tune_for_serving() -> dict:
    """Process-wide settings for serving many people at once (`app.py` applies them); returns
    what was set.

    - torch threads per op: GLASSBOX_TORCH_THREADS (default 1). Many requests run at once, each
      in its own worker thread, and each would otherwise start a team of as many threads as
      there are cores for every small op: on a 2-core machine under load a one-token attention
      step measured 300 µs that way and 5 µs with one thread. Requests run side by side instead
      (the concurrency limits above); training runs in its own process with its own threads.
    - Gradio's monitoring summary: Gradio rebuilds a pandas summary of its last 10,000 events
      after every event (for its /monitoring page), a cost that grows through a workshop;
      unless GRADIO_ANALYTICS_CACHE_FREQUENCY / GRADIO_ANALYTICS_MAX_EVENTS are set, every
      500 events over the last 2,000 (server CPU per request 40 -> 34 ms). Call this before
      `build_app`: the queue reads them when it is made.
    - Python's thread switch interval: GLASSBOX_SWITCH_INTERVAL_MS (default 2; Python's is 5).
      A decode holds the interpreter lock between its short torch calls; a shorter interval
      lets the event loop and cheap requests in sooner. bench/load.py, 50 users on 2 cores:
      p95 1.8 s at 5 ms, 0.87-0.95 s at 1-2 ms, 2.0 s at 0.2 ms (too much switching).
    """
    import sys

    import torch

    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")
    threads = _env_int("GLASSBOX_TORCH_THREADS", 1)
    torch.set_num_threads(threads)
    interval_ms = _env_int("GLASSBOX_SWITCH_INTERVAL_MS", 2)
    sys.setswitchinterval(interval_ms / 1000)
    return {"torch_threads": threads, "switch_interval_ms": interval_ms}


def launch_kwargs(ctx: AppContext) -> dict:
    """Options for `demo.launch(**launch_kwargs(ctx))`. Host and port are left to Gradio,
    which reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860)."""
    css = ctx.assets_dir / "style.css"
    return dict(
        # Gradio's bundled Source Sans Pro semibold file lacks some glyphs (a bold "B" falls back to
        # another font): register regular and bold only, so semibold text uses the complete bold file.
        theme=gr.themes.Default(
            primary_hue="indigo", secondary_hue="slate", neutral_hue="slate",
            font=[gr.themes.LocalFont("Source Sans Pro", weights=(400, 700)), "ui-sans-serif", "system-ui",
                  "sans-serif"],
        ),
        css_paths=[css] if css.is_file() else None,
        max_file_size=os.environ.get("GLASSBOX_MAX_UPLOAD", "2gb"),
        show_error=False,
        # Events running at once, all kinds together (each runs in a worker thread).
        max_threads=_env_int("GLASSBOX_MAX_THREADS", 40),
        # Browser sessions whose gr.State values are kept in memory; the oldest are dropped beyond it
        # (Gradio's default is 10,000: far more than a workshop, and each Decode session keeps a result).
        state_session_capacity=_env_int("GLASSBOX_STATE_SESSIONS", 500),
    )
