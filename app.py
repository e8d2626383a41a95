"""Glassbox entry point (also Hugging Face Spaces' app_file): `python app.py`.

Serves on 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise.
"""

from app import build_app, launch_kwargs, make_context, tune_for_serving

tune_for_serving()  # torch threads per op and the thread switch interval (see app.ui)
ctx = make_context()
demo = build_app(ctx)

if __name__ == "__main__":
    demo.launch(**launch_kwargs(ctx))
