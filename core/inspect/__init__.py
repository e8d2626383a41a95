"""Derived views over a model's trace: what the tabs show, computed without any web code.

One submodule per view family, each importable on its own:
    core.inspect.embeddings   PCA projections, nearest neighbours, faithfulness, alignment
    core.inspect.expression   the Embeddings tab's `king - man + woman` parsed into token ids
    core.inspect.attention    per-head statistics, aggregations, rollout, the equation, logit lens
    core.inspect.tokens       tokens grouped into visible characters, per-token facts, surprise, the BPE lab
    core.inspect.walkthrough  one text through the model, stage by stage (the Walkthrough tab)
    core.inspect.learn_step   one training step on one text, on a copy of the model
    core.inspect.timeline     a run's snapshots on one text, step by step (the Timeline tab)

Everything here takes tensors / arrays (usually from `GPT.trace`) and returns numpy arrays
or small dataclasses. No hooks are left on a model; no gradio, no plotly.
"""
