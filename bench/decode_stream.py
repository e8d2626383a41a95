"""Decode in the browser against the same decode through the API: 4 columns × 256 new tokens on
the bundled model, the page's Generate (streamed into four columns, then the traces, metrics
and plots) against `/decode` (one answer), interleaved round by round on one real server.

The browser time runs from the click on Generate until the page says every column is done;
the API time is one `/decode` call with the same prompt, columns, length and seed. The goal
(issue 16): browser ≤ 1.3 × API. Prints one JSON line with both medians and their ratio.

    python bench/decode_stream.py              # 3 rounds
    python bench/decode_stream.py --rounds 5 --tokens 120
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # noqa: E402 - bench/load.py, next to this file

PROMPT = "First Citizen:\nBefore we proceed any further,"
COLUMNS = [{"kind": "greedy"}, {"kind": "top_p", "temperature": 0.8, "top_p": 0.9},
           {"kind": "beam", "num_beams": 4}, {"kind": "top_k", "temperature": 1.0, "top_k": 40}]


def browser_run(page, tokens: int) -> float:
    from playwright.sync_api import expect

    notice = page.locator("#dec-notice")
    t0 = time.perf_counter()
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(notice).to_contain_text("Generating", timeout=600_000)
    expect(notice).to_contain_text("column 4:", timeout=600_000)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--model", type=Path, default=load.ROOT / "assets" / "demo")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)
    import torch
    from playwright.sync_api import sync_playwright

    api, web = [], []
    with tempfile.TemporaryDirectory(prefix="glassbox-decode-") as tmp:
        port = load.free_port()
        proc = load.start_server(args.model, Path(tmp), port)
        try:
            url = f"http://127.0.0.1:{port}/"
            client = load.new_client(url)
            key = client.predict(api_name="/models")[0]["key"]
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox",
                                                                              "--disable-gpu"])
                page = b.new_page(viewport={"width": 1440, "height": 900})
                page.set_default_timeout(120_000)
                page.goto(url)
                page.get_by_role("tab", name="Decode", exact=True).click()
                for label, value in (("number input for Columns", 4), ("number input for Max new tokens",
                                                                      args.tokens)):
                    box = page.get_by_label(label)
                    box.fill(str(value))
                    box.press("Enter")
                page.wait_for_timeout(1000)
                client.predict(key, PROMPT, COLUMNS, 8, 0, False, api_name="/decode")  # warm up both paths
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    res = client.predict(key, PROMPT, COLUMNS, args.tokens, 0, False, api_name="/decode")
                    api.append(time.perf_counter() - t0)
                    web.append(browser_run(page, args.tokens))
                lengths = [len(c["ids"]) for c in res["columns"]]
                b.close()
        finally:
            load.stop_server(proc)
    a, w = statistics.median(api), statistics.median(web)
    out = {"bench": "decode_stream", "columns": len(COLUMNS), "max_new_tokens": args.tokens, "lengths": lengths,
           "api_s": [round(x, 2) for x in api], "browser_s": [round(x, 2) for x in web],
           "api_median_s": round(a, 2), "browser_median_s": round(w, 2), "ratio": round(w / a, 3),
           "cpu": torch.backends.cpu.get_cpu_capability()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
