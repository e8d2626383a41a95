"""Server CPU per request, endpoint by endpoint: one simulated user calls /tokenize, /attention and
/decode in turn (the same calls as bench/load.py) against the real app on 127.0.0.1, and the
server process's CPU time is read before and after each endpoint's requests.

One user at a time, so the figure is the request's own cost (Gradio's machinery plus the
handler), without the contention of bench/load.py. Prints one JSON line.

    python bench/endpoint_cpu.py                  # 60 requests per endpoint
    python bench/endpoint_cpu.py --requests 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # noqa: E402 - bench/load.py, next to this file


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=60, help="timed requests per endpoint")
    p.add_argument("--decode-tokens", type=int, default=24, help="max_new_tokens of each /decode request")
    p.add_argument("--model", type=Path, default=load.ROOT / "assets" / "demo")
    args = p.parse_args(argv)
    out: dict = {"bench": "endpoint_cpu", "requests_per_endpoint": args.requests,
                 "decode_tokens": args.decode_tokens, "decode_columns": load.DECODE_COLUMNS}
    with tempfile.TemporaryDirectory(prefix="glassbox-cpu-") as tmp:
        port = load.free_port()
        proc = load.start_server(args.model, Path(tmp), port)
        try:
            url = f"http://127.0.0.1:{port}/"
            client = load.new_client(url)
            key = client.predict(api_name="/models")[0]["key"]
            for ep in load.ENDPOINTS:
                for i in range(3):  # warm up (the session's state, caches)
                    load.call(client, key, ep, load.TEXTS[i], args.decode_tokens, i)
                c0, t0 = load.cpu_seconds(proc.pid), time.perf_counter()
                for i in range(args.requests):
                    load.call(client, key, ep, load.TEXTS[i % len(load.TEXTS)], args.decode_tokens, i)
                c1, t1 = load.cpu_seconds(proc.pid), time.perf_counter()
                out[ep] = {"server_cpu_ms": round(1000 * (c1 - c0) / args.requests, 1),
                           "wall_ms": round(1000 * (t1 - t0) / args.requests, 1)}
        finally:
            load.stop_server(proc)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
