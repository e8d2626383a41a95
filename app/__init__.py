"""Glassbox's web layer: a Gradio 6 app over `core`.

Owns the page (`app.ui`), the shared context and model catalog (`app.context`,
`app.catalog`), one module per tab (`app/tabs/`) and the figure builders
(`app.figures`). `core` never imports anything from here.

    from app import build_app, launch_kwargs, make_context
    ctx = make_context()
    build_app(ctx).launch(**launch_kwargs(ctx))
"""

from app.context import AppContext, make_context
from app.ui import build_app, launch_kwargs, tune_for_serving

__all__ = ["AppContext", "build_app", "launch_kwargs", "make_context", "tune_for_serving"]
