"""Workshop bench: the Train tab's default run while a room of people uses the same server.

Starts the real app (`python app.py`, the bundled demo model, temporary runs and cache
folders; bench/load.py's `start_server`), presses Start through `/train_start` with the
form's defaults (Tiny Shakespeare, characters, the workshop preset and its run,
`core.config.WORKSHOP_TRAIN`), and while it trains runs `--users` simulated people (bench/load.py's
users: /tokenize, /attention, /decode with a think time between requests, checked answers).
Prints one JSON line: seconds from Start to the first step and to the end, the val loss at
each evaluation, the last sample, the users' p95 latency and errors, and the CPU it ran on
(`core.machine.describe()`). The goal: recognisable Shakespeare (speaker names, verse lines)
within 2 minutes on 2 cores while 30 people use the app.

Usage: python bench/workshop.py [--users 30] [--think 2]
Skips cleanly (a JSON note, exit 0) when ../shared/data/tinyshakespeare.txt is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def main(argv=None) -> int:
    import load  # bench/load.py: the server and the simulated users

    from core.machine import describe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=30)
    p.add_argument("--think", type=float, default=2.0, help="mean think time between a user's requests (s)")
    p.add_argument("--procs", type=int, default=5, help="client processes the users are split over")
    p.add_argument("--client-nice", type=int, default=10, help="niceness of the simulated users")
    p.add_argument("--decode-tokens", type=int, default=24)
    p.add_argument("--duration", type=float, default=150.0, help="seconds the people use the app from Start")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on the run after this many seconds")
    p.add_argument("--settle", type=float, default=10.0, help="seconds the server is up before Start")
    a = p.parse_args(argv)
    if not DATA.is_file():
        print(json.dumps({"bench": "workshop", "skipped": f"{DATA} is absent"}), flush=True)
        return 0

    out: dict = {"bench": "workshop", "machine": describe(), "users": a.users, "think_s": a.think}
    with tempfile.TemporaryDirectory(prefix="glassbox-workshop-") as tmp:
        port = load.free_port()
        server = load.start_server(ROOT / "assets" / "demo", Path(tmp), port)
        url = f"http://127.0.0.1:{port}/"
        try:
            ctl = load.new_client(url)
            key = next(m["key"] for m in ctl.predict(api_name="/models") if m.get("source") == "bundled")
            time.sleep(a.settle)  # a workshop's server has been up a while before the room presses Start
            if a.client_nice:
                os.nice(a.client_nice)  # the people stand in for remote browsers: the server comes first
            # the people use the app from Start for --duration seconds (the 2 minutes and a bit)
            users = argparse.Namespace(users=a.users, requests=10_000, duration=a.duration, think=a.think,
                                       procs=a.procs, decode_tokens=a.decode_tokens, model=ROOT / "assets" / "demo",
                                       endpoints=load.ENDPOINTS)
            res: dict = {}
            t0 = time.monotonic()
            job = ctl.predict(corpus="shakespeare", api_name="/train_start")["job"]
            first = None
            people = threading.Thread(target=lambda: res.update(load.run_users_in_processes(url, key, users.model,
                                                                                            users, seed=3)),
                                      daemon=True)
            people.start()
            st: dict = {}
            while time.monotonic() - t0 < a.timeout:
                st = ctl.predict(job, api_name="/train_status")
                if first is None and int(st.get("step") or 0) >= 1:
                    first = time.monotonic() - t0
                if not st.get("running"):
                    break
                time.sleep(0.5)
            took = time.monotonic() - t0
            people.join(timeout=a.duration + 300)
            out.update(job=job, state=st.get("state"), reason=st.get("reason"), steps=st.get("step"),
                       settings={k: st.get("settings", {}).get(k) for k in ("preset", "n_layer", "n_head", "n_embd",
                                                                          "block_size", "steps", "batch_size", "lr")},
                       start_to_first_step_s=None if first is None else round(first, 1), start_to_end_s=round(took, 1),
                       evals=st.get("evals"), sample=st.get("sample"), dtype=st.get("dtype"),
                       choices=(st.get("choices") or {}).get("summary"))
        finally:
            load.stop_server(server)
        out["users_summary"] = {k: res.get(k) for k in ("requests", "errors", "wrong", "p50_ms", "p95_ms", "wall_s")}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
