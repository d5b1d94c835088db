"""Smoke test of benchmarks/masked_conv.py on tiny layers: every output is written and the rows
hold what the README's table is built from."""
import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_sweep_writes_table_plot_and_break_even(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "masked_conv.py"), "--quick",
           "--input-size", "64x128", "--min-time", "0.003", "--min-reps", "2", "--rounds", "2",
           "--mode", "fwd", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert "round 2/2" in out.stdout and "break-even density" in out.stdout
    with open(tmp_path / "masked_conv_cpu.csv") as f:
        rows = list(csv.DictReader(f))
    # 3 layers x 2 mask kinds x 3 densities, each measured in both rounds.
    assert len(rows) == 18
    for row in rows:
        assert int(row["pairs"]) >= 4
        assert float(row["dense_ms"]) > 0 and float(row["masked_ms"]) > 0
        assert abs(float(row["ratio"]) - float(row["speedup"]) / float(row["ideal"])) < 1e-6
        # Only the all-active cells time MaskedConv2d (its dense fallback), paired with dense.
        full = float(row["density"]) >= 1.0
        assert (float(row["module_vs_dense"]) > 0) == full
        # Every fwd row carries its layer's output-write floor (all-zero mask, paired).
        assert float(row["empty_mask_ms"]) > 0 and float(row["max_speedup"]) > 0
    summary = json.loads((tmp_path / "masked_conv_cpu.json").read_text())
    assert set(summary["break_even"]["per_kind"]["fwd"]) == {"kxk/le64", "depthwise/gt128",
                                                             "1x1/gt128"}
    assert (tmp_path / "masked_conv_cpu.png").stat().st_size > 10_000
    md = (tmp_path / "masked_conv_cpu.md").read_text()
    assert "speedup over dense" in md and "Output-write floor" in md and "module / dense" in md
    assert "output-write floor" in out.stdout

    # The tables and plot can be rebuilt from the saved JSON without measuring.
    again = tmp_path / "again"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "masked_conv.py"),
                    "--from-json", str(tmp_path / "masked_conv_cpu.json"), "--out", str(again)],
                   capture_output=True, text=True, check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=ROOT))
    assert (again / "masked_conv_cpu.md").read_text() == md
    assert (again / "masked_conv_cpu.png").stat().st_size > 10_000
