"""Glassbox core: a small GPT package (config, model, tokenizer, data, training,
generation, inspection, checkpoints) that knows nothing of the web layer.

Nothing here imports gradio or plotly; everything returns tensors, numpy arrays and
small dataclasses so it can be used from a notebook, a CLI or the app.
"""
