"""Adding a GPT-2-layout model from the Hugging Face Hub (safetensors only).

Owns: checking a typed model name (`repo_name`), whether the Hub may be contacted
(`hub_offline`), and `download`: config.json first, so a model over the server's size limit
or of another architecture is refused before its weights come, then the weights and
tokenizer files into the Hugging Face cache. Offline only that cache is used. Errors are
`ValueError`s meant for the user, one per way a download fails.
Does not own: loading the folder (`core.checkpoint`), its key (`app.catalog.entries`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from app.catalog.acquire import MAX_NAME_CHARS
from app.catalog.entries import CONTROL, clean
from core import checkpoint
from core.checkpoint import CONFIG_FILE, MODEL_FILE, CheckpointError

HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]
HUB_TIMEOUT_S = float(os.environ.get("GLASSBOX_HUB_TIMEOUT", 10))
_HUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def hub_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE, read now)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub ships with gradio
        return True
    return bool(constants.HF_HUB_OFFLINE)


def repo_name(text: str | None) -> str:
    """A typed Hub model name (or its huggingface.co address) as `owner/name`, or a ValueError."""
    if len(text or "") > MAX_NAME_CHARS:
        raise ValueError(f"that model name is {len(text):,} characters long; the limit is {MAX_NAME_CHARS:,}")
    repo = CONTROL.sub("", text or "").strip().strip("/")
    repo = re.sub(r"^https?://huggingface\.co/", "", repo)
    if not repo:
        raise ValueError("type a Hugging Face model name, e.g. gpt2 or distilgpt2")
    if not _HUB_REPO.match(repo) or ".." in repo:
        raise ValueError(f"{clean(repo)!r} is not a Hugging Face model name (like gpt2 or openai-community/gpt2)")
    return repo


def download(repo: str, cache_dir: Path | None, max_bytes: int) -> Path:
    """The local folder of `repo`'s GPT-2-layout checkpoint, downloaded into the Hugging Face
    cache (`cache_dir`, None: HF_HOME) unless it is there already."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    kw = dict(cache_dir=cache_dir, local_files_only=offline, etag_timeout=HUB_TIMEOUT_S)
    try:
        folder = Path(snapshot_download(repo, allow_patterns=[CONFIG_FILE, checkpoint.INDEX_FILE], **kw))
        cfg = checkpoint.read_config(folder)  # a GPT-2 (or Glassbox) config, before the weights come
        if cfg.memory_bytes(4) > max_bytes:
            raise ValueError(f"{repo} has {cfg.n_params():,} parameters ({cfg.memory_bytes(4) / 1e9:.1f} GB "
                             f"in float32), over this server's limit of {max_bytes / 1e9:.1f} GB")
        files, index = HUB_FILES, folder / checkpoint.INDEX_FILE
        if index.is_file():  # sharded: the shards the index lists instead of model.safetensors
            files = [f for f in HUB_FILES if f != MODEL_FILE] + checkpoint.shard_files(index)
        folder = Path(snapshot_download(repo, allow_patterns=files, **kw))
    except CheckpointError as e:
        raise ValueError(f"{repo} is not a GPT-2-layout model: {e}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        if offline:
            raise ValueError(f"cannot download {repo}: the app is offline (HF_HUB_OFFLINE=1) and {repo} is not "
                             "in the local Hugging Face cache. Load it from a local folder instead") from None
        raise ValueError(f"cannot download {repo}: the Hugging Face Hub could not be reached (no internet?) "
                         "and it is not in the local cache. Load it from a local folder instead") from None
    except GatedRepoError:
        raise ValueError(f"{repo} is gated on the Hub: accept its licence and log in, or load it from a "
                         "local folder") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ValueError(f"there is no public model named {repo} on the Hugging Face Hub") from None
    except ValueError:
        raise
    except Exception as e:  # network and HTTP errors come in many types
        raise ValueError(f"could not download {repo} from the Hugging Face Hub: {type(e).__name__}: "
                         f"{clean(str(e), 200)}") from None
    if not checkpoint.is_checkpoint(folder):
        raise ValueError(f"{repo} has no model.safetensors (nor a sharded {checkpoint.INDEX_FILE}) on the Hub: "
                         "Glassbox loads only safetensors weights, never pytorch_model.bin (pickle)")
    return folder
