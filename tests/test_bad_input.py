"""The bad-input catalogue (issue 8), typed and sent inputs: every bad input gets its own
clear message, the server keeps serving, and nothing already saved is lost.

One real server of this module's own (a runs dir with a saved run, an earlier upload; see
tests/bad_input_server.py) is driven through `gradio_client` where the client can carry the
input, and through raw HTTP where it cannot: gradio_client refuses to encode a lone surrogate
(UnicodeEncodeError) or NaN / infinity (httpx's strict JSON), yet JSON carries them
(`"\\ud800"`, `NaN`), so a script or another client can send them. Covered here: text (huge,
lone surrogates, control and invisible characters, longer than the block), out-of-range numbers
and wrong types endpoint by endpoint, and the Train tab (bad training files, a second start,
downloads), whose private handlers are called as Python functions of the built app. Broken
checkpoint uploads are tests/test_bad_uploads.py.
"""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import pytest

from tests.bad_input_server import K, serve_with_saved_things, still_serving

CONTROL = "a\u200db\u202ec\x00d\x07e\ufeff\u2066f\u200bg\r\n\x1b[31mh"  # ZWJ, RTL override, NUL, BEL, BOM, ...
ATTN_REST = (0, 0, -1, "grid", "head_mean", "none")  # layer, head, query, view, aggregate, colour-by
GREEDY = [{"kind": "greedy"}]
HI = "hello there"


def handler(demo, name: str):
    """A private event's function by name (private events have no API route)."""
    fns = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]
    assert len(fns) == 1, f"expected one event running {name}, found {len(fns)}"
    return fns[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_bpe_ckpt):
    with serve_with_saved_things(tmp_path_factory.mktemp("bad-input"), tiny_bpe_ckpt) as served:
        yield served


def app_error(env, match: str, *args, api: str, **kwargs):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=match) as e:
        env.client.predict(*args, api_name=api, **kwargs)
    return str(e.value)


def raw_call(url: str, api: str, body: str) -> tuple[str, object]:
    """POST a hand-written JSON body to an endpoint; ("complete", outputs) or ("error", message)."""
    r = httpx.post(f"{url}gradio_api/call/{api}", content=body.encode("ascii"),
                   headers={"content-type": "application/json"}, timeout=30)
    r.raise_for_status()
    r = httpx.get(f"{url}gradio_api/call/{api}/{r.json()['event_id']}", timeout=60)
    event = data = None
    for line in r.text.splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
    return event, (data.get("error") if event == "error" and isinstance(data, dict) else data)


# =============================================================================================
# Text: a million characters, a lone surrogate, control and invisible characters, too long


def test_a_million_characters_is_refused_by_every_text_endpoint(env):
    big = "x" * 1_000_000
    app_error(env, r"text is 1,000,000 characters; the limit is 20,000", K, big, "tokens", api="/tokenize")
    app_error(env, r"the search is 1,000,000 characters; the limit is 100", K, "2D", big, api="/embeddings")
    app_error(env, r"text is 1,000,000 characters; the limit is 50,000", K, big, *ATTN_REST, api="/attention")
    app_error(env, r"the prompt is 1,000,000 characters; the limit is 2,000", K, big, GREEDY, 4, 0, False,
              api="/decode")
    still_serving(env)


def test_a_lone_surrogate_gets_a_message_not_a_crash(env):
    # gradio_client cannot even send it (it encodes the request as UTF-8)...
    with pytest.raises(UnicodeEncodeError):
        env.client.predict(K, "a\ud800b", "tokens", api_name="/tokenize")
    # ...but JSON carries it as an escape, so any other client can: each endpoint names it
    lone = r"a lone surrogate U\+D800"
    for api, body in [
        ("tokenize", '["%s", "a\\ud800b", "tokens"]' % K),
        ("attention", '["%s", "a\\ud800b", 0, 0, -1, "grid", "head_mean", "none"]' % K),
        ("embeddings", '["%s", "2D", "\\ud800"]' % K),
        ("decode", '["%s", "a\\ud800b", [{"kind": "greedy"}], 4, 0, false]' % K),
    ]:
        event, msg = raw_call(env.url, api, '{"data": %s}' % body)
        assert event == "error" and msg and re.search(lone, msg), (api, event, msg)
    still_serving(env)


def test_control_and_invisible_characters_are_tokens_like_any_other(env):
    d, spans, counts, ids_text, *_ = env.client.predict(K, CONTROL, "tokens", api_name="/tokenize")
    assert d["text"] == CONTROL and d["counts"]["chars"] == len(CONTROL)
    tok = env.ctx.catalog.get(K).tokenizer
    assert tok.decode(d["ids"]) == CONTROL  # nothing dropped or rewritten
    assert d["groups"][0]["start"] == 0 and d["groups"][-1]["end"] == len(CONTROL)
    shown = "".join(g["shown"] for g in d["groups"])
    assert not any(ch in shown for ch in "\x00\x07\x1b\u202e\u2066"), "control characters must be shown visibly"
    out = env.client.predict(K, CONTROL, *ATTN_REST, api_name="/attention")
    assert out[0] == "grid" and f"**{len(tok.encode(CONTROL))} tokens**" in out[3]
    fig, summary, _ = env.client.predict(K, "2D", "\x00\u202e", api_name="/embeddings")
    assert "no token contains" in summary or "tokens contain" in summary
    res = env.client.predict(K, CONTROL, GREEDY, 3, 0, False, api_name="/decode")
    assert len(res["columns"][0]["ids"]) == 3
    still_serving(env)


def test_private_text_boxes_refuse_the_same_inputs(env):
    """Boxes with no public endpoint, called as the page calls them: the folder and Hub boxes
    (Model tab), the contextual text and the neighbour expression (Embeddings tab)."""
    import gradio as gr

    catalog = env.ctx.catalog
    with pytest.raises(ValueError, match=r"that path is 1,000,000 characters long; the limit is 1,000"):
        catalog.add_path("x" * 1_000_000)
    with pytest.raises(ValueError, match=r"that model name is 1,000,000 characters long; the limit is 1,000"):
        catalog.add_hub("x" * 1_000_000)
    with pytest.raises(ValueError, match=r"no such folder: .*etcpasswd"):  # control characters are dropped
        catalog.add_path("\x00\u202eetc\x07passwd")
    with pytest.raises(ValueError, match=r"is not a Hugging Face model name"):
        catalog.add_hub("gpt2\ud800")
    with pytest.raises(ValueError, match=r"is not a Hugging Face model name"):
        catalog.add_hub("../../etc/passwd")
    contextual, neighbours = handler(env.demo, "contextual"), handler(env.demo, "neighbours")
    with pytest.raises(gr.Error, match=r"the text is 1,000,000 characters; at most 2,000 are accepted"):
        contextual(K, "x" * 1_000_000, 1)
    with pytest.raises(gr.Error, match=r"a lone surrogate U\+D800"):
        contextual(K, "a\ud800b", 1)
    with pytest.raises(gr.Error, match=r"the text is \d+ tokens; this view takes at most 64"):
        contextual(K, "Speak, speak. " * 100, 1)
    *_, note, _ = contextual(K, CONTROL, 10**9)  # a huge layer is clamped to the last one
    assert "tokens through 2 blocks" in note
    # a neighbour query is a side action (issue 16): a bad one is a warning and leaves the table as it was
    for bad in ("x" * 1_000_000, "\u200b"):  # too long; a ZWSP (3 tokens)
        assert all(isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1
                   for v in neighbours(K, bad, 10))
    still_serving(env)


def test_text_longer_than_the_block_size(env):
    block = env.ctx.catalog.get(K).config.block_size
    long = "Speak, speak. " * 100  # 1,400 characters: far more tokens than the 64-token block
    out = env.client.predict(K, long, *ATTN_REST, api_name="/attention")
    assert f"only the first {block} are shown" in out[3]
    d, *_ = env.client.predict(K, long, "surprise", api_name="/tokenize")
    assert len(d["ids"]) > block and len(d["surprise"]) == len(d["ids"])
    assert all(s is None or math.isfinite(s) for s in d["surprise"])
    res = env.client.predict(K, long, GREEDY, 8, 0, False, api_name="/decode")
    assert res["prompt_tokens"] == block and len(res["columns"][0]["ids"]) == 8  # the last block's tokens
    still_serving(env)


# =============================================================================================
# Out-of-range numbers (and wrong types) through the API, endpoint by endpoint


NUMBER_CASES = [
    ("/attention", (K, HI, -1, 0, -1, "grid", "head_mean", "none"),
     r"layer=-1 is out of range: it must be between 0 and 255"),
    ("/attention", (K, HI, 0, 10**12, -1, "grid", "head_mean", "none"),
     r"head=1000000000000 is out of range: it must be between 0 and 255"),
    ("/attention", (K, HI, 0, 7, -1, "grid", "head_mean", "none"),
     r"head 7 is out of range: this model has heads 0\.\.3"),  # within any model's range: this model's
    ("/attention", (K, HI, "two", 0, -1, "grid", "head_mean", "none"), r"layer must be a number, got 'two'"),
    ("/attention", (K, HI, 0.5, 0, -1, "grid", "head_mean", "none"), r"layer must be a whole number, got 0\.5"),
    ("/attention", (K, HI, 0, 0, 10**30, "grid", "head_mean", "none"), r"query=1+0+… is out of range: it must be between"),
    ("/attention", (K, HI, 0, 0, "last", "grid", "head_mean", "none"), r"query must be a number, got 'last'"),
    ("/attention", (K, HI, 0, 0, -1, "huge", "head_mean", "none"), r"view 'huge' is not one of: grid, head"),
    ("/attention", (K, HI, 0, 0, -1, "grid", "head_mean", "bogus"), r"color_by 'bogus' is not one of: none, "),
    ("/decode", (K, "hi", GREEDY, 0, 0, False), r"max_new_tokens=0 is out of range: it must be between 1 and 256"),
    ("/decode", (K, "hi", GREEDY, 10**9, 0, False), r"max_new_tokens=1000000000 is out of range: it must be between 1 and 256"),
    ("/decode", (K, "hi", GREEDY, "many", 0, False), r"max_new_tokens.*'many'"),
    ("/decode", (K, "hi", [], 4, 0, False), r"give between 1 and 4 columns \(got 0\)"),
    ("/decode", (K, "hi", GREEDY * 5, 4, 0, False), r"give between 1 and 4 columns \(got 5\)"),
    ("/decode", (K, "hi", [{"kind": "bogus"}], 4, 0, False), r"column 1: unknown method 'bogus'; choose one of: greedy, sample"),
    ("/decode", (K, "hi", [{"kind": "sample", "temperature": -1}], 4, 0, False),
     r"temperature=-1 is out of range: it must be between 0 and 100"),
    ("/decode", (K, "hi", [{"kind": "top_k", "top_k": -5}], 4, 0, False), r"top_k=-5 is out of range: it must be between 1 and 1000000"),
    ("/decode", (K, "hi", [{"kind": "top_p", "top_p": 2}], 4, 0, False), r"top_p=2 is out of range: it must be above 0 and at most 1"),
    ("/decode", (K, "hi", [{"kind": "beam", "num_beams": 100}], 4, 0, False),
     r"num_beams=100 is out of range: it must be between 1 and 16"),
    ("/decode", (K, "", GREEDY, 4, 0, False), r"the prompt is empty"),
    ("/decode", (K, "hi", [{"kind": "top_k", "top_k": "x"}], 4, 0, False), r"top_k.*'x'"),
    ("/decode", (K, "hi", [{"kind": "sample", "temperature": "hot"}], 4, 0, False),
                 r"temperature.*'hot'"),
    ("/decode", (K, "hi", "greedy", 4, 0, False), r"columns must be a list"),
    ("/decode", (K, "hi", ["greedy"], 4, 0, False), r"column 1 must be a dict"),
    ("/decode", (K, "hi", GREEDY, 4, 2**70, False), r"seed=\d+ is out of range"),
    ("/decode", (K, "hi", [{"kind": "greedy", "evil": 1}], 4, 0, False), r"column 1: unknown setting\(s\) 'evil'; known: kind, "),
    ("/decode", (K, "hi", GREEDY, 4.5, 0, False), r"max_new_tokens must be a whole number, got 4\.5"),
    ("/decode", (K, "hi", GREEDY, 4, -1, False), r"seed=-1 is out of range"),
    ("/decode", (K, "hi", GREEDY, 4, "seed", False), r"seed must be a number, got 'seed'"),
    ("/train_start", {"steps": 0}, r"steps=0 is out of range: it must be between 1 and 100000"),
    ("/train_start", {"steps": 10**12}, r"steps=1000000000000 is out of range"),
    ("/train_start", {"n_layer": -3}, r"n_layer=-3 is out of range"),
    ("/train_start", {"n_layer": "two"}, r"n_layer must be a number, got 'two'"),
    ("/train_start", {"steps": 2.5}, r"steps must be a whole number, got 2\.5"),
    ("/train_start", {"lr": 5.0}, r"lr=5\.0 is out of range"),
    ("/train_start", {"dropout": 1.5}, r"dropout=1\.5 is out of range"),
    ("/train_start", {"n_embd": 100, "n_head": 3}, r"n_embd=100 must be divisible by heads n_head=3"),
    ("/train_start", {"batch_size": 10**6}, r"batch_size=1000000 is out of range"),
    ("/train_start", {"corpus": "bogus"}, r"corpus 'bogus' is unknown"),
    ("/train_start", {"name": "../evil"}, r"run name '\.\./evil' is not allowed"),
    ("/train_start", {"name": "kept", "corpus": "counting", "n_layer": 1, "n_head": 1, "n_embd": 8, "steps": 5,
                       "warmup": 0},
     r"a run named 'kept' already exists: pick another name"),  # a saved run is never overwritten
    ("/train_status", ("../../etc",), r"run name '\.\./\.\./etc' is not allowed"),
    ("/train_status", ("nope",), r"there is no run named 'nope'"),
    ("/train_stop", ("nope",), r"there is no run named 'nope'"),
    ("/model_info", ("../../etc/passwd",), r"unknown model '\.\./\.\./etc/passwd'"),
    ("/model_info", ("path:/etc",), r"unknown model|not a checkpoint|no such"),
    ("/tokenize", (K, "hi", "bogus"), r"colour_by 'bogus' is not one of: tokens, surprise"),
    ("/tokenize", ("", "hi", "tokens"), r"no model is selected"),
    ("/embeddings", (K, "4D", ""), r"dims '4D' is not one of: 2D, 3D"),
    ("/embeddings", ("run:nope", "2D", ""), r"unknown model 'run:nope'"),
]


@pytest.mark.parametrize("api, args, match", NUMBER_CASES,
                         ids=[f"{getattr(c, 'values', c)[0]}-{i}" for i, c in enumerate(NUMBER_CASES)])
def test_out_of_range_and_wrong_types_through_the_api(env, api, args, match):
    if isinstance(args, dict):
        app_error(env, match, api=api, **args)  # keyword arguments of /train_start
    else:
        app_error(env, match, *args, api=api)
    assert env.ctx.jobs.current() is None or env.ctx.jobs.status()["state"] != "running"  # nothing was started
    still_serving(env)


# what gradio_client refuses to send (strict JSON), written by hand; /train_start takes all 20 inputs
TRAIN_ROW = '["counting", "", "char", 512, 2, 2, 64, 64, 100, 8, 0.001, 0, 0.1, 0.0, "adamw", 0, "cpu", "", 0, 5]'
RAW_CASES = [
    ("attention", '["%s", "hello", NaN, 0, -1, "grid", "head_mean", "none"]' % K, r"layer must be a finite number, got nan"),
    ("attention", '["%s", "hello", Infinity, 0, -1, "grid", "head_mean", "none"]' % K,
     r"layer must be a finite number, got inf"),
    ("attention", '["%s", "hello", 0, -Infinity, -1, "grid", "head_mean", "none"]' % K,
     r"head must be a finite number, got -inf"),
    ("attention", '["%s", "hello", 0, 0, NaN, "grid", "head_mean", "none"]' % K, r"query must be a finite number, got nan"),
    ("attention", '["%s", "hello", 0, 0, "x", "grid", "head_mean", "none"]' % K, r"query must be a number, got 'x'"),
    ("decode", '["%s", "hi", [{"kind": "greedy"}], NaN, 0, false]' % K, r"max_new_tokens.*nan"),
    ("decode", '["%s", "hi", [{"kind": "greedy"}], Infinity, 0, false]' % K, r"max_new_tokens.*inf"),
    ("decode", '["%s", "hi", [{"kind": "sample", "temperature": NaN}], 4, 0, false]' % K, r"temperature must be a finite number, got nan"),
    ("decode", '["%s", "hi", [{"kind": "greedy"}], 4, Infinity, false]' % K, r"seed.*inf"),
    ("train_start", TRAIN_ROW.replace("0.001", "NaN"), r"lr must be a finite number, got nan"),
    ("train_start", TRAIN_ROW.replace('512, 2,', "512, Infinity,"), r"n_layer must be a finite number, got inf"),
    ("train_start", TRAIN_ROW.replace("0.1, 0.0", "0.1, -Infinity"), r"dropout must be a finite number, got -inf"),
]


@pytest.mark.parametrize("api, body, match", RAW_CASES,
                         ids=[f"{getattr(c, 'values', c)[0]}-{i}" for i, c in enumerate(RAW_CASES)])
def test_nan_infinity_and_strings_where_numbers_belong(env, api, body, match):
    event, msg = raw_call(env.url, api, '{"data": %s}' % body)
    assert event == "error" and msg and re.search(match, msg), f"/{api} answered {event}: {msg!r}"
    still_serving(env)


# =============================================================================================
# Training: bad files, a second start, downloads of runs that do not exist or climb out


def _start_args(corpus: str, text: str = "", file: str | None = None, **over):
    """The Train tab's `start` handler arguments, from the job manager's defaults."""
    from app.jobs import FORM

    d = {**FORM, **over}
    return (corpus, text, file, d["tokenizer"], d["vocab_size"], "custom", d["n_layer"], d["n_head"], d["n_embd"],
            d["block_size"], d["steps"], d["batch_size"], d["lr"], d["warmup"], d["weight_decay"], d["dropout"],
            d["optimizer"], d["seed"], d["device"], d.get("name", ""))


def test_bad_training_files_are_refused_by_the_train_tab(env, tmp_path):
    import gradio as gr

    from core.data import MAX_UPLOAD_BYTES

    start = handler(env.demo, "start")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café au lait, naïve façade. ".encode("latin-1") * 20)
    small = tmp_path / "small.txt"
    small.write_text("too short", encoding="utf-8")
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:  # sparse: takes no disk space
        f.truncate(MAX_UPLOAD_BYTES + 1)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    for path, match in [(latin1, r"not (valid )?UTF-8"), (small, r"9 characters|at least 100"),
                        (huge, r"20\.0 MiB|20 MiB|limit"), (empty, r"empty"),
                        (None, r"needs an uploaded \.txt file")]:
        with pytest.raises(gr.Error, match=match):
            start(*_start_args("file", file=None if path is None else str(path)))
    with pytest.raises(gr.Error, match=r"at least 100|characters"):
        start(*_start_args("text", text="short"))
    assert env.ctx.jobs.current() is None
    assert sorted(p.name for p in env.ctx.runs_dir.iterdir()) == ["kept"]  # no half-made run folder
    still_serving(env)


def test_a_second_training_start_is_refused_and_the_first_keeps_going(env):
    tiny = dict(corpus="counting", tokenizer="char", n_layer=1, n_head=1, n_embd=8, block_size=8, steps=100_000,
                batch_size=1, warmup=0, eval_interval=0)
    first = env.client.predict(api_name="/train_start", **tiny)
    try:
        msg = app_error(env, r"a training run is already going on this server: '" + first["job"] + "'",
                        api="/train_start", **tiny)
        assert "Stop it, or wait" in msg
        assert env.client.predict(first["job"], api_name="/train_status")["state"] in ("starting", "running")
    finally:
        env.client.predict(first["job"], api_name="/train_stop")
    for _ in range(300):
        if env.client.predict(first["job"], api_name="/train_status")["state"] not in ("starting", "running",
                                                                                        "stopping"):
            break
        time.sleep(0.1)
    assert env.client.predict(first["job"], api_name="/train_status")["state"] in ("stopped", "done", "failed",
                                                                                   "interrupted")
    still_serving(env)


def test_downloads_of_missing_runs_and_paths_out_of_the_runs_folder(env):
    import gradio as gr

    download = handler(env.demo, "download")
    for name, match in [("nope", r"there is no run named 'nope'"),
                        ("../kept", r"run name '\.\./kept' is not allowed"),
                        ("/etc", r"run name '/etc' is not allowed"),
                        ("kept/../../x", r"is not allowed"),
                        ("..", r"is not allowed")]:
        with pytest.raises(gr.Error, match=match):
            download(name)
    # Gradio's file route serves only files the app handed out: not the runs folder, not the disk
    for path in ("/etc/passwd", str(env.kept / "model.safetensors"), "../../../../etc/passwd"):
        r = httpx.get(f"{env.url}gradio_api/file={path}", timeout=10)
        assert r.status_code in (403, 404), (path, r.status_code)
    still_serving(env)
