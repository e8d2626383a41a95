"""Figure builders: pure functions, data in, a new `Fig` out (testable without a browser).

One submodule per tab (`app.figures.model`, `app.figures.tokens`, ...). They take numpy
arrays, lists and strings (user text goes into plotly text fields as data, never HTML) and
never touch gradio, models or files.

A `Fig` is plain trace dicts and a plain layout dict, serialised straight to the JSON that
`gr.Plot` sends to plotly.js (`Fig.to_json`): building a `go.Figure` (even unvalidated) and
its `to_json` cost most of a request's time under load. What plotly.py used to do is done
here instead: titles are written `dict(text=...)` (plotly.js 3 reads no string titles),
properties are nested dicts (no `marker_color` shorthands), named colour scales are
expanded to plotly.py's own stops by `colorscale` (plotly.js has its own scales under the
same names, some reversed), and `Fig.to_json` writes what plotly.py's `to_json` writes:
the template expanded, numpy arrays as base64 typed arrays, NaN and ±inf as null.
`Fig.to_plotly()` gives a real, validated `go.Figure` for anyone who wants one.
"""

from __future__ import annotations

import base64
import re
from functools import cache, lru_cache
from typing import Any

import numpy as np
import orjson
from plotly.colors import get_colorscale

_AXIS = re.compile(r"[xy]axis\d*")


class Fig:
    """A figure as plotly.js reads it: `data` (trace dicts, each with its `type`) and `layout`
    (a dict). `gr.Plot` sends `to_json()`; `fig.data[0].z`, `fig.layout.title.text` read it
    like a `go.Figure` (an unset property is None, a list reads as a tuple)."""

    __slots__ = ("_data", "_layout")

    def __init__(self, data: list[dict], layout: dict):
        self._data = list(data)
        self._layout = layout

    @property
    def data(self) -> tuple[_Props, ...]:
        return tuple(_Props(t) for t in self._data)

    @property
    def layout(self) -> _Props:
        return _Props(self._layout)

    def to_dict(self) -> dict:
        """{"data": [...], "layout": {...}}, the builder's own dicts (arrays stay numpy)."""
        return {"data": self._data, "layout": self._layout}

    def to_plotly(self):
        """A validated `go.Figure` of the same data and layout."""
        import plotly.graph_objects as go

        return go.Figure(data=self._data, layout=self._layout)

    def to_json(self) -> str:
        """What `go.Figure(data, layout).to_json()` writes, without building one: the
        layout's template expanded (plotly's default one when unset), numpy arrays in dicts
        as base64 typed arrays {"dtype", "bdata", "shape"}, NaN and ±inf as null, `<` and `>`
        escaped (see `_SWAP`)."""
        layout = _wire(self._layout)
        template = _template(self._layout.get("template"))
        if template is not None:
            layout["template"] = template
        text = orjson.dumps({"data": [_wire(t) for t in self._data], "layout": layout}, default=_default,
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
        for raw, escaped in _SWAP:
            if raw in text:
                text = text.replace(raw, escaped)
        return text

    def __repr__(self) -> str:
        return f"Fig({len(self._data)} traces, title={_title(self._layout)!r})"


class _Props:
    """Read-only attribute access to a trace or layout dict, the way plotly's objects read."""

    __slots__ = ("_d",)

    def __init__(self, d: dict):
        self._d = d

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # no plotly property does; keeps copy and pickle off the dict
            raise AttributeError(name)
        return _read(self._d.get(name))

    def __getitem__(self, key: str) -> Any:
        return _read(self._d[key])

    def __contains__(self, key: str) -> bool:
        return key in self._d

    def __eq__(self, other: object) -> bool:
        return self._d == (other._d if isinstance(other, _Props) else other)

    __hash__ = None  # type: ignore[assignment]

    def to_plotly_json(self) -> dict:
        return self._d

    def __repr__(self) -> str:
        return f"_Props({self._d!r})"


def _read(v: Any) -> Any:
    if isinstance(v, dict):
        return _Props(v)
    if isinstance(v, (list, tuple)):
        return tuple(_read(x) for x in v)
    return v


def _title(layout: dict) -> str | None:
    t = layout.get("title")
    return t.get("text") if isinstance(t, dict) else t


# --------------------------------------------------------------------------------------
# Serialising as plotly.py does (`plotly.io.to_json` with its orjson engine)

# plotly.py escapes `<` and `>` so that the JSON is safe inside a <script> (`plotly.io._json._safe`);
# it also escapes `/`, which adds nothing once `<` is escaped and costs 5 bytes per `/` of base64
_SWAP = (("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
_SKIP = frozenset(("geojson", "layer", "layers", "range"))  # never typed arrays (`is_skipped_key`)
_SHORT = {np.dtype(name): short for name, short in (  # plotly.js's typed arrays, by numpy dtype
    ("int8", "i1"), ("uint8", "u1"), ("int16", "i2"), ("uint16", "u2"), ("int32", "i4"), ("uint32", "u4"),
    ("float32", "f4"), ("float64", "f8"))}
_PLAIN = frozenset((str, int, float, bool, type(None)))


def _wire(d: dict) -> dict:
    """`d` as plotly.py's `to_dict` sends it: a numpy array that is a dict's value becomes a
    typed array (not under `_SKIP` keys, nor inside a list). A copy where anything changed,
    `d` itself otherwise."""
    out = None
    for k, v in d.items():
        if type(v) in _PLAIN or k in _SKIP:
            continue
        if isinstance(v, np.ndarray):
            w = _typed(v)
        elif isinstance(v, dict):
            w = _wire(v)
        elif isinstance(v, (list, tuple)):
            w = _wire_list(v)
        else:
            continue
        if w is not v:
            if out is None:
                out = dict(d)
            out[k] = w
    return d if out is None else out


def _wire_list(seq: list | tuple) -> list | tuple:
    """The dicts in a list as `_wire` sends them (arrays directly in a list stay arrays)."""
    if not any(issubclass(t, (dict, list, tuple)) for t in set(map(type, seq))):
        return seq  # values only (numbers, strings, arrays): orjson writes them
    out = [_wire(v) if isinstance(v, dict) else _wire_list(v) if isinstance(v, (list, tuple)) else v for v in seq]
    return seq if all(w is v for w, v in zip(out, seq)) else out


def _typed(v: np.ndarray) -> Any:
    """plotly.py's `to_typed_array_spec`: {"dtype", "bdata", "shape"} for numeric arrays
    (int64 narrowed when it fits), the array itself (written as a list) otherwise."""
    if v.size == 0 or v.ndim == 0 or v.dtype.kind not in "uif":
        return v
    if v.dtype == np.int64 or v.dtype == np.uint64:
        lo, hi = int(v.min()), int(v.max())
        kinds = ("int8", "int16", "int32") if v.dtype == np.int64 else ("uint8", "uint16", "uint32")
        for kind in kinds:
            info = np.iinfo(kind)
            if info.min <= lo and hi <= info.max:
                v = v.astype(kind)
                break
    short = _SHORT.get(v.dtype)
    if short is None:
        return v
    spec = {"dtype": short, "bdata": base64.b64encode(np.ascontiguousarray(v)).decode("ascii")}
    if v.ndim > 1:
        spec["shape"] = str(v.shape)[1:-1]
    return spec


def _default(o: Any) -> Any:
    """What orjson cannot write itself: other numpy arrays and scalars as lists and numbers."""
    if isinstance(o, (np.ndarray, np.generic)):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _template(template: Any) -> Any:
    """The layout's template as plotly.py sends it: a name (or unset: plotly's default
    template) becomes that template's dict."""
    if isinstance(template, dict):
        return template
    import plotly.io as pio

    if template is None:
        template = pio.templates.default
        if template is None:
            return None
    if not isinstance(template, str):
        return template.to_plotly_json()
    return _named_template(template)


@lru_cache(maxsize=8)
def _named_template(name: str) -> dict:
    import plotly.io as pio

    return pio.templates[name].to_plotly_json()


def layout_dict(title: str, height: int, **kw) -> dict:
    """The layout the tabs' figures share (left-aligned title, tight margins, transparent
    background, system font), as a plain dict; `kw` adds or overrides keys."""
    return {**dict(title=dict(text=title, x=0.0, xanchor="left", font=dict(size=14)), height=height,
                   margin=dict(l=10, r=10, t=50, b=10), paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                   template="none", font=dict(family="system-ui, sans-serif", size=12)), **kw}


def figure(traces: list[dict], title: str, height: int, **kw) -> Fig:
    """A figure with the shared layout (`layout_dict`), from plain trace dicts (each with its
    `type`). Every axis in `kw` (xaxis, yaxis, xaxis2, ...) and
    the first x and y axes make room for their labels (`automargin`)."""
    layout = layout_dict(title, height, **kw)
    for name in dict.fromkeys(["xaxis", "yaxis", *(k for k in layout if _AXIS.fullmatch(k))]):
        layout[name] = {**(layout.get(name) or {}), "automargin": True}
    return Fig(traces, layout)


@cache
def _scale(name: str) -> tuple:
    return tuple(tuple(stop) for stop in get_colorscale(name))


def colorscale(scale) -> list:
    """A colour scale as [[position, colour], ...]: a name ("Viridis", "Greens") becomes
    plotly.py's stops, as validation made it; a list is returned as it is."""
    if isinstance(scale, str):
        return [list(stop) for stop in _scale(scale)]
    return scale
