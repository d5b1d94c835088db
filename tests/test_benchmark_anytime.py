"""Smoke test of benchmarks/anytime.py at a tiny size: the per-exit rows hold what the README's
table is built from (forced fractions, ratios, the original's column) and the training step runs."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_run_prints_and_writes_the_per_exit_table(tmp_path):
    out = tmp_path / "anytime.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "anytime.py"), "--models", "w18",
           "--sizes", "64x128", "--runs", "1", "--warmup", "0", "--threads", "1",
           "--train-step", "--train-size", "64x128", "--train-runs", "1", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert "| model | size | masks | exit |" in run.stdout and "train step (W18 RH" in run.stdout
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["exit"] for r in rows] == [1, 2, 3, 4]
    # the forced fractions after exits 1-3 (16 x 32 logits: quantiles of 512 pixels)
    assert [round(r["computed"], 2) for r in rows] == [1.0, 0.8, 0.6, 0.4]
    assert rows[0]["flops_x"] == 1.0 and all(r["flops_x"] > 1.0 for r in rows[1:])
    # fewer computed pixels, higher ratio; the W18 RH count at 64x128 = 1/256 of 1024x2048's
    assert rows[1]["flops_x"] < rows[2]["flops_x"] < rows[3]["flops_x"]
    assert abs(rows[3]["rh_gflops"] * 256 - 73.23) < 0.01
    for r in rows:
        assert r["rh_ms"] > 0 and r["adpc_ms"] > 0 and r["orig_ms"] > 0
        assert abs(r["eff"] - r["speedup"] / r["flops_x"]) < 1e-9
        assert abs(r["speedup"] - r["rh_ms"] / r["adpc_ms"]) < 1e-9
    assert set(result["train_step"]) == {"ours", "ours channels-last", "plain"}
