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
        # --min-reps 2 over 2 rounds guarantees one pair per round; more only when the time
        # budget allows (fewer on a loaded machine), so only the guaranteed count is checked.
        assert int(row["pairs"]) >= 2
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


def _load_benchmark():
    import importlib.util

    path = os.path.join(ROOT, "benchmarks", "masked_conv.py")
    spec = importlib.util.spec_from_file_location("masked_conv_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_both_layouts_and_keep_side_by_side(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "masked_conv.py"),
           "--input-size", "32x64", "--min-time", "0.002", "--min-reps", "2", "--rounds", "1",
           "--mode", "fwd", "--memory-format", "both", "--keep", "--kinds", "random",
           "--densities", "0.25", "1.0", "--layers", "hrnet_w48_b1", "dw3x3_c128",
           "--out", str(tmp_path)]
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=ROOT))
    with open(tmp_path / "masked_conv_cpu.csv") as f:
        rows = list(csv.DictReader(f))
    # 2 layers x 2 layouts x 2 densities; every cell paired with dense on its own layout.
    assert sorted({(r["layer"], r["layout"]) for r in rows}) == [
        ("hrnet_w48_b1_3x3", "nchw"), ("hrnet_w48_b1_3x3", "nhwc"),
        ("routing_dw3x3_c128", "nchw"), ("routing_dw3x3_c128", "nhwc")]
    assert len(rows) == 8
    for row in rows:
        assert float(row["dense_ms"]) > 0 and float(row["keep_ms"]) > 0
        assert float(row["keep_over_masked"]) > 0
    summary = json.loads((tmp_path / "masked_conv_cpu.json").read_text())
    assert set(summary["break_even"]["per_kind"]) == {"fwd", "fwd/nchw"}
    md = (tmp_path / "masked_conv_cpu.md").read_text()
    assert "**fwd/nchw**" in md and "In-place variant" in md


def test_write_policy_replaces_hand_set_cuda_entries(tmp_path):
    """A (fake) CUDA sweep written with the benchmark's write_policy: the measured keys leave
    HAND_SET, land in BREAK_EVEN with a cuda provenance line, and the CPU entries stay."""
    bench = _load_benchmark()
    policy = bench.policy
    layers = {"a": "kxk/le64", "b": "depthwise/le128", "c": "1x1/gt128"}
    speedups = {0.1: 4.0, 0.25: 1.6, 0.5: 0.8, 1.0: 0.5}
    rows = [dict(mode="fwd", layout="nhwc", layer=layer, policy_key=key, mask="random",
                 density=d, speedup=s) for layer, key in layers.items()
            for d, s in speedups.items()]
    be = bench.break_even(rows)
    assert set(be["per_kind"]["fwd"]) == set(layers.values())
    crossing = be["per_kind"]["fwd"]["kxk/le64"]
    assert 0.25 < crossing < 0.5
    path = tmp_path / "policy_copy.py"
    path.write_text(open(policy.__file__).read())
    saved = {name: dict(getattr(policy, name)) for name in ("BREAK_EVEN", "HAND_SET")}
    assert ("kxk", "le64", "cuda") in policy.HAND_SET
    try:
        written = bench.write_policy(be["per_kind"]["fwd"], "cuda",
                                     {"summary": "python benchmarks/masked_conv.py --device cuda "
                                                 "--write-policy (float16, H200)"},
                                     "fwd", path=str(path))
        assert written == str(path)
        text = path.read_text()
        namespace = {}
        exec(compile(text, str(path), "exec"), namespace)
        assert namespace["BREAK_EVEN"][("kxk", "le64", "cuda")] == crossing
        for key in layers.values():
            full = (*key.split("/"), "cuda")
            assert full in namespace["BREAK_EVEN"] and full not in namespace["HAND_SET"]
        # Unmeasured CUDA keys stay hand-set; the CPU entries and their provenance are kept.
        assert ("kxk", "gt128", "cuda") in namespace["HAND_SET"]
        assert {k: v for k, v in namespace["BREAK_EVEN"].items() if k[2] == "cpu"} == \
            {k: v for k, v in saved["BREAK_EVEN"].items() if k[2] == "cpu"}
        block = text[text.index("# BEGIN BREAK_EVEN TABLE"):text.index("# END BREAK_EVEN TABLE")]
        assert "# cpu: python benchmarks/masked_conv.py --device cpu" in block
        assert "# cuda: python benchmarks/masked_conv.py --device cuda" in block
    finally:
        for name, table in saved.items():
            getattr(policy, name).clear()
            getattr(policy, name).update(table)
