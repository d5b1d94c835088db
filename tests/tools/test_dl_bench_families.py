"""dl_bench on every family's tiny playground (JSON fields, positive values, threads / device /
torch), rows per exit of the anytime model (STOP K, GMACs rising with K), rows per budget of the
routing model (nested forced routes, GMACs falling with the budget, budget 1 = every gate forced
open), a compressed ACoSP model rebuilt from its checkpoint's architecture, a model that takes
only batched inputs (Toy/FourExit, MACs per exit by hand), and the options refused with the fix."""
import json
import os

import pytest
import torch

from dl_lib import playground
from dl_lib.analysis import count_parameters, flop_count
from dl_lib.tools.bench import (budget_routes, budget_variants, example_input,
                                learned_routes_open, main)

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
PG = os.path.join(REPO, "playground")
ANYTIME = os.path.join(PG, "Anytime", "HRNet_W18.ADP_C.Tiny.Synthetic")
ROUTING = os.path.join(PG, "Quickstart", "Seg.Layer6.Tiny.Synthetic")
ACOSP = os.path.join(PG, "ACoSP", "SegNet.Tiny.Synthetic")
SIZE = "32x64"  # every family's output stride divides it


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    return tmp_path


def _bench(args, out, opts=()):
    torch.manual_seed(0)  # the random initialisation _build(...) gives too
    assert main(args + ["--json", str(out)] + list(opts)) == 0
    return json.loads(out.read_text())


def _build(folder, opts=()):
    """The model dl_bench built (same seed): data-dependent counts need the same weights."""
    torch.manual_seed(0)
    return playground.build(folder, list(opts))[1]


def _gmacs(model, h=32, w=64):
    """The count dl_bench reports, computed here on the same seeded input."""
    return flop_count(model, inputs=example_input(1, h, w), convention="gmac").total


def _check_common(data, text, model):
    """Fields every run has: threads, torch, device; parameters and GMACs of the model as built;
    positive latency, FPS, GMACs and peak memory in every row."""
    assert data["threads"] == torch.get_num_threads() >= 1
    assert f"Threads: {torch.get_num_threads()} (torch.get_num_threads())" in text
    assert data["torch"] == torch.__version__ and torch.__version__ in text
    assert data["device"].startswith("cpu") and data["device_name"]
    assert data["params"] == count_parameters(model).total > 0
    assert data["gmacs"][SIZE] == pytest.approx(_gmacs(model), rel=1e-9) and data["gmacs"][SIZE] > 0
    assert data["rows"] is data["results"] or data["rows"] == data["results"]
    for r in data["rows"]:
        lat = r["latency_ms"]
        assert len(lat["runs"]) == data["options"]["runs"]
        assert 0 < lat["min"] <= lat["median"] <= lat["max"]
        assert r["fps"] > 0 and r["gmacs"] > 0 and r["peak_memory_mb"] > 0


# The anytime and the routing playgrounds are covered by the per-exit / per-budget tests below.
FAMILIES = [  # (playground, extra flags, overrides)
    (os.path.join("MFARANet", "R18_DeepStem.Tiny.Synthetic"), [], []),
    (os.path.join("CondNet", "DeepLabV3Plus_R18_D8.Tiny.Synthetic"), [], []),
    (os.path.join("ACoSP", "SegNet.Tiny.Synthetic"), [], []),
    (os.path.join("Quickstart", "FPN.R18W32.Synthetic"), [], []),
    (os.path.join("Baseline", "FPN.R18"), [], ["MODEL.DEVICE", "cpu"]),
]


@pytest.mark.parametrize("folder, flags, opts", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_tiny_playground(folder, flags, opts, outputs, capsys):
    data = _bench(["--playground", os.path.join(PG, folder), "--sizes", SIZE, "--batch", "1,2",
                   "--runs", "2", "--warmup", "1"] + flags, outputs / "b.json", opts)
    _check_common(data, capsys.readouterr().out, _build(os.path.join(PG, folder), opts))
    assert data["variants"] is None and data["num_exits"] is None
    assert [(r["size"], r["batch"]) for r in data["rows"]] == [([32, 64], 1), ([32, 64], 2)]
    # batch 2 holds twice the activations of batch 1 at least at its peak
    assert data["rows"][1]["peak_memory_mb"] > data["rows"][0]["peak_memory_mb"]


def test_anytime_model_gets_one_row_per_exit(outputs, capsys):
    data = _bench(["--playground", ANYTIME, "--sizes", SIZE, "--runs", "2", "--warmup", "1"],
                  outputs / "exits.json")
    text = capsys.readouterr().out
    table = [l for l in text.splitlines() if l.startswith("|")]
    model = _build(ANYTIME)
    _check_common(data, text, model)
    model.eval()
    with torch.no_grad():
        n = len(model.predict_logits(example_input(1, 32, 64)))
    assert n == 4 and data["num_exits"] == n and data["variants"] == "exits"
    assert [r["exit"] for r in data["rows"]] == list(range(1, n + 1))
    assert len(table) == 2 + n and table[0].split("|")[1].strip() == "exit"
    gmacs = [r["gmacs"] for r in data["rows"]]
    assert all(a < b for a, b in zip(gmacs, gmacs[1:])), gmacs
    assert gmacs[-1] == pytest.approx(data["gmacs"][SIZE], rel=1e-9)  # all exits = as built
    # The family's own counter (conv MACs / 2^30 up to each exit, at the computed fraction of the
    # masked convolutions) gives the same MACs: random weights are never confident, so every
    # pixel is computed, and the upsampling of the logits costs no MACs.
    with torch.no_grad():
        _, info = model.forward_exits(example_input(1, 32, 64), report=True)
    own = [g[0] * 2 ** 30 / 1e9 for g in info["gflops"]]
    assert gmacs == pytest.approx(own, rel=1e-6)

    one = _bench(["--playground", ANYTIME, "--exit", "2", "--sizes", SIZE, "--runs", "1",
                  "--warmup", "0", "--no-memory"], outputs / "exit2.json")
    assert [r["exit"] for r in one["rows"]] == [2] and one["rows"][0]["gmacs"] == gmacs[1]


def test_routing_model_gets_one_row_per_budget(outputs, capsys):
    data = _bench(["--playground", ROUTING, "--budgets", "learned,1,0.5,0.25", "--sizes", SIZE,
                   "--runs", "2", "--warmup", "1"], outputs / "budgets.json")
    text = capsys.readouterr().out
    table = [l for l in text.splitlines() if l.startswith("|")]
    rows = data["rows"]
    model = _build(ROUTING)
    _check_common(data, text, model)
    assert data["variants"] == "budgets" and len(rows) == 4 and len(table) == 6
    assert [r["budget"] for r in rows] == ["learned", 1.0, 0.5, 0.25]
    total = sum(cell.gate_num for _, cell in model.backbone.cells())  # 49 routes in Layer6
    assert total == 49 and all(r["routes_total"] == total for r in rows)
    assert [r["routes_open"] for r in rows[1:]] == [49, round(0.5 * 49), round(0.25 * 49)]
    assert 0 <= rows[0]["routes_open"] <= 49 and "open)" in table[2]  # learned, measured
    assert rows[0]["gmacs"] == pytest.approx(data["gmacs"][SIZE], rel=1e-9)  # as built
    forced = [r["gmacs"] for r in rows[1:]]
    assert forced[0] > forced[1] > forced[2] > 0, forced
    # budget 1 computes what the config's own forcing (every gate 1) computes
    all_open = _build(ROUTING, ["MODEL.GATE.FIXED_VALUE", "1.0"])
    assert forced[0] == pytest.approx(_gmacs(all_open), rel=1e-9)


def test_budgets_are_nested_and_restore_the_learned_gates():
    _, model = playground.build(ROUTING)
    closed = {}
    for f in (1.0, 0.5, 0.25):
        routes, n_open, total = budget_routes(model, f)
        gates = [(c, r) for c, rs in routes.items() for r, g in rs.items()]
        assert len(gates) == total
        assert sum(g for rs in routes.values() for g in rs.values()) == n_open
        closed[f] = {(c, r) for c, rs in routes.items() for r, g in rs.items() if g == 0.0}
    assert closed[1.0] == set() and closed[0.5] < closed[0.25]
    variant = budget_variants(model, [0.5])[0]
    with variant.enter() as forced:
        assert forced is model and model.backbone.init_layer.forced_gates is not None
    assert all(cell.forced_gates is None for _, cell in model.backbone.cells())
    # the routes the gates as built open: all with every gate forced to 1, none with 0
    for value, expected in (("1.0", 49), ("0.0", 0)):
        _, forced_model = playground.build(ROUTING, ["MODEL.GATE.FIXED_VALUE", value])
        assert learned_routes_open(forced_model, (32, 64)) == expected


def test_compressed_acosp_model_from_its_checkpoint(outputs):
    from dl_lib.checkpoint import Checkpointer
    from dl_lib.modeling.pruning.channels import channel_config_of
    from dl_lib.modeling.pruning.compress import compress

    # hard masks at the current top-k of a random initialisation, then the smaller network
    _, masked = playground.build(ACOSP, ["MODEL.PRUNING.HARD_MASKS", "True"])
    masked.eval()
    small = compress(masked, torch.randn(1, 3, 65, 65)).eval()
    arch = {"MODEL.PRUNING.CHANNELS": channel_config_of(small)}
    Checkpointer(small, save_dir=str(outputs), save_to_disk=True).save("compressed",
                                                                      architecture=arch)
    data = _bench(["--playground", ACOSP, "--sizes", SIZE, "--runs", "2", "--warmup", "1"],
                  outputs / "small.json", ["MODEL.WEIGHTS", str(outputs / "compressed.pth")])
    assert data["weights"].endswith("compressed.pth")
    assert data["params"] == count_parameters(small).total < 0.5 * count_parameters(masked).total
    assert data["gmacs"][SIZE] == pytest.approx(_gmacs(small), rel=1e-9)
    # half the channels of every layer but the 3-channel input and the 8-channel minimum
    assert data["gmacs"][SIZE] < 0.6 * _gmacs(masked)
    assert data["rows"][0]["latency_ms"]["median"] > 0 and data["rows"][0]["peak_memory_mb"] > 0


FIXTURES = os.path.join(REPO, "tests", "fixtures")


def test_model_that_takes_only_batched_inputs_gets_rows_per_exit(outputs, monkeypatch, capsys):
    """Toy/FourExit: no predict_logits, forward(list of dicts) only, MODEL.EXIT.STOP K; the MACs
    of exit K by hand: a stride-2 stem 3->4 (3x3), then per exit a 4->4 3x3 block and a 4->2 1x1
    classifier, all at the 16 x 32 positions of a 32 x 64 input."""
    monkeypatch.syspath_prepend(os.path.join(FIXTURES, "families"))
    monkeypatch.setenv("FOUR_EXIT_TOY_DATA", str(outputs / "toy"))
    folder = os.path.join(FIXTURES, "playground", "Toy", "FourExit")
    data = _bench(["--playground", folder, "--sizes", SIZE, "--runs", "2", "--warmup", "1",
                   "--fuse-bn"], outputs / "four.json")
    assert "timed: model(list of dicts)" in capsys.readouterr().out
    assert data["input"] == "batched_inputs" and data["model"] == "FourExitToy"
    assert data["num_exits"] == 4 and [r["exit"] for r in data["rows"]] == [1, 2, 3, 4]
    positions = 16 * 32
    expected = [(3 * 4 * 9 + k * (4 * 4 * 9 + 4 * 2)) * positions / 1e9 for k in (1, 2, 3, 4)]
    assert [r["gmacs"] for r in data["rows"]] == pytest.approx(expected, rel=1e-9)
    assert all(r["latency_ms"]["median"] > 0 and r["peak_memory_mb"] > 0 for r in data["rows"])


@pytest.mark.parametrize("where, flags, message", [
    ("toy", ["--exits", "2"], "has no MODEL.EXIT.STOP"),
    ("toy", ["--budgets", "0.5"], "is not a routing model"),
    ("toy", ["--exits", "0"], "exits are 1-based"),
    ("toy", ["--budgets", "1.5"], "in (0, 1]"),
    ("anytime", ["--exits", "5"], "the model has 4 exits"),
])
def test_exit_and_budget_options_refused_with_the_fix(where, flags, message, toy_playground,
                                                      capsys):
    folder = toy_playground if where == "toy" else ANYTIME
    with pytest.raises(SystemExit) as e:
        main(["--playground", folder, "--sizes", SIZE, "--no-cost"] + flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
