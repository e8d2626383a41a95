"""Many people at once: a small load test against a real server, and the queue's limits.

The load test reuses bench/load.py's simulated users and answer checks (20 users x 3
requests, tokenize + attention, and decode where the app has it): no errors, every answer
right. Speed is the benchmark's business (bench/load.py), not asserted here.
"""

from __future__ import annotations

import importlib.util
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ROOT, running_app


@pytest.fixture(scope="module")
def load():
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _endpoints(client) -> set[str]:
    return set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def test_twenty_users_get_right_answers(app_url, tiny_bpe_ckpt, load):
    clients = load.make_clients(app_url, 20)
    wanted = ("tokenize", "attention", "decode")
    have = _endpoints(clients[0])
    endpoints = tuple(e for e in wanted if f"/{e}" in have)
    assert endpoints[:2] == ("tokenize", "attention")
    key = next(m["key"] for m in clients[0].predict(api_name="/models") if m["source"] == "bundled")
    checker = load.Checker(tiny_bpe_ckpt, decode_tokens=8)
    args = types.SimpleNamespace(requests=3, duration=60.0, think=0.05, decode_tokens=8)

    res = load.run_users(clients, key, checker, args, seed=0, endpoints=endpoints)

    assert res["errors"] == 0, res["error_samples"]
    assert res["wrong"] == 0, res["wrong_samples"]
    assert res["requests"] == 60
    assert sum(v["n"] for v in res["per_endpoint"].values()) == 60
    if "decode" in endpoints:
        assert res["per_endpoint"]["decode"]["n"] == 20


def test_checker_catches_a_wrong_answer(tiny_bpe_ckpt, load):
    """The load test's checks can fail: wrong ids, a wrong token count, a different continuation."""
    checker = load.Checker(tiny_bpe_ckpt, decode_tokens=4)
    text = "Speak, speak."
    ids = checker.tok.encode(text)
    assert checker.tokenize(text, [{"ids": ids}]) is None
    assert "encode" in checker.tokenize(text, [{"ids": ids[:-1]}])
    good = {"n_tokens_in_text": len(ids), "n_tokens": len(ids), "tokens": ["x"] * len(ids),
            "weights": [1.0] + [0.0] * (len(ids) - 1)}
    assert checker.attention(text, [good]) is None
    assert checker.attention(text, [{**good, "n_tokens_in_text": len(ids) + 1}]) is not None
    greedy = checker.greedy(text)
    assert 1 <= len(greedy) <= 4
    cols = [{"ids": greedy}, {"ids": greedy}]
    assert checker.decode(text, {"columns": cols}) is None
    assert checker.decode(text, {"columns": [{"ids": [(greedy[0] + 1) % 50]}, cols[1]]}) is not None


def test_queue_settings_come_from_the_environment(app_ctx, monkeypatch):
    from app import build_app, launch_kwargs
    from app.ui import queue_settings

    monkeypatch.setenv("GLASSBOX_QUEUE_SIZE", "7")
    monkeypatch.setenv("GLASSBOX_CONCURRENCY", "3")
    monkeypatch.setenv("GLASSBOX_MAX_THREADS", "12")
    monkeypatch.setenv("GLASSBOX_STATE_SESSIONS", "99")
    demo = build_app(app_ctx)
    assert demo._queue.max_size == 7
    assert demo._queue.default_concurrency_limit == 3
    kw = launch_kwargs(app_ctx)
    assert kw["max_threads"] == 12 and kw["state_session_capacity"] == 99

    # heavy events share small pools of their own; tokenize never waits behind them
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    for name in ("attention", "decode", "embeddings", "model_info"):
        if name in fns:
            assert isinstance(fns[name].concurrency_limit, int) and 1 <= fns[name].concurrency_limit <= 4, name
    tok = fns["tokenize"]
    assert tok.concurrency_limit is None or tok.concurrency_limit >= 2
    heavy_ids = {fns[n].concurrency_id for n in ("attention", "decode", "embeddings") if n in fns}
    assert tok.concurrency_id not in heavy_ids

    monkeypatch.setenv("GLASSBOX_QUEUE_SIZE", "lots")
    with pytest.raises(ValueError, match="GLASSBOX_QUEUE_SIZE"):
        queue_settings()
    monkeypatch.setenv("GLASSBOX_QUEUE_SIZE", "0")
    with pytest.raises(ValueError, match="at least 1"):
        queue_settings()


def test_serving_settings_come_from_the_environment(monkeypatch):
    import sys

    import torch

    from app import tune_for_serving

    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    try:
        monkeypatch.delenv("GLASSBOX_TORCH_THREADS", raising=False)
        monkeypatch.delenv("GLASSBOX_SWITCH_INTERVAL_MS", raising=False)
        assert tune_for_serving() == {"torch_threads": 1, "switch_interval_ms": 2}
        assert torch.get_num_threads() == 1 and sys.getswitchinterval() == pytest.approx(0.002)
        monkeypatch.setenv("GLASSBOX_TORCH_THREADS", "2")
        monkeypatch.setenv("GLASSBOX_SWITCH_INTERVAL_MS", "5")
        assert tune_for_serving() == {"torch_threads": 2, "switch_interval_ms": 5}
        assert torch.get_num_threads() == 2 and sys.getswitchinterval() == pytest.approx(0.005)
        monkeypatch.setenv("GLASSBOX_TORCH_THREADS", "two")
        with pytest.raises(ValueError, match="GLASSBOX_TORCH_THREADS"):
            tune_for_serving()
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)


def test_a_full_queue_says_try_again_and_the_server_keeps_serving(tmp_path, tiny_bpe_ckpt, monkeypatch):
    """A burst of slow requests with room for one waiting event: the rest are refused with
    gradio_client's "Queue is full! Please try again.", and the server answers afterwards."""
    from gradio_client import Client

    from app import make_context

    monkeypatch.setenv("GLASSBOX_QUEUE_SIZE", "1")
    ctx = make_context(runs_dir=tmp_path / "runs", bundled=tiny_bpe_ckpt, cache_dir=tmp_path / "cache")
    with running_app(ctx) as url:
        client = Client(url, verbose=False)
        key = client.predict(api_name="/models")[0]["key"]
        text = "First Citizen: Before we proceed any further, hear me speak. " * 3
        # /attention runs two at a time; twelve at once leave ten wanting a place in a queue of one
        jobs = [client.submit(key, text, 0, 0, -1, "grid", "head_mean", "none", api_name="/attention")
                for _ in range(12)]

        def outcome(job):
            try:
                job.result(timeout=60)
                return "ok"
            except Exception as e:  # noqa: BLE001 - the message is what the test checks
                return f"{type(e).__name__}: {e}"

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(outcome, jobs))
        refused = [o for o in outcomes if o != "ok"]
        assert refused, outcomes
        assert all("Queue is full! Please try again." in o for o in refused), refused
        assert outcomes.count("ok") >= 2
        data = client.predict(key, "Speak, speak.", "tokens", None, api_name="/tokenize")[0]
        assert data["ids"] == ctx.catalog.get(key).tokenizer.encode("Speak, speak.")
