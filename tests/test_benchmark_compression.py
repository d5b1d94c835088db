"""Smoke test of benchmarks/compression.py at a tiny size: the rows the README's table is built
from (MAC ratio, speedup, their ratio) for both networks at ACoSP-2."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_run_prints_and_writes_the_table(tmp_path):
    out = tmp_path / "compression.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "compression.py"), "--size", "33",
           "33", "--ratios", "2", "--runs", "1", "--warmup", "0", "--threads", "1", "--json",
           str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert "| model" in run.stdout and "ACoSP-2" in run.stdout
    rows = json.loads(out.read_text())["rows"]
    # Both deploys (as built, then optimize_for_inference on both sides) per network.
    assert [(r["model"], r["cr"], r["deploy"]) for r in rows] == [
        ("pspnet50", 2, "plain"), ("pspnet50", 2, "inference"), ("segnet", 2, "plain"),
        ("segnet", 2, "inference")]
    for r in rows:
        assert r["sparsity"] == 0.5 and r["size"] == "33x33"
        # Half the filters and half the input channels of their consumers: ~4x, and at least
        # the output-side 2x.
        assert 2.0 < r["mac_x"] < 4.5
        assert abs(r["mac_x"] - r["dense_gmacs"] / r["gmacs"]) < 1e-9
        assert abs(r["speedup"] - r["dense_ms"] / r["ms"]) < 1e-9
        assert abs(r["eff"] - r["speedup"] / r["mac_x"]) < 1e-9
        assert r["params"] < 0.5 * r["dense_params"]
    assert rows[0]["dense_params"] == 49080038 and rows[2]["dense_params"] == 29454009
