"""Derived views over a model's trace: what the tabs show, computed without any web code.

One submodule per view family, each importable on its own:
    core.inspect.embeddings   PCA projections, nearest neighbours, faithfulness, alignment
    core.inspect.expression   the Embeddings tab's `king - man + woman` parsed into token ids
    core.inspect.attention    per-head statistics, aggregations, rollout, the equation, logit lens

Everything here takes tensors / arrays (usually from `GPT.trace`) and returns numpy arrays
or small dataclasses. No hooks are left on a model; no gradio, no plotly.
"""
