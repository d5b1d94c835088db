"""Smoke test of benchmarks/condnet.py at a tiny size: both classifiers timed side by side in one
run, the ratios computed from the medians, the analytic MACs (the conditional classifier's
guidance, class-centre and dynamic terms are each K·C·H·W, plus the generator's (C+1)·K·C)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # ~10 s idle, over a minute on the loaded 2-core machine (imports, counter)
def test_tiny_run_prints_and_writes_the_side_by_side_table(tmp_path):
    out = tmp_path / "condnet.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "condnet.py"), "--sizes", "32x48",
           "--classes", "5", "--runs", "2", "--warmup", "0", "--threads", "1", "--host",
           "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert "| variant | GMAC | median ms | cpu ms | time / plain | MAC / plain |" in run.stdout
    row, host = json.loads(out.read_text())["rows"]
    names = ["plain 1x1", "conditional", "conditional original"]
    assert list(row["median_s"]) == names and row["threads"] == 1
    assert all(len(row["cpu_times_s"][n]) == 2 for n in names)
    # features 512 x 8 x 12 (stride 4 of 32x48), K = 5
    p, k, c = 8 * 12, 5, 512
    assert abs(row["gmacs"]["plain 1x1"] * 1e9 - k * c * p) < 1e-3
    assert abs(row["gmacs"]["conditional"] * 1e9 - (3 * k * c * p + (c + 1) * k * c)) < 1e-3
    cpu = row["cpu_median_s"]
    for n in names:
        assert abs(row["ratio_vs_plain"][n] - cpu[n] / cpu["plain 1x1"]) < 1e-9
    # the host's count is the same for both classifiers: only the classifier terms differ
    assert list(host["median_s"]) == names
    extra = host["gmacs"]["conditional"] - host["gmacs"]["plain 1x1"]
    assert abs(extra * 1e9 - (2 * k * c * p + (c + 1) * k * c)) < 1e-3
    assert host["gmacs"]["plain 1x1"] > 10 * row["gmacs"]["plain 1x1"]
