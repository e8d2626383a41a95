"""Load benchmark: many simulated people on one Glassbox server, idle and while one trains.

Starts the real app (`python app.py`, the bundled demo model, a temporary runs folder) on a
free port of 127.0.0.1 in a subprocess, then N simulated users, each with its own
`gradio_client.Client` in a thread (threads spread over --procs processes, niced; no TLS
certificate loading on plain http, see `new_client`), call
/tokenize, /attention and /decode in turn with a random think time between requests. Every answer is checked (token ids equal the
tokenizer's encode of the text; the attention view covers those tokens and its weights sum to
one; a greedy /decode column equals `core.generate`'s greedy continuation).

Phase "idle": the users alone. Phase "train" (when the app has /train_start): a small
char-level model trains on a synthetic corpus; its steps/s are measured alone first, then
while the same users run again. Bounded: --users, --requests per user, --duration per
phase; it stops by itself and stops the training run and the server.

Prints one JSON line: errors, wrong answers, p50/p95 latency per endpoint and overall,
the ratios against the targets (p95 <= 500 ms idle; p95 under training <= 3x idle;
training keeps >= 40% of its steps/s), the load average, and the CPU time of the server and of the
simulated users (who share the machine with the server, as remote browsers would not).

    python bench/load.py                       # 50 users x 12 requests, then the same while training
    python bench/load.py --users 20 --requests 6 --no-train
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = (
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak.",
    "You are all resolved rather to die than to famish?",
    "We are accounted poor citizens, the patricians good.",
    "What authority surfeits on would relieve us.",
    "Let us kill him, and we'll have corn at our own price.",
    "O Romeo, Romeo! wherefore art thou Romeo?",
    "Now is the winter of our discontent made glorious summer.",
)
ENDPOINTS = ("tokenize", "attention", "decode")
DECODE_COLUMNS = [{"kind": "greedy"}, {"kind": "top_p", "temperature": 0.8, "top_p": 0.9}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, workdir: Path, port: int, env_extra: dict | None = None,
                 timeout: float = 180.0) -> subprocess.Popen:
    """`python app.py` on 127.0.0.1:port with a temporary runs/cache folder; returns once it answers."""
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", GLASSBOX_DEMO_MODEL=str(model),
               GLASSBOX_RUNS_DIR=str(workdir / "runs"), GLASSBOX_CACHE_DIR=str(workdir / "cache"),
               **(env_extra or {}))
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {workdir / 'server.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), for CPU per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


class Checker:
    """The expected answers, computed locally from the same checkpoint."""

    def __init__(self, model: Path, decode_tokens: int):
        from core import checkpoint

        self.ck = checkpoint.load(model)
        self.tok = self.ck.tokenizer
        self.decode_tokens = decode_tokens
        self._greedy: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def tokenize(self, text: str, out) -> str | None:
        data = out[0]
        want = self.tok.encode(text)
        if data.get("ids") != want:
            return f"/tokenize ids {data.get('ids')[:8]}... != encode {want[:8]}..."
        return None

    def attention(self, text: str, out) -> str | None:
        data = out[-1]
        n = len(self.tok.encode(text))
        if data.get("n_tokens_in_text") != n or len(data.get("tokens", ())) != data.get("n_tokens"):
            return f"/attention covers {data.get('n_tokens_in_text')} tokens, the text has {n}"
        total = sum(data.get("weights", ()))
        if abs(total - 1.0) > 1e-3:
            return f"/attention weights sum to {total}"
        return None

    def greedy(self, text: str) -> list[int]:
        from core.generate import generate

        with self._lock:
            if text not in self._greedy:
                ids = self.tok.encode(text)[-self.ck.config.block_size:]
                out = generate(self.ck.model, ids, self.decode_tokens, greedy=True, eot_id=self.tok.eot_id)
                self._greedy[text] = list(out[len(ids):]) if out[:len(ids)] == ids else list(out)
            return self._greedy[text]

    def decode(self, text: str, out) -> str | None:
        cols = out.get("columns", [])
        if len(cols) != len(DECODE_COLUMNS):
            return f"/decode returned {len(cols)} columns"
        want = self.greedy(text)
        if cols[0].get("ids") != want:
            return f"/decode greedy {cols[0].get('ids')[:6]}... != generate {want[:6]}..."
        if not 1 <= len(cols[1].get("ids", ())) <= self.decode_tokens:
            return f"/decode top_p column has {len(cols[1].get('ids', ()))} tokens"
        return None


def call(client, key: str, endpoint: str, text: str, decode_tokens: int, seed: int):
    if endpoint == "tokenize":
        return client.predict(key, text, "tokens", None, api_name="/tokenize")
    if endpoint == "attention":
        return client.predict(key, text, 0, 0, -1, "grid", "head_mean", "none", api_name="/attention")
    return client.predict(key, text, DECODE_COLUMNS, decode_tokens, seed, False, api_name="/decode")


def new_client(url: str):
    """A `gradio_client.Client`. On plain http (the app on 127.0.0.1) it skips TLS certificate
    loading, which nothing there uses: gradio_client makes a new httpx client for every request
    and, with verification on, each loads the CA bundle (17 ms of the simulated user's CPU,
    holding its process's GIL), which made the users, not the server, most of the latency."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=not url.startswith("http://"))


def texts() -> list[str]:
    """Every text a user may send: one of TEXTS plus 0–2 copies of the last word of one of them."""
    tails = sorted({t.split()[-1] for t in TEXTS})
    return sorted({t + (" " + w) * k for t in TEXTS for w in tails for k in range(3)})


def make_clients(url: str, n: int) -> list:
    """`n` clients, each with its session open: one /models call, as a browser's page load
    opens the session before its person clicks anything (Gradio builds a session's state on
    its first event, about 30 ms of server time for this page). Not timed."""
    def open_one(_):
        client = new_client(url)
        client.predict(api_name="/models")
        return client

    with ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
        return list(pool.map(open_one, range(n)))


def user_records(clients: list, key: str, checker: Checker, args, seed: int, endpoints=ENDPOINTS,
                 first_user: int = 0) -> list[tuple]:
    """Each user (one thread and client): `args.requests` requests (endpoints in turn, from a random
    start), a think time between them, until the phase's duration is up. Returns the records
    (endpoint, seconds, error, wrong)."""
    records: list[tuple[str, float, str | None, str | None]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.duration

    def user(i: int) -> None:
        rng = random.Random(seed * 1000 + first_user + i)
        time.sleep(rng.uniform(0, args.think))  # people do not all click at the same instant
        first = rng.randrange(len(endpoints))
        for r in range(args.requests):
            if time.monotonic() >= deadline:
                return
            endpoint = endpoints[(first + r) % len(endpoints)]
            text = rng.choice(TEXTS) + (" " + rng.choice(TEXTS).split()[-1]) * rng.randrange(3)
            err = wrong = None
            t0 = time.perf_counter()
            try:
                out = call(clients[i], key, endpoint, text, args.decode_tokens, rng.randrange(1000))
                dt = time.perf_counter() - t0
                wrong = getattr(checker, endpoint)(text, out)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                dt = time.perf_counter() - t0
                err = f"{endpoint}: {type(e).__name__}: {str(e)[:200]}"
            with lock:
                records.append((endpoint, dt, err, wrong))
            time.sleep(rng.uniform(0.5 * args.think, 1.5 * args.think))

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 120)
    return records


def run_users(clients: list, key: str, checker: Checker, args, seed: int, endpoints=ENDPOINTS) -> dict:
    """All users in this process's threads; the phase's summary."""
    t0 = time.monotonic()
    records = user_records(clients, key, checker, args, seed, endpoints)
    return summarize(records, time.monotonic() - t0, endpoints)


@functools.lru_cache(maxsize=2)
def expected_greedy(model: Path, decode_tokens: int) -> dict[str, list[int]]:
    """The greedy continuation of every text a user may send (`texts`), computed once before
    the timed part, so no simulated user computes one while others are being timed."""
    checker = Checker(model, decode_tokens)
    return {text: checker.greedy(text) for text in texts()}


def _process_users(url, key, model, n_users, first_user, args, seed, ready, results, greedy) -> None:
    """One process's share of the users: clients made before the common start (the barrier)."""
    import torch

    torch.set_num_threads(1)  # the answer checks are small; the server gets the cores
    checker = Checker(model, args.decode_tokens)
    checker._greedy.update(greedy)
    clients = make_clients(url, n_users)
    ready.wait()
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    records = user_records(clients, key, checker, args, seed, args.endpoints, first_user)
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    results.put((records, c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime))


def run_users_in_processes(url: str, key: str, model: Path, args, seed: int, server_pid: int | None = None) -> dict:
    """The users split over `args.procs` processes (threads within each), so the clients' own
    Python work does not queue behind one GIL and inflate the latencies they measure. With
    `server_pid`, also the server's CPU time per request over the timed part."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = max(1, min(args.procs, args.users))
    ready, results = ctx.Barrier(procs + 1), ctx.Queue()
    shares = [args.users // procs + (1 if i < args.users % procs else 0) for i in range(procs)]
    greedy = expected_greedy(model, args.decode_tokens)
    workers = [ctx.Process(target=_process_users, daemon=True,
                           args=(url, key, model, n, sum(shares[:i]), args, seed, ready, results, greedy))
               for i, n in enumerate(shares)]
    for w in workers:
        w.start()
    ready.wait(timeout=300)
    t0 = time.monotonic()
    s0 = cpu_seconds(server_pid) if server_pid else None
    records, cpu = [], 0.0
    for _ in workers:
        recs, c = results.get(timeout=args.duration + 300)
        records += recs
        cpu += c
    wall = time.monotonic() - t0
    s1 = cpu_seconds(server_pid) if server_pid else None
    for w in workers:
        w.join(30)
    out = {**summarize(records, wall, args.endpoints), "clients_cpu_s": round(cpu, 1)}
    if s0 is not None and s1 is not None and records:
        out["server_cpu_ms_per_request"] = round((s1 - s0) * 1000 / len(records), 1)
    return out


def summarize(records, wall: float, endpoints=ENDPOINTS) -> dict:
    ok = [r for r in records if r[2] is None]
    lat = [r[1] * 1000 for r in ok]
    per = {}
    for ep in endpoints:
        v = [r[1] * 1000 for r in ok if r[0] == ep]
        per[ep] = {"n": len(v), "p50_ms": _r(pct(v, 50)), "p95_ms": _r(pct(v, 95)), "max_ms": _r(max(v, default=None))}
    errors = [r[2] for r in records if r[2]]
    wrong = [r[3] for r in records if r[3]]
    return {"requests": len(records), "errors": len(errors), "wrong": len(wrong),
            "error_samples": sorted(set(errors))[:5], "wrong_samples": sorted(set(wrong))[:5],
            "p50_ms": _r(pct(lat, 50)), "p95_ms": _r(pct(lat, 95)), "max_ms": _r(max(lat, default=None)),
            "per_endpoint": per, "wall_s": round(wall, 1), "rps": round(len(records) / wall, 2) if wall else None}


def _r(x):
    return None if x is None else round(x, 1)


class StepMeter:
    """Polls /train_status once a second (its own client) and records (time, step)."""

    def __init__(self, client, job: str):
        self.client, self.job = client, job
        self.points: list[tuple[float, int]] = []
        self.state = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                st = self.client.predict(self.job, api_name="/train_status")
                self.state = st.get("state")
                self.points.append((time.monotonic(), int(st.get("step") or 0)))
            except Exception:  # noqa: BLE001 - a missed poll only widens the window
                pass
            self._stop.wait(1.0)

    def rate(self, t0: float, t1: float) -> float | None:
        pts = [p for p in self.points if t0 <= p[0] <= t1]
        if len(pts) < 2 or pts[-1][0] == pts[0][0]:
            return None
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def wait_for_steps(self, n: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.points and self.points[-1][1] >= n:
                return True
            if self.state in ("failed", "stopped", "done"):
                return False
            time.sleep(0.5)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def train_phase(url: str, key, args, idle: dict) -> dict:
    ctl = new_client(url)
    if "/train_start" not in ctl.view_api(print_info=False, return_format="dict")["named_endpoints"]:
        return {"skipped": "the app has no /train_start endpoint yet"}
    # the Train tab's default model (the workshop preset), char-level on a
    # synthetic corpus; more steps than the benchmark lasts (it is stopped at the end), no evaluations
    st = ctl.predict(corpus="counting", tokenizer="char", steps=100_000, warmup=10, device="cpu",
                     name="bench-load", eval_interval=100_000, eval_batches=1, api_name="/train_start")
    job = st["job"]
    meter = StepMeter(new_client(url), job)
    try:
        if not meter.wait_for_steps(5, 120):
            return {"skipped": f"the training run did not start stepping (state {meter.state})"}
        t0 = time.monotonic()
        time.sleep(args.train_alone)
        alone = meter.rate(t0, time.monotonic())
        t1 = time.monotonic()
        res = run_users_in_processes(url, key, args.model, args, seed=2)
        under = meter.rate(t1, time.monotonic())
        res.update(job=job, steps_per_s_alone=_r2(alone), steps_per_s_under_load=_r2(under),
                   train_kept=_r2(under / alone) if alone and under is not None else None,
                   p95_vs_idle=_r2(res["p95_ms"] / idle["p95_ms"]) if res["p95_ms"] and idle["p95_ms"] else None,
                   train_state_end=meter.state)
        return res
    finally:
        meter.close()
        try:
            ctl.predict(job, api_name="/train_stop")
        except Exception:  # noqa: BLE001 - the server is stopped next anyway
            pass


def _r2(x):
    return None if x is None else round(x, 2)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--requests", type=int, default=12, help="requests per user per phase")
    p.add_argument("--duration", type=float, default=90.0, help="seconds per phase at most")
    p.add_argument("--think", type=float, default=2.0, help="mean think time between a user's requests (s)")
    p.add_argument("--decode-tokens", type=int, default=24, help="max_new_tokens of each /decode request")
    p.add_argument("--train-alone", type=float, default=12.0, help="seconds to measure training alone")
    p.add_argument("--no-train", action="store_true", help="skip the phase with a training run")
    p.add_argument("--procs", type=int, default=5, help="client processes the users are split over")
    p.add_argument("--client-nice", type=int, default=10,
                   help="niceness of the simulated users (they stand in for remote browsers: the server gets "
                        "the CPU first); 0 to compete equally")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS),
                   help="comma-separated subset of the endpoints the users call, e.g. tokenize (for the server's "
                        "fixed cost per request)")
    p.add_argument("--model", type=Path, default=ROOT / "assets" / "demo")
    p.add_argument("--url", help="use a running server instead of starting one (no training phase)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the server (repeatable), e.g. GLASSBOX_QUEUE_SIZE=20")
    args = p.parse_args(argv)
    args.endpoints = tuple(e.strip() for e in args.endpoints.split(",") if e.strip())
    if not args.endpoints or any(e not in ENDPOINTS for e in args.endpoints):
        p.error(f"--endpoints: choose from {', '.join(ENDPOINTS)}")

    out: dict = {"bench": "load", "endpoints": list(args.endpoints), "users": args.users, "client_procs": args.procs,
                 "requests_per_user": args.requests, "think_s": args.think,
                 "decode_tokens": args.decode_tokens, "cpus": os.cpu_count(),
                 "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    checker = Checker(args.model, args.decode_tokens)
    with tempfile.TemporaryDirectory(prefix="glassbox-load-") as tmp:
        proc = None
        url = args.url
        if not url:
            port = free_port()
            env = dict(kv.split("=", 1) for kv in args.server_env)
            out["server_env"] = env
            proc = start_server(args.model, Path(tmp), port, env)
            url = f"http://127.0.0.1:{port}/"
        try:
            if args.client_nice:
                os.nice(args.client_nice)  # after the server started, so it keeps normal priority
            out["client_nice"] = args.client_nice
            clients = make_clients(url, 1)
            models = clients[0].predict(api_name="/models")
            key = next((m["key"] for m in models if m.get("source") == "bundled"), models[0]["key"])
            for text in TEXTS:  # warm the expected answers (and the server) before timing
                checker.greedy(text)
            for ep in ENDPOINTS:
                call(clients[0], key, ep, TEXTS[0], args.decode_tokens, 0)
            out["idle"] = run_users_in_processes(url, key, args.model, args, seed=1,
                                                 server_pid=proc.pid if proc else None)
            if args.no_train or args.url:
                out["train"] = {"skipped": "--no-train" if args.no_train else "--url given"}
            else:
                out["train"] = train_phase(url, key, args, out["idle"])

        finally:
            if proc is not None:
                stop_server(proc)
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    idle, train = out["idle"], out["train"]
    out["targets"] = {
        "errors_0": idle["errors"] + idle["wrong"] + train.get("errors", 0) + train.get("wrong", 0) == 0,
        "idle_p95_le_500ms": idle["p95_ms"] is not None and idle["p95_ms"] <= 500,
        "train_p95_le_3x_idle": None if "skipped" in train else (train["p95_vs_idle"] or 99) <= 3,
        "train_keeps_ge_40pct": None if "skipped" in train else (train["train_kept"] or 0) >= 0.4,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
