"""The authors' two checkpoint layouts (``MFARANet`` and ``MFARANet_Scale_Choice``), written
with random weights from the key dump in the released file format, load strictly through
``MODEL.WEIGHTS`` (the Checkpointer) and ``tools/convert_checkpoint.py``, and give the logits of
the original computation (``mfaranet_original_reference.py``)."""
import importlib.util
import os
import textwrap

import pytest
import torch
import torch.nn.functional as F

from dl_lib.checkpoint import Checkpointer, IncompatibleCheckpointError, find_converter
from dl_lib.config import config_from_delta
from dl_lib.modeling import build_model
from dl_lib.modeling.mfaranet import backbone_config
from dl_lib.modeling.mfaranet.convert import convert_released, to_released
from mfaranet_original_reference import original_forward, random_state_dict, read_key_dump

HERE = os.path.dirname(__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DUMP = read_key_dump(os.path.join(HERE, "mfaranet_keys.txt"))
MAIN = next(v for k, v in DUMP.items() if k.startswith("MFARANet (model_MFARANet.py)"))
SCALE_CHOICE = next(v for k, v in DUMP.items() if k.startswith("MFARANet_Scale_Choice ("))


def mfaranet_cfg(**mfaranet):
    return config_from_delta(dict(MODEL=dict(META_ARCHITECTURE="MFARANet",
                                             BACKBONE=backbone_config("r18_deep_stem"),
                                             MFARANET=mfaranet)), family="mfaranet")


def save_released(sd, path):
    """The released file format: a DDP model's state dict plus epoch and optimizer state."""
    torch.save({"epoch": 200, "state_dict": {"module." + k: v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.005, "momentum": 0.9,
                                                             "params": [0, 1]}]}}, path)
    return str(path)


def _compare(model, sd, fused_branches, scale_choice):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = model.predict_logits(x)
        ref = original_forward(sd, x, fused_branches, scale_choice=scale_choice)
    torch.testing.assert_close(ours[-1], ref["out"], atol=2e-4, rtol=1e-4)
    for got, s in zip(ours[:4], ref["branches"]):
        up = F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=True)
        torch.testing.assert_close(got, up, atol=2e-4, rtol=1e-4)
    assert ref["out"].abs().mean() > 1e-2  # not a degenerate all-zero comparison


@pytest.mark.parametrize("layout,shapes,converter", [
    ("released", MAIN, "mfaranet_released"),
    ("scale_choice", SCALE_CHOICE, "mfaranet_scale_choice"),
])
def test_checkpoint_loads_strictly_and_equals_the_original(tmp_path, layout, shapes, converter):
    sd = random_state_dict(shapes, seed=3)
    path = save_released(sd, tmp_path / f"{layout}.pth")
    model = build_model(mfaranet_cfg()).eval()
    assert find_converter(["module." + k for k in sd], model).name == converter
    Checkpointer(model).load(path, checkpointables=[], strict=True)
    _compare(model, sd, (1, 2, 3, 4), scale_choice=layout == "scale_choice")


def test_scale_choice_single_branch_checkpoint(tmp_path):
    """Branch_Choose=[2]: no attention tensors, the output is branch 2's scores; the same file in
    the four-branch model stops, naming the attention tensors (the original's strict=False
    would leave them random)."""
    shapes = {k: v for k, v in SCALE_CHOICE.items() if not k.startswith("ASFM_attentions.")}
    sd = random_state_dict(shapes, seed=4)
    path = save_released(sd, tmp_path / "branch2.pth")
    model = build_model(mfaranet_cfg(FUSED_BRANCHES=[2])).eval()
    Checkpointer(model).load(path, checkpointables=[], strict=True)
    _compare(model, sd, (2,), scale_choice=True)
    with pytest.raises(IncompatibleCheckpointError, match=r"head\.attention\.0\.conv"):
        Checkpointer(build_model(mfaranet_cfg())).load(path, checkpointables=[], strict=True)


def test_round_trip_of_our_names():
    model = build_model(mfaranet_cfg())
    ours = model.state_dict()
    released = to_released(ours)
    assert set(released) == set(MAIN)
    back = convert_released({"module." + k: v for k, v in released.items()})
    assert list(back) == list(ours)
    assert all(back[k] is ours[k] for k in ours)


def _tool():
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint_mfaranet", os.path.join(REPO, "tools", "convert_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _playground(folder, **mfaranet):
    folder.mkdir()
    (folder / "config.py").write_text(textwrap.dedent(f"""\
        from dl_lib.config import config_from_delta
        from dl_lib.modeling.mfaranet import backbone_config

        config = config_from_delta(dict(MODEL=dict(
            META_ARCHITECTURE="MFARANet", BACKBONE=backbone_config("r18_deep_stem"),
            MFARANET={mfaranet!r})), family="mfaranet")
        """))
    (folder / "net.py").write_text(textwrap.dedent("""\
        import dl_lib.modeling.mfaranet  # noqa: F401
        from dl_lib.modeling import build_model as _build_model


        def build_model(cfg):
            return _build_model(cfg)
        """))
    return str(folder)


def test_convert_tool(tmp_path, capsys):
    tool = _tool()
    sd = random_state_dict(MAIN, seed=5)
    src = save_released(sd, tmp_path / "MFARANet_resnet_18_deep_stem_200_200.pth")
    out = str(tmp_path / "converted.pth")
    folder = _playground(tmp_path / "R18")
    assert tool.main([src, out, "--playground", folder]) == 0
    printed = capsys.readouterr().out
    assert "mfaranet_released" in printed and "12,997,264 parameters" in printed
    data = torch.load(out, weights_only=True)
    assert data["converted_from"]["converter"] == "mfaranet_released"
    model = build_model(mfaranet_cfg())
    assert find_converter(data["model"].keys(), model) is None  # our layout now
    Checkpointer(model).load(out, checkpointables=[], strict=True)
    assert torch.equal(model.state_dict()["backbone.stem.7.weight"], sd["layer0.1.weight"])

    # Without boundary heads (trained without the boundary loss): named, not an error.
    no_boundary = {k: v for k, v in sd.items() if not k.startswith("boundary_heads.")}
    src2 = save_released(no_boundary, tmp_path / "no_boundary.pth")
    assert tool.main([src2, str(tmp_path / "nb.pth"), "--playground", folder]) == 0
    assert "without the boundary loss" in capsys.readouterr().out
    # A scale-choice file of Branch_Choose [2] does not fit the four-branch playground.
    single = {k: v for k, v in random_state_dict(SCALE_CHOICE, seed=6).items()
              if not k.startswith("ASFM_attentions.")}
    src3 = save_released(single, tmp_path / "single.pth")
    assert tool.main([src3, str(tmp_path / "s.pth"), "--playground", folder]) == 2
    assert "head.attention.0" in capsys.readouterr().err
