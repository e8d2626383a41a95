"""`python app.py` — the README's run command — starts offline on the bundled model."""

import os
import subprocess
import sys
import time
import urllib.request

from tests.conftest import ROOT, free_port


def test_python_app_py_serves_the_bundled_model_offline(tmp_path):
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GLASSBOX_RUNS_DIR": str(tmp_path / "runs"), "GLASSBOX_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("GRADIO_SERVER_NAME", None)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"app.py did not start:\n{proc.stdout.read()}") from None
                time.sleep(0.5)
        client = Client(url, verbose=False)
        models = client.predict(api_name="/models")
        assert models[0]["key"] == "bundled:demo"
        info = client.predict("bundled:demo", api_name="/model_info")
        assert info["config"]["n_layer"] == 4 and info["tokenizer"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
