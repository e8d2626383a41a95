"""Adding models from a visitor: a folder typed on the server, or checkpoint files uploaded.

Owns: checking a typed folder (`folder_from_text`; switched off where the folder box would
let anyone read the server's disk: `paths_allowed_by_default`), turning uploaded files into
a checkpoint folder under the uploads dir (`stage_upload`: safetensors only, pickle refused
by name and by magic bytes, validated by loading it before it is renamed into place), and
deleting old uploads (`clean_uploads`). Errors are `ValueError`s meant for the user.
Does not own: the keys and who sees them (`app.catalog.entries`), the Hub (`app.catalog.hub`),
the checkpoint format (`core.checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from app.catalog.entries import CONTROL, UPLOAD_ID, UPLOAD_INFO, clean
from core import checkpoint
from core.checkpoint import CONFIG_FILE, MODEL_FILE, Checkpoint

UPLOAD_FILES = ("config.json", "tokenizer.json", "meta.json", "vocab.json", "merges.txt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".zip")
MAX_NAME_CHARS = 1000  # a typed folder path or Hub name


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in {"0", "false", "no", "off"}


def paths_allowed_by_default() -> bool:
    """GLASSBOX_ALLOW_PATHS if set; otherwise on, except on Hugging Face Spaces (SPACE_ID is set)."""
    return _env_flag("GLASSBOX_ALLOW_PATHS", default=not os.environ.get("SPACE_ID"))


def folder_from_text(text: str | None) -> Path:
    """The checkpoint folder a visitor typed (absolute, resolved; a `.safetensors` file means its
    folder), or a ValueError saying what is wrong with it."""
    if len(text or "") > MAX_NAME_CHARS:
        raise ValueError(f"that path is {len(text):,} characters long; the limit is {MAX_NAME_CHARS:,}")
    text = CONTROL.sub("", text or "").strip().strip("'\"")
    if not text:
        raise ValueError("type the path of a checkpoint folder (it holds config.json and model.safetensors)")
    folder = Path(text).expanduser()
    folder = (folder if folder.is_absolute() else Path.cwd() / folder).resolve()
    if folder.is_file() and folder.suffix == ".safetensors":
        folder = folder.parent
    if not folder.exists():
        raise ValueError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file: give the folder that holds config.json and model.safetensors")
    if not checkpoint.is_checkpoint(folder):
        missing = [n for n in (CONFIG_FILE, MODEL_FILE) if not (folder / n).is_file()]
        hint = ""
        if any((folder / n).is_file() for n in ("pytorch_model.bin", "model.pt", "model.pth")):
            hint = " (it has pickle weights, which Glassbox never loads: convert them to model.safetensors)"
        raise ValueError(f"{folder} is not a checkpoint folder: {' and '.join(missing)} missing{hint}")
    return folder


def _upload_plan(paths: list[Path], max_bytes: int) -> dict[str, Path]:
    """Which uploaded file becomes which checkpoint file; refuses pickle, strangers and gaps."""
    if not paths:
        raise ValueError("choose the checkpoint's files: model.safetensors, config.json and tokenizer.json "
                         "(meta.json is optional)")
    plan: dict[str, Path] = {}
    for p in paths:
        name = clean(p.name)
        low = p.name.lower()
        if low.endswith(PICKLE_SUFFIXES):
            raise ValueError(f"{name} looks like a PyTorch pickle: Glassbox never loads pickle files "
                             "(loading one can run code). Upload model.safetensors instead")
        if low.endswith(".safetensors"):
            target = MODEL_FILE
        elif low in UPLOAD_FILES:
            target = low
        else:
            raise ValueError(f"{name} is not part of a checkpoint: upload model.safetensors, config.json "
                             "and tokenizer.json (meta.json is optional)")
        if target in plan:
            raise ValueError(f"two files for {target}: {clean(plan[target].name)} and {name}")
        if not p.is_file():
            raise ValueError(f"the uploaded file {name} is missing on the server; upload it again")
        plan[target] = p
    missing = [n for n in (MODEL_FILE, CONFIG_FILE) if n not in plan]
    if "tokenizer.json" not in plan and not {"vocab.json", "merges.txt"} <= plan.keys():
        missing.append("tokenizer.json")
    if missing:
        raise ValueError(f"{' and '.join(missing)} missing: a checkpoint upload needs model.safetensors, "
                         "config.json and tokenizer.json (meta.json is optional)")
    total = sum(p.stat().st_size for p in plan.values())
    if total > max_bytes:
        raise ValueError(f"the upload is {total / 1e9:.1f} GB, over this server's limit of "
                         f"{max_bytes / 1e9:.1f} GB")
    checkpoint.check_safetensors_file(plan[MODEL_FILE])  # refuses pickle / zip by their magic bytes
    return plan


def stage_upload(files: Iterable | None, uploads_dir: Path, max_bytes: int,
                 load: Callable[[Path], Checkpoint]) -> tuple[Path, Checkpoint]:
    """Copy uploaded checkpoint files into a fresh folder under `uploads_dir`, validate them by
    loading (`load`), and rename the folder into place: (its folder, the loaded checkpoint).

    Accepted: one `*.safetensors` (stored as model.safetensors), config.json, and
    tokenizer.json (or GPT-2's vocab.json + merges.txt); meta.json is optional.
    Anything else, and pickle files above all, is refused before anything is loaded.
    """
    # str or Path (gr.File's "filepath"), or a file object with .name
    paths = [Path(f if isinstance(f, (str, os.PathLike)) else f.name) for f in (files or [])]
    plan = _upload_plan(paths, max_bytes)
    uid = uuid.uuid4().hex[:12]
    uploads_dir.mkdir(parents=True, exist_ok=True)
    tmp, final = uploads_dir / f".tmp-{uid}", uploads_dir / uid
    tmp.mkdir()
    try:
        for target, src in plan.items():
            shutil.copyfile(src, tmp / target)
        ck = load(tmp)
        c = ck.config
        info = {"name": clean(plan[MODEL_FILE].name), "files": sorted(clean(p.name) for p in paths),
                "shape": f"{c.n_layer} layers × {c.n_embd} dims, {c.n_params() / 1e6:.1f}M parameters"}
        (tmp / UPLOAD_INFO).write_text(json.dumps(info), encoding="utf-8")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ck.path = final
    return final, ck


def clean_uploads(uploads_dir: Path, ttl_s: float, now: float | None = None) -> list[str]:
    """Delete uploads (and half-written ones) older than `ttl_s`; returns their folder names."""
    now = time.time() if now is None else now
    gone = []
    try:
        folders = list(uploads_dir.iterdir())
    except OSError:
        return gone
    for d in folders:
        if not (UPLOAD_ID.match(d.name) or d.name.startswith(".tmp-")):
            continue
        try:
            old = now - d.stat().st_mtime > ttl_s
        except OSError:
            continue
        if old:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d.name)
    return gone
