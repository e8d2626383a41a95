"""The Embeddings tab: token, positional and contextual embeddings of the picked model,
and how token embeddings moved over a training run.

Owns the tab's components and events, and `EmbeddingCache` (one per app: `ctx.embeddings`):
the whole-vocabulary analysis of the last few models (PCA, classes, neighbour index, recall),
the aligned checkpoints of the last few runs, and the folder where CSV exports are written
(the newest few kept). Every checkpoint it reads, a run's for "over training" too, comes from
the catalog, so the loaded models stay within the catalog's memory budget. Public endpoint: `/embeddings`
(model key, "2D" | "3D", search → the vocabulary map, a summary and the CSV); the other
events are private.
Does not own: the maths (`core.inspect.embeddings`), drawing (`app.figures.embeddings`),
the models (`ctx.catalog`).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import threading
import uuid
import weakref
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import torch

from app.figures import embeddings as figs
from app.tabs import clear_when, fmt_int, md_escape, side_action, user_errors
from app.validate import boundary
from core import checkpoint
from core.inspect import embeddings as emb
from core.inspect import expression as ex

TITLE = "Embeddings"
MAX_TEXT_CHARS = 2000
MAX_CONTEXT_TOKENS = 128
MAX_HEATMAP = 512  # cells a side; longer contexts are averaged in blocks
MAX_TRAINING_TOKENS = 5000
KEEP_EXPORTS = 16
DEFAULT_TEXT = "The king and the queen spoke to the people of the city."
DIMS = ["2D", "3D"]
NEIGHBOUR_HEADERS = ["rank", "token", "id", "cosine"]


class EmbeddingCache:
    """Per-app, bounded: vocabulary analyses keyed by model (valid while that loaded
    checkpoint object lives), aligned runs keyed by their files, and the export folder."""

    def __init__(self, size: int = 4):
        self.size = size
        self._lock = threading.RLock()  # export() prunes under it and asks export_dir, which takes it too
        self._vocab: OrderedDict[str, tuple[weakref.ref, emb.VocabView]] = OrderedDict()
        self._runs: OrderedDict[tuple, tuple] = OrderedDict()
        self._export_dir: Path | None = None

    @property
    def export_dir(self) -> Path:
        """Made on the first export, so a context that never exports leaves no folder behind."""
        with self._lock:
            if self._export_dir is None:
                self._export_dir = Path(tempfile.mkdtemp(prefix="glassbox-embeddings-"))
            return self._export_dir

    def _put(self, table: OrderedDict, key, value) -> None:
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > self.size:
                table.popitem(last=False)

    def vocab(self, key: str, ck) -> emb.VocabView:
        with self._lock:
            hit = self._vocab.get(key)
            if hit is not None and hit[0]() is ck:
                self._vocab.move_to_end(key)
                return hit[1]
        view = emb.analyse_vocab(ck.model.transformer.wte.weight, ck.tokenizer)
        self._put(self._vocab, key, (weakref.ref(ck), view))
        return view

    def run(self, stamp: tuple, compute):
        with self._lock:
            if stamp in self._runs:
                return self._runs[stamp]
        value = compute()
        self._put(self._runs, stamp, value)
        return value

    def export(self, name: str, header: list[str], rows) -> str:
        """Write a CSV in a fresh folder under the export dir; keep the newest KEEP_EXPORTS.
        Requests export at the same time: the pruning runs under the lock and tolerates
        folders that vanish, and every export has a folder of its own."""
        with self._lock:
            self._prune()
            folder = self.export_dir / uuid.uuid4().hex
            folder.mkdir(parents=True)
        path = folder / name
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        return str(path)

    def _prune(self) -> None:
        found = []
        self.export_dir.mkdir(parents=True, exist_ok=True)  # a temp cleaner may have removed it
        for p in self.export_dir.iterdir():
            try:
                found.append((p.stat().st_mtime_ns, p.name, p))
            except FileNotFoundError:  # removed since it was listed
                continue
        found.sort()
        for _, _, p in found[:max(0, len(found) - KEEP_EXPORTS + 1)]:
            shutil.rmtree(p, ignore_errors=True)


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _pct(x: float) -> str:
    return f"{100 * float(x):.1f}%"


def vocab_summary(view: emb.VocabView, n_matches: int | None, search: str) -> str:
    V, C = view.shape
    ex, r, rc = view.projection.explained, view.recall, view.recall_cosine
    queries = (f"{fmt_int(r.n_queries)} query tokens sampled at random (seed 0) from {fmt_int(V)}; "
               "neighbours searched among all" if r.sampled else f"all {fmt_int(V)} tokens as queries")
    lines = [
        f"**{fmt_int(V)} tokens × {C} dimensions, every token drawn.** Variance explained: PC1 {_pct(ex[0])}, "
        f"PC2 {_pct(ex[1])}, PC3 {_pct(ex[2])} (2-D picture: {_pct(ex[0] + ex[1])}).",
        f"**How faithful the 2-D picture is:** neighbour recall@{r.k} = **{r.value:.3f}** — of each token's "
        f"{r.k} nearest neighbours in all {C} dimensions (Euclidean), that share are also among its {r.k} "
        f"nearest in the picture; against the cosine neighbours listed below: {rc.value:.3f}; chance: "
        f"{r.k / (V - 1):.4f} ({queries}).",
        f"*Recall@{r.k}*: for each token, the share of its {r.k} true nearest neighbours that stay among its "
        f"{r.k} nearest on the map (1 = the map keeps every neighbourhood; near chance = the map's distances "
        "say little).",
    ]
    if n_matches is not None:
        found = f"{fmt_int(n_matches)} tokens contain" if n_matches else "no token contains"
        lines.append(f"Search: {found} “{md_escape(search)}”" + (" (ringed in red)." if n_matches else "."))
    return "\n\n".join(lines)


def build(ctx, model_picker: gr.Dropdown) -> None:
    catalog = ctx.catalog
    cache: EmbeddingCache = ctx.embeddings

    @user_errors
    def show_vocab(key: str, dims: str, search: str):
        """The whole vocabulary's PCA map, a summary (variance, recall@10), and its coordinates as CSV."""
        ck = catalog.get(key)
        view = cache.vocab(key, ck)
        matches = emb.search_tokens(view.labels, search or "")
        d = 3 if dims == "3D" else 2
        p = view.projection
        fig = figs.token_map(p.coords, view.classes, view.labels, p.explained, dims=d, highlight=matches,
                             title=f"Token embeddings (transformer.wte), PCA {d}-D")
        names = emb.CLASS_NAMES
        rows = ([i, _cell(s), names[c], *(f"{v:.5g}" for v in xyz)]
                for i, (s, c, xyz) in enumerate(zip(view.labels, view.classes, p.coords)))
        path = cache.export(f"token-embeddings-pca-{key.split(':')[0]}.csv",
                            ["id", "token", "class", "pc1", "pc2", "pc3"], rows)
        return fig, vocab_summary(view, len(matches) if search else None, search or ""), path

    @side_action(2)  # a query that cannot be read is one warning: the last answer stays
    def neighbours(key: str, expression: str, k: float):
        """Exact cosine nearest neighbours in the full dimension of a token or `a - b + c`."""
        ck = catalog.get(key)
        view = cache.vocab(key, ck)
        terms = ex.parse_expression(expression, ck.tokenizer, view.lookup, view.shape[0])
        ids, scores = view.index.search(view.index.vector(terms), int(k), exclude=[t.id for t in terms])
        rows = [[r + 1, view.labels[i], int(i), round(float(s), 4)] for r, (i, s) in enumerate(zip(ids, scores))]
        shown = " ".join(("− " if t.sign < 0 else ("+ " if j else "")) + view.labels[t.id]
                         for j, t in enumerate(terms))
        note = (f"Nearest to **{md_escape(shown)}** by cosine similarity over all {fmt_int(view.shape[0])} tokens "
                f"in {view.shape[1]} dimensions (exact; the query's own tokens are left out).")
        spaced = [t for t in terms if t.spaced]
        if spaced:
            note += (" Read " + ", ".join(f"{md_escape(t.text)} as **{md_escape(view.labels[t.id])}**" for t in spaced)
                     + ": inside a sentence a word comes after a space (·), and that is the token this model "
                       'learned for it; quote a term ("man") for the token without the space.')
        return rows, note

    @user_errors
    def positional(key: str, dims: str):
        ck = catalog.get(key)
        wpe = ck.model.transformer.wpe.weight
        M, f = emb.pool_square(emb.cosine_matrix(wpe), MAX_HEATMAP)
        d = 3 if dims == "3D" else 2
        p = emb.pca(wpe, d)
        return figs.positional_heatmap(M, f), figs.positional_curve(p.coords, p.explained, d)

    @user_errors
    def contextual(key: str, text: str, layer: float, dims: str = "2D"):
        ck = catalog.get(key)
        L = ck.config.n_layer
        if not text or not text.strip():
            raise ValueError("type some text to run through the model")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"the text is {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are accepted")
        if ck.tokenizer is None:
            raise ValueError("this model has no tokenizer, so text cannot be turned into tokens")
        ids = ck.tokenizer.encode(text)
        limit = min(MAX_CONTEXT_TOKENS, ck.config.block_size)
        if len(ids) > limit:
            raise ValueError(f"the text is {len(ids)} tokens; this view takes at most {limit}")
        layer = max(0, min(int(layer), L))
        H = emb.hidden_states(ck.model, ids, normalize=True)
        labels = [ck.tokenizer.display(i) for i in ids]
        d = 3 if dims == "3D" else 2
        p = emb.pca(H[layer], d)
        paths, pp = emb.layer_paths(H, d)
        note = (f"{len(ids)} tokens through {L} blocks; each vector centred and scaled to unit RMS (as the next "
                f"layer norm sees it) before PCA.")
        rows = ([t, _cell(labels[t]), ly, f"{p.coords[t, 0]:.5g}" if ly == layer else "",
                 f"{p.coords[t, 1]:.5g}" if ly == layer else "", f"{paths[ly, t, 0]:.5g}", f"{paths[ly, t, 1]:.5g}"]
                for t in range(len(ids)) for ly in range(L + 1))
        path = cache.export("contextual-embeddings.csv", ["position", "token", "layer", "layer_pc1", "layer_pc2",
                                                          "path_pc1", "path_pc2"], rows)
        return (figs.layer_scatter(p.coords, labels, p.explained, layer, dims=d),
                figs.layer_paths(paths, labels, pp.explained, layer, dims=d), gr.update(maximum=L, value=layer), note,
                path)

    @user_errors
    def over_training(key: str):
        entry = catalog.entry(key)
        if entry.source != "run":
            return None, ("**Over training** aligns the checkpoints of one training run: pick a run in the "
                          "model list (`run: …`). This model is not one.")
        run = key.removeprefix("run:").split("/")[0]
        members = [e for e in catalog.entries() if e.key == f"run:{run}" or e.key.startswith(f"run:{run}/")]
        stamp = tuple((e.key, (e.path / checkpoint.MODEL_FILE).stat().st_mtime_ns) for e in members)

        def compute():
            # one checkpoint at a time through the catalog (its memory budget holds): only a copy of
            # the first token rows is kept, so an evicted model is not held on to here
            rows = []
            for e in members:
                ck = catalog.get(e.key)
                wte = ck.model.transformer.wte.weight.detach()[:MAX_TRAINING_TOKENS].to("cpu", copy=True)
                rows.append((int(ck.meta.get("step") or 0), e.key, ck.meta.get("step"), wte, ck.tokenizer))
            rows.sort(key=lambda r: (r[0], r[1]))
            V = min(r[3].shape[0] for r in rows)
            mats, names = [], []
            for _, key, step, wte, _ in rows:  # `best` and `latest` are often the same step: draw those weights once
                W = wte[:V]
                name = key.removeprefix(f"run:{run}").lstrip("/") or run
                if mats and names[-1][1] == step and mats[-1].shape == W.shape and torch.equal(mats[-1], W):
                    names[-1] = (f"{names[-1][0]} = {name}", names[-1][1])
                    continue
                mats.append(W)
                names.append((name, step))
            coords, proj, disp = emb.align_checkpoints(mats)
            names = [f"{n} · step {'?' if st is None else st}" for n, st in names]
            tok = rows[-1][4]
            return coords, proj, disp, names, emb.token_labels(tok, V), emb.token_classes(tok, V), len(rows)

        coords, proj, disp, names, labels, classes, n_files = cache.run(stamp, compute)
        fig = figs.training_steps(coords, labels, classes, names, disp, proj.explained,
                                  title=f"Run {run}: token embeddings over training")
        note = (f"Run **{md_escape(run)}**: {n_files} checkpoint folder{'s' if n_files != 1 else ''}, "
                f"{len(names)} distinct: " + ", ".join(md_escape(n) for n in names) + ".")
        if len(names) < 2:
            note = ("**Fewer than two distinct checkpoints in this run, so there is no change to show yet.** "
                    + note + " A run saves `latest/` and `best/` under its folder; once they differ (or more "
                    "checkpoint folders exist), each appears here as one step of the slider.")
        if len(labels) == MAX_TRAINING_TOKENS:
            note += f" The first {MAX_TRAINING_TOKENS:,} token ids are drawn."
        if len(names) >= 2:
            note += (" Each checkpoint's embeddings are rotated onto the last one's (orthogonal Procrustes in the "
                     "full dimension), then projected on the last one's two principal axes; drag the slider. "
                     "*Procrustes*: the rotation that best lays one cloud of points onto another; training may "
                     "turn the whole space without changing what it means, and this takes that turn out, so "
                     "what moves on the slider is real change.")
        return fig, note

    def initial(fn, *args):
        """A view's first value, computed when the page is built (the model tab does the same)."""
        try:
            return fn(*args) if model_picker.value else None
        except gr.Error:
            return None

    key0 = model_picker.value
    v0 = initial(show_vocab, key0, "2D", "") or (None, "", None)
    p0 = initial(positional, key0, "2D") or (None, None)
    c0 = initial(contextual, key0, DEFAULT_TEXT, 10**6) or (None, None, {}, "", None)
    t0 = initial(over_training, key0) or (None, "")
    L0 = c0[2].get("maximum", 1)  # an update dict: creating a component here would draw it

    # ---- layout ---------------------------------------------------------------------
    gr.Markdown("Every token id has a learned vector (`wte`), every position another (`wpe`); their sum enters "
                "block 0, and each block rewrites it. These views project those vectors to 2-D or 3-D.")
    dims = gr.Radio(DIMS, value="2D", label="Projection", elem_id="emb-dims")
    with gr.Tabs():
        with gr.Tab("Token embeddings"):
            with gr.Row(equal_height=True):
                search = gr.Textbox("", label="Highlight tokens containing", placeholder="e.g.  king  (Enter)",
                                    max_lines=1, max_length=100, scale=4, elem_id="emb-search")
                show_btn = gr.Button("Draw", scale=0, min_width=100, elem_id="emb-draw")
            vocab_plot = gr.Plot(label="Token embeddings", show_label=False, elem_id="emb-vocab-plot", value=v0[0])
            vocab_md = gr.Markdown(v0[1], elem_id="emb-vocab-summary")
            csv_file = gr.File(v0[2], label="Coordinates (CSV)", interactive=False, height=60, elem_id="emb-csv")
            with gr.Row(equal_height=True):
                expr = gr.Textbox(label="Nearest neighbours of a token or an expression",
                                  placeholder='king - man + woman   (or ·king with its space, "quoted", #id)',
                                  max_lines=1, max_length=ex.MAX_EXPRESSION_CHARS, scale=4, elem_id="emb-expr")
                k_slider = gr.Slider(1, emb.MAX_NEIGHBOURS, value=10, step=1, label="k", scale=1)
                nn_btn = gr.Button("Find", scale=0, min_width=100, elem_id="emb-find")
            nn_md = gr.Markdown(elem_id="emb-nn-note")
            nn_df = gr.Dataframe(headers=NEIGHBOUR_HEADERS, datatype=["number", "str", "number", "number"],
                                 interactive=False, max_height=360, elem_id="emb-nn-table", wrap=True,
                                 elem_classes=["gb-fit"])
        with gr.Tab("Positional embeddings"):
            with gr.Row(equal_height=False):
                pos_heat = gr.Plot(p0[0], show_label=False, elem_id="emb-pos-heatmap")
                pos_curve = gr.Plot(p0[1], show_label=False, elem_id="emb-pos-curve")
        with gr.Tab("Contextual embeddings"):
            with gr.Row(equal_height=True):
                text = gr.Textbox(DEFAULT_TEXT, label="Text", max_lines=3, max_length=MAX_TEXT_CHARS, scale=4,
                                  elem_id="emb-text")
                layer = gr.Slider(0, L0, value=L0, step=1, label="Layer (0 = embeddings)", scale=2, elem_id="emb-layer")
                ctx_btn = gr.Button("Run", scale=0, min_width=100, elem_id="emb-run")
            ctx_md = gr.Markdown(c0[3])
            with gr.Row(equal_height=False):
                layer_plot = gr.Plot(c0[0], show_label=False, elem_id="emb-layer-plot")
                path_plot = gr.Plot(c0[1], show_label=False, elem_id="emb-path-plot")
            ctx_csv = gr.File(c0[4], label="Coordinates (CSV): the chosen layer's and every layer's path",
                              interactive=False, height=60, elem_id="emb-ctx-csv")
        with gr.Tab("Over training"):
            train_btn = gr.Button("Align this run's checkpoints", size="sm", elem_id="emb-align")
            train_md = gr.Markdown(t0[1])
            train_plot = gr.Plot(t0[0], show_label=False, elem_id="emb-train-plot")

    # ---- events ---------------------------------------------------------------------
    heavy = dict(concurrency_limit=2, concurrency_id="embeddings")
    private = dict(api_visibility="private", **heavy)
    gr.on([model_picker.change, dims.change, search.submit, show_btn.click],
          boundary(ctx)("embeddings", show_vocab),
          [model_picker, dims, search], [vocab_plot, vocab_md, csv_file], api_name="embeddings", preprocess=False,
          **heavy)
    gr.on([nn_btn.click, expr.submit], neighbours, [model_picker, expr, k_slider], [nn_df, nn_md], **private)
    gr.on([model_picker.change, dims.change], positional, [model_picker, dims], [pos_heat, pos_curve], **private)
    gr.on([model_picker.change, ctx_btn.click, text.submit, layer.release, dims.change], contextual,
          [model_picker, text, layer, dims], [layer_plot, path_plot, layer, ctx_md, ctx_csv], **private)
    # the neighbours were found in the old model's vocabulary
    clear_when([model_picker.change], {nn_df: None, nn_md: ""})
    gr.on([model_picker.change, train_btn.click], over_training, model_picker, [train_plot, train_md], **private)
