"""dl_export on the static families' tiny playgrounds (the FPN baseline, MFARANet full and branch 2
only, CondNet, a compressed ACoSP SegNet rebuilt from MODEL.PRUNING.CHANNELS) in every format:
the file is reloaded here with the format's own loader and its outputs equal the eager model's
(rtol 1e-4 of the largest logit); the tool's own check fails on a file that differs; bad options
stop with exit status 2 and the fix."""
import importlib.util
import os

import pytest
import torch
from torch import nn

from dl_lib import playground
from dl_lib.checkpoint import Checkpointer
from dl_lib.modeling.pruning import channel_masks
from dl_lib.tools import export as export_tool
from dl_lib.tools.export import check_exported, load_exported, main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = (32, 64)
RTOL = 1e-4
FAMILIES = {  # name -> (playground, overrides, number of outputs of predict_logits)
    "baseline": ("playground/Quickstart/FPN.R18W32.Synthetic", [], 1),
    "mfaranet": ("playground/MFARANet/R18_DeepStem.Tiny.Synthetic", [], 5),  # 4 branches, fused
    "mfaranet_branch2": ("playground/MFARANet/R18_DeepStem.Tiny.Synthetic",
                         ["MODEL.MFARANET.BRANCH_ONLY", "2"], 1),
    "condnet": ("playground/CondNet/DeepLabV3Plus_R18_D8.Tiny.Synthetic", [], 1),
    "acosp_compressed": ("playground/ACoSP/SegNet.Tiny.Synthetic", [], 1),
}
SUFFIX = {"torchscript": ".pt", "export": ".pt2", "onnx": ".onnx"}


def _randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine terms away from 0 / 1, so an exported BN that used batch
    statistics or lost its terms would differ."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def _compress_tool():
    spec = importlib.util.spec_from_file_location("compress_tool",
                                                  os.path.join(ROOT, "tools", "compress.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Per family: a checkpoint of its playground's model with randomised norms (the ACoSP one
    hard-masked, then compressed by tools/compress.py into MODEL.PRUNING.CHANNELS)."""
    folder = tmp_path_factory.mktemp("weights")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the one_thread fixture
    out = {}
    for name, (path, opts, _) in FAMILIES.items():
        if name == "mfaranet_branch2":
            continue  # loads the full model's weights, as the Branch2 playground does
        torch.manual_seed(0)
        extra = ["MODEL.PRUNING.HARD_MASKS", "True"] if name == "acosp_compressed" else []
        _, model = playground.build(os.path.join(ROOT, path), opts + extra)
        _randomize_norms(model)
        Checkpointer(model, save_dir=str(folder)).save(name)
        out[name] = str(folder / f"{name}.pth")
    masked = out["acosp_compressed"]
    compressed = str(folder / "acosp_small.pth")
    _, small, diff = _compress_tool().compress_checkpoint(
        os.path.join(ROOT, FAMILIES["acosp_compressed"][0]), masked, compressed, trace_size=32)
    assert diff < 1e-4
    out["acosp_masked"], out["acosp_compressed"] = masked, compressed
    out["mfaranet_branch2"] = out["mfaranet"]
    torch.set_num_threads(threads)
    return out


def _eager(name, weights):
    path, opts, _ = FAMILIES[name]
    cfg, model = playground.build(os.path.join(ROOT, path),
                                  opts + ["MODEL.WEIGHTS", weights[name], "MODEL.DEVICE", "cpu"])
    Checkpointer(model).load(weights[name], checkpointables=[], strict=True)
    return model.eval()


def _reload(fmt, path):
    """The file run by the format's own runtime (not the tool's loader)."""
    if fmt == "torchscript":
        loaded = torch.jit.load(path)
        return lambda x: loaded(x)
    if fmt == "export":
        loaded = torch.export.load(path).module()
        return lambda x: loaded(x)
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX "
                              "file cannot be run (pip install -c constraints.txt onnxruntime)")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: [torch.from_numpy(o) for o in session.run(None, {"image": x.numpy()})]


def _tuple(out):
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


@pytest.mark.parametrize("fmt", ["torchscript", "export", "onnx"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_exported_outputs_equal_eager(name, fmt, weights, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="onnxscript is not installed: torch.onnx's "
                            "exporter needs it (pip install -c constraints.txt onnxscript)")
    path, opts, num_outputs = FAMILIES[name]
    out = str(tmp_path / f"{name}{SUFFIX[fmt]}")
    # onnxscript's optimisation (the default) on the baseline and SegNet (max-unpooling) only:
    # it is 40% of an ONNX export's time and changes no output
    optimized = fmt != "onnx" or name in ("baseline", "acosp_compressed")
    fast = [] if optimized else ["--no-optimize"]
    rc = main(["--playground", os.path.join(ROOT, path), "--format", fmt, "--size", *map(str, SIZE),
               "--out", out] + fast + opts + ["MODEL.WEIGHTS", weights[name]])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "check: reloaded" in printed and printed.rstrip().endswith("OK")
    assert f"MODEL.WEIGHTS {weights[name]}" in printed

    model = _eager(name, weights)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        expected = _tuple(model.predict_logits(x))
        got = _tuple(_reload(fmt, out)(x))
    assert len(expected) == len(got) == num_outputs
    scale = max(float(t.abs().max()) for t in expected)
    assert scale > 0
    for e, g in zip(expected, got):
        assert tuple(g.shape) == tuple(e.shape) == (1, 19, *SIZE)
        assert float((g - e).abs().max()) <= RTOL * scale

    if name == "acosp_compressed" and fmt == "torchscript":
        # the file holds the compressed network (not the masked one at full width)
        _, masked = playground.build(os.path.join(ROOT, path),
                                     ["MODEL.WEIGHTS", weights["acosp_masked"]])
        assert channel_masks(masked) and not channel_masks(model)
        n_file = sum(p.numel() for p in torch.jit.load(out).parameters())
        assert n_file == sum(p.numel() for p in model.parameters())
        assert n_file < 0.5 * sum(p.numel() for p in masked.parameters())


def test_check_fails_when_the_file_differs_from_the_eager_model(weights, tmp_path, monkeypatch,
                                                                capsys):
    original = export_tool.export_module

    def export_a_changed_model(module, fmt, example, path, **kwargs):
        with torch.no_grad():  # the head's classifier bias moves after the reference was taken
            last = [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]
            last.bias.add_(1.0)
        return original(module, fmt, example, path, **kwargs)

    monkeypatch.setattr(export_tool, "export_module", export_a_changed_model)
    path = os.path.join(ROOT, FAMILIES["baseline"][0])
    out = str(tmp_path / "changed.pt")
    assert main(["--playground", path, "--format", "torchscript", "--size", "32", "64", "--out",
                 out, "MODEL.WEIGHTS", weights["baseline"]]) == 1
    printed = capsys.readouterr().out
    assert "FAILED (max |exported - eager|" in printed and os.path.exists(out)


def test_check_exported_counts_shapes_and_tolerance():
    a = (torch.ones(1, 2, 4, 4) * 10,)
    ok = check_exported(a, (a[0] + 5e-4,))
    assert ok["ok"] and ok["tolerance"] == pytest.approx(1e-3)
    assert ok["max_abs_diff"] == pytest.approx(5e-4, rel=1e-3)
    assert not check_exported(a, (a[0] + 2e-3,))["ok"]
    assert not check_exported(a, (a[0], a[0]))["ok"]
    assert "shape" in check_exported(a, (a[0][..., :2],))["problem"]
    assert not check_exported(a, (a[0] * float("nan"),))["ok"]


def test_onnx_check_is_skipped_without_onnxruntime(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails
    call, reason = load_exported("onnx", "model.onnx")
    assert call is None and "onnxruntime is not installed" in reason


@pytest.mark.parametrize("args,message", [
    (["--format", "tflite", "--size", "32", "64"], "invalid choice: 'tflite'"),
    (["--format", "onnx", "--size", "0", "64"], "--size 0 64: give the input height and width"),
    (["--format", "torchscript", "--size", "32"], "--size: expected 2 arguments"),
    (["--format", "torchscript", "--size", "32", "64", "--batch", "0"], "--batch 0 must be >= 1"),
])
def test_bad_format_or_size_is_a_clear_error(args, message, tmp_path, capsys):
    out = str(tmp_path / "m.pt")
    with pytest.raises(SystemExit) as exit_:
        main(["--playground", os.path.join(ROOT, FAMILIES["baseline"][0]), "--out", out] + args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(out)


def test_export_format_needs_a_pt2_file_and_weights_must_exist(tmp_path, capsys):
    folder = os.path.join(ROOT, FAMILIES["baseline"][0])
    with pytest.raises(SystemExit) as exit_:
        main(["--playground", folder, "--format", "export", "--size", "32", "64", "--out",
              str(tmp_path / "m.pt")])
    assert exit_.value.code == 2 and "ending in .pt2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--playground", folder, "--format", "torchscript", "--size", "32", "64", "--out",
              str(tmp_path / "m.pt"), "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])
    assert exit_.value.code == 2 and "missing.pth" in capsys.readouterr().err
