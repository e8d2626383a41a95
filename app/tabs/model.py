"""The Model tab: what the picked model is made of, and loading other models.

Shows the configuration, the parameter count (with and without embeddings), the memory
it needs, its training record (meta.json) and one row per module with real shapes and
what each module does (`GPT.describe_modules` gives the rows, `module_role` the words). Loads a model from an upload
(safetensors only), a typed folder path or a Hugging Face Hub name, then selects it in the
shared model picker.

API: `/model_info` (model key → the info dict built by `model_info`). Other events are
private. Does not own: the catalog (`app.catalog`) or figure drawing (`app.figures`).
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

import gradio as gr

from app.catalog import ModelCatalog, ModelEntry
from app.figures import model as figures
from app.tabs import fmt_bytes, fmt_int, md_escape, session_of, user_errors
from app.validate import boundary
from core.checkpoint import Checkpoint

TITLE = "Model"

CONFIG_MEANINGS = {
    "vocab_size": "tokens the model knows (rows of the embedding table)",
    "block_size": "longest context it reads, in tokens (rows of the position table)",
    "n_layer": "transformer blocks stacked one after another",
    "n_head": "attention heads in every block",
    "n_embd": "numbers per token vector: the width of the residual stream",
    "head_size": "numbers per head (n_embd / n_head)",
    "dropout": "share of activations zeroed during training",
    "bias": "whether linear layers and layer norms have a bias",
    "n_inner": "width of the feed-forward network's hidden layer (None: 4 × n_embd)",
    "tie_word_embeddings": "whether the output head reuses the token embedding's weights (else it has its own)",
}
CONFIG_HEADERS = ["setting", "value", "meaning"]
MODULE_HEADERS = ["module", "kind", "shape", "parameters", "what it does"]
KINDS = ("embedding", "attention", "feed-forward", "layer norm")  # display order
META_HIDDEN = ("history", "evals", "model")  # long lists, and the config shown above


def module_kind(name: str) -> str:
    """Which part of the architecture a module name belongs to."""
    if name.endswith((".wte", ".wpe")):
        return "embedding"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "feed-forward"
    if name == "lm_head":
        return "output head"
    return "layer norm"


def module_role(name: str, cfg, tied: bool = True) -> str:
    """What the module of GPT-2 name `name` does, in a sentence for the table."""
    leaf = re.sub(r"^h\.\d+\.", "", name.removeprefix("transformer."))  # "attn.c_attn", "wte", ...
    roles = {
        "wte": "Token embedding: one vector of n_embd numbers per token id" + (" (also the output head, tied)" if tied else ""),
        "wpe": "Position embedding: one learned vector per position 0..block_size-1, added to the token's",
        "ln_1": "Layer norm before attention",
        "attn.c_attn": f"Attention: projects each token to query, key, value for {cfg.n_head} heads of {cfg.head_size} dims",
        "attn.c_proj": "Attention output: mixes the heads back into the residual stream",
        "ln_2": "Layer norm before the feed-forward network",
        "mlp.c_fc": f"Feed forward: expands to {cfg.mlp_width} ({'4×n_embd' if cfg.n_inner is None else 'n_inner'}), then GELU",
        "mlp.c_proj": "Feed forward: projects back to n_embd",
        "ln_f": "Final layer norm",
        "lm_head": "Output head: scores every vocabulary token"
                   + (" (weights shared with wte, counted once)" if tied else " (its own weights, untied from wte)"),
    }
    return roles.get(leaf, "")


def _json_safe(value: Any, depth: int = 0) -> Any:
    """meta.json content made safe to show: finite numbers, bounded lists and depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:100]} if depth < 4 else "{…}"
    if isinstance(value, list):
        if len(value) > 50:
            return f"[{len(value)} items]"
        return [_json_safe(v, depth + 1) for v in value] if depth < 4 else "[…]"
    if isinstance(value, str) and len(value) > 2000:
        return value[:2000] + "…"
    return value


def _meta_summary(meta: dict) -> dict:
    """Training step and losses pulled out of meta.json (None where absent)."""
    evals = meta.get("evals") if isinstance(meta.get("evals"), list) else []
    last = evals[-1] if evals and isinstance(evals[-1], dict) else {}
    out = {
        "step": meta.get("step"),
        "best_val_loss": meta.get("best_val", meta.get("best_val_loss")),
        "val_loss": last.get("val_loss", meta.get("val_loss")),
        "train_loss": last.get("train_loss", meta.get("train_loss")),
    }
    return {k: (_json_safe(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
            for k, v in out.items()}


def model_info(entry: ModelEntry, ck: Checkpoint) -> dict:
    """Everything the tab shows about one model, as plain JSON (also the `/model_info` API)."""
    cfg, model = ck.config, ck.model
    tied = model.lm_head.weight is model.transformer.wte.weight
    modules = [{**row, "role": module_role(row["module"], cfg, tied), "kind": module_kind(row["module"])}
               for row in model.describe_modules()]
    by_kind = {kind: 0 for kind in KINDS}
    for row in modules:
        by_kind[row["kind"]] = by_kind.get(row["kind"], 0) + row["params"]
    by_kind = {k: v for k, v in by_kind.items() if v}
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    p = model.transformer.wte.weight
    tok = ck.tokenizer
    return {
        "key": entry.key,
        "label": entry.label,
        "source": entry.source,
        "format": ck.kind,
        "folder": str(ck.path or entry.path),  # not "path": gradio_client would fetch it as a file
        "config": {**{k: v for k, v in cfg.to_dict().items() if k != "format_version"}, "head_size": cfg.head_size},
        "params": {
            "total": model.num_params(),
            "without_embeddings": model.num_params(include_embeddings=False),
            "embeddings": model.num_params() - model.num_params(include_embeddings=False),
        },
        "memory": {
            "weights_bytes": weights,
            "dtype": str(p.dtype).removeprefix("torch."),
            "device": str(p.device),
            "weights_bf16_bytes": model.num_params() * 2,
            # keys + values for every layer at full context, one sequence, float32
            "kv_cache_bytes_per_sequence": 2 * cfg.n_layer * cfg.block_size * cfg.n_embd * 4,
        },
        "tokenizer": None if tok is None else {"kind": tok.kind, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id},
        "training": _meta_summary(ck.meta),
        "meta": _json_safe({k: v for k, v in ck.meta.items() if k not in META_HIDDEN}),
        "modules": modules,
        "params_by_kind": by_kind,
    }


def summary_markdown(info: dict) -> str:
    """The headline: name, parameter counts, memory, format, tokenizer, training record."""
    p, m, c, t = info["params"], info["memory"], info["config"], info["training"]
    fmt = "Glassbox checkpoint" if info["format"] == "glassbox" else "GPT-2 layout (Hugging Face)"
    tok = info["tokenizer"]
    tok_text = "no tokenizer" if tok is None else f"{tok['kind']} tokenizer, {fmt_int(tok['vocab_size'])} tokens"
    trained = []
    if t["step"] is not None:
        trained.append(f"trained {fmt_int(int(t['step']))} steps")
    for key, name in (("val_loss", "val loss"), ("best_val_loss", "best val loss"), ("train_loss", "train loss")):
        if t[key] is not None:
            trained.append(f"{name} {t[key]:.4f}")
    lines = [
        f"### {md_escape(info['label'])}",
        f"{c['n_layer']} layers × {c['n_head']} heads × {c['n_embd']} dims · {md_escape(tok_text)} · {fmt} · "
        + (" · ".join(trained) if trained else "no training record in meta.json"),
        "| parameters | without embeddings | weights | KV cache per sequence |\n|---|---|---|---|\n"
        f"| {fmt_int(p['total'])} | {fmt_int(p['without_embeddings'])} | "
        f"{fmt_bytes(m['weights_bytes'])} ({md_escape(m['dtype'])}) | "
        f"{fmt_bytes(m['kv_cache_bytes_per_sequence'])} at {fmt_int(c['block_size'])} tokens |",
    ]
    return "\n\n".join(lines)


def render(info: dict | None):
    """info dict → (summary, config rows, module rows, figure, meta) for the tab's components."""
    if not info:
        return "No model selected.", [], [], None, {}
    config_rows = [[k, str(v), CONFIG_MEANINGS.get(k, "")] for k, v in info["config"].items()]
    tied = info["config"].get("tie_word_embeddings", True)
    module_rows = [[r["module"], r["kind"], " × ".join(str(d) for d in r["shape"]),
                    "shared with wte" if r["module"] == "lm_head" and tied else fmt_int(r["params"]), r["role"]]
                   for r in info["modules"]]
    return (summary_markdown(info), config_rows, module_rows,
            figures.params_by_kind(info["params_by_kind"]), info["meta"])


def build(ctx, model_picker: gr.Dropdown) -> None:
    catalog: ModelCatalog = ctx.catalog

    def describe(key: str) -> dict:
        return model_info(catalog.entry(key), catalog.get(key))

    initial, problem = None, None
    key0 = model_picker.value
    if key0:
        try:
            initial = describe(key0)
        except ValueError as e:
            problem = str(e)
    summary0, config0, modules0, fig0, meta0 = render(initial)
    if problem:
        summary0 = f"Could not load the model: {md_escape(problem)}"

    with gr.Accordion("Load another model", open=initial is None):
        with gr.Row(equal_height=False):
            with gr.Column(min_width=240):
                gr.Markdown("**Upload a checkpoint**: `model.safetensors`, `config.json`, `tokenizer.json` "
                            "(`meta.json` optional). Safetensors only: pickle files are refused.")
                files = gr.File(label="Checkpoint files", file_count="multiple",
                                file_types=[".safetensors", ".json", ".txt"], height=120)
                upload_btn = gr.Button("Load upload", size="sm")
            with gr.Column(min_width=240, visible=catalog.allow_paths):
                gr.Markdown("**A folder on this machine**: a Glassbox checkpoint or a GPT-2 folder "
                            "(Hugging Face layout).")
                folder = gr.Textbox(label="Folder path", placeholder="/path/to/checkpoint", max_lines=1)
                folder_btn = gr.Button("Load folder", size="sm")
            with gr.Column(min_width=240):
                gr.Markdown("**GPT-2 from the Hugging Face Hub** (needs internet the first time; then cached).")
                repo = gr.Textbox(label="Model name", placeholder="gpt2, distilgpt2, …", max_lines=1)
                hub_btn = gr.Button("Download and load", size="sm")

    summary = gr.Markdown(summary0, elem_id="model-summary")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            config_df = gr.Dataframe(config0, headers=CONFIG_HEADERS, label="Configuration (config.json)",
                                     interactive=False, wrap=True, column_widths=["22%", "18%", "60%"])
        with gr.Column(scale=1, min_width=320):
            plot = gr.Plot(fig0, label="Parameters by kind of module", show_label=False)
    modules_df = gr.Dataframe(modules0, headers=MODULE_HEADERS, label="Modules (with their real shapes)",
                              interactive=False, wrap=True, max_height=420,
                              column_widths=["24%", "11%", "11%", "11%", "43%"])
    with gr.Accordion("Training record (meta.json)", open=False):
        meta_json = gr.JSON(meta0, label="meta.json", show_label=False)
    with gr.Accordion("All of the above as JSON (what the /model_info API returns)", open=False):
        info_json = gr.JSON(initial, label="model info", show_label=False)

    shown = [summary, config_df, modules_df, plot, meta_json]
    model_picker.change(boundary(ctx)("model_info", describe), model_picker, info_json, api_name="model_info",
                        preprocess=False,  # the boundary checks the raw input
                        show_progress_on=[summary, modules_df],  # loading a big model takes seconds
                        concurrency_limit=2, concurrency_id="model_info").success(
        render, info_json, shown, api_visibility="private")

    def loaded(key: str, request: gr.Request | None):
        gr.Info(f"Loaded {html.escape(catalog.entry(key).label, quote=False)}")
        return ctx.picker.update(request, select=key)

    @user_errors
    def load_upload(paths, request: gr.Request):
        return loaded(catalog.add_upload(paths, owner=session_of(request)), request), None

    @user_errors
    def load_folder(text, request: gr.Request):
        return loaded(catalog.add_path(text, owner=session_of(request)), request)

    @user_errors
    def load_hub(name, request: gr.Request):
        if name and name.strip():
            gr.Info(f"Fetching {html.escape(name.strip()[:200], quote=False)} from the Hugging Face Hub…")
        return loaded(catalog.add_hub(name), request)

    heavy = dict(api_visibility="private", concurrency_limit=1, concurrency_id="model_load", show_progress="hidden")
    upload_btn.click(load_upload, files, [model_picker, files], **heavy)
    gr.on([folder_btn.click, folder.submit], load_folder, folder, model_picker, **heavy)
    gr.on([hub_btn.click, repo.submit], load_hub, repo, model_picker, **heavy)
