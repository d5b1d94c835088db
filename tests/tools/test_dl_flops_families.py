"""dl_flops on the tiny playground of every family: totals equal flop_count on the same model and
input (built here), the per-module table, the paper's convention side by side (MFARANet's
published_cost_convention() on its BN-free copy, HRNet / ADP-C "hrnet", dynamic routing's
"dynamic_routing"); and the per-image distribution over the embedded street scenes for the
routing and the ADP-C (masks on) playgrounds, checked against the evaluator's own cost summary."""
import json
import os
import re

import pytest
import torch
from PIL import Image

from dl_lib import playground
from dl_lib.analysis import count_parameters, flop_count
from dl_lib.analysis.table import format_count
from dl_lib.checkpoint import Checkpointer
from dl_lib.data import build_test_loader
from dl_lib.evaluation import inference_on_dataset
from dl_lib.tools.flops import main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAMILIES = {  # family -> its tiny playground
    "baseline": "Quickstart/FPN.R18W32.Synthetic",
    "dynamic_routing": "Quickstart/Seg.Layer6.Tiny.Synthetic",
    "anytime": "Anytime/HRNet_W18.ADP_C.Tiny.Synthetic",
    "mfaranet": "MFARANet/R18_DeepStem.Tiny.Synthetic",
    "condnet": "CondNet/DeepLabV3Plus_R18_D8.Tiny.Synthetic",
    "acosp": "ACoSP/SegNet.Tiny.Synthetic",
}
# How each paper counts (shared/docs/reference): convention and the config of the counted copy.
PAPER = {
    "dynamic_routing": ("dynamic_routing", []),   # dynamic_routing.md 3.1, cal_op_flops
    "anytime": ("hrnet", []),                      # anytime.md 3.6, HRNet's get_model_summary
    # mfaranet.md 5: HRNet's summary on model_MFARANet_Speed (no decoder BN, no boundary heads)
    "mfaranet": ("hrnet", ["MODEL.MFARANET.NORM", "", "MODEL.MFARANET.BOUNDARY_HEADS", "False"]),
}
H, W = 32, 64
VAL = "synthetic_cityscapes_val"


def _folder(family):
    return os.path.join(REPO, "playground", FAMILIES[family])


def _input():
    # the documented input of dl_flops: torch.randn from a CPU generator seeded with --seed
    return torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))


def _section(out, convention):
    return out.split(f"Convention: {convention} ->")[1].split("\nConvention: ")[0]


def _model_row(text):
    return next(line for line in text.splitlines() if line.startswith("| model "))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_counts_as_flop_count_and_shows_the_papers_convention(family, capsys):
    folder = _folder(family)
    convention = "all" if family == "anytime" else "paper"
    torch.manual_seed(0)  # the same random weights as the model built below
    assert main(["--playground", folder, "--size", str(H), str(W), "--convention", convention,
                 "--depth", "1"]) == 0
    out = capsys.readouterr().out
    torch.manual_seed(0)
    _, model = playground.build(folder)
    params = count_parameters(model).total
    assert f"Parameters: {params:,} total" in out
    counted = ["gmac", "hrnet", "dynamic_routing"] if convention == "all" else ["gmac"]
    results = {}
    for conv in counted:
        r = results[conv] = flop_count(model, convention=conv, inputs=_input())
        assert r.total > 0 and r.raw > 0
        section = _section(out, conv)
        assert f"Total: {r.total:.6g} ({r.raw:,} before scaling)" in section
        row = _model_row(section)  # the per-module table: root row, parameters and total
        assert format_count(params) in row and f"{r.total:.4g}" in row
        assert "| backbone " in section
        assert f"Ran but not counted under {conv!r}:" in section

    side = out.split("Ours and the paper's, side by side")[-1]
    if family not in PAPER:
        assert f"Paper's convention: none stated for {type(model).__name__}" in out
        assert "side by side" not in out
        return
    paper_conv, paper_opts = PAPER[family]
    torch.manual_seed(0)
    _, copy = playground.build(folder, paper_opts) if paper_opts else (None, model)
    theirs = flop_count(copy, convention=paper_conv, inputs=_input())
    m = re.search(r"^Totals: ours ([0-9.e+-]+) GMACs \| paper \(.*\) ([0-9.e+-]+) ", side, re.M)
    assert m, side
    assert float(m.group(1)) == pytest.approx(results["gmac"].total, rel=1e-5)
    assert float(m.group(2)) == pytest.approx(theirs.total, rel=1e-5)
    assert f"= {paper_conv} ->" in side
    if paper_opts:  # a copy with fewer parameters, listed in its own column
        assert count_parameters(copy).total < params
        assert "#params (paper's copy)" in side and "MODEL.MFARANET.NORM ''" in side
    if family == "anytime":
        # random weights are never 90% sure: every pixel is computed, and ADP-C's own count of
        # the last exit (conv MACs / 2^30 plus its interpolation term, zero here) is ours
        own = re.search(r"^\| exit3\s*\|\s*([0-9.e+-]+)", out, re.M)
        assert own and float(own.group(1)) == pytest.approx(results["hrnet"].total, rel=1e-5)
    if family == "dynamic_routing":
        for name in ("real_gflops", "real_corrected_gflops", "expt_gflops"):
            assert re.search(rf"^\| {name}\s*\|\s*[0-9.]+", out, re.M), out


# ------------------------------------------------------------------------------ dataset mode
@pytest.fixture
def scenes(tmp_path, monkeypatch):
    """Three 32x64 validation scenes (and one training scene) under tmp_path."""
    from dl_lib.data.datasets import synthetic

    monkeypatch.setenv("DL_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    for key, value in dict(num_train=1, num_val=3, size=(H, W)).items():
        monkeypatch.setitem(synthetic.SYNTHETIC_OPTIONS, key, value)
    return VAL


# the scenes as they are (32x64), no loader worker
OPTS = ["INPUT.MIN_SIZE_TEST", str(H), "DATALOADER.NUM_WORKERS", "0"]


def _weights(tmp_path, folder, opts, change=None):
    """A checkpoint of the playground's seeded random model (after ``change(model)``)."""
    torch.manual_seed(0)
    cfg, model = playground.build(folder, opts)
    if change is not None:
        with torch.no_grad():
            change(model)
    Checkpointer(model, str(tmp_path / "ckpt"), save_to_disk=True).save("model")
    return str(tmp_path / "ckpt" / "model.pth")


def _table_means(out):
    """quantity -> mean, from the printed summary table."""
    means = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] not in ("quantity", "") and not cells[0].startswith(":"):
            means[cells[0]] = float(cells[3])
    return means


def _evaluator_cost(folder, opts, name, conventions):
    """The evaluator's TEST.COST_CONVENTIONS summary of the same model over ``name``."""
    cfg, model = playground.build(folder, opts)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS, strict=True)
    return inference_on_dataset(model, build_test_loader(cfg, name), None,
                                cost_conventions=conventions)["cost"]


def _run_dataset(folder, out_dir, opts, capsys):
    assert main(["--playground", folder, "--dataset", VAL, "--num-images", "3", "--out",
                 str(out_dir), "--log-every", "1"] + opts) == 0
    captured = capsys.readouterr()
    with open(out_dir / "flops_per_image.json") as f:
        data = json.load(f)
    return captured.out, captured.err, data


def _check_common(printed, err, data, out_dir, panels):
    assert [f"{k}/3 images" in err for k in (1, 2, 3)] == [True] * 3  # progress, every image
    assert data["num_images"] == 3 and len(data["images"]) == 3 and data["dataset"] == VAL
    assert all(r["input_size"] == [H, W] for r in data["images"])
    assert Image.open(out_dir / "flops_hist.png").size == (640 * panels, 480)
    means = _table_means(printed)
    values = {"gmac": [r["cost"]["gmac"] for r in data["images"]]}
    for r in data["images"]:
        for name, v in r.get("model_count", {}).items():
            values.setdefault(f"model: {name}", []).append(v)
    for name, v in values.items():
        assert means[name] == pytest.approx(sum(v) / len(v), rel=1e-5), name
        assert data["summary"][name]["mean"] == pytest.approx(sum(v) / len(v), rel=1e-12)
    return values


def test_dataset_distribution_of_the_routing_playground(scenes, tmp_path, capsys):
    folder = _folder("dynamic_routing")
    opts = OPTS + ["MODEL.WEIGHTS", _weights(tmp_path, _folder("dynamic_routing"), OPTS)]
    printed, err, data = _run_dataset(folder, tmp_path / "dist", opts, capsys)
    # panels: executed gmac, the model's own counts
    values = _check_common(printed, err, data, tmp_path / "dist", panels=2)
    for name in ("real_gflops", "real_corrected_gflops", "expt_gflops"):
        assert len(values[f"model: {name}"]) == 3
    cost = _evaluator_cost(folder, opts, VAL, ["gmac"])["gmac"]
    assert cost["mean"] == pytest.approx(sum(values["gmac"]) / 3, rel=1e-9)
    assert (cost["min"], cost["max"]) == pytest.approx((min(values["gmac"]),
                                                        max(values["gmac"])), rel=1e-9)


def _confident_adp_c(model):
    # stand-in for trained weights: HRNet's std-0.001 init makes every exit equally unsure of
    # every pixel; with Kaiming-initialised convolutions (exit 1's classifier x3) exit 1's
    # confidence spreads over about 0.5..0.7 and differs per scene
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    model.head.exit1[-1].weight.mul_(3)


@pytest.mark.slow
def test_dataset_distribution_of_the_adp_c_playground_per_exit(scenes, tmp_path, capsys):
    folder = _folder("anytime")
    opts = OPTS + ["MODEL.MASK.CONF_THRE", "0.6"]
    opts += ["MODEL.WEIGHTS", _weights(tmp_path, folder, opts, _confident_adp_c)]
    printed, err, data = _run_dataset(folder, tmp_path / "dist", opts, capsys)
    values = _check_common(printed, err, data, tmp_path / "dist", panels=2)
    means = _table_means(printed)
    for r in data["images"]:
        exits = r["cost_per_exit"]["gmac"]
        assert len(exits) == 4 and exits[-1] == r["cost"]["gmac"]
        assert all(a <= b for a, b in zip(exits, exits[1:]))  # cumulative
        assert sorted(r["model_count"]) == ["exit0", "exit1", "exit2", "exit3"]
    for k in range(4):
        v = [r["cost_per_exit"]["gmac"][k] for r in data["images"]]
        assert means[f"gmac exit{k}"] == pytest.approx(sum(v) / 3, rel=1e-5)
    # the masks skip part of segments 2..4: below the dense cost, and different per image
    dense = flop_count(playground.build(folder, OPTS + ["MODEL.MASK.USE", "False"])[1],
                       input_size=(H, W)).total
    assert max(values["gmac"]) < dense
    assert len(set(values["gmac"])) > 1 and "Input-dependent" in printed
    cost = _evaluator_cost(folder, opts, VAL, ["gmac"])["gmac"]
    assert cost["mean"] == pytest.approx(sum(values["gmac"]) / 3, rel=1e-9)


def test_static_model_gets_one_value_and_says_so(scenes, tmp_path, capsys):
    folder = _folder("baseline")
    assert main(["--playground", folder, "--dataset", VAL, "--num-images", "2", "--out",
                 str(tmp_path / "dist")] + OPTS) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "dist" / "flops_per_image.json") as f:
        data = json.load(f)
    assert len(data["images"]) == 2 and data["static"] is True
    assert "Every image cost the same" in printed
    torch.manual_seed(0)
    expected = flop_count(playground.build(folder, OPTS)[1], input_size=(H, W)).total
    assert [r["cost"]["gmac"] for r in data["images"]] == pytest.approx([expected] * 2, rel=1e-9)
    assert Image.open(tmp_path / "dist" / "flops_hist.png").size == (640, 480)


def test_unknown_dataset_names_it_and_lists_the_registered_ones(scenes, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--playground", _folder("baseline"), "--dataset", "synthetic_cityscape_val"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'synthetic_cityscape_val' is not a registered dataset" in err
    assert "Did you mean 'synthetic_cityscapes_val'" in err
    assert "cityscapes_fine_sem_seg_val" in err and VAL in err  # the registered names


@pytest.mark.parametrize("argv", [["--num-images", "3"], ["--out", "x"],
                                  ["--dataset", VAL, "--size", "8", "8"]])
def test_options_of_the_other_mode_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--playground", _folder("baseline")] + argv)
    assert e.value.code == 2 and "--dataset" in capsys.readouterr().err
