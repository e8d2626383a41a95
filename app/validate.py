"""The API boundary: one table of limits, and one check of every input of every documented endpoint.

Owns: `LIMITS` (the bounds of every number and the length of every text the endpoints take;
the tabs' sliders read the same table), `ENDPOINTS` (each endpoint's inputs, in order, with
their checks), `checked` (wraps a handler: its inputs are checked and converted before it runs;
any error leaves as a short `gr.Error` that quotes at most `QUOTE_CHARS` characters of a bad
value and names no server folder), and `shown` (a value quoted for a message).
Does not own: what an input means for one model (a layer beyond this model's layers, a
prompt longer than its block): `core` checks that and raises its own `ValueError`s, which
pass through here unchanged but scrubbed and capped.

Why a layer here: Gradio hands an API caller's JSON to a handler as it came (a number where
the prompt belongs, a list as the corpus, `top_k=10**30`), and a value that only fails deep
inside torch or the JSON encoder gives the caller no message at all.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.jobs.form import FORM
from core import config as C
from core import decoding as D
from core.beam import MAX_BEAMS
from core.inspect import attention as A
from core.inspect import embeddings as E
from core.inspect import timeline as TL
from core.inspect import tokens as T
from core.spec import MAX_PASTED_CHARS, SERVER_LIMITS, check_name

log = logging.getLogger(__name__)

QUOTE_CHARS = 60      # of an offending value, in a message
MAX_MESSAGE = 300     # characters of any message a caller gets
MAX_KEY_CHARS = 1100  # a model key: "path:" + a folder of up to 1,000 characters, or a run's step
MAX_RUN_NAME = 64

# Every number an endpoint takes: (low, high), both inclusive unless named in OPEN_LOW.
LIMITS: dict[str, tuple[float, float]] = {
    # /tokenize, /embeddings, /attention: text lengths (characters)
    "tokenize.text": (0, T.MAX_TEXT_CHARS),
    "embeddings.search": (0, 100),
    "attention.text": (0, A.MAX_TEXT_CHARS),
    # /attention: the model's own shape is checked by core; these bound what any model can have
    "layer": (0, C.LIMITS["n_layer"][1] - 1),
    "head": (0, C.LIMITS["n_head"][1] - 1),
    "query": (-C.LIMITS["block_size"][1], C.LIMITS["block_size"][1] - 1),
    # /decode
    "decode.prompt": (0, 2000),
    "columns": (1, 4),
    "max_new_tokens": (1, 256),
    "seed": (0, D.MAX_SEED),
    "temperature": (0.0, 100.0),
    "top_k": (1, C.LIMITS["vocab_size"][1]),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "repetition_penalty": (0.0, 10.0),
    "num_beams": (1, MAX_BEAMS),
    "length_penalty": (-10.0, 10.0),
    # the Embeddings tab's neighbours
    "k": (1, E.MAX_NEIGHBOURS),
}
OPEN_LOW = ("top_p", "repetition_penalty")  # 0 itself is not allowed
INTS = ("layer", "head", "query", "columns", "max_new_tokens", "seed", "top_k", "num_beams", "k")


def train_limits() -> dict[str, tuple[float, float]]:
    """The training settings' bounds: the job manager's table (the Train tab's sliders use it)."""
    return dict(SERVER_LIMITS)


# ---- quoting and messages --------------------------------------------------------------

def shown(value: Any, limit: int = QUOTE_CHARS) -> str:
    """`value` for a message: its repr, cut to `limit` characters (with its length if cut)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        text = repr(value) if not isinstance(value, (list, dict, tuple)) or len(value) <= 50 else None
    except Exception:  # a repr that raises (never from JSON, but be safe)
        text = None
    if text is None:
        kind = type(value).__name__
        return f"a {kind} of {len(value):,} items" if hasattr(value, "__len__") else f"a {kind}"
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return text[:limit - 1] + "…" + size


def _folders() -> list[tuple[str, str]]:
    root = Path(__file__).resolve().parents[1]
    return [(str(Path(tempfile.gettempdir()).resolve()), "a temporary folder"),
            (str(root), "the app's folder"), (str(Path.home()), "the server's home folder")]


def clean_message(message: str, folders: Iterable[tuple[str, str]] = ()) -> str:
    """A message safe to show anyone: the server's folders named, not spelled out; capped."""
    for path, name in sorted([*folders, *_folders()], key=lambda f: -len(f[0])):
        if path and len(path) > 1:
            message = message.replace(path.rstrip("/") + "/", name + ": ").replace(path, name)
    message = _ABSOLUTE.sub("…", message)  # any other absolute path (a file outside those folders)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 1] + "…"
    return message


_ABSOLUTE = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]*")


# ---- the checks ------------------------------------------------------------------------

class Missing(ValueError):
    """A required input was not given."""


def _finite_number(name: str, value: Any) -> float | int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number, got {shown(value)}")
    if isinstance(value, str):
        try:
            value = float(value.strip()) if not value.strip().lstrip("+-").isdigit() else int(value.strip())
        except (ValueError, OverflowError):
            raise ValueError(f"{name} must be a number, got {shown(value)}") from None
    if not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def number(name: str, value: Any, limit: str | None = None, *, integer: bool | None = None,
           bounds: tuple[float, float] | None = None) -> int | float:
    """`value` as a bounded number (an int where `integer`), or a ValueError naming `name`."""
    key = limit or name
    lo, hi = bounds or LIMITS[key]
    value = _finite_number(name, value)
    if integer if integer is not None else key in INTS:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{name} must be a whole number, got {shown(value)}")
            value = int(value)
    if (value <= lo if key in OPEN_LOW else value < lo) or value > hi:
        span = f"above {lo:g} and at most {hi:g}" if key in OPEN_LOW else f"between {lo:g} and {hi:g}"
        if isinstance(lo, int) and isinstance(hi, int):
            span = f"between {lo} and {hi}"
        raise ValueError(f"{name}={shown(value, 30)} is out of range: it must be {span}")
    return value


def text(name: str, value: Any, max_chars: int, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise Missing(f"{name} is missing: give it as text")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {shown(value)}")
    if len(value) > max_chars:
        raise ValueError(f"{name} is {len(value):,} characters; the limit is {max_chars:,}")
    return value


def choice(name: str, value: Any, allowed: Iterable[str], *, default: str | None = None) -> str:
    allowed = tuple(allowed)
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} {shown(value)} is not one of: {', '.join(allowed)}"[:MAX_MESSAGE])
    return value


def model_key(value: Any) -> str:
    if value is None or value == "":
        raise Missing("no model is selected: pick one in the Model list at the top (or pass a key from /models)")
    if not isinstance(value, str):
        raise ValueError(f"the model key must be text such as 'bundled:demo' (see /models), got {shown(value)}")
    if len(value) > MAX_KEY_CHARS:
        raise ValueError(f"the model key is {len(value):,} characters long; the limit is {MAX_KEY_CHARS:,}")
    return value


def run_name(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"the run name must be text, got {shown(value)}")
    if len(value) > MAX_RUN_NAME:
        raise ValueError(f"the run name is {len(value):,} characters; the limit is {MAX_RUN_NAME}")
    return value


def flag(name: str, value: Any, default: bool = False) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {shown(value)}")
    return value


SETTINGS = ("kind", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "num_beams", "length_penalty")


def decode_columns(value: Any) -> list[dict]:
    """The /decode columns: 1–4 dicts of known settings, each number in its range."""
    if value is None:
        raise Missing('columns are missing: give a list such as [{"kind": "greedy"}]')
    if not isinstance(value, (list, tuple)):
        raise ValueError('columns must be a list of settings, e.g. [{"kind": "greedy"}, {"kind": "top_p", '
                         f'"top_p": 0.9}}], got {shown(value)}')
    lo, hi = LIMITS["columns"]
    if not lo <= len(value) <= hi:
        raise ValueError(f"give between {lo} and {hi} columns (got {len(value):,})")
    out = []
    for i, col in enumerate(value, 1):
        if col is None:
            col = {}
        if not isinstance(col, dict):
            raise ValueError(f'column {i} must be a dict of settings such as {{"kind": "greedy"}}, got {shown(col)}')
        col = dict(col)
        if "method" in col and "kind" not in col:
            col["kind"] = col.pop("method")
        unknown = [k for k in col if k not in SETTINGS]
        if unknown:
            names = ", ".join(shown(k, 30) for k in unknown[:3]) + (" …" if len(unknown) > 3 else "")
            raise ValueError(f"column {i}: unknown setting(s) {names}; known: {', '.join(SETTINGS)}")
        if col.get("kind") is not None and (not isinstance(col["kind"], str) or col["kind"] not in D.METHODS):
            raise ValueError(f"column {i}: unknown method {shown(col['kind'])}; choose one of: {', '.join(D.METHODS)}")
        for name in SETTINGS[1:]:
            if col.get(name) is not None:
                col[name] = number(name, col[name])
        out.append(col)
    return out


# ---- each endpoint's inputs, in order --------------------------------------------------

@dataclass(frozen=True)
class Input:
    name: str
    check: Callable[[Any], Any]


def _ins(*pairs) -> tuple[Input, ...]:
    return tuple(Input(n, c) for n, c in pairs)


ENDPOINTS: dict[str, tuple[Input, ...]] = {
    "model_info": _ins(("key", model_key)),
    "tokenize": _ins(("key", model_key),
                     ("text", lambda v: text("text", v, LIMITS["tokenize.text"][1])),
                     ("colour_by", lambda v: choice("colour_by", v, ("tokens", "surprise"), default="tokens"))),
    "embeddings": _ins(("key", model_key),
                       ("dims", lambda v: choice("dims", v, ("2D", "3D"), default="2D")),
                       ("search", lambda v: text("the search", v, LIMITS["embeddings.search"][1]))),
    "attention": _ins(("key", model_key),
                      ("text", lambda v: text("text", v, LIMITS["attention.text"][1], required=True)),
                      ("layer", lambda v: number("layer", 0 if v is None else v)),
                      ("head", lambda v: number("head", 0 if v is None else v)),
                      ("query", lambda v: number("query", -1 if v is None else v)),
                      ("view", lambda v: choice("view", v, ("grid", "head"), default="grid")),
                      ("aggregate", lambda v: choice("aggregate", v, A.AGGREGATES, default="head_mean")),
                      ("color_by", lambda v: choice("color_by", v, ("none", *A.STATS), default="none"))),
    "decode": _ins(("model", model_key),
                   ("prompt", lambda v: text("the prompt", v, LIMITS["decode.prompt"][1], required=True)),
                   ("columns", decode_columns),
                   ("max_new_tokens", lambda v: number("max_new_tokens", 40 if v is None else v)),
                   ("seed", lambda v: number("seed", 0 if v is None else v)),
                   ("trace", lambda v: flag("trace", v))),
    "train_status": _ins(("job", run_name)),
    "train_stop": _ins(("job", run_name)),
    "timeline": _ins(("run", lambda v: check_name(run_name(v))), ("text", lambda v: text("text", v, TL.MAX_TEXT_CHARS))),
}


def _train_inputs() -> tuple[Input, ...]:
    """/train_start: every setting of the job manager's table, plus its words."""
    lim = train_limits()

    def num(name):
        default = FORM[name]
        integer = isinstance(default, int) and not isinstance(default, bool)
        return lambda v: number(name, default if v is None else v, integer=integer, bounds=lim[name])

    def word(name):
        default = FORM[name]
        return lambda v: default if v is None else choice_free(name, v)

    order = ("corpus", "text", "tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "steps",
             "batch_size", "lr", "warmup", "weight_decay", "dropout", "optimizer", "seed", "device", "name",
             "eval_interval", "eval_batches", "snapshots")
    checks = {"text": lambda v: text("the pasted text", v, MAX_PASTED_CHARS), "name": run_name}
    return tuple(Input(n, checks.get(n) or (num(n) if n in lim else word(n))) for n in order)


def choice_free(name: str, value: Any) -> str:
    """A word whose allowed values the job manager checks (corpus, tokenizer, ...): text, short."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {shown(value)}")
    if len(value) > 100:
        raise ValueError(f"{name} {shown(value)} is not a known {name}")
    return value


def train_estimate_inputs() -> tuple[Input, ...]:
    """The Train tab's live estimate (a private event): the same checks, named as the boxes are."""
    lim = train_limits()
    labels = {"vocab_size": "BPE vocabulary size", "n_layer": "layers", "n_head": "heads", "n_embd": "width",
              "block_size": "block size", "batch_size": "batch size"}

    def num(name):
        def check(v):
            if v is None or v == "":
                raise Missing(f"the {labels[name]} box is empty: type a number")
            return number(labels[name], v, integer=True, bounds=lim[name])
        return check

    return (Input("corpus", lambda v: choice_free("corpus", v or "")),
            Input("text", lambda v: text("the pasted text", v, 10**7)),
            Input("tokenizer", lambda v: choice("tokenizer", v, ("char", "bpe"), default="char")),
            *(Input(n, num(n)) for n in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "batch_size")))


def inputs_of(endpoint: str) -> tuple[Input, ...]:
    if endpoint == "train_start":
        return _train_inputs()
    if endpoint == "train_estimate":
        return train_estimate_inputs()
    return ENDPOINTS[endpoint]


# ---- the wrapper -----------------------------------------------------------------------

def check_args(endpoint: str, fn: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Check and convert the inputs of `endpoint` wherever they sit in (args, kwargs); the
    handler's other parameters (states, event data, the request) pass as they are. An input
    not given at all is checked as None (its default, or a message saying it is missing)."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    args = list(args)
    for i, spec in enumerate(inputs_of(endpoint)):
        name = params[i].name if i < len(params) else None
        if i < len(args):
            args[i] = spec.check(args[i])
        elif name is not None and name in kwargs:
            kwargs[name] = spec.check(kwargs[name])
        else:
            value = spec.check(None)
            if name is not None:
                kwargs[name] = value
            elif i == len(args):
                args.append(value)
    return tuple(args), kwargs


def checked(endpoint: str, fn: Callable, *, folders: Iterable[tuple[str, str]] = (), notice: bool = False
            ) -> Callable:
    """`fn` behind the boundary: its inputs checked (`ENDPOINTS[endpoint]`), every `ValueError`
    (from here or from core) turned into a short `gr.Error` with no server folder in it, and
    any other exception into a message naming the endpoint (its traceback goes to the log).
    With `notice`, a bad input becomes the one output's text ("⚠️ ...") instead of an error.
    Generators (streamed handlers) are wrapped the same way."""
    folders = tuple(folders)
    label = f"/{endpoint}"

    def fail(e: Exception):
        if isinstance(e, gr.Error):  # already a message for people (escaped): scrub and cap it
            msg, escaped = clean_message(str(e.message), folders), True
        elif isinstance(e, ValueError):
            msg, escaped = clean_message(str(e), folders), False
        else:
            log.exception("%s failed", label)
            msg, escaped = f"{label} could not finish: an internal error ({type(e).__name__})", False
        if notice:
            return f"⚠️ {msg}"
        raise gr.Error(msg if escaped else html.escape(msg, quote=False), print_exception=False) from None

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                args, kwargs = check_args(endpoint, fn, args, kwargs)
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - the boundary: nothing anonymous leaves
                out = fail(e)
                if out is not None:
                    yield out
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            args, kwargs = check_args(endpoint, fn, args, kwargs)
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the boundary: nothing anonymous leaves
            return fail(e)

    return wrapper


def boundary(ctx) -> Callable:
    """`checked` with this app's folders: `api = boundary(ctx)`, then `api("tokenize", fn)`."""
    folders = server_folders(ctx)
    return lambda endpoint, fn, **kw: checked(endpoint, fn, folders=folders, **kw)


def server_folders(ctx) -> list[tuple[str, str]]:
    """The app's own folders, by the names messages use for them."""
    out = []
    for attr, name in (("uploads_dir", "the uploads folder"), ("runs_dir", "the runs folder"),
                       ("cache_dir", "the cache folder"), ("assets_dir", "the assets folder")):
        p = getattr(ctx, attr, None)
        if p is not None:
            out.append((str(p), name))
    return out


def install(demo) -> None:
    """Let the boundary see inputs a caller left out: Gradio refuses a call with too few inputs
    before any handler runs, with no message for the caller; here the missing ones arrive as
    None, which `checked` turns into the input's default or a message naming it. Only `demo`
    is changed (an instance attribute), not Gradio."""
    original = demo.validate_inputs

    def validate_inputs(block_fn, inputs):
        missing = len(block_fn.inputs) - len(inputs)
        if missing > 0 and isinstance(inputs, list):
            inputs.extend([None] * missing)
        return original(block_fn, inputs)

    demo.validate_inputs = validate_inputs


def crash_line(stderr_tail: str) -> str:
    """A crashed process's last words for a visitor: the exception's line of its traceback, with
    any path cut out (the traceback itself names the server's files)."""
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return clean_message(line)[:200]
