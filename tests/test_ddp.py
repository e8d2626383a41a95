"""DDP: `torchrun --nproc_per_node=2 -m core.train` on CPU (gloo) keeps identical replicas and
matches a single process at the same global batch; only rank 0 writes."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

FLAGS = ["--corpus", "arithmetic", "--tokenizer", "char", "--preset", "micro", "--block-size", "32",
         "--steps", "6", "--batch-size", "8", "--warmup", "2", "--eval-interval", "0", "--eval-batches", "2",
         "--sample-tokens", "0", "--log-interval", "1", "--dtype", "float32", "--device", "cpu", "--threads", "1",
         "--seed", "5", "--json",
         # AdamW: Muon's Newton-Schulz step runs in bfloat16, which turns the all-reduce's different
         # summation order into ~1e-5 loss differences after a few steps; AdamW shows the loop itself.
         "--optimizer", "adamw", "--lr", "1e-3"]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_torchrun_two_processes_match_one(tmp_path):
    single = subprocess.run([sys.executable, "-m", "core.train", *FLAGS, "--out", str(tmp_path / "one")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "core.train", *FLAGS, "--out", str(tmp_path / "two")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    one, two = _events(single.stdout), _events(ddp.stdout)
    # only rank 0 logs: exactly one start and one done, one step event per step
    assert [e["kind"] for e in two].count("start") == 1 and two[-1]["kind"] == "done"
    assert next(e for e in two if e["kind"] == "start")["world_size"] == 2  # after the "prepare" events
    assert two[-1]["replicas_identical"] is True
    loss1 = [e["loss"] for e in one if e["kind"] == "step"]
    loss2 = [e["loss"] for e in two if e["kind"] == "step"]
    assert len(loss1) == len(loss2) == 6
    assert max(abs(a - b) for a, b in zip(loss1, loss2)) < 1e-5
    assert loss2[-1] < loss2[0]

    w1 = load_file(str(tmp_path / "one" / "latest" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "latest" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0) for k in w1)
